"""Throughput of the VMS-VAE's phases on whatever devices JAX sees, against a matmul ceiling.

One run measures, at the paper's shapes (configs/vischema.py:m32: 224x224, n=128, m=32,
decoder 256-128-64-32, augmentation on, batch 32 per device) with a random frozen trunk,
everything built by `vmsjax.factory.build` as `vmsjax train` builds it (the decoder form
and the trunk's micro-batches are `vmsjax.tuning`'s choices for the backend):

  matmul   the device's own dense matmul rate: the ceiling the other phases are compared to
  encoder  VGG-16 trunk forward (`pixels.encode`) on images already at model size
  train    the real training step (`step.jit_step`, a group of one, on pixels):
           augmentation warp, trunk, head + decoder fwd/bwd, Adam
  head     the head + decoder update alone (`step.head_step` vmapped over a group of
           one) on random trunk-shaped features ((7, 7, 512) per image) and maps
  eval     prediction: resize, trunk, decoder with z = mu, sigmoid (what `predict` runs)

For each phase and compute dtype it prints a table and writes a JSON list of records
(`--out`): images/s, FLOP/s, the ratio to the matmul ceiling of that dtype, compile time
and memory. Warm-up (compilation and one call) is excluded; each figure is the median of
`--repeats` timings of `--iters` back-to-back calls on device-resident inputs (host input
transfer and the data pipeline are not measured). `cpu_seconds_per_call` is the process's
CPU time per call (all threads): on a shared host it is steadier than the wall time.

FLOPs. `flops` counts the multiply-adds of the convolutions and dense layers (2 per MAC;
a backward pass costs two forward passes for layers whose input gradient is needed, one
otherwise; transposed convolutions count only their useful MACs; the augmentation warp,
norms and pointwise ops are not counted). `flops_xla` is XLA's `cost_analysis()` summed
over devices: it also counts elementwise work, and only the kernel taps that fall inside
the (unpadded, undilated) input; at 224x224 it was within 4% of `flops` for every phase.
It is None where a loop holds convolutions (the cost model counts a loop's body once): on
CPU the trunk runs in `lax.map` micro-batches, so the encoder, train and eval phases
there have none. `gflops_per_s` and `ceiling_ratio` use `flops` (model FLOP utilisation).
The VGG-16 trunk is about 30.7 GFLOP per 224x224 image forward.

Memory. `xla_memory_bytes` is the compiled program's argument + output + temporary
buffers (`memory_analysis()`, per device). `peak_memory_bytes` is the device's
`peak_bytes_in_use` where it reports one (GPU), else the process's maximum resident set
size; both are peaks since the process started, so later phases include earlier ones.

It imports the installed vmsjax and needs only its compute dependencies (jax, flax,
optax, orbax-checkpoint, ml-collections, numpy), never grain or tensorflow-datasets (the
lent GPU machines carry ml-collections as a wheel). From a checkout without installing
vmsjax, put the checkout on the path (first line):

  PYTHONPATH=. python experiments/benchmark.py --out bench_gpu.json
  python experiments/benchmark.py --out bench_cpu.json   # CPU figures: docs/benchmarks.md
  python experiments/benchmark.py --phases train,head --repeats 5 --out train.json
  python experiments/benchmark.py --size 32 --batch 4 --repeats 1 --iters 1 --out tiny.json
XLA flags go in the environment (`XLA_FLAGS=--xla_force_host_platform_device_count=4`);
each record keeps the effective value.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vmsjax import VMSError, factory, hostmem, inference, pixels, step
from vmsjax import config as config_lib
from vmsjax.models import vgg16

PHASES: tuple[str, ...] = ("matmul", "encoder", "train", "head", "eval")
REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: configs/ is read here
PAPER_CONFIG = f"{REPO_ROOT / 'configs' / 'vischema.py'}:m32"


def make_config(size: int, dtype: str):
  """configs/vischema.py:m32 with a random frozen trunk, at `size` x `size` in `dtype`."""
  c = config_lib.load(PAPER_CONFIG)
  c.model.encoder.allow_random = True  # no ImageNet weights needed to time the step
  c.model.dtype = dtype
  c.data.image_size = size
  return c


# --------------------------------------------------------------------------- FLOP counts


def vgg16_forward_flops(size: int) -> int:
  """Multiply-add FLOPs (2 per MAC) of the VGG-16 trunk's convolutions for one image."""
  flops, hw, c_in = 0, size, 3
  for _, n_conv, c_out in vgg16.BLOCKS:
    for _ in range(n_conv):
      flops += 2 * hw * hw * 9 * c_in * c_out
      c_in = c_out
    hw //= 2
  return flops


def head_decoder_layers(config) -> list[tuple[str, int]]:
  """(layer name, forward FLOPs for one image) of the trainable layers, in order."""
  m, s = config.model, config.data.image_size // 32
  layers = [
    ("head/dense", 2 * s * s * vgg16.FEATURES * m.dense),
    ("head/mu", 2 * m.dense * m.latent),
    ("head/logvar", 2 * m.dense * m.latent),
    ("decoder/dense", 2 * m.latent * s * s * m.decoder_channels[0]),
  ]
  widths = list(m.decoder_channels) + [2]
  c_in, hw = widths[0], s
  for i, c_out in enumerate(widths):
    # A stride-2 transposed convolution: every input pixel meets k*k kernel taps.
    layers.append((f"decoder/deconv{i + 1}", 2 * hw * hw * m.kernel**2 * c_in * c_out))
    c_in, hw = c_out, hw * 2
  return layers


def analytic_flops(phase: str, config, batch: int) -> int:
  """Model FLOPs of one call of `phase` on `batch` images (see the module docstring)."""
  enc = vgg16_forward_flops(config.data.image_size)
  layers = head_decoder_layers(config)
  fwd = sum(f for _, f in layers)
  # Backward: weight gradient for every layer, input gradient for every layer but the
  # first (the trunk features are constants).
  train_head = fwd + sum(2 * f if name != "head/dense" else f for name, f in layers)
  per_image = {"encoder": enc, "train": enc + train_head, "head": train_head, "eval": enc + fwd}
  return per_image[phase] * batch


def xla_flops(compiled) -> float | None:
  """Total FLOPs XLA's cost model gives a compiled executable, over all devices.

  None where a loop holds convolutions: the cost model counts a loop's body once, not
  once per trip (the trunk runs in `lax.map` micro-batches on CPU, see `pixels.encode`).
  """
  try:
    if _convolutions_in_loops(compiled.as_text()):
      return None
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  # The cost of an SPMD-partitioned executable is that of one device's program.
  return float(cost["flops"]) * jax.device_count()


def _convolutions_in_loops(hlo: str) -> bool:
  """Whether a `while` body of this HLO module (or what it calls) has a convolution."""
  bodies: dict[str, str] = {}
  name = None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      name = head.group(1)
      bodies[name] = ""
    elif name is not None:
      bodies[name] += line + "\n"
  todo = re.findall(r"\bwhile\(.*?\bbody=%?([\w.\-]+)", hlo)
  seen: set[str] = set()
  while todo:
    comp = todo.pop()
    if comp in seen or comp not in bodies:
      continue
    seen.add(comp)
    if "convolution(" in bodies[comp]:
      return True
    todo += re.findall(r"(?:calls|body|to_apply|condition)=%?([\w.\-]+)", bodies[comp])
  return False


def xla_memory(compiled) -> int | None:
  """Argument + output + temporary bytes of one device's compiled program."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    m = None
  if m is None:
    return None
  return int(
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )


def peak_memory() -> tuple[int, str]:
  """(bytes, source): the device's peak_bytes_in_use if it has one, else the max RSS."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use (device 0)"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss * (1 if sys.platform == "darwin" else 1024)), "process max RSS"


def time_calls(
  call: Callable[[], Any], repeats: int, iters: int
) -> tuple[list[float], list[float]]:
  """(wall, cpu): seconds per call, one figure per repeat, in wall-clock time and in this
  process's CPU time (all threads). `call` must block until its result is done."""
  wall, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
      call()
    wall.append((time.perf_counter() - t0) / iters)
    cpu.append((time.process_time() - c0) / iters)
  return wall, cpu


class Phases:
  """The jitted function and inputs of each model phase for one config: `<phase>_fn()`
  gives (jitted function, its arguments, whether it donates argument 0: a train state).

  Args:
    config: the run's config (`make_config`).
    batch_per_device: images per device per call.
    setup: what the phases run (default: `factory.build(config)`, as `vmsjax train`).
  Attribute `micro_batch`: the encoder phase's `pixels.encode` micro-batch (None: its own).
  """

  def __init__(self, config, batch_per_device: int, setup: factory.Setup | None = None):
    self.config, self.micro_batch = config, None
    self.setup = factory.build(config) if setup is None else setup
    self.aux = {"encoder": self.setup.enc_params}  # the step's, for pixels sent by the host
    self.batch = batch_per_device * jax.device_count()
    rng, s, split = np.random.default_rng(0), config.data.image_size, self.setup.split
    self.images = jax.device_put(rng.integers(0, 256, (self.batch, s, s, 3), np.uint8), split)
    self.vms = jax.device_put(rng.random((self.batch, s, s, 2), dtype=np.float32), split)
    stack = lambda tree: jax.tree.map(lambda x: x[None], tree)  # noqa: E731
    self._stack = jax.jit(stack, out_shardings=self.setup.repl)

  def fresh_state(self) -> factory.TrainState:
    """A fresh replicated state from `config.seed`."""
    return self.setup.init(self.config.seed)

  def group(self) -> tuple[factory.TrainState, Any]:
    """(states, members) of a group of one: a fresh state stacked on a leading axis
    G = 1, and the step's `members` argument (`step.members`), replicated."""
    members = jax.device_put(step.members([self.config]), self.setup.repl)
    return self._stack(self.fresh_state()), members

  def encoder_fn(self):
    """Trunk features of float images already at model size."""
    config, setup, micro = self.config, self.setup, self.micro_batch
    fn = jax.jit(
      lambda p, x: pixels.encode(config, setup.encoder, p, x, micro_batch=micro),
      in_shardings=(setup.repl, setup.split),
      out_shardings=setup.split,
    )
    images = jax.device_put(self.images.astype(jnp.float32), setup.split)
    return fn, (setup.enc_params, images), False

  def train_fn(self):
    """The real training step on pixels sent by the host, a group of one."""
    fn = step.jit_step(self.config, self.setup, 1)
    states, members = self.group()
    return fn, (states, self.aux, {"image": self.images, "vms": self.vms}, members), True

  def head_fn(self):
    """`step.head_step` vmapped over a group of one on random trunk-shaped features."""
    config, setup = self.config, self.setup
    fh, fw = factory.feature_hw(config)
    feats = np.random.default_rng(1).standard_normal((self.batch, fh, fw, 512), np.float32)
    feats = jax.device_put(feats, setup.split)  # (B, 7, 7, 512) at 224

    def head(states, feats, vms, group):
      def one(state, key_data, hyper):
        _, k_latent = step.step_keys(jax.random.wrap_key_data(key_data), state.step)
        return step.head_step(config, setup.model, state, feats, vms, k_latent, hyper)

      return jax.vmap(one)(states, group["key"], group["hyper"])

    fn = jax.jit(
      head,
      in_shardings=(setup.repl, setup.split, setup.split, setup.repl),
      out_shardings=(setup.repl, setup.repl),
      donate_argnums=(0,),
    )
    states, members = self.group()
    return fn, (states, feats, self.vms, members), True

  def eval_fn(self):
    """The function `vmsjax.inference.predict` runs on each batch."""
    s = self.setup
    trained = inference.Trained(
      Path("."), self.config, 0, self.fresh_state(), s.enc_params, s.model, s.encoder, s.mesh
    )
    return inference._compiled(trained, "maps"), (trained.state, s.enc_params, self.images), False


def compiled_call(fn, args: tuple, donates: bool) -> tuple[Callable[[], None], Any, float]:
  """(call, compiled, compile seconds) of `fn` (a jax.jit object) at `args`, warmed up:
  `call()` runs it once and blocks; a donated state (argument 0) is threaded through."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": args[0]}

  def call():
    if donates:
      holder["state"], metrics = compiled(holder["state"], *args[1:])
      jax.block_until_ready((holder["state"], metrics))
    else:
      jax.block_until_ready(compiled(*args))

  call()  # warm-up
  return call, compiled, compile_s


def phase_call(phases: Phases, phase: str) -> tuple[Callable[[], None], Any, float]:
  """`compiled_call` of one model phase of `phases`."""
  return compiled_call(*getattr(phases, f"{phase}_fn")())


def measure(fn, args: tuple, donates: bool, repeats: int, iters: int) -> dict:
  """Compiles, warms up and times `fn` at `args`: the timing and XLA fields of a record."""
  call, compiled, compile_s = compiled_call(fn, args, donates)
  seconds, cpu = time_calls(call, repeats, iters)
  peak, source = peak_memory()
  return {
    "seconds_per_call": statistics.median(seconds),
    "seconds_all": seconds,
    "cpu_seconds_per_call": statistics.median(cpu),
    "flops_source": "analytic",
    "flops_xla": xla_flops(compiled),
    "compile_s": compile_s,
    "xla_memory_bytes": xla_memory(compiled),
    "peak_memory_bytes": peak,
    "memory_source": source,
  }


def run_phase(phases: Phases, phase: str, repeats: int, iters: int) -> dict:
  """One model phase's record (no ceiling yet)."""
  fn, args, donates = getattr(phases, f"{phase}_fn")()
  rec = dict(phase=phase, batch=phases.batch, **measure(fn, args, donates, repeats, iters))
  rec["images_per_s"] = phases.batch / rec["seconds_per_call"]
  return dict(rec, flops=analytic_flops(phase, phases.config, phases.batch))


def run_matmul(n: int, dtype: str, repeats: int, iters: int) -> dict:
  """One (n, n) @ (n, n) matmul per device at once; its FLOP rate is the ceiling."""
  _, split = factory.shardings(factory.data_mesh())
  d, rng = jax.device_count(), np.random.default_rng(0)
  dt = jnp.dtype(dtype)  # numpy alone does not know "bfloat16"
  a = jax.device_put(rng.standard_normal((d, n, n), np.float32).astype(dt), split)
  b = jax.device_put(rng.standard_normal((d, n, n), np.float32).astype(dt), split)
  fn = jax.jit(
    lambda x, y: jnp.einsum("bij,bjk->bik", x, y), in_shardings=(split, split), out_shardings=split
  )
  rec = {"phase": "matmul", "batch": None, "matmul_n": n, "images_per_s": None}
  return dict(rec, flops=2 * d * n**3, **measure(fn, (a, b), False, repeats, iters))


# --------------------------------------------------------------------------- driver


def device_description() -> dict:
  dev = jax.devices()[0]
  return {
    "device": dev.device_kind,
    "platform": dev.platform,
    "devices": jax.device_count(),
    "host_cpus": os.cpu_count(),
    "host_cpu_model": _cpu_model(),
    "jax": jax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "matmul_precision": str(jax.config.jax_default_matmul_precision),
    "python": platform.python_version(),
  }


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[dict]:
  """Runs `args.phases` in each of `args.dtypes` (`parse_args`, `main` fills in the
  defaults); returns the records (see the module docstring)."""
  common = dict(device_description(), huge_pages=hostmem.status())
  records = []
  for dtype in args.dtypes:
    ceiling, recs = None, []
    if "matmul" in args.phases:
      log(f"[{dtype}] matmul {args.matmul_n}^3 per device ...")
      rec = run_matmul(args.matmul_n, dtype, args.repeats, max(args.iters, 3))
      ceiling = rec["flops"] / rec["seconds_per_call"] / 1e9
      recs.append(dict(rec, image_size=None, batch_per_device=None))
    model_phases = [p for p in args.phases if p != "matmul"]
    if model_phases:
      ph = Phases(make_config(args.size, dtype), args.batch)
      for phase in model_phases:
        log(f"[{dtype}] {phase} at {args.size}x{args.size}, batch {ph.batch} ...")
        rec = run_phase(ph, phase, args.repeats, args.iters)
        recs.append(dict(rec, image_size=args.size, batch_per_device=args.batch))
    for rec in recs:
      s = rec["seconds_per_call"]
      rec["dtype"] = dtype
      rec["gflops_per_s"] = rec["flops"] / s / 1e9
      rec["gflops_per_s_xla"] = rec["flops_xla"] / s / 1e9 if rec["flops_xla"] else None
      rec["ceiling_gflops_per_s"] = ceiling
      rec["ceiling_ratio"] = rec["gflops_per_s"] / ceiling if ceiling else None
      records.append(dict(rec, **common))
  return records


def format_table(records: Sequence[dict]) -> str:
  head = (
    f"{'phase':8} {'dtype':9} {'batch':>5} {'img/s':>8} {'ms/call':>9} {'GFLOP/s':>8} "
    f"{'XLA GF/s':>8} {'ceiling':>7} {'CPU s':>6} {'compile':>7} {'XLA MB':>7} {'peak MB':>8}"
  )
  lines = [head, "-" * len(head)]

  def num(v, fmt):
    return format(v, fmt) if v is not None else "-"

  for r in records:
    ratio = f"{100 * r['ceiling_ratio']:.0f}%" if r["ceiling_ratio"] is not None else "-"
    xla_mb = r["xla_memory_bytes"] / 2**20 if r["xla_memory_bytes"] else None
    lines.append(
      f"{r['phase']:8} {r['dtype']:9} {num(r['batch'], 'd'):>5} "
      f"{num(r['images_per_s'], '.1f'):>8} {1e3 * r['seconds_per_call']:9.1f} "
      f"{r['gflops_per_s']:8.1f} {num(r['gflops_per_s_xla'], '.1f'):>8} {ratio:>7} "
      f"{r['cpu_seconds_per_call']:6.2f} "
      f"{r['compile_s']:6.1f}s {num(xla_mb, '.0f'):>7} {r['peak_memory_bytes'] / 2**20:8.0f}"
    )
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line, checked (a bad value exits with status 2, naming it)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", help="write the records as a JSON list to this file")
  p.add_argument("--phases", default=",".join(PHASES), help=f"a subset of {','.join(PHASES)}")
  p.add_argument("--dtypes", default="", help="float32,bfloat16 (default: CPU float32, GPU both)")
  p.add_argument("--size", type=int, default=224, help="image size, a multiple of 32")
  p.add_argument("--batch", type=int, default=32, help="images per device per call")
  p.add_argument("--repeats", type=int, default=5, help="timings; the median is reported")
  p.add_argument("--iters", type=int, default=2, help="back-to-back calls per timing")
  p.add_argument("--matmul-n", type=int, default=0, help="matmul side (CPU 2048, GPU 8192)")
  p.add_argument(
    "--huge-pages",
    choices=hostmem.CHOICES,
    default=None,
    help=f"transparent huge pages for XLA's buffers (vmsjax/hostmem.py), as {hostmem.ENV}; "
    "default: that variable, else auto (on for CPU-only Linux hosts, as the vmsjax command)",
  )
  args = p.parse_args(argv)
  args.phases = [x for x in args.phases.split(",") if x]
  args.dtypes = [x for x in args.dtypes.split(",") if x]
  if unknown := sorted(set(args.phases) - set(PHASES)):
    p.error(f"unknown phase(s) {unknown}; choose from {','.join(PHASES)}")
  if args.size <= 0 or args.size % 32:
    p.error(f"--size {args.size} must be a positive multiple of 32")
  if bad := sorted(set(args.dtypes) - {"float32", "bfloat16"}):
    p.error(f"unknown dtype(s) {bad}; choose float32 and/or bfloat16")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if args.huge_pages:
    os.environ[hostmem.ENV] = args.huge_pages
  if argv is None:  # run as a program: may restart it with huge pages (vmsjax/hostmem.py)
    try:
      hostmem.reexec_with_huge_pages()
    except VMSError as e:  # a bad VMSJAX_HUGE_PAGES
      print(f"benchmark: {e}", file=sys.stderr)
      return 2
  on_cpu = jax.default_backend() == "cpu"
  args.dtypes = args.dtypes or (["float32"] if on_cpu else ["bfloat16", "float32"])
  args.matmul_n = args.matmul_n or (2048 if on_cpu else 8192)
  records = benchmark(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
  desc = records[0] if records else device_description()
  print(
    f"{desc['devices']} x {desc['device']} ({desc['platform']}), host {desc['host_cpu_model']}"
    f" x {desc['host_cpus']} CPUs, jax {desc['jax']}"
  )
  print(format_table(records))
  if args.out:
    Path(args.out).write_text(json.dumps(records, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
