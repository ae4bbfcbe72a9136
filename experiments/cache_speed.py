"""Feature cache: wall time and rho2D(all) of a small sweep, with and without the cache.

The sweep is the paper's three Table 1 model shapes (configs/vischema.py m32, m8,
m8_l1: dense / latent / reconstruction) on the synthetic dataset at 64x64 with the
synthetic schedule (configs/synthetic.py). Uncached, every run recomputes the frozen
VGG-16 features at every step; cached (`features.cache=memory`, K views), the sweep
builds one cache (timed on its own) and the three runs share it. Each run is then
evaluated on the synthetic test split.

  python experiments/cache_speed.py --data_dir data --out runs/cache_speed.json
  python experiments/cache_speed.py --epochs 10 ...   # shortened schedule (say so)
  python experiments/cache_speed.py --precision ...   # also m32 cached in bfloat16

Prints a Markdown table; --out writes everything as JSON, including per-step times
and a projection of both sweeps to the full schedule (build + 3 x steps x s/step).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODELS = {
  "m32": dict(dense=128, latent=32, reconstruction="bce"),
  "m8": dict(dense=64, latent=8, reconstruction="bce"),
  "m8_l1": dict(dense=64, latent=8, reconstruction="l1"),
}


def _config(args, model: str, mode: str, dtype: str = "float32"):
  from vmsjax import config as config_lib

  spec = MODELS[model]
  c = config_lib.load(str(config_lib.REPO_ROOT / "configs" / "synthetic.py"))
  over = [
    f"data.data_dir={args.data_dir}",
    f"model.dense={spec['dense']}",
    f"model.latent={spec['latent']}",
    f"loss.reconstruction={spec['reconstruction']}",
    f"model.dtype={dtype}",
    f"features.cache={mode}",
    f"features.views={args.views}",
    f"features.cache_dir={args.workroot / 'feature_cache'}",
    "log.progress=false",
  ]
  if args.epochs:
    over.append(f"train.epochs={args.epochs}")
  config_lib.override(c, over)
  config_lib.validate(c)
  return c


def _seconds_per_step(workdir: Path) -> float:
  """Steady-state seconds a step, from metrics.jsonl times (first logged block skipped:
  it holds the compilation); NaN with fewer than three logged blocks."""
  every = json.loads((workdir / "config.json").read_text())["log"]["every_steps"]
  recs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  recs = [r for r in recs if r.get("split") == "train"]
  # A block's records are written together once its last step is done: time the blocks'
  # last records (each record has its own write time, microseconds apart in a block).
  flushes = [(r["step"], r["time"]) for r in recs if r["step"] % every == 0]
  if len(flushes) < 3:
    return float("nan")
  (s0, t0), (s1, t1) = flushes[0], flushes[-1]
  return (t1 - t0) / (s1 - s0)


def _run(args, model: str, mode: str, dtype: str = "float32") -> dict:
  from vmsjax import evaluate, train

  name = f"{model}-{mode}-{dtype}"
  workdir = args.workroot / name
  shutil.rmtree(workdir, ignore_errors=True)
  config = _config(args, model, mode, dtype)
  t0 = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - t0
  report = evaluate.evaluate(workdir)
  row = {
    "model": model,
    "cache": mode,
    "dtype": dtype,
    "steps": int(config.train.epochs * config.train.steps_per_epoch),
    "train_wall_s": wall,
    "s_per_step": _seconds_per_step(workdir),
    "rho2d": {ch: report["model"][ch]["rho2d"] for ch in ("true", "false", "all")},
    "mse": {ch: report["model"][ch]["mse"] for ch in ("true", "false", "all")},
  }
  print(
    f"  {name}: train {wall:.1f} s, {row['s_per_step']:.3f} s/step, "
    f"rho2D(all) {row['rho2d']['all']:.3f}",
    file=sys.stderr,
    flush=True,
  )
  return row


def _build(args, dtype: str = "float32") -> float:
  """Builds the shared cache on its own; returns its wall time."""
  import jax

  from vmsjax import cache, factory
  from vmsjax.data import catalogue

  config = _config(args, "m32", "memory", dtype)
  source = catalogue.open_split(config.data.name, "train", config.data.data_dir)
  t0 = time.perf_counter()
  fingerprint = catalogue.dataset_record(config.data.name, config.data.data_dir)["fingerprint"]
  enc = jax.device_put(factory.encoder_params(config))
  fc = cache.open_or_build(config, source, fingerprint, enc)
  wall = time.perf_counter() - t0
  size = sum(p.stat().st_size for p in fc.path.iterdir())
  print(f"  cache {fc.path.name} ({dtype}): {wall:.1f} s, {size / 2**20:.0f} MiB", file=sys.stderr)
  return wall


def _machine() -> dict:
  import jax

  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
  except (OSError, StopIteration):
    model = platform.processor()
  import os

  return {"cpu": model, "cores": os.cpu_count(), "jax_devices": str(jax.devices())}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", default="data")
  p.add_argument("--workroot", type=Path, default=Path("runs/cache_speed"))
  p.add_argument("--out", type=Path, default=None)
  p.add_argument("--epochs", type=int, default=0, help="shorten the schedule (0: synthetic's)")
  p.add_argument("--views", type=int, default=8)
  p.add_argument("--models", default="m32,m8,m8_l1")
  p.add_argument("--modes", default="off,memory", help="off (uncached) and/or memory / disk")
  p.add_argument("--precision", action="store_true", help="also run m32 cached in bfloat16")
  p.add_argument(
    "--reuse_cache", action="store_true", help="keep a cache already in --workroot (build ~0 s)"
  )
  args = p.parse_args(argv)
  args.data_dir = str(Path(args.data_dir).absolute())
  args.workroot = args.workroot.absolute()
  if not args.reuse_cache:
    shutil.rmtree(args.workroot / "feature_cache", ignore_errors=True)  # time a fresh build
  args.workroot.mkdir(parents=True, exist_ok=True)

  from vmsjax.data import catalogue

  if not catalogue.is_built("synthetic", args.data_dir):
    catalogue.build("synthetic", args.data_dir)
  models = args.models.split(",")
  rows, builds = [], {}
  for mode in args.modes.split(","):
    print(f"sweep, cache={mode}", file=sys.stderr)
    if mode != "off":
      builds["float32"] = _build(args)
    rows += [_run(args, m, mode) for m in models]
  if args.precision:
    builds["bfloat16"] = _build(args, "bfloat16")
    rows.append(_run(args, "m32", "memory", "bfloat16"))

  sweeps = {}
  for mode in args.modes.split(","):
    mine = [r for r in rows if r["cache"] == mode and r["dtype"] == "float32"]
    build = builds.get("float32", 0.0) if mode != "off" else 0.0
    full = 800  # the synthetic schedule's steps
    sweeps[mode] = {
      "build_s": build,
      "wall_s": build + sum(r["train_wall_s"] for r in mine),
      "projected_full_schedule_s": build + sum(full * r["s_per_step"] for r in mine),
      "mean_rho2d_all": sum(r["rho2d"]["all"] for r in mine) / len(mine),
    }
  result = {"machine": _machine(), "args": vars(args), "runs": rows, "sweeps": sweeps}

  lines = [
    "| model | cache | dtype | steps | train wall (s) | s/step | rho2D true | false | all |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in rows:
    rho = r["rho2d"]
    lines.append(
      f"| {r['model']} | {r['cache']} | {r['dtype']} | {r['steps']} | {r['train_wall_s']:.1f} "
      f"| {r['s_per_step']:.3f} | {rho['true']:.3f} | {rho['false']:.3f} | {rho['all']:.3f} |"
    )
  lines += [
    "",
    "| sweep | cache build (s) | wall (s) | projected 800 steps (s) | mean rho2D(all) |",
    "| --- | ---: | ---: | ---: | ---: |",
  ]
  for mode, s in sweeps.items():
    lines.append(
      f"| {mode} | {s['build_s']:.1f} | {s['wall_s']:.1f} | {s['projected_full_schedule_s']:.0f} "
      f"| {s['mean_rho2d_all']:.3f} |"
    )
  print("\n".join(lines))
  print(json.dumps(builds))
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
