"""Multi-process (multi-host) start-up: one JAX process per host, one global mesh.

`vmsjax train` calls `initialize` before anything touches a device. After it, every
process sees all devices of the job in `jax.devices()`, the training mesh spans them,
each process reads only its slice of every batch (`pipeline.train_batches` with
`jax.process_index()` / `jax.process_count()`), and orbax writes checkpoints from all
processes together. Records (config.json, metrics, TensorBoard) are written by process
0 alone.

Three ways in:
  * explicit: `--coordinator_address HOST:PORT --num_processes N --process_id I`;
  * a cluster JAX knows (SLURM, Open MPI, ...): `--distributed on`, and JAX reads the
    job's environment (under SLURM with more than one task this is the default);
  * single process (the default everywhere else): nothing to do.
"""

from __future__ import annotations

import os

from vmsjax.errors import VMSError

MODES = ("auto", "on", "off")
_joined = False


def _cluster_tasks() -> int:
  """The number of tasks of a detected multi-task cluster job (1 when none)."""
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    value = os.environ.get(key, "")
    if value.isdigit():
      return int(value)
  return 1


def initialize(
  mode: str = "auto",
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Joins a multi-process JAX job when asked to or when the environment is one.

  Args:
    mode: "off" never initialises; "on" always does (JAX detects the cluster unless
      the explicit arguments are given); "auto" does when explicit arguments are given
      or a cluster job with more than one task is detected.
    coordinator_address: "host:port" of process 0's coordination service.
    num_processes: the number of processes of the job.
    process_id: this process, in [0, num_processes).

  Returns:
    Whether a multi-process job was joined.

  Raises:
    VMSError: inconsistent arguments, or the job could not be joined.
  """
  if mode not in MODES:
    raise VMSError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise VMSError(
      "give all three of --coordinator_address, --num_processes and --process_id, or none"
    )
  if mode == "off":
    if any(v is not None for v in explicit):
      raise VMSError("--distributed off contradicts --coordinator_address/--process_id")
    return False
  if mode == "auto" and explicit[0] is None and _cluster_tasks() <= 1:
    return False
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise VMSError(f"--process_id {process_id} not in [0, {num_processes})")

  import jax

  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
    )
  except (RuntimeError, ValueError) as e:
    raise VMSError(
      f"could not join the multi-process job ({e}); check --coordinator_address "
      "(reachable from every host) and that every process was started"
    ) from e
  global _joined
  _joined = True
  return True


def joined() -> bool:
  """Whether `initialize` joined a multi-process job in this process."""
  return _joined


def exit_now_if_joined(code: int) -> None:
  """Ends this process at once when it is part of a multi-process job.

  A process that stops on an error must not run JAX's orderly shutdown: that waits at
  a barrier for every other process, while they wait for this one inside a collective,
  and the job hangs. Exiting at once lets the others fail on the coordination
  service's lost-heartbeat error instead. A no-op in a single-process run.
  """
  if _joined:
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_main() -> bool:
  """Whether this is process 0, the one that writes a run's records."""
  import jax

  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op with one process)."""
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
