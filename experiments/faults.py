"""Fault injection: N SIGKILLs at random moments over a tiny run, then a check that the
run that was killed and rerun ends bit-identical to one never stopped.

  python experiments/faults.py --kills 20 [--steps 96] [--seed 0] [--out faults.json]

It trains the tiny synthetic config (`configs/synthetic.py:tiny`, `--steps` steps,
a checkpoint every 4) twice with `vmsjax train`, each run a process of its own:

1. straight through, timing it (T seconds);
2. into a second workdir, killed with SIGKILL after a delay drawn uniformly from
   [0, 0.6 T x the fraction of the run left] (start-up, mid-step, mid-save,
   mid-metric-write: wherever it lands), then started again, N times; then run to
   the end. A kill that came after its run had ended shows as return code 0.

It checks that the final train states are bit-identical, that metrics.jsonl holds each
step once with the same losses, and that TensorBoard's reader sees each step once.
Prints a table and writes JSON. The results are in docs/reproducibility.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _command(workdir: Path, data_dir: Path, steps: int) -> list[str]:
  return [
    sys.executable,
    "-m",
    "vmsjax.cli",
    "train",
    "--config",
    "configs/synthetic.py:tiny",
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    f"--config.train.steps_per_epoch={steps}",
    "--config.log.progress=false",
  ]


def _run(cmd: list[str], kill_after: float | None = None) -> tuple[int, float, str]:
  """(return code, seconds, stderr) of a run, SIGKILLed after `kill_after` seconds."""
  start = time.perf_counter()
  with subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True) as proc:
    try:
      _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
      os.kill(proc.pid, signal.SIGKILL)
      _, err = proc.communicate()
  return proc.returncode, time.perf_counter() - start, err


def _final_state(workdir: Path):
  import jax

  from vmsjax import factory, inference
  from vmsjax import workdir as workdir_lib

  config = inference.load_config(workdir)
  setup = factory.build(config)
  mngr = workdir_lib.checkpoint_manager(workdir, config)
  state, _ = workdir_lib.restore(mngr, mngr.latest_step(), setup.init(config.seed))
  mngr.close()
  return jax.device_get(state)


def _logged(workdir: Path) -> list[tuple[int, float]]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def _tensorboard_steps(workdir: Path) -> list[int]:
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(workdir / "tb"))
  acc.Reload()
  return [e.step for e in acc.Scalars("train/loss")]


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=20)
  p.add_argument("--steps", type=int, default=96)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--root", default=None, help="where the runs go (default: a temp folder)")
  p.add_argument("--out", default="faults.json")
  args = p.parse_args(argv)

  import jax
  import numpy as np

  from vmsjax.data import catalogue

  root = Path(args.root or tempfile.mkdtemp(prefix="vmsjax-faults-"))
  data_dir = root / "data"
  if not catalogue.is_built("synthetic", str(data_dir)):
    catalogue.build("synthetic", str(data_dir))
  straight, faulted = root / "straight", root / "faulted"
  code, seconds, err = _run(_command(straight, data_dir, args.steps))
  if code != 0:
    raise SystemExit(f"the straight run failed:\n{err[-2000:]}")

  rng = random.Random(args.seed)
  kills = []
  done = 0
  for _ in range(args.kills):
    # Uniform over (most of) what is left of the run, so that every kill lands before its
    # end: at start-up, mid-step, mid-save or mid-write. The faulted runs find the
    # straight run's compilations in the cache, so they go faster than it did.
    left = max(0.25, 1 - done / args.steps)
    delay = rng.uniform(0, 0.6 * seconds * left)
    code, _, err = _run(_command(faulted, data_dir, args.steps), kill_after=delay)
    done = max([s for s, _ in _logged(faulted)], default=0) if faulted.exists() else 0
    kills.append({"delay_s": round(delay, 2), "return_code": code, "logged_to_step": done})
  code, _, err = _run(_command(faulted, data_dir, args.steps))
  if code != 0:
    raise SystemExit(f"the rerun after the kills failed:\n{err[-2000:]}")

  a, b = _final_state(straight), _final_state(faulted)
  identical = all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )
  steps = list(range(1, args.steps + 1))
  result = {
    "kills": args.kills,
    "killed_by_sigkill": sum(k["return_code"] == -signal.SIGKILL for k in kills),
    "straight_run_s": round(seconds, 1),
    "steps": args.steps,
    "bit_identical": identical,
    "metrics_each_step_once": [s for s, _ in _logged(faulted)] == steps,
    "same_losses": _logged(faulted) == _logged(straight),
    "tensorboard_each_step_once": _tensorboard_steps(faulted) == steps,
    "each_kill": kills,
  }
  print(f"{'kill':>4} {'after s':>8} {'rc':>4} {'logged to':>9}")
  for i, k in enumerate(kills, 1):
    print(f"{i:>4} {k['delay_s']:>8.2f} {k['return_code']:>4} {k['logged_to_step']:>9}")
  for key in (
    "bit_identical",
    "metrics_each_step_once",
    "same_losses",
    "tensorboard_each_step_once",
  ):
    print(f"{key}: {result[key]}")
  Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(f"killed by SIGKILL: {result['killed_by_sigkill']} of {args.kills}")
  ok = all(result[k] for k in ("bit_identical", "metrics_each_step_once", "same_losses"))
  if not ok or not result["tensorboard_each_step_once"]:
    raise SystemExit("FAILED: the faulted run does not match the straight one")
  return result


if __name__ == "__main__":
  main()
