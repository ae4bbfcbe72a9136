"""Branching: a new run that starts from another run's checkpoint.

`vmsjax train --init_from W[:STEP] --workdir NEW` takes W's checkpoint at STEP (default:
its latest): parameters, batch statistics, optimiser state, step and data position, so
NEW continues exactly where W was. With `--init_from_params_only` it takes the
parameters and batch statistics alone, with a fresh optimiser, at step 0.

NEW's config may differ from W's in anything that keeps the parameters' shapes (loss
weights, learning rate, the reconstruction loss, the schedule ...): that is the point,
to ablate a term on a shared trunk of training. NEW/lineage.json records where it came
from, oldest ancestor first:

  {"parents": [{"workdir", "step", "config_fingerprint", "changed_keys", "params_only"}]}

`changed_keys` are the keys that change what a step computes (`config.differences`:
not the resumable ones such as train.epochs or data.data_dir). A branch of a branch
keeps the whole list. Only a run with no checkpoint of its own is
branched; once NEW has checkpoints it resumes from them like any run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import ml_collections

from vmsjax import config as config_lib
from vmsjax import records
from vmsjax import workdir as workdir_lib
from vmsjax.errors import VMSError
from vmsjax.factory import TrainState

LINEAGE_FILE = "lineage.json"


@dataclasses.dataclass(frozen=True)
class Parent:
  """The checkpoint a branch starts from: `step` None means the parent's latest."""

  workdir: Path
  step: int | None = None
  params_only: bool = False


def parse(spec: str, params_only: bool = False) -> Parent:
  """`W` or `W:STEP` (the command line's `--init_from`) as a Parent."""
  path, sep, step = spec.rpartition(":")
  if sep and step.isdigit():
    return Parent(Path(path), int(step), params_only)
  if sep and not Path(spec).exists():
    raise VMSError(f"--init_from {spec}: STEP must be a checkpoint step, got {step!r}")
  return Parent(Path(spec), None, params_only)


def read(workdir: Path) -> list[dict]:
  """The lineage a run records (oldest ancestor first); [] for a run started from scratch."""
  path = Path(workdir) / LINEAGE_FILE
  if not path.exists():
    return []
  try:
    return list(json.loads(path.read_text())["parents"])
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise VMSError(f"{path} is damaged ({e}); use a new --workdir") from e


def branch(
  parent: Parent, config: ml_collections.ConfigDict, fresh: TrainState
) -> tuple[TrainState, dict]:
  """The state a branch of `parent` starts from, laid out like `fresh`, and its record.

  Raises:
    VMSError: the parent is not a workdir, lacks the step, or its parameters do not fit
      this config (the message names the first parameter that differs).
  """
  from vmsjax import inference  # its config reader: a workdir's config.json as a config

  src = Path(parent.workdir)
  parent_config = inference.load_config(src)
  mngr = workdir_lib.checkpoint_manager(src, parent_config)
  try:
    steps = mngr.all_steps()
    if not steps:
      raise VMSError(f"--init_from {src}: no checkpoint in {src / 'checkpoints'}")
    step = steps[-1] if parent.step is None else parent.step
    if step not in steps:
      raise VMSError(f"--init_from {src}:{step}: no checkpoint {step}; available: {steps}")
    _check_shapes(src, step, workdir_lib.restore_raw(mngr, step), fresh)
    state, meta = workdir_lib.restore(mngr, step, fresh)
  finally:
    mngr.close()
  if parent.params_only:
    state = fresh.replace(params=state.params, batch_stats=state.batch_stats)
  record = {
    "workdir": str(src.resolve()),
    "step": int(step),
    "config_fingerprint": meta.get("config_fingerprint"),
    "changed_keys": [
      d.split(":")[0] for d in config_lib.differences(parent_config.to_dict(), config)
    ],
    "params_only": parent.params_only,
  }
  return state, {"parents": read(src) + [record]}


def write(workdir: Path, lineage: dict) -> None:
  records.write_json(Path(workdir) / LINEAGE_FILE, lineage)


def _check_shapes(src: Path, step: int, saved: dict, fresh: TrainState) -> None:
  """Refuses a parent whose parameters or batch statistics do not fit this model."""
  for group in ("params", "batch_stats"):
    have = _shapes(saved.get(group, {}))
    want = _shapes(getattr(fresh, group))
    for name in sorted(set(have) | set(want)):
      a, b = have.get(name), want.get(name)
      if a != b:
        there = f"shape {a}" if a is not None else "no such parameter"
        here = f"shape {b}" if b is not None else "no such parameter"
        raise VMSError(
          f"cannot branch from {src} step {step}: {group}{name} has {there} there and "
          f"{here} in this config; keep the model section (model.latent, "
          "model.decoder_channels, data.image_size ...) as the parent's"
        )


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {
    jax.tree_util.keystr(p): tuple(getattr(x, "shape", ()))
    for p, x in jax.tree_util.tree_leaves_with_path(tree)
  }
