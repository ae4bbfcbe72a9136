"""Where the paper-config training step spends its time on a CPU, before and after.

Times the parts of the step one by one (augmentation warp, trunk forward, head + decoder
step, whole step, prediction) as vmsjax has them ("base") and with the earlier forms
patched back in, in one process so that before and after share the machine's load:

  convT     the decoder's stride-2 transposed convolutions as flax's `nn.ConvTranspose`
            (`lax.conv_transpose`, a convolution with `lhs_dilation`), as vmsjax had
            them before 2026-11-26. vmsjax now computes them as one ordinary
            convolution of the undilated input with a (2, 2, C_in, 4 C_out) kernel
            gathered from the same (3, 3, C_in, C_out) parameter, then depth-to-space
            (`vae.SubpixelConvTranspose`): same parameters, same outputs to float
            rounding. XLA's CPU backend has no fast path for the gradient of a
            convolution with `lhs_dilation` and runs it 10-50x slower than an ordinary
            convolution of the same size.
  whole     the frozen trunk over the whole batch at once, as before 2026-11-26.
            `train.encode` now runs it over micro-batches of 4 images (`lax.map`) on
            CPU, which keeps its activations closer to the caches.
  chunkN    the trunk over micro-batches of N images (e.g. chunk2, chunk8).

Run:

  python experiments/profile_step.py      # warp, encoder, decoder, train; base and before
  python experiments/profile_step.py --batch 32 --parts train,eval,encoder \
      --variants convT+whole,whole,base
  python experiments/profile_step.py --batch 8 --parts warp,decoder --variants convT,base
  XLA_FLAGS=--xla_cpu_use_onednn=true python experiments/profile_step.py --parts encoder

Each line gives wall and process-CPU seconds per call: the median of `--repeats` calls
after a warm-up call (the warp: the fastest). On a shared machine compare the CPU
seconds. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402  (sibling script)

# --------------------------------------------------------------------------- patching


def whole_encode(config, encoder, enc_params, image):
  """`train.encode` as it was before 2026-11-26: the trunk over the whole batch at once."""
  from vmsjax.models import vgg16

  x = vgg16.preprocess(image, config.model.encoder.preprocessing)
  feats = encoder.apply({"params": enc_params}, x.astype(encoder.dtype))
  return jax.lax.stop_gradient(feats.astype(jnp.float32))  # (B, H/32, W/32, 512)


def chunked_encode(encode: Callable, micro_batch: int) -> Callable:
  """Wraps a whole-batch encode to run the trunk over micro-batches with `lax.map`.

  Batches that `micro_batch` does not divide (and the micro-batch itself) go through
  unchanged. `train.encode` does this itself on CPU with micro-batches of 4.
  """

  def wrapped(config, encoder, enc_params, image):
    b = image.shape[0]
    if b <= micro_batch or b % micro_batch:
      return encode(config, encoder, enc_params, image)
    chunks = image.reshape(b // micro_batch, micro_batch, *image.shape[1:])
    feats = jax.lax.map(lambda x: encode(config, encoder, enc_params, x), chunks)
    return feats.reshape(b, *feats.shape[2:])  # (B, H/32, W/32, 512)

  return wrapped


def _check_variant(variant: str) -> set[str]:
  names = set(variant.split("+")) - {"base"}
  bad = {n for n in names if n not in ("convT", "whole") and not re.fullmatch(r"chunk\d+", n)}
  if bad:
    raise ValueError(f"unknown variant {variant!r}; parts are base, convT, whole, chunkN")
  trunk_forms = {n for n in names if n == "whole" or n.startswith("chunk")}
  if len(trunk_forms) > 1:
    raise ValueError(f"variant {variant!r}: at most one of whole, chunkN")
  return names


@contextlib.contextmanager
def patched(variant: str):
  """Swaps earlier forms into vmsjax for the duration, in this process only.

  Args:
    variant: "base" (vmsjax as it is), or parts joined by "+": "convT" (flax's
      `nn.ConvTranspose` in the decoder), "whole" (the trunk over the whole batch) or
      "chunkN" (the trunk over micro-batches of N).
  """
  from vmsjax import train
  from vmsjax.models import vae

  names = _check_variant(variant)
  old_ct, old_encode = vae.SubpixelConvTranspose, train.encode
  try:
    if "convT" in names:
      vae.SubpixelConvTranspose = nn.ConvTranspose
    if "whole" in names:
      train.encode = whole_encode
    for n in names:
      if n.startswith("chunk"):
        train.encode = chunked_encode(whole_encode, int(n.removeprefix("chunk")))
    yield
  finally:
    vae.SubpixelConvTranspose, train.encode = old_ct, old_encode


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
  p.add_argument("--variants", default="convT+whole,base")
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
