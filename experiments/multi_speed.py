"""Speed of many models per step: N seeds trained together vs one seed alone.

A run alone is a group of one: both sides go through the same code, `vmsjax.step`'s
jitted step of a group of G models (the inputs stage once, the update vmapped over the
members). Two measurements, in one process so that they share the machine's load:

  step  the jitted steps alone: `step.jit_step(config, setup, 1)` against
        `step.jit_step(config, setup, N)` on the same preloaded device batches;
        compilation excluded (`compile_s` has it); rounds alternate alone/group and the
        medians are compared.
  run   end to end, as a user runs it: `train.train_and_evaluate` of seed 0 against
        `train.train_group` of seeds 0..N-1 into fresh workdirs (data loading,
        checkpoints and metrics included; not compilation or the process's one-off
        costs, which an untimed one-step run of each pays first).

By default without the feature cache (`features.cache=off`: each step augments and runs
the frozen trunk once for the whole group), on the synthetic config (64x64, batch 32,
random frozen VGG-16), schedule shortened with --epochs; `--set features.cache=memory`
times the cached step instead.

  python experiments/multi_speed.py --data_dir data --out runs/multi_speed.json

Target: N = 8 together in at most 2.5x the time of one (docs/speed.md has the figures).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from vmsjax import config as config_lib
from vmsjax import factory, hostmem, inputs, records, step
from vmsjax import train as train_lib
from vmsjax.data import catalogue


def machine() -> dict:
  """The CPU model, core count and load, and the JAX devices."""
  model = platform.processor() or ""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        model = line.split(":", 1)[1].strip()
  except OSError:
    pass
  return {
    "cpu": model,
    "cores": os.cpu_count(),
    "load_average": os.getloadavg(),
    "devices": [str(d) for d in jax.devices()],
    "jax": jax.__version__,
  }


def _configs(args) -> list:
  out = []
  for s in range(args.seeds):
    c = config_lib.load(args.config)
    config_lib.override(
      c,
      [
        f"seed={s}",
        f"train.epochs={args.epochs}",
        f"data.data_dir={args.data_dir}",
        "log.progress=false",
        *args.set,
      ],
    )
    config_lib.validate(c)
    out.append(c)
  return out


def _time(fn, repeats: int) -> float:
  t0 = time.perf_counter()
  for _ in range(repeats):
    fn()
  return time.perf_counter() - t0


def step_speed(configs, args) -> dict:
  """Median seconds per step, alone and grouped, on the same preloaded batches."""
  config = configs[0]
  source = inputs.open_training_data(config)
  setup = factory.build(config)
  fingerprint = catalogue.dataset_record(config.data.name, config.data.data_dir)["fingerprint"]
  feed = inputs.open_inputs(config, source, fingerprint, setup)
  reader = feed.reader(0, setup.mesh)
  batches = [reader.take() for _ in range(args.steps)]
  groups = {"alone": configs[:1], "group": configs}
  fns = {k: step.jit_step(config, setup, len(g)) for k, g in groups.items()}
  members = {k: jax.device_put(step.members(g), setup.repl) for k, g in groups.items()}
  stack = jax.jit(
    lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=setup.repl
  )
  box = {k: stack([setup.init(c.seed) for c in g]) for k, g in groups.items()}

  def run(kind: str, todo) -> None:
    for b in todo:
      box[kind], m = fns[kind](box[kind], feed.aux, b, members[kind])
    jax.block_until_ready(m)

  compile_s = {k: _time(lambda k=k: run(k, batches[:1]), 1) for k in groups}
  alone, group = [], []
  for _ in range(args.repeats):
    alone.append(_time(lambda: run("alone", batches), 1) / len(batches))
    group.append(_time(lambda: run("group", batches), 1) / len(batches))
  a, g = statistics.median(alone), statistics.median(group)
  return {
    "phase": "step",
    "models": len(configs),
    "batch": config.train.batch_size,
    "image_size": config.data.image_size,
    "features_cache": config.features.cache,
    "steps_timed": len(batches) * args.repeats,
    "alone_s_per_step": a,
    "group_s_per_step": g,
    "alone_rounds": alone,
    "group_rounds": group,
    "ratio": g / a,
    "compile_s": compile_s,
  }


def run_speed(configs, args) -> dict:
  """Wall seconds of the whole training, alone and grouped, into fresh workdirs.

  One step of each goes first, untimed: it compiles the steps (if the step phase has
  not) and pays the process's one-off costs (the checkpointer, the metric writers, the
  data's first read), which would otherwise all fall on the run alone.
  """
  with tempfile.TemporaryDirectory(prefix="multi_speed_") as tmp:
    tmp = Path(tmp)
    train_lib.train_group(configs[:1], [tmp / "warm_up"], stop_at=1)
    train_lib.train_group(configs, [tmp / f"warm_up{i}" for i in range(len(configs))], stop_at=1)
    t0 = time.perf_counter()
    train_lib.train_and_evaluate(configs[0], tmp / "alone")
    alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_lib.train_group(configs, [tmp / f"seed{i}" for i in range(len(configs))])
    group = time.perf_counter() - t0
  return {
    "phase": "run",
    "models": len(configs),
    "batch": configs[0].train.batch_size,
    "image_size": configs[0].data.image_size,
    "steps": config_lib.total_steps(configs[0]),
    "alone_s": alone,
    "group_s": group,
    "ratio": group / alone,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", default=config_lib.DEFAULT_CONFIG)
  p.add_argument("--data_dir", default="data")
  p.add_argument("--seeds", type=int, default=8, help="models trained together")
  p.add_argument("--epochs", type=int, default=2, help="schedule of the 'run' phase")
  p.add_argument("--steps", type=int, default=10, help="steps per timed round ('step' phase)")
  p.add_argument("--repeats", type=int, default=3, help="timed rounds ('step' phase)")
  p.add_argument("--phases", default="step,run", help="comma-separated: step, run")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--out", default=None, help="write the records as JSON here")
  args = p.parse_args(argv)
  phases = [x for x in args.phases.split(",") if x]
  if unknown := sorted(set(phases) - {"step", "run"}):
    p.error(f"unknown phase(s) {unknown}; choose from step, run")
  if argv is None:  # run as a program: may restart it with huge pages (vmsjax/hostmem.py)
    hostmem.reexec_with_huge_pages()

  configs = _configs(args)
  data = configs[0].data
  if not catalogue.is_built(data.name, data.data_dir):  # before anything is timed
    catalogue.build(data.name, data.data_dir)
  env = machine()
  results = []
  if "step" in phases:
    results.append(step_speed(configs, args))
  if "run" in phases:
    results.append(run_speed(configs, args))
  env["load_average_end"] = os.getloadavg()
  print(f"{env['cpu']}, {env['cores']} cores, {len(env['devices'])} JAX device(s)")
  print(f"load average at start {env['load_average']}, at end {env['load_average_end']}")
  print("| phase | models | alone | together | ratio | per model |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for r in results:
    if r["phase"] == "step":
      a, g, unit = r["alone_s_per_step"], r["group_s_per_step"], "s/step"
    else:
      a, g, unit = r["alone_s"], r["group_s"], f"s ({r['steps']} steps)"
    print(
      f"| {r['phase']} | {r['models']} | {a:.3f} {unit} | {g:.3f} {unit} "
      f"| {r['ratio']:.2f}x | {r['ratio'] / r['models']:.2f}x |"
    )
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    records.write_json(Path(args.out), {"machine": env, "results": results})
    print(f"written to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
