"""What a run leaves in its workdir besides checkpoints: metrics and provenance.

metrics.jsonl   one JSON object a line: {"step": k, "split": "train", ...}
tb/             TensorBoard event files (`tensorboard --logdir WORKDIR/tb`)
config.json     the resolved config
versions.json   Python and package versions
dataset.json    dataset name, version and fingerprint
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = (
  "vmsjax",
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "tensorflow-datasets",
  "grain",
  "numpy",
  "ml-collections",
)


def package_versions() -> dict[str, str]:
  """Python and package versions, and whether XLA:CPU's buffers get huge pages
  (`vmsjax.hostmem.status`: the one start-up setting that changes a run's speed)."""
  from vmsjax import hostmem

  out = {"python": platform.python_version(), "huge_pages": hostmem.status()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def write_json(path: Path, obj) -> None:
  """Writes atomically (temp file, then rename) so a kill never leaves half a file."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
  tmp.replace(path)


def json_safe(obj: Any) -> Any:
  """`obj` with strict-JSON values only, recursively: what `write_json` should be given.

  NaN, inf and -inf become None (`null`): JSON has no such numbers, and a value that is
  not finite is reported as undefined (a mean over no image, an undefined correlation),
  shown `n/a` in the Markdown tables. numpy floats and integers become Python numbers,
  tuples become lists; dict keys and every other value are left as they are.
  """
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


class MetricWriter:
  """Appends scalars to metrics.jsonl and to TensorBoard event files.

  A run that resumes at step `start` first writes TensorBoard's "session start" event at
  step `start` + 1: TensorBoard then drops the events a killed run wrote after its last
  checkpoint (they are written again), so each step shows once. metrics.jsonl is cut
  back by `workdir.truncate_metrics` for the same reason.
  """

  def __init__(self, workdir: Path, start: int = 0):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
    self._tb = EventFileWriter(str(workdir / "tb"))
    self._tb.add_event(
      event_pb2.Event(
        wall_time=time.time(),
        step=int(start) + 1,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
      )
    )

  def write(self, step: int, scalars: dict[str, float], split: str = "train") -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    record = {"step": int(step), "split": split, "time": time.time()}
    record.update({k: float(v) for k, v in scalars.items()})
    # Strict JSON: the NaN/Inf loss of a run's bad step is written as null.
    self._jsonl.write(json.dumps(json_safe(record)) + "\n")
    values = [
      summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=float(v))
      for k, v in scalars.items()
    ]
    self._tb.add_event(
      event_pb2.Event(
        wall_time=record["time"], step=int(step), summary=summary_pb2.Summary(value=values)
      )
    )

  def flush(self) -> None:
    self._jsonl.flush()
    self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()


class NullWriter:
  """A MetricWriter that writes nothing: for processes other than 0 of a multi-process run."""

  def write(self, step: int, scalars: dict[str, float], split: str = "train") -> None:
    del step, scalars, split

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass
