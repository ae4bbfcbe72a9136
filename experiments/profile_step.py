"""Where the paper-config training step spends its time, part by part, under variants.

Times the parts of the step one by one (augmentation warp, trunk forward, head + decoder
step, whole step, prediction) as vmsjax builds them ("base": `vmsjax.tuning`'s choices
for this backend) and with other choices passed in as arguments, in one process so that
all variants share the machine's load. A variant is "base" or parts joined by "+", at
most one of each kind; a kind left out keeps tuning's choice:

  FORM      the decoder's transposed convolutions in that form of
            `vmsjax.models.conv_transpose.FORMS` (`model.clone(conv_method=FORM)`):
            subpixel, phases, matmul, or lax, flax's `nn.ConvTranspose` (a convolution
            of the input dilated with zeros), as vmsjax had it before 2026-11-26. XLA's
            CPU backend has no fast path for that form's gradients and runs them 10-50x
            slower than an ordinary convolution of the same size. Base:
            `tuning.decoder_form()` (`matmul` on CPU).
  whole     the frozen trunk over the whole batch at once, as before 2026-11-26
            (`pixels.encode(..., micro_batch=B)`).
  chunkN    the trunk over micro-batches of N images (`micro_batch=N`, e.g. chunk2).
            Base: `tuning.encoder_micro_batch` (4 at a time on CPU from 128x128 up).

Which parts a variant changes: encoder the trunk; decoder and layers the form; train and
eval both. Base's train is the real step (`step.jit_step`), its eval the function
`vmsjax.inference.predict` runs; a variant's are the same functions built from its model
(`step.make_step`) or, with a trunk choice, the same steps with `micro_batch` passed to
`pixels.encode` (`variant_step`, `variant_maps`).

Run:

  python experiments/profile_step.py      # warp, encoder, decoder, train; base and before
  python experiments/profile_step.py --batch 32 --parts train,eval,encoder \
      --variants lax+whole,whole,base
  python experiments/profile_step.py --parts decoder,layers \
      --variants lax,subpixel,phases,matmul,base
  XLA_FLAGS=--xla_cpu_use_onednn=true python experiments/profile_step.py --parts encoder

Everything is compiled and warmed up first, then timed in `--repeats` rounds of one call
of every (variant, part) each, so a change in the machine's load hits all variants
alike. Each line gives wall and process-CPU seconds per call (medians over the rounds)
and the best wall time. On a shared machine compare the CPU seconds and the ratios
between variants. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
from collections.abc import Callable, Sequence

import benchmark  # experiments/benchmark.py: the script's own folder is on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from vmsjax import factory, hostmem, pixels, step
from vmsjax.data import augment
from vmsjax.models import conv_transpose

TRUNK_FORM = re.compile(r"whole|chunk([1-9]\d*)")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One variant of the step (see the module docstring).

  Attributes:
    name: as given, e.g. "lax+whole".
    form: the decoder's transposed-convolution form, or None for tuning's.
    trunk: "whole", the micro-batch size N of "chunkN", or None for tuning's.
  """

  name: str
  form: str | None = None
  trunk: str | int | None = None

  def micro_batch(self, batch: int) -> int | None:
    """The `micro_batch` argument of `pixels.encode` for a global batch of `batch`."""
    return batch if self.trunk == "whole" else self.trunk

  @property
  def is_base(self) -> bool:
    return self.form is None and self.trunk is None


def parse_variant(text: str) -> Variant:
  """'lax+whole' -> Variant; a ValueError names an unknown or doubled part."""
  names = [n for n in text.split("+") if n != "base"]
  forms = [n for n in names if n in conv_transpose.FORMS]
  trunks = [m for m in map(TRUNK_FORM.fullmatch, names) if m]
  if not text or len(forms) + len(trunks) != len(names):
    raise ValueError(
      f"unknown variant {text!r}; parts are base, {', '.join(conv_transpose.FORMS)}, whole, chunkN"
    )
  if len(forms) > 1 or len(trunks) > 1:
    raise ValueError(f"variant {text!r}: at most one decoder form and one trunk form")
  trunk = None
  if trunks:
    trunk = int(trunks[0].group(1)) if trunks[0].group(1) else "whole"
  return Variant(text, forms[0] if forms else None, trunk)


def variant_step(config, setup: factory.Setup, micro_batch: int | None):
  """`step.make_step`'s step(states, aux, batch, members) on pixels sent by the host
  (float maps), with the trunk over `micro_batch` images at a time (None:
  `step.make_step` itself). tests/test_benchmark.py checks it traces to make_step's
  program at tuning's micro-batch."""
  if micro_batch is None:
    return step.make_step(config, setup)
  data_root = jax.random.key(factory.data_seed(config))

  def run(states, aux, batch, group):
    k = states.step[0]
    k_augment, _ = step.step_keys(data_root, k)
    image, vms = pixels.augmented_inputs(config, k_augment, batch)
    feats = pixels.encode(config, setup.encoder, aux["encoder"], image, micro_batch=micro_batch)

    def one(state, key_data, hyper):
      _, k_latent = step.step_keys(jax.random.wrap_key_data(key_data), k)
      return step.head_step(config, setup.model, state, feats, vms, k_latent, hyper)

    return jax.vmap(one)(states, group["key"], group["hyper"])

  return run


def variant_maps(config, setup: factory.Setup, micro_batch: int | None):
  """What `vmsjax.inference.predict` computes for a batch of uint8 images, maps(state,
  enc_params, images) -> (maps, mu), with the trunk over `micro_batch` images at a time."""

  def maps(state, enc_params, image):
    ident = augment.identity(image.shape[0])
    resized = augment.warp(image, ident, factory.image_hw(config))
    feats = pixels.encode(config, setup.encoder, enc_params, resized, micro_batch=micro_batch)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits, mu, _ = setup.model.apply(variables, feats, train=False, sample=False)
    return jax.nn.sigmoid(logits), mu

  return maps


class VariantPhases(benchmark.Phases):
  """`benchmark.Phases` built with a variant's decoder form and trunk micro-batches."""

  def __init__(self, config, batch_per_device: int, variant: Variant):
    setup = factory.build(config)
    if variant.form is not None:  # before anything is built from the model
      setup.model = setup.model.clone(conv_method=variant.form)
    super().__init__(config, batch_per_device, setup)
    self.variant = variant
    self.micro_batch = variant.micro_batch(self.batch)

  def train_fn(self):
    """The training step: base's is `step.jit_step`'s; a variant's is jitted here alike
    (`jit_step` keeps one step per config, whatever the model)."""
    if self.variant.is_base:
      return super().train_fn()
    s = self.setup
    fn = jax.jit(
      variant_step(self.config, s, self.micro_batch),
      in_shardings=(s.repl, s.repl, s.split, s.repl),
      out_shardings=(s.repl, s.repl),
      donate_argnums=(0,),
    )
    states, members = self.group()
    return fn, (states, self.aux, {"image": self.images, "vms": self.vms}, members), True

  def eval_fn(self):
    """Prediction: inference's function with the variant's model, or `variant_maps`."""
    if self.micro_batch is None:
      return super().eval_fn()
    s = self.setup
    fn = jax.jit(
      variant_maps(self.config, s, self.micro_batch),
      in_shardings=(s.repl, s.repl, s.split),
      out_shardings=(s.split, s.split),
    )
    return fn, (self.fresh_state(), s.enc_params, self.images), False


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


def layer_fn(ph: benchmark.Phases, layer: str):
  """(jitted, args): one decoder layer's transposed convolution, forward and both
  gradients, at the batch.

  The layer is a `conv_transpose.ConvTranspose` in the form of the phases' model (so
  "lax" times flax's `nn.ConvTranspose` computation), without bias, batch norm or the
  rest of the step.
  """
  (_, shape, c_out), *_ = [x for x in decoder_layers(ph.config) if x[0] == layer]
  k = ph.config.model.kernel
  conv = conv_transpose.ConvTranspose(
    c_out, (k, k), method=ph.setup.model.conv_method, strides=(2, 2), use_bias=False
  )
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((ph.batch, *shape[1:]), np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, shape[-1], c_out), np.float32) * 0.05)
  cot = jnp.asarray(rng.standard_normal((ph.batch, 2 * shape[1], 2 * shape[2], c_out), np.float32))
  fn = jax.jit(
    jax.value_and_grad(
      lambda x, kernel, cot: jnp.vdot(conv.apply({"params": {"kernel": kernel}}, x), cot), (0, 1)
    )
  )
  return fn, (x, kernel, cot)


def part_call(ph: benchmark.Phases, part: str, size: int) -> Callable[[], None]:
  """A compiled, warmed-up call that runs one part once on device-resident inputs."""
  if part.startswith("deconv"):
    fn, args = layer_fn(ph, part)
  elif part == "warp":
    hw = (size, size)
    fn = jax.jit(
      lambda k, i, v: augment.augment(k, i, v, hw, max_shift=0.1, zoom_range=0.1, flip=True)
    )
    args = (jax.random.key(0), ph.images, ph.vms)
  else:
    return benchmark.phase_call(ph, {"decoder": "head"}.get(part, part))[0]

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
  config = benchmark.make_config(size, dtype)
  parsed = [parse_variant(v) for v in variants]  # every name checked before any work
  calls = []
  for variant in parsed:
    ph = VariantPhases(config, batch // jax.device_count(), variant)
    for part in parts:
      names = [n for n, *_ in decoder_layers(config)] if part == "layers" else [part]
      for name in names:
        calls.append((name, variant.name, ph.batch, part_call(ph, name, size)))
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
  p.add_argument("--variants", default="lax+whole,base", help="comma-separated (see above)")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=32, help="global batch")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32")
  a = p.parse_args(argv)
  variants = [x for x in a.variants.split(",") if x]
  try:
    for v in variants:
      parse_variant(v)
  except ValueError as e:
    p.error(str(e))
  if argv is None:  # run as a program: may restart it with huge pages (vmsjax/hostmem.py)
    hostmem.reexec_with_huge_pages()
  print(
    f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {a.batch}, {a.size}px, "
    f"huge pages: {hostmem.status()}"
  )
  profile([x for x in a.parts.split(",") if x], variants, a.size, a.batch, a.repeats, a.dtype)
  return 0


if __name__ == "__main__":
  sys.exit(main())
