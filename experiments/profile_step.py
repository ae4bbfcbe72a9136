"""Where the paper-config training step spends its time on a CPU, before and after.

Times the parts of the step one by one (augmentation warp, trunk forward, head + decoder
step, whole step, prediction) as vmsjax has them ("base") and with other forms patched
in, in one process so that all variants share the machine's load. Variant parts, joined
by "+":

  convT     the decoder's stride-2 transposed convolutions as flax's `nn.ConvTranspose`
            (`lax.conv_transpose`: a convolution of the input dilated with zeros), as
            vmsjax had them before 2026-11-26. XLA's CPU backend has no fast path for
            that form's gradients and runs them 10-50x slower than an ordinary
            convolution of the same size.
  subpixel, phases, matmul
            every transposed convolution in that one of the equivalent forms of
            `vae.conv_transpose` (same parameters, same outputs to float rounding);
            vmsjax picks one per layer (`vae.conv_transpose_method`: `matmul` on CPU).
  nov26     the decoder as vmsjax had it from 2026-11-26 to 2026-11-27: `matmul` with
            its backward left to autodiff for maps of at most 16x16 or fewer than 8
            output channels, `phases` otherwise.
  whole     the frozen trunk over the whole batch at once, as before 2026-11-26.
            `train.encode` now runs it over micro-batches of 4 images (`lax.map`) on
            CPU, which keeps its activations closer to the caches.
  chunkN    the trunk over micro-batches of N images (e.g. chunk2, chunk8).

Run:

  python experiments/profile_step.py      # warp, encoder, decoder, train; base and before
  python experiments/profile_step.py --batch 32 --parts train,eval,encoder \
      --variants convT+whole,whole,base
  python experiments/profile_step.py --parts decoder,layers \
      --variants convT,subpixel,phases,matmul,base
  XLA_FLAGS=--xla_cpu_use_onednn=true python experiments/profile_step.py --parts encoder

Everything is compiled and warmed up first, then timed in `--repeats` rounds of one call
of every (variant, part) each, so a change in the machine's load hits all variants
alike. Each line gives wall and process-CPU seconds per call (medians over the rounds)
and the best wall time. On a shared machine compare the CPU seconds and the ratios
between variants. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import statistics
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


def nov26_conv_transpose(x, kernel, strides, method="auto"):
  """`vae.conv_transpose` as of 2026-11-26 (the `nov26` variant); `method` is ignored."""
  from vmsjax.models import vae

  del method
  _, h, w, _ = x.shape
  if h * w <= 256 or kernel.shape[-1] < 8:
    return vae._matmul_forward(x, kernel, tuple(strides))  # autodiff backward
  return vae.phase_conv_transpose(x, kernel, tuple(strides))


DECODER_FORMS = ("convT", "subpixel", "phases", "matmul", "nov26")


def _check_variant(variant: str) -> set[str]:
  names = set(variant.split("+")) - {"base"}
  trunk_forms = {n for n in names if n == "whole" or re.fullmatch(r"chunk\d+", n)}
  bad = names - trunk_forms - set(DECODER_FORMS)
  if bad:
    raise ValueError(
      f"unknown variant {variant!r}; parts are base, {', '.join(DECODER_FORMS)}, whole, chunkN"
    )
  if len(trunk_forms) > 1 or len(names & set(DECODER_FORMS)) > 1:
    raise ValueError(f"variant {variant!r}: at most one decoder form and one trunk form")
  return names


@contextlib.contextmanager
def patched(variant: str):
  """Swaps other forms into vmsjax for the duration, in this process only.

  Args:
    variant: "base" (vmsjax as it is), or parts joined by "+": a decoder form ("convT":
      flax's `nn.ConvTranspose`; "subpixel", "phases", "matmul": that form of
      `vae.conv_transpose` in every layer; "nov26": the per-layer choice of
      2026-11-26) and a trunk form ("whole": the whole batch
      at once; "chunkN": micro-batches of N).
  """
  from vmsjax import train
  from vmsjax.models import vae

  names = _check_variant(variant)
  old_ct, old_encode, old_fn = vae.SubpixelConvTranspose, train.encode, vae.conv_transpose
  try:
    if "convT" in names:
      vae.SubpixelConvTranspose = nn.ConvTranspose
    if "nov26" in names:
      vae.conv_transpose = nov26_conv_transpose
    for form in names & {"subpixel", "phases", "matmul"}:
      vae.SubpixelConvTranspose = functools.partial(old_ct, method=form)
    for n in names:
      if n == "whole":
        train.encode = whole_encode
      elif n.startswith("chunk"):
        train.encode = chunked_encode(whole_encode, int(n.removeprefix("chunk")))
    yield
  finally:
    vae.SubpixelConvTranspose, train.encode, vae.conv_transpose = old_ct, old_encode, old_fn


# --------------------------------------------------------------------------- driver


def decoder_layers(config) -> list[tuple[str, tuple[int, int, int, int], int]]:
  """(name, input shape for batch 1, output channels) of the decoder's transposed convs."""
  m, s = config.model, config.data.image_size // 32
  widths = [*m.decoder_channels, 2]
  c_in, out = widths[0], []
  for i, c_out in enumerate(widths):
    out.append((f"deconv{i + 1}", (1, s << i, s << i, c_in), c_out))
    c_in = c_out
  return out


def layer_call(ph, layer: str) -> Callable[[], None]:
  """One decoder layer's transposed convolution, forward and both gradients, at the batch.

  The layer is built from `vae.SubpixelConvTranspose` as the variant has it (so "convT"
  times flax's `nn.ConvTranspose`), without bias, batch norm or the rest of the step.
  """
  from vmsjax.models import vae

  (_, shape, c_out), *_ = [x for x in decoder_layers(ph.config) if x[0] == layer]
  k = ph.config.model.kernel
  conv = vae.SubpixelConvTranspose(c_out, (k, k), strides=(2, 2), padding="SAME", use_bias=False)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((ph.batch, *shape[1:]), np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, shape[-1], c_out), np.float32) * 0.05)
  cot = jnp.asarray(rng.standard_normal((ph.batch, 2 * shape[1], 2 * shape[2], c_out), np.float32))
  fn = jax.jit(
    jax.value_and_grad(
      lambda x, kernel, cot: jnp.vdot(conv.apply({"params": {"kernel": kernel}}, x), cot), (0, 1)
    )
  )

  def call():
    jax.block_until_ready(fn(x, kernel, cot))

  call()  # compiles
  return call


def part_call(ph, part: str, size: int) -> Callable[[], None]:
  """A compiled, warmed-up call that runs one part once on device-resident inputs."""
  if part.startswith("deconv"):
    return layer_call(ph, part)
  if part != "warp":
    return benchmark.phase_call(ph, {"decoder": "head"}.get(part, part))[0]
  from vmsjax.data import augment

  fn = jax.jit(
    lambda k, i, v: augment.augment(k, i, v, (size, size), max_shift=0.1, zoom_range=0.1, flip=True)
  )
  args = (jax.random.key(0), ph.images, ph.vms)

  def call():
    jax.block_until_ready(fn(*args))

  call()  # compiles
  return call


def profile(
  parts: Sequence[str], variants: Sequence[str], size: int, batch: int, repeats: int, dtype: str
) -> list[dict]:
  """Times each part under each variant.

  Everything is compiled first; then the timing goes round by round, one call of every
  (variant, part) per round, so that a change in the machine's load hits all of them
  alike.

  Returns:
    rows {part, variant, seconds, cpu_seconds, images_per_s, images_per_cpu_s,
    min_seconds}: wall and process CPU seconds per call, the medians over `repeats`
    rounds, and the fastest wall time.
  """
  train, _ = benchmark.import_train()
  config = benchmark.make_config(size, dtype)
  calls = []
  for variant in variants:
    with patched(variant):  # the patch acts while the step is traced and compiled
      ph = benchmark.Phases(train, config, batch // jax.device_count())
      for part in parts:
        if part == "layers":
          for name, *_ in decoder_layers(config):
            calls.append((name, variant, ph.batch, part_call(ph, name, size)))
        else:
          calls.append((part, variant, ph.batch, part_call(ph, part, size)))
  walls: list[list[float]] = [[] for _ in calls]
  cpus: list[list[float]] = [[] for _ in calls]
  for _ in range(repeats):
    for i, (*_, call) in enumerate(calls):
      wall, cpu = benchmark.time_calls(call, 1, 1)
      walls[i] += wall
      cpus[i] += cpu
  rows = []
  for (part, variant, n, _), wall, cpu in zip(calls, walls, cpus, strict=True):
    secs, cpu_s = statistics.median(wall), statistics.median(cpu)
    rows.append(
      {
        "part": part,
        "variant": variant,
        "seconds": secs,
        "cpu_seconds": cpu_s,
        "min_seconds": min(wall),
        "images_per_s": n / secs,
        "images_per_cpu_s": n / cpu_s,
      }
    )
    print(
      f"{part:8} {variant:18} {1e3 * secs:9.1f} ms/call {n / secs:8.1f} img/s"
      f" (best {n / min(wall):6.1f})  CPU {1e3 * cpu_s:9.1f} ms/call {n / cpu_s:7.2f} img/CPU-s",
      flush=True,
    )
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--parts",
    default="warp,encoder,decoder,train",
    help="warp,encoder,decoder,train,eval; layers (or deconv1..deconv5): each transposed "
    "convolution of the decoder alone, forward and gradients",
  )
  p.add_argument("--variants", default="convT+whole,base")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=32, help="global batch")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32")
  a = p.parse_args(argv)
  if argv is None:  # run as a program: may restart it with huge pages (vmsjax/hostmem.py)
    benchmark.hostmem.reexec_with_huge_pages()
  print(
    f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {a.batch}, {a.size}px, "
    f"huge pages: {benchmark.hostmem.status()}"
  )
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
