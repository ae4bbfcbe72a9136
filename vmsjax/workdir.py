"""A run's folder: is it writable, does it hold this run, its orbax checkpoints.

checkpoints/<step>/state   the TrainState (orbax StandardSave)
checkpoints/<step>/meta    {"config_fingerprint", "dataset", "step", "next_batch"}

Orbax writes a step into a temporary folder and renames it to the bare step number when
complete, so a kill mid-save never leaves a checkpoint that a restart trusts.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp

from vmsjax import config as config_lib
from vmsjax.errors import VMSError
from vmsjax.factory import TrainState


def prepare(workdir: Path) -> None:
  """Creates `workdir` and checks that this process can write into it."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    # One probe per process: the processes of a multi-host job share the workdir.
    probe = workdir / f".write_test.{socket.gethostname()}.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink(missing_ok=True)
  except OSError as e:
    raise VMSError(
      f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir"
    ) from e


def check_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir whose run was made with a different config."""
  saved = config_lib.read_saved(workdir)
  if saved is None:
    return
  diffs = config_lib.differences(saved, config)
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


def restore(mngr: ocp.CheckpointManager, step: int, target: TrainState) -> tuple[TrainState, dict]:
  """Restores the state at `step` into the shapes/shardings of `target`."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    out = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
  except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
    raise VMSError(
      f"checkpoint {step} in {mngr.directory} cannot be restored ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}); delete that step's folder to fall back "
      "to an earlier one, or use a new --workdir"
    ) from e
  return out["state"], dict(out["meta"])
