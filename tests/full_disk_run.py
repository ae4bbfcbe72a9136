"""Runs a tiny training into a workdir on a small filesystem that fills up (ENOSPC).

  python -m tests.full_disk_run PHASE WORKDIR OUT --config.data.data_dir=D

WORKDIR must lie on a small filesystem of its own (tests/test_full_disk.py mounts a
tmpfs in a user namespace and runs the phases one after another, each in a process of
its own as a user's reruns would be), with the real disk filling each time:

  save     the disk fills after step 5; the save at step 8 fails
  metrics  rerun, logging every 2 steps; the disk fills after step 5; writing step 6 fails
  start    the disk is full before the run starts; the workdir probe fails
  resume   space is freed; the run resumes and finishes

Prints {phase: message or null} as JSON; `resume` copies WORKDIR to OUT (which the test
reads once the filesystem is gone).
"""

import json
import shutil
import sys
from pathlib import Path

from tests.killed_run import fill, fill_after
from vmsjax import config as config_lib
from vmsjax import train
from vmsjax.errors import VMSError


def main(argv: list[str]) -> None:
  phase, work, out = argv[0], Path(argv[1]), Path(argv[2])
  overrides = [a[len("--config.") :] for a in argv[3:]]
  filler = Path(str(work) + ".filler")

  def config(**extra):
    c = config_lib.load(str(config_lib.REPO_ROOT / "configs" / "synthetic.py") + ":tiny")
    config_lib.override(c, overrides + [f"{k}={v}" for k, v in extra.items()])
    return c

  said = {}
  try:
    if phase == "save":
      train.train_and_evaluate(config(**{"log.every_steps": 100}), work, [fill_after(5, work)])
    elif phase == "metrics":
      train.train_and_evaluate(config(**{"log.every_steps": 2}), work, [fill_after(5, work)])
    elif phase == "start":
      fill(filler)
      try:
        train.train_and_evaluate(config(), work)
      finally:
        said["probes_left"] = sorted(p.name for p in work.glob(".write_test*"))
    else:
      train.train_and_evaluate(config(), work)
      shutil.copytree(work, out)
    said[phase] = None
  except VMSError as e:
    said[phase] = " ".join(str(e).split())
  finally:
    filler.unlink(missing_ok=True)  # free the space for the next phase
  print(json.dumps(said), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
