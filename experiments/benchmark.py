"""Throughput of the VMS-VAE's phases on whatever devices JAX sees, against a matmul ceiling.

One run measures, at the paper's shapes (configs/vischema.py:m32: 224x224, n=128, m=32,
decoder 256-128-64-32, augmentation on, batch 32 per device) with a random frozen trunk:

  matmul   the device's own dense matmul rate: the ceiling the other phases are compared to
  encoder  VGG-16 trunk forward (preprocess + 13 convs) on images already at model size
  train    the full training step: augmentation warp, trunk, head + decoder fwd/bwd, Adam
  head     the head + decoder step alone on cached trunk features ((7, 7, 512) per image)
  eval     prediction: resize, trunk, decoder with z = mu, sigmoid (what `predict` runs)

For each phase and compute dtype it prints a table and writes a JSON list of records
(`--out`): images/s, FLOP/s, the ratio to the matmul ceiling of that dtype, compile time
and memory. Warm-up (compilation and one call) is excluded; each figure is the median of
`--repeats` timings of `--iters` back-to-back calls on device-resident inputs (host input
transfer and the data pipeline are not measured). `cpu_seconds_per_call` is the process's
CPU time per call (all threads): on a shared host it is steadier than the wall time, and
on an idle host wall ~= CPU time / cores when every core is busy.

FLOPs. `flops_analytic` counts the multiply-adds of the convolutions and dense layers (2
per MAC; a backward pass costs two forward passes for layers whose input gradient is
needed, one otherwise; transposed convolutions count only their useful MACs, not the
zeros of the dilated input; the augmentation warp, norms and pointwise ops are not
counted). `flops_xla` is XLA's `cost_analysis()` of the compiled executable, summed over
devices: it also counts elementwise work, and only the kernel taps that fall inside the
(unpadded, undilated) input; at 224x224 it was within 4% of the analytic count for every
phase. It is None (and so is `gflops_per_s_xla`) where a loop holds convolutions, since
the cost model counts a loop's body once: on CPU the trunk runs in `lax.map`
micro-batches, so the encoder, train and eval phases there have none. `gflops_per_s` and
`ceiling_ratio` use the analytic count (model FLOP utilisation); `gflops_per_s_xla` is
given beside it. The VGG-16 trunk is about 30.7 GFLOP per 224x224 image forward.

Memory. `xla_memory_bytes` is the compiled step's argument + output + temporary buffers
(from `memory_analysis()`, per device). `peak_memory_bytes` is the device's
`peak_bytes_in_use` where it reports one (GPU), else the process's maximum resident set
size; both are peaks since the process started, so later phases include earlier ones.

The script needs jax, flax, optax, orbax-checkpoint and numpy only: `vmsjax.train`
imports ml_collections at module level, and when it is not installed (the lent GPU
machines) the script puts a minimal stand-in for it in `sys.modules` before the import.
It never imports grain or tensorflow-datasets.

Run (CPU figures in docs/benchmarks.md):

  python experiments/benchmark.py --out bench_cpu.json
  python experiments/benchmark.py --phases train,head --repeats 5 --out train.json
  python experiments/benchmark.py --size 32 --batch 4 --repeats 1 --iters 1 --out tiny.json

XLA flags (e.g. `XLA_FLAGS=--xla_force_host_platform_device_count=4`) go in the
environment; the effective value is recorded in each record.
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
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Run from a checkout without installing vmsjax (the lent GPU machines): the repository
# root, where vmsjax/ and configs/ are, goes on the path.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from vmsjax import VMSError, hostmem  # noqa: E402  (standard library only)

PHASES: tuple[str, ...] = ("matmul", "encoder", "train", "head", "eval")
PAPER_CONFIG = "configs/vischema.py:m32"


# --------------------------------------------------------------------------- imports


class _AttrDict(dict):
  """A dict with attribute access: the part of ml_collections.ConfigDict vmsjax reads."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    for k, v in self.items():
      if isinstance(v, dict) and not isinstance(v, _AttrDict):
        self[k] = _AttrDict(v)

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e

  def __setattr__(self, name: str, value: Any) -> None:
    self[name] = value

  def to_dict(self) -> dict:
    return {k: v.to_dict() if isinstance(v, _AttrDict) else v for k, v in self.items()}


def import_train():
  """Imports vmsjax.train, standing in for ml_collections where it is not installed.

  vmsjax.train and vmsjax.config import ml_collections at module level but the
  functions this script calls only read config attributes, so a stand-in module whose
  ConfigDict is an attribute dict is enough to benchmark the real step.

  Returns:
    (vmsjax.train module, whether the stand-in was used).
  """
  try:
    import ml_collections

    stand_in = getattr(ml_collections, "__vmsjax_benchmark_stand_in__", False)
  except ImportError:
    module = types.ModuleType("ml_collections")
    module.ConfigDict = _AttrDict
    module.__vmsjax_benchmark_stand_in__ = True
    sys.modules["ml_collections"] = module
    stand_in = True
  from vmsjax import train

  return train, stand_in


def make_config(size: int, dtype: str):
  """configs/vischema.py:m32 with a random frozen trunk, at `size` x `size` in `dtype`.

  Call `import_train` first: without ml_collections the config is built from the
  stand-in's attribute dicts.
  """
  from vmsjax import config as config_lib

  path, _, arg = PAPER_CONFIG.partition(":")
  c = config_lib.load(f"{REPO_ROOT / path}:{arg}")
  c.model.encoder.allow_random = True  # no ImageNet weights needed to time the step
  c.model.dtype = dtype
  c.data.image_size = size
  return c


# --------------------------------------------------------------------------- FLOP counts


def vgg16_forward_flops(size: int) -> int:
  """Multiply-add FLOPs (2 per MAC) of the VGG-16 trunk's convolutions for one image."""
  from vmsjax.models import vgg16

  flops, hw, c_in = 0, size, 3
  for _, n_conv, c_out in vgg16.BLOCKS:
    for _ in range(n_conv):
      flops += 2 * hw * hw * 9 * c_in * c_out
      c_in = c_out
    hw //= 2
  return flops


def head_decoder_layers(config) -> list[tuple[str, int]]:
  """(layer name, forward FLOPs for one image) of the trainable layers, in order."""
  m = config.model
  s = config.data.image_size // 32
  feats = s * s * 512
  layers = [
    ("head/dense", 2 * feats * m.dense),
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
  per_image = {
    "encoder": enc,
    "train": enc + train_head,
    "head": train_head,
    "eval": enc + fwd,
  }[phase]
  return per_image * batch


def xla_flops(compiled) -> float | None:
  """Total FLOPs XLA's cost model gives a compiled executable, over all devices.

  None where a loop holds convolutions: the cost model counts a loop's body once, not
  once per trip (the trunk runs in `lax.map` micro-batches on CPU, see `train.encode`).
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
    return None
  if m is None:
    return None
  return int(
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )


def peak_memory() -> tuple[int, str]:
  """(bytes, source): the device's peak_bytes_in_use if it has one, else the max RSS."""
  stats = None
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use (device 0)"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss * (1 if sys.platform == "darwin" else 1024)), "process max RSS"


# --------------------------------------------------------------------------- timing


def time_calls(
  call: Callable[[], Any], repeats: int, iters: int
) -> tuple[list[float], list[float]]:
  """(wall, cpu): seconds per call, one figure per repeat, in wall-clock time and in this
  process's CPU time (all threads). `call` must block until its result is done.

  On a shared host the CPU time per call is the steadier figure: other processes lengthen
  the wall time but not the CPU work this process does (to a first order).
  """
  wall, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
      call()
    wall.append((time.perf_counter() - t0) / iters)
    cpu.append((time.process_time() - c0) / iters)
  return wall, cpu


def compile_timed(fn, *args):
  """(compiled, seconds) for `fn` (a jax.jit object) lowered at `args`."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


class Phases:
  """Builds the jitted function and inputs of each phase for one config."""

  def __init__(self, train, config, batch_per_device: int):
    self.train = train
    self.config = config
    self.mesh = train.data_mesh()
    self.repl, self.split = train.shardings(self.mesh)
    self.batch = batch_per_device * jax.device_count()
    self.model = train.make_model(config)
    self.tx = train.make_optimizer(config)
    self.encoder = train.make_encoder(config)
    self.root = jax.random.key(config.seed)
    self.enc_params = jax.device_put(train.encoder_params(config, self.root), self.repl)
    self._state_fn = jax.jit(
      lambda r: train.init_state(config, self.model, self.tx, r), out_shardings=self.repl
    )
    rng = np.random.default_rng(0)
    s = config.data.image_size
    self.images = jax.device_put(
      rng.integers(0, 256, (self.batch, s, s, 3), dtype=np.uint8), self.split
    )
    self.vms = jax.device_put(rng.random((self.batch, s, s, 2), dtype=np.float32), self.split)

  def fresh_state(self):
    return self._state_fn(self.root)

  def encoder_fn(self):
    """(jitted, args): trunk features of float images already at model size."""
    config, encoder, train = self.config, self.encoder, self.train
    fn = jax.jit(
      lambda p, x: train.encode(config, encoder, p, x),
      in_shardings=(self.repl, self.split),
      out_shardings=self.split,
    )
    images = jax.device_put(self.images.astype(jnp.float32), self.split)
    return fn, (self.enc_params, images), False

  def train_fn(self):
    """(jitted, args): the real training step, state donated."""
    fn = self.train.jit_train_step(self.config, self.model, self.tx, self.encoder, self.mesh)
    batch = {"image": self.images, "vms": self.vms}
    return fn, (self.fresh_state(), self.enc_params, batch, self.root), True

  def head_fn(self):
    """(jitted, args): train.head_step on random trunk-shaped features, state donated."""
    train, config, model, tx = self.train, self.config, self.model, self.tx
    fh, fw = train.feature_hw(config)
    feats = jax.device_put(
      np.random.default_rng(1).standard_normal((self.batch, fh, fw, 512), np.float32),
      self.split,
    )  # (B, 7, 7, 512) at 224

    def step(state, feats, vms, root):
      _, k_latent = train.step_keys(root, state.step)
      hyper = train.default_hyper(config, state.step)
      return train.head_step(config, model, tx, state, feats, vms, k_latent, hyper)

    fn = jax.jit(
      step,
      in_shardings=(self.repl, self.split, self.split, self.repl),
      out_shardings=(self.repl, self.repl),
      donate_argnums=(0,),
    )
    return fn, (self.fresh_state(), feats, self.vms, self.root), True

  def eval_fn(self):
    """(jitted, args): the function `vmsjax.inference.predict` runs on each batch."""
    from vmsjax import inference

    trained = inference.Trained(
      workdir=Path("."),
      config=self.config,
      step=0,
      state=self.fresh_state(),
      enc_params=self.enc_params,
      model=self.model,
      encoder=self.encoder,
      mesh=self.mesh,
    )
    fn = inference._compiled(trained, "maps")
    return fn, (trained.state, self.enc_params, self.images), False


def phase_call(phases: Phases, phase: str) -> tuple[Callable[[], None], Any, float]:
  """(call, compiled, compile seconds) of one model phase, compiled and warmed up.

  `call()` runs the phase once on its device-resident inputs and blocks until done; a
  donated state (argument 0) is threaded through the calls.
  """
  fn, args, donates = getattr(phases, f"{phase}_fn")()
  compiled, compile_s = compile_timed(fn, *args)
  if donates:
    holder = {"state": args[0]}

    def call():
      holder["state"], metrics = compiled(holder["state"], *args[1:])
      jax.block_until_ready((holder["state"], metrics))

  else:

    def call():
      jax.block_until_ready(compiled(*args))

  call()  # warm-up
  return call, compiled, compile_s


def run_phase(phases: Phases, phase: str, repeats: int, iters: int) -> dict:
  """Compiles, warms up and times one model phase; returns its record (no ceiling yet)."""
  call, compiled, compile_s = phase_call(phases, phase)
  seconds, cpu = time_calls(call, repeats, iters)
  step_s = statistics.median(seconds)
  batch = phases.batch
  return {
    "phase": phase,
    "batch": batch,
    "images_per_s": batch / step_s,
    "seconds_per_call": step_s,
    "seconds_all": seconds,
    "cpu_seconds_per_call": statistics.median(cpu),
    "flops": analytic_flops(phase, phases.config, batch),
    "flops_source": "analytic",
    "flops_xla": xla_flops(compiled),
    "compile_s": compile_s,
    "xla_memory_bytes": xla_memory(compiled),
  }


def run_matmul(n: int, dtype: str, repeats: int, iters: int) -> dict:
  """One (n, n) @ (n, n) matmul per device at once; its FLOP rate is the ceiling."""
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  split = NamedSharding(mesh, P("data"))
  d = jax.device_count()
  rng = np.random.default_rng(0)
  dt = jnp.dtype(dtype)  # numpy alone does not know "bfloat16"
  a = jax.device_put(rng.standard_normal((d, n, n), np.float32).astype(dt), split)
  b = jax.device_put(rng.standard_normal((d, n, n), np.float32).astype(dt), split)
  fn = jax.jit(
    lambda x, y: jnp.einsum("bij,bjk->bik", x, y), in_shardings=(split, split), out_shardings=split
  )
  compiled, compile_s = compile_timed(fn, a, b)

  def call():
    jax.block_until_ready(compiled(a, b))

  call()
  seconds, cpu = time_calls(call, repeats, iters)
  step_s = statistics.median(seconds)
  return {
    "phase": "matmul",
    "batch": None,
    "matmul_n": n,
    "images_per_s": None,
    "seconds_per_call": step_s,
    "seconds_all": seconds,
    "cpu_seconds_per_call": statistics.median(cpu),
    "flops": 2 * d * n**3,
    "flops_source": "analytic",
    "flops_xla": xla_flops(compiled),
    "compile_s": compile_s,
    "xla_memory_bytes": xla_memory(compiled),
  }


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


def benchmark(
  phases: Sequence[str],
  dtypes: Sequence[str],
  size: int,
  batch_per_device: int,
  repeats: int,
  iters: int,
  matmul_n: int,
  log: Callable[[str], None] = print,
) -> list[dict]:
  """Runs the phases for every dtype; returns the records (see the module docstring)."""
  train, stand_in = import_train()
  common = dict(device_description(), ml_collections_stand_in=stand_in, huge_pages=hostmem.status())
  records = []
  for dtype in dtypes:
    ceiling = None
    if "matmul" in phases:
      log(f"[{dtype}] matmul {matmul_n}^3 per device ...")
      rec = run_matmul(matmul_n, dtype, repeats, max(iters, 3))
      ceiling = rec["flops"] / rec["seconds_per_call"] / 1e9
      records.append(_finish(rec, dtype, ceiling, common, size=None, bpd=None))
    model_phases = [p for p in phases if p != "matmul"]
    if model_phases:
      ph = Phases(train, make_config(size, dtype), batch_per_device)
      for phase in model_phases:
        log(f"[{dtype}] {phase} at {size}x{size}, batch {ph.batch} ...")
        rec = run_phase(ph, phase, repeats, iters)
        records.append(_finish(rec, dtype, ceiling, common, size=size, bpd=batch_per_device))
  return records


def _finish(rec: dict, dtype: str, ceiling: float | None, common: dict, size, bpd) -> dict:
  """Adds dtype, rates, the ceiling ratio, memory and the machine to a record."""
  s = rec["seconds_per_call"]
  rec["dtype"] = dtype
  rec["image_size"] = size
  rec["batch_per_device"] = bpd
  rec["gflops_per_s"] = rec["flops"] / s / 1e9
  rec["gflops_per_s_xla"] = rec["flops_xla"] / s / 1e9 if rec["flops_xla"] else None
  rec["ceiling_gflops_per_s"] = ceiling
  rec["ceiling_ratio"] = rec["gflops_per_s"] / ceiling if ceiling else None
  rec["peak_memory_bytes"], rec["memory_source"] = peak_memory()
  rec.update(common)
  return rec


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
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", help="write the records as a JSON list to this file")
  p.add_argument(
    "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
  )
  p.add_argument(
    "--dtypes",
    default="",
    help="compute dtypes (float32, bfloat16); default float32 on CPU, bfloat16,float32 on GPU",
  )
  p.add_argument("--size", type=int, default=224, help="image size, a multiple of 32")
  p.add_argument("--batch", type=int, default=32, help="images per device per call")
  p.add_argument("--repeats", type=int, default=5, help="timings; the median is reported")
  p.add_argument("--iters", type=int, default=2, help="back-to-back calls per timing")
  p.add_argument(
    "--matmul-n", type=int, default=0, help="matmul side (default 2048 on CPU, 8192 on GPU)"
  )
  p.add_argument(
    "--huge-pages",
    choices=hostmem.CHOICES,
    default=None,
    help=f"transparent huge pages for XLA's buffers (vmsjax/hostmem.py), as {hostmem.ENV}; "
    "default: that variable, else auto (on for CPU-only Linux hosts, as the vmsjax command)",
  )
  return p.parse_args(argv)


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
  phases = [p for p in args.phases.split(",") if p]
  unknown = sorted(set(phases) - set(PHASES))
  if unknown:
    print(f"unknown phase(s) {unknown}; choose from {','.join(PHASES)}", file=sys.stderr)
    return 2
  if args.size <= 0 or args.size % 32:
    print(f"--size {args.size} must be a positive multiple of 32", file=sys.stderr)
    return 2
  on_cpu = jax.default_backend() == "cpu"
  dtypes = [d for d in args.dtypes.split(",") if d] or (
    ["float32"] if on_cpu else ["bfloat16", "float32"]
  )
  bad = sorted(set(dtypes) - {"float32", "bfloat16"})
  if bad:
    print(f"unknown dtype(s) {bad}; choose float32 and/or bfloat16", file=sys.stderr)
    return 2
  matmul_n = args.matmul_n or (2048 if on_cpu else 8192)

  def log(msg):
    print(msg, file=sys.stderr, flush=True)

  records = benchmark(
    phases, dtypes, args.size, args.batch, args.repeats, args.iters, matmul_n, log=log
  )
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
