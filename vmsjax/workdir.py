"""A run's folder: is it writable, does it hold this run, its orbax checkpoints.

checkpoints/<step>/state   the TrainState (orbax StandardSave)
checkpoints/<step>/meta    {"config_fingerprint", "dataset", "step", "next_batch"}

Orbax writes a step into a temporary folder and renames it to the bare step number when
complete, so a kill mid-save never leaves a checkpoint that a restart trusts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp

from vmsjax import config as config_lib
from vmsjax.errors import VMSError
from vmsjax.factory import TrainState

LOCK_FILE = ".lock"


def prepare(workdir: Path) -> None:
  """Creates `workdir` and checks that this process can write into it."""
  # One probe per process: the processes of a multi-host job share the workdir.
  probe = workdir / f".write_test.{socket.gethostname()}.{os.getpid()}"
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
  except OSError as e:
    reason, fix = _describe(e)
    where = f" ({e.filename})" if e.filename else ""
    raise VMSError(
      f"workdir {workdir} is not writable: {reason}{where}; {fix} and rerun, or choose "
      "another --workdir"
    ) from e
  finally:
    with contextlib.suppress(OSError):
      probe.unlink(missing_ok=True)


class Lock:
  """An exclusive lock on a workdir, held while a run trains into it.

  flock(2) on `workdir/.lock`: the kernel drops it when the holder's process ends, however
  it ends (a SIGKILL included), so a lock left by a dead run never blocks. The file keeps
  the holder's pid, host and start time for the message a second run gets. Only one
  process of a multi-process job takes it (the caller decides: process 0).
  """

  def __init__(self, workdir: Path):
    self.path = Path(workdir) / LOCK_FILE
    self._fd: int | None = None

  def acquire(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise VMSError(
        f"workdir {self.path.parent} is in use by {holder}; wait for that run to end, or "
        "use another --workdir"
      ) from None
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor drops the flock
      self._fd = None

  def __enter__(self) -> Lock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


# What orbax and TensorStore say instead of an errno.
_MARKERS = (
  ("RESOURCE_EXHAUSTED", errno.ENOSPC),
  ("No space left", errno.ENOSPC),
  ("PERMISSION_DENIED", errno.EACCES),
  ("Permission denied", errno.EACCES),
  ("Read-only file system", errno.EROFS),
)
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def as_environment_error(e: BaseException, what: str, todo: str) -> VMSError | None:
  """`environment_error` for `e` or an exception it was raised from, when one of them is
  a full disk, a quota, a permission or a read-only filesystem; None otherwise (a bug)."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in _ENVIRONMENT_ERRNOS:
      return environment_error(seen, what, todo)
    for marker, code in _MARKERS:
      if marker in str(seen):
        return environment_error(OSError(code, os.strerror(code)), what, todo)
    seen = seen.__cause__ or seen.__context__
  return None


def environment_error(e: OSError, what: str, todo: str) -> VMSError:
  """One line for an OSError of the machine rather than of vmsjax: a full disk, no
  permission, a read-only filesystem. `what` names the thing, `todo` what to do next."""
  reason, fix = _describe(e)
  where = f" ({e.filename})" if e.filename else ""
  return VMSError(f"{reason} {what}{where}; {fix} and {todo}")


def _describe(e: OSError) -> tuple[str, str]:
  """(what went wrong, what to do about it) for an OSError."""
  return {
    errno.ENOSPC: ("no space left on the device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
    errno.EROFS: ("read-only filesystem", "use a writable place"),
  }.get(e.errno, ((e.strerror or type(e).__name__).lower(), "fix it"))


def check_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir whose run was made with a different config."""
  saved = config_lib.read_saved(workdir)
  if saved is None:
    return
  diffs = config_lib.differences(saved, config)
  if diffs and not checkpoint_steps(workdir):
    # Nothing to resume (a run that stopped before its first checkpoint, a NaN stop at
    # step 2): the new config starts over. Its metrics replace the old ones.
    print(
      f"vmsjax: {workdir} has no checkpoint; this run's config replaces its config.json "
      f"({'; '.join(diffs[:2])}{' ...' if len(diffs) > 2 else ''})",
      file=sys.stderr,
    )
    return
  if diffs:
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    raise VMSError(
      f"workdir {workdir} holds a run with a different config ({shown}); "
      "use a new --workdir, or rerun with the saved config.json's values"
    )


def accepted_fingerprints(workdir: Path, config: ml_collections.ConfigDict) -> set[str]:
  """Config fingerprints a checkpoint of this run may carry: the config's own, and that
  of the workdir's config.json as an older vmsjax wrote it (once `check_config` found
  the two equivalent), so runs saved before a key was renamed still resume."""
  out = {config_lib.fingerprint(config)}
  path = Path(workdir) / "config.json"
  if path.exists():
    try:
      out.add(config_lib.fingerprint(json.loads(path.read_text())))
    except json.JSONDecodeError:
      pass  # check_config reports a damaged config.json
  return out


def truncate_metrics(workdir: Path, step: int) -> None:
  """Drops metric lines logged after `step` (a resumed run logs them again)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill
      continue
    if rec.get("step", 0) <= step:
      kept.append(line)
  path.write_text("".join(k + "\n" for k in kept))


def checkpoint_manager(workdir: Path, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  _quiet_orbax_logs()
  return ocp.CheckpointManager(
    (Path(workdir) / "checkpoints").absolute(),
    options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep, create=True),
  )


def checkpoint_steps(workdir: Path) -> list[int]:
  """The finished checkpoints' steps, read from the folder names (no orbax needed)."""
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def save(mngr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
  mngr.save(
    int(state.step),
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=True,
  )


class Damaged(VMSError):
  """A checkpoint that exists but cannot be restored (damaged files, foreign contents)."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def restore(mngr: ocp.CheckpointManager, step: int, target: TrainState) -> tuple[TrainState, dict]:
  """Restores the state at `step` into the shapes/shardings of `target`.

  Raises:
    Damaged: the step's files cannot be read back (its message is one line).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    with _quiet_orbax():
      out = mngr.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
      )
  except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
    raise Damaged(
      f"checkpoint {step} in {mngr.directory} cannot be restored ({_reason(e)}); "
      "use an earlier step, or a new --workdir",
      _reason(e),
    ) from e
  return out["state"], dict(out["meta"])


def restore_raw(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The state at `step` as saved (nested dicts of arrays), for checking its shapes."""
  try:
    with _quiet_orbax():
      out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  except Exception as e:  # noqa: BLE001 - see `restore`
    raise Damaged(f"checkpoint {step} in {mngr.directory} cannot be restored ({_reason(e)})") from e
  return dict(out["state"])


def restore_newest(
  mngr: ocp.CheckpointManager,
  target: TrainState,
  steps: list[int] | None = None,
  move_aside: bool = False,
) -> tuple[TrainState, dict, int] | None:
  """Restores the newest checkpoint of `steps` (default: all) that restores.

  Each damaged step on the way is named on stderr with the reason. With `move_aside` (a
  run that holds the workdir's lock) it is moved to `<workdir>/damaged/<step>` so that the
  next run does not trip on it again; it is never deleted. Orbax's atomic commit protects
  a step against a kill mid-save, not against damage after the commit (bit rot, a
  truncated copy), which is what this falls back from.

  Returns:
    (state, meta, step) of the newest good checkpoint, or None when none restores.
  """
  steps = sorted(mngr.all_steps() if steps is None else steps)
  for step in reversed(steps):
    try:
      state, meta = restore(mngr, step, target)
      return state, meta, step
    except Damaged as e:
      note = f"vmsjax: skipping checkpoint {step} in {mngr.directory}: damaged ({e.reason})"
      if move_aside:
        note += f"; moved to {_move_aside(Path(mngr.directory), step)}"
        mngr.reload()
      print(" ".join(note.split()), file=sys.stderr)
  return None


def _move_aside(checkpoints: Path, step: int) -> Path:
  dest_dir = checkpoints.parent / "damaged"
  dest_dir.mkdir(exist_ok=True)
  dest = dest_dir / str(step)
  n = 1
  while dest.exists():  # the same step damaged twice: keep both
    dest = dest_dir / f"{step}.{n}"
    n += 1
  (checkpoints / str(step)).rename(dest)
  return dest


def _reason(e: BaseException) -> str:
  """The first line of an exception, without the object reprs TensorStore puts there."""
  text = str(e).splitlines()[0] if str(e) else ""
  text = re.sub(r"<[^<>]*>", "", text)
  text = re.sub(r"See full TensorStore details.*", "", text)
  text = re.sub(r"\s*\[tensorstore_spec.*", "", text).strip(" .:")  # a page of JSON
  if len(text) > 240:
    text = text[:240] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _from_orbax(record: logging.LogRecord) -> bool:
  """Whether a log record comes from orbax: logged by it, or about an exception that
  was raised inside it (asyncio's "Future exception was never retrieved")."""
  if "/orbax/" in record.pathname.replace("\\", "/"):
    return True
  tb = record.exc_info[2] if record.exc_info else None
  while tb is not None:
    if "/orbax/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
      return True
    tb = tb.tb_next
  return False


def _drop_orbax_records(record: logging.LogRecord) -> bool:
  if record.levelno >= logging.CRITICAL:
    return True
  # asyncio's report of a write future nobody awaited once the save had failed on a
  # full disk (or a permission): the same failure the user gets in one line.
  exc = record.exc_info[1] if record.exc_info else None
  if exc is not None and as_environment_error(exc, "", "") is not None:
    return False
  return not _from_orbax(record)


def _quiet_orbax_logs() -> None:
  """Keeps orbax's own log lines (and one late report, `_late_callback_hook`) from the
  user's terminal.

  Orbax logs a failed save or restore as an ERROR with its traceback (absl's logger),
  from its background threads, and asyncio logs the failed futures it leaves; vmsjax
  then reports the failure in one line that says what to do (`as_environment_error`,
  `Damaged`). Orbax's warnings (an unfinished temporary folder of a killed run, removed
  on restart) need no action either.
  """
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if _drop_orbax_records not in logger.filters:
      logger.addFilter(_drop_orbax_records)
  if getattr(sys.unraisablehook, "__name__", "") != _late_callback_hook.__name__:
    _late_callback_hook.chained = sys.unraisablehook
    sys.unraisablehook = _late_callback_hook


def _late_callback_hook(unraisable) -> None:
  """Drops one report only: "RuntimeError: Event loop is closed" from a TensorStore write
  that finishes after orbax gave up on a failed save or restore and closed its event loop
  (the failure itself reaches the user in one line); passes every other one on."""
  e = unraisable.exc_value
  late = isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
  if not late:
    _late_callback_hook.chained(unraisable)


@contextlib.contextmanager
def _quiet_orbax():
  """Keeps orbax's asyncio noise from the user while it restores: a failed read leaves
  coroutines that Python reports as "Exception ignored in ..." when they are collected.
  The failure itself still raises and is reported in one line by the caller."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()  # collect the abandoned coroutines while their reports are dropped
    sys.unraisablehook = hook
