"""Where the paper-config training step spends its time on a CPU, and two faster drop-ins.

Times the parts of the step one by one (augmentation warp, trunk forward, head + decoder
step, whole step, prediction), as vmsjax has them ("base") and with drop-in
replacements patched in, in one process so that before and after share the machine's
load:

  subpixel  the decoder's stride-2 transposed convolutions computed as one ordinary
            convolution of the undilated input with a (2, 2, C_in, 4 C_out) kernel
            gathered from the same (3, 3, C_in, C_out) parameter, then depth-to-space
            ("sub-pixel" form). Same parameters, same outputs (to float rounding). XLA's
            CPU backend has no fast path for the gradient of a convolution with
            `lhs_dilation` (what `lax.conv_transpose` lowers to) and runs it 10-50x
            slower than an ordinary convolution of the same size.
  chunk     the frozen trunk run over micro-batches of 4 images (`lax.map`) inside the
            jitted step: its activations then stay closer to the caches (1.4x more
            images per CPU-second at batch 32). CPU only: on a GPU it would only
            serialise work.

Run:

  python experiments/profile_step.py      # warp, encoder, decoder, train x 3 variants, 224
  python experiments/profile_step.py --batch 32 --parts train,eval,encoder \
      --variants base,subpixel,subpixel+chunk
  python experiments/profile_step.py --batch 8 --parts warp,decoder --variants base,subpixel
  XLA_FLAGS=--xla_cpu_use_onednn=true python experiments/profile_step.py --parts encoder

Each line gives wall and process-CPU seconds per call: the median of `--repeats` calls
after a warm-up call (the warp: the fastest). On a shared machine compare the CPU
seconds. The drop-ins are the proposed changes to vmsjax/models/vae.py and
vmsjax/train.py; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402  (sibling script)

# --------------------------------------------------------------------------- sub-pixel


def _same_pads(k: int, s: int) -> tuple[int, int]:
  """Padding of the dilated input that `lax.conv_transpose(padding="SAME")` uses."""
  pad_len = k + s - 2
  pad_a = k - 1 if s > k - 1 else math.ceil(pad_len / 2)
  return pad_a, pad_len - pad_a


def _phase_taps(k: int, s: int) -> tuple[np.ndarray, int]:
  """For one axis: (taps (L, s), lo) with taps[d, a] the kernel index that output phase a
  takes from input offset d + lo (relative to the output's input pixel), or k for none.

  Output pixel s*i + a of a SAME transposed convolution sums x[i + d] * kernel[t] over
  the taps t with (a + t - pad_a) divisible by s, d = (a + t - pad_a) / s.
  """
  pad_a, _ = _same_pads(k, s)
  pairs = [(a, t, (a + t - pad_a) // s) for a in range(s) for t in range(k)]
  pairs = [(a, t, d) for a, t, d in pairs if (a + t - pad_a) % s == 0]
  lo = min(d for _, _, d in pairs)
  hi = max(d for _, _, d in pairs)
  taps = np.full((hi - lo + 1, s), k, np.int32)
  for a, t, d in pairs:
    taps[d - lo, a] = t
  return taps, lo


def subpixel_conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int]):
  """`lax.conv_transpose(x, kernel, strides, "SAME")` as a plain convolution + depth-to-space.

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out), the layout `nn.ConvTranspose` stores (not flipped).
    strides: (sh, sw).

  Returns:
    (B, H * sh, W * sw, C_out).
  """
  kh, kw, c_in, c_out = kernel.shape
  sh, sw = strides
  ty, lo_y = _phase_taps(kh, sh)  # (Ly, sh)
  tx, lo_x = _phase_taps(kw, sw)  # (Lx, sw)
  # A zero row and column at index k stand for "no tap".
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  k2 = padded[ty[:, None, :, None], tx[None, :, None, :]]  # (Ly, Lx, sh, sw, C_in, C_out)
  ly, lx = ty.shape[0], tx.shape[0]
  k2 = k2.transpose(0, 1, 4, 2, 3, 5).reshape(ly, lx, c_in, sh * sw * c_out)
  y = lax.conv_general_dilated(
    x,
    k2,
    window_strides=(1, 1),
    padding=((-lo_y, ly - 1 + lo_y), (-lo_x, lx - 1 + lo_x)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )  # (B, H, W, sh * sw * C_out)
  b, h, w, _ = y.shape
  y = y.reshape(b, h, w, sh, sw, c_out).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h * sh, w * sw, c_out)  # (B, H*sh, W*sw, C_out)


class SubpixelConvTranspose(nn.Module):
  """Drop-in for the decoder's `nn.ConvTranspose(..., padding="SAME")` layers.

  Same parameter names, shapes and initialisers as `nn.ConvTranspose` (so checkpoints
  and initial values carry over), same outputs to float rounding; computed by
  `subpixel_conv_transpose`.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.padding != "SAME" or len(self.kernel_size) != 2:
      raise NotImplementedError("SubpixelConvTranspose covers 2-D SAME padding only")
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    y = subpixel_conv_transpose(x.astype(dtype), kernel.astype(dtype), tuple(self.strides))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


# --------------------------------------------------------------------------- patching


MICRO_BATCH = 4  # images per trunk call in the "chunk" variant


def chunked_encode(encode: Callable, micro_batch: int = MICRO_BATCH) -> Callable:
  """Wraps `train.encode` to run the trunk over micro-batches with `lax.map`.

  At batch 32 and 224x224 a VGG-16 activation is up to 411 MB (block 1), far beyond the
  CPU's caches; in micro-batches of 2-4 images the trunk runs about 1.4x faster per
  CPU-second on the 2-core machine measured (docs/benchmarks.md). Each image's features
  are the same up to float rounding. Batches that `micro_batch` does not divide (and the
  micro-batch itself) go through unchanged.
  """

  def wrapped(config, encoder, enc_params, image):
    b = image.shape[0]
    if b <= micro_batch or b % micro_batch:
      return encode(config, encoder, enc_params, image)
    chunks = image.reshape(b // micro_batch, micro_batch, *image.shape[1:])
    feats = jax.lax.map(lambda x: encode(config, encoder, enc_params, x), chunks)
    return feats.reshape(b, *feats.shape[2:])  # (B, H/32, W/32, 512)

  return wrapped


VARIANTS = ("base", "subpixel", "chunk")


@contextlib.contextmanager
def patched(variant: str):
  """Swaps drop-ins into vmsjax for the duration, in this process only.

  Args:
    variant: "base" (no change), or "subpixel" and/or "chunk" joined by "+":
      `SubpixelConvTranspose` for the decoder's transposed convolutions, and
      `chunked_encode` for `train.encode` (training step and prediction).
  """
  from vmsjax import train
  from vmsjax.models import vae

  names = set(variant.split("+")) - {"base"}
  if names - set(VARIANTS):
    raise ValueError(f"unknown variant {variant!r}; parts are {', '.join(VARIANTS)}")
  old_ct, old_encode = vae.nn.ConvTranspose, train.encode  # vae.nn is flax.linen
  try:
    if "subpixel" in names:
      vae.nn.ConvTranspose = SubpixelConvTranspose
    if "chunk" in names:
      train.encode = chunked_encode(old_encode)
    yield
  finally:
    vae.nn.ConvTranspose, train.encode = old_ct, old_encode


# --------------------------------------------------------------------------- driver


def best_of(call: Callable[[], object], repeats: int) -> tuple[float, float]:
  """(wall, cpu) seconds of the fastest of `repeats` calls after a warm-up call."""
  call()  # warm-up (compiles)
  wall, cpu = benchmark.time_calls(call, repeats, 1)
  i = int(np.argmin(wall))
  return wall[i], cpu[i]


def profile(
  parts: Sequence[str], variants: Sequence[str], size: int, batch: int, repeats: int, dtype: str
) -> list[dict]:
  """Times each part under each variant.

  Returns:
    rows {part, variant, seconds, cpu_seconds, images_per_s, images_per_cpu_s}: wall and
    process CPU seconds per call (median of `repeats`; the warp: the fastest).
  """
  from vmsjax.data import augment

  train, _ = benchmark.import_train()
  config = benchmark.make_config(size, dtype)
  rows = []
  for variant in variants:
    with patched(variant):
      ph = benchmark.Phases(train, config, batch // jax.device_count())
      for part in parts:
        if part == "warp":
          key = jax.random.key(0)
          fn = jax.jit(
            lambda k, i, v: augment.augment(
              k, i, v, (size, size), max_shift=0.1, zoom_range=0.1, flip=True
            )
          )
          args = (key, ph.images, ph.vms)
          secs, cpu = best_of(lambda f=fn, a=args: jax.block_until_ready(f(*a)), repeats)
        else:
          phase = {"decoder": "head"}.get(part, part)
          rec = benchmark.run_phase(ph, phase, repeats, 1)
          secs, cpu = rec["seconds_per_call"], rec["cpu_seconds_per_call"]
        rows.append(
          {
            "part": part,
            "variant": variant,
            "seconds": secs,
            "cpu_seconds": cpu,
            "images_per_s": ph.batch / secs,
            "images_per_cpu_s": ph.batch / cpu,
          }
        )
        print(
          f"{part:8} {variant:15} {1e3 * secs:9.1f} ms/call {ph.batch / secs:8.1f} img/s"
          f"  CPU {cpu:7.2f} s/call {ph.batch / cpu:7.2f} img/CPU-s",
          flush=True,
        )
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--parts", default="warp,encoder,decoder,train", help="warp,encoder,decoder,train,eval"
  )
  p.add_argument("--variants", default="base,subpixel,subpixel+chunk")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=32, help="global batch")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32")
  a = p.parse_args(argv)
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {a.batch}, {a.size}px")
  profile(
    [x for x in a.parts.split(",") if x],
    [x for x in a.variants.split(",") if x],
    a.size,
    a.batch,
    a.repeats,
    a.dtype,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
