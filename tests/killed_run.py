"""A training run with a fault after a given step: the resume tests' faults.

  python -m tests.killed_run STEP [--fill] --config FILE[:ARG] --workdir DIR [--config.a.b=V ...]

It trains as `vmsjax train` does, with a hook installed in the loop. After step STEP:

- by default it waits for the checkpoint writes already under way (so the test knows
  which checkpoint survives), then sends itself a real SIGKILL: no cleanup, no flush,
  like a preempted job;
- with --fill it fills the filesystem that holds the workdir (a file `DIR.filler` beside
  it, written until the disk says ENOSPC), so the run's next metric write or checkpoint
  meets a real full disk. Run it on a small filesystem (tests mount a tmpfs).

A VMSError is printed on one line with exit code 2, as `vmsjax train` prints it.
"""

import os
import signal
import sys
from pathlib import Path

from vmsjax import config as config_lib
from vmsjax import train
from vmsjax.errors import VMSError


def kill_after(at: int):
  def hook(step, members):
    if step == at:
      for m in members:
        m.mngr.wait_until_finished()
      os.kill(os.getpid(), signal.SIGKILL)

  return hook


def fill_after(at: int, work: str):
  def hook(step, members):
    if step == at:
      for m in members:
        m.mngr.wait_until_finished()
      fill(Path(str(work).rstrip("/") + ".filler"))

  return hook


def fill(path: Path) -> None:
  """Writes `path` until its filesystem is full (ENOSPC); the file stays."""
  block = b"\0" * (1 << 16)
  with open(path, "wb", buffering=0) as f:
    try:
      while True:
        f.write(block)
    except OSError:
      pass
  with open(path, "ab", buffering=0) as f:  # the last partial block's worth
    try:
      while True:
        f.write(b"\0" * 512)
    except OSError:
      pass


def main(argv: list[str]) -> int:
  at, rest = int(argv[0]), argv[1:]
  spec = rest[rest.index("--config") + 1]
  work = rest[rest.index("--workdir") + 1]
  overrides = [a[len("--config.") :] for a in rest if a.startswith("--config.")]
  hook = fill_after(at, work) if "--fill" in rest else kill_after(at)
  config = config_lib.load(spec)
  config_lib.override(config, overrides)
  try:
    train.train_and_evaluate(config, work, hooks=[hook])
  except VMSError as e:
    print(f"vmsjax: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
