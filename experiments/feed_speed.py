"""How fast batches reach the step, and what the loop adds around it.

Four measurements, each comparing variants in one run (ratios are what to read):

  input    images/s that the data path alone delivers to a trivial jitted step (the
           maximum of the batch's pixels and maps), at 224x224, batch 32: `device` placement (the
           split in device memory, batch gathered by index) and `host` with 0, 1 and 2
           decoding threads (`data.workers`). Each variant's first batches (compilation,
           reading the split) are left out.
  loop     the whole training loop (`train.train_and_evaluate`) with the real step at
           the paper config (configs/vischema.py:m32 on the synthetic set, random trunk)
           against the bare jitted step on a batch already on the device: images/s of
           each; the gap is what the loop and its inputs cost.
  calls    steps/s of the loop on the tiny synthetic config with `train.steps_per_call`
           1 and 20 (dispatch and per-step host work against one call per 20 steps).
  compile  XLA compilation seconds of a first sweep point, run in a fresh process with an
           empty persistent compilation cache, and of a second point (another seed) in
           another fresh process on that cache, read from JAX's own compile events.

Run (figures: docs/benchmarks.md):

  python experiments/feed_speed.py --data_dir data --out feed.json
  python experiments/feed_speed.py --data_dir data --phases input,calls --out feed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from vmsjax import config as config_lib
from vmsjax import factory, hostmem, inputs, train
from vmsjax import step as step_lib
from vmsjax.data import catalogue

REPO = Path(__file__).resolve().parent.parent
PHASES = ("input", "loop", "calls", "compile")


def paper_config(data_dir: str, **over):
  """configs/vischema.py:m32 on the synthetic set at 224x224, random trunk, no eval."""
  c = config_lib.load(str(REPO / "configs" / "vischema.py") + ":m32")
  over = {
    "data.name": "synthetic",
    "data.data_dir": data_dir,
    "model.encoder.allow_random": True,
    "log.progress": False,
    **over,
  }
  config_lib.override(c, [f"{k}={v}" for k, v in over.items()])
  return c


def tiny_config(data_dir: str, **over):
  c = config_lib.load(str(REPO / "configs" / "synthetic.py") + ":tiny")
  over = {"data.data_dir": data_dir, "log.progress": False, **over}
  config_lib.override(c, [f"{k}={v}" for k, v in over.items()])
  return c


def measure_input(data_dir: str, batches: int) -> list[dict]:
  """Images/s of each input variant into a trivial step."""
  source = catalogue.open_split("synthetic", "train", data_dir)
  out = []
  variants = [
    ("device", 0, ""),
    ("device", 0, "uint8"),
    ("host", 0, ""),
    ("host", 1, ""),
    ("host", 2, ""),
  ]
  for where, workers, maps in variants:
    c = paper_config(data_dir, **{"data.placement": where, "data.workers": workers})
    setup = factory.build(c)
    t0 = time.perf_counter()
    feed = inputs.open_inputs(c, source, "", setup)
    open_s = time.perf_counter() - t0
    if maps == "uint8":  # the synthetic maps quantised as the real datasets store theirs
      feed.aux["vms"] = jnp.round(feed.aux["vms"] * 255).astype(jnp.uint8)

    @jax.jit
    def trivial(aux, batch):
      if "index" in batch:  # the step's own gather, as `inputs.features` does it
        batch = {"image": aux["image"][batch["index"]], "vms": aux["vms"][batch["index"]]}
      # Reads every byte of the batch, computes next to nothing.
      return jnp.max(batch["image"]).astype(jnp.float32) + jnp.max(batch["vms"])

    reader = feed.reader(0, setup.mesh)
    data = {k: v for k, v in feed.aux.items() if k != "encoder"}
    for _ in range(3):  # compile, fill the prefetch buffers
      trivial(data, reader.take()).block_until_ready()
    t0 = time.perf_counter()
    last = None
    for _ in range(batches):
      last = trivial(data, reader.take())
    last.block_until_ready()
    dt = time.perf_counter() - t0
    rate = batches * c.train.batch_size / dt
    stored = feed.aux["vms"].dtype if "vms" in feed.aux else "float32"
    name = f"{where}, {workers} workers, maps {stored}"
    out.append(dict(phase="input", variant=name, images_per_s=rate, open_s=open_s))
    print(f"input {name}: {rate:9.0f} images/s", file=sys.stderr)
  return out


class _Clock:
  """A loop hook: the wall time when each step's call returned."""

  def __init__(self):
    self.at: dict[int, float] = {}

  def __call__(self, step, members) -> None:
    del members
    self.at[step] = time.perf_counter()


def _loop_rate(c, work: Path, first: int, last: int) -> float:
  """Steps/s of the loop between steps `first` and `last` (both log steps: the loop
  reads the loss there, so the device has finished them)."""
  clock = _Clock()
  train.train_and_evaluate(c, work, hooks=[clock])
  return (last - first) / (clock.at[last] - clock.at[first])


def measure_loop(data_dir: str, steps: int, tmp: Path, where: str = "device") -> list[dict]:
  """The whole loop against the bare step, at the paper config. The placement is given:
  `auto` would pick the host for a run this short (it reads less than the split)."""
  log = 2
  c = paper_config(
    data_dir,
    **{
      "train.epochs": 1,
      "train.steps_per_epoch": steps,
      "log.every_steps": log,
      "checkpoint.every_steps": steps,
      "data.placement": where,
      "data.workers": 1 if where == "host" else 0,
    },
  )
  loop_sps = _loop_rate(c, tmp / f"loop_{where}", log, steps - log)  # the last also saves
  setup = factory.build(c)
  source = catalogue.open_split("synthetic", "train", data_dir)
  feed = inputs.open_inputs(c, source, "", setup)
  batch = feed.reader(0, setup.mesh).take()
  states = train._stack([setup.init(c.seed)])
  group = jax.device_put(step_lib.members([c]), setup.repl)
  fn = step_lib.jit_step(c, setup, 1)
  states, metrics = fn(states, feed.aux, batch, group)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(max(3, steps // 2)):
    t0 = time.perf_counter()
    states, metrics = fn(states, feed.aux, batch, group)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_sps = 1.0 / statistics.median(times)
  b = c.train.batch_size
  rec = dict(
    phase="loop",
    variant=f"paper config, {steps} steps, {where}, {c.data.workers} workers",
    loop_images_per_s=loop_sps * b,
    step_images_per_s=step_sps * b,
    loop_over_step=loop_sps / step_sps,
  )
  print(
    f"loop: {rec['loop_images_per_s']:.2f} images/s, bare step "
    f"{rec['step_images_per_s']:.2f} ({rec['loop_over_step']:.3f})",
    file=sys.stderr,
  )
  return [rec]


def measure_calls(data_dir: str, steps: int, tmp: Path) -> list[dict]:
  """Loop steps/s on the tiny config, 1 step per call against 20."""
  out = []
  rates = {}
  for k in (1, 20):
    over = {
      "train.steps_per_epoch": steps + 40,  # timed: steps 20 .. steps + 20
      "train.steps_per_call": k,
      "log.every_steps": 20,
      "checkpoint.every_steps": steps + 40,
    }
    rates[k] = _loop_rate(tiny_config(data_dir, **over), tmp / f"calls{k}", 20, steps + 20)
    out.append(dict(phase="calls", variant=f"steps_per_call={k}", steps_per_s=rates[k]))
    print(f"calls k={k}: {rates[k]:.1f} steps/s", file=sys.stderr)
  out.append(dict(phase="calls", variant="ratio 20 / 1", ratio=rates[20] / rates[1]))
  return out


# Run in a fresh process: trains one tiny point and prints its XLA compile seconds.
_POINT = """
import json, sys
import jax
total = [0.0]
def listen(event, seconds, **kwargs):
  if event == "/jax/core/compile/backend_compile_duration":
    total[0] += seconds
jax.monitoring.register_event_duration_secs_listener(listen)
from vmsjax import config as config_lib, train
c = config_lib.load(sys.argv[1])
config_lib.override(c, sys.argv[3:])
train.train_and_evaluate(c, sys.argv[2])
print(json.dumps({"compile_s": total[0]}))
"""


def measure_compile(data_dir: str, tmp: Path) -> list[dict]:
  """Compile seconds of two sweep points in fresh processes sharing one cache."""
  sweep = tmp / "sweep"
  spec = str(REPO / "configs" / "synthetic.py") + ":tiny"
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  seconds = {}
  for name, seed in (("first", 0), ("second", 1)):
    args = [f"data.data_dir={data_dir}", f"seed={seed}", "log.progress=false"]
    run = subprocess.run(
      [sys.executable, "-c", _POINT, spec, str(sweep / name), *args],
      env=env,
      capture_output=True,
      text=True,
      check=False,
    )
    if run.returncode:
      raise RuntimeError(run.stderr[-2000:])
    seconds[name] = json.loads(run.stdout.strip().splitlines()[-1])["compile_s"]
    print(f"compile {name} point: {seconds[name]:.2f} s", file=sys.stderr)
  return [
    dict(phase="compile", variant="first point (empty cache)", compile_s=seconds["first"]),
    dict(phase="compile", variant="second point (cache)", compile_s=seconds["second"]),
    dict(
      phase="compile", variant="ratio second / first", ratio=seconds["second"] / seconds["first"]
    ),
  ]


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", default="data")
  p.add_argument("--phases", default=",".join(PHASES))
  p.add_argument("--batches", type=int, default=40, help="input phase: batches per variant")
  p.add_argument("--loop_steps", type=int, default=10, help="loop phase: steps at 224x224")
  p.add_argument("--call_steps", type=int, default=200, help="calls phase: timed steps")
  p.add_argument("--out", default=None, help="JSON file to write")
  args = p.parse_args(argv)
  if argv is None:  # run as a program: may restart it with huge pages (vmsjax/hostmem.py)
    hostmem.reexec_with_huge_pages()
  phases = [x for x in args.phases.split(",") if x]
  unknown = set(phases) - set(PHASES)
  if unknown:
    p.error(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
  if not catalogue.is_built("synthetic", args.data_dir):
    catalogue.build("synthetic", args.data_dir)
  records = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    if "input" in phases:
      records += measure_input(args.data_dir, args.batches)
    if "loop" in phases:
      for where in ("device", "host"):
        records += measure_loop(args.data_dir, args.loop_steps, tmp, where)
    if "calls" in phases:
      records += measure_calls(args.data_dir, args.call_steps, tmp)
    if "compile" in phases:
      records += measure_compile(args.data_dir, tmp)
  common = dict(
    backend=jax.default_backend(),
    devices=[d.device_kind for d in jax.devices()],
    cpu_count=os.cpu_count(),
    huge_pages=hostmem.status(),
    jax=jax.__version__,
  )
  records = [dict(r, **common) for r in records]
  print("| phase | variant | figure |\n| --- | --- | ---: |")
  for r in records:
    figure = next(
      f"{r[k]:.3g} {k}"
      for k in ("images_per_s", "loop_over_step", "steps_per_s", "ratio", "compile_s")
      if k in r
    )
    print(f"| {r['phase']} | {r['variant']} | {figure} |")
  if args.out:
    Path(args.out).write_text(json.dumps(records, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
