"""A training run that SIGKILLs itself after a given step: the resume tests' fault.

  python -m tests.killed_run STEP --config FILE[:ARG] --workdir DIR [--config.a.b=V ...]

It trains as `vmsjax train` does, with a hook installed in the loop: after step STEP it
waits for the checkpoint writes already under way (so the test knows which checkpoint
survives), then sends itself a real SIGKILL: no cleanup, no flush, like a preempted job.
"""

import os
import signal
import sys

from vmsjax import config as config_lib
from vmsjax import train


def kill_after(at: int):
  def hook(step, members):
    if step == at:
      for m in members:
        m.mngr.wait_until_finished()
      os.kill(os.getpid(), signal.SIGKILL)

  return hook


def main(argv: list[str]) -> None:
  at, rest = int(argv[0]), argv[1:]
  spec = rest[rest.index("--config") + 1]
  work = rest[rest.index("--workdir") + 1]
  overrides = [a[len("--config.") :] for a in rest if a.startswith("--config.")]
  config = config_lib.load(spec)
  config_lib.override(config, overrides)
  train.train_and_evaluate(config, work, hooks=[kill_after(at)])


if __name__ == "__main__":
  main(sys.argv[1:])
