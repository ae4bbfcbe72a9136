"""Telling a damaged dataset file apart from a bug, and naming it.

array_record reports a damaged file as a bare RuntimeError ("Corrupted Riegeli/records
file: chunk header hash mismatch ...") that names no file. `corrupt_dataset_error`
turns such an error into one line that names the damaged file(s) and the command that
rebuilds the dataset; it finds the files by reading every record file of the dataset
once, which costs a pass over the data but only happens on the way to an error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from vmsjax.errors import VMSError


class DamagedDataset(VMSError):
  """A dataset file that cannot be read: the message names it and the rebuild command."""


# What array_record's and Riegeli's read errors say.
_MARKERS = ("Riegeli", "array_record", "ArrayRecord", "RiegeliPostscript")


def is_corrupt_read(e: BaseException) -> bool:
  """Whether `e` is array_record's report of a damaged record file."""
  return isinstance(e, RuntimeError) and any(m in str(e) for m in _MARKERS)


def damaged_files(folder: Path) -> list[tuple[Path, str]]:
  """The record files under `folder` that cannot be read through, with the reason."""
  from array_record.python import array_record_module

  bad = []
  for path in sorted(Path(folder).glob("*.array_record-*")):
    try:
      _read_through(array_record_module.ArrayRecordReader(str(path)))
    except Exception as e:  # noqa: BLE001 - any failure to read the file means damage
      bad.append((path, str(e).splitlines()[0] if str(e) else type(e).__name__))
  return bad


def _read_through(reader) -> None:
  """Reads every record; raises on damage. A file whose footer is damaged opens with
  zero records and `ok()` false, and raises when closed."""
  try:
    if not reader.ok():
      raise RuntimeError("cannot read the file's index (truncated or damaged)")
    n = reader.num_records()
    for start in range(0, n, 256):  # in chunks: the whole file need not fit in memory
      reader.read(list(range(start, min(n, start + 256))))
  finally:
    reader.close()


@contextlib.contextmanager
def named_damage(folder: str | Path, rebuild: str):
  """Turns array_record's report of a damaged file, raised inside, into one line.

  Args:
    folder: the built dataset's folder (its record files).
    rebuild: the command that rebuilds it.
  """
  try:
    yield
  except RuntimeError as e:
    if is_corrupt_read(e):
      raise corrupt_dataset_error(e, folder, rebuild) from e
    raise


def corrupt_dataset_error(
  e: BaseException, folder: str | Path, rebuild: str, extra: str = ""
) -> DamagedDataset:
  """One line for a read that failed on a damaged record file under `folder`.

  Args:
    e: the RuntimeError array_record raised (`is_corrupt_read(e)`).
    folder: the built dataset's folder.
    rebuild: the command that rebuilds the dataset.
    extra: appended to the message (a run found mid-training names its last checkpoint).
  """
  folder = Path(folder)
  bad = damaged_files(folder)
  if bad:
    shown = ", ".join(f"{p} ({why})" for p, why in bad[:2])
    more = f" and {len(bad) - 2} more" if len(bad) > 2 else ""
    what = f"dataset file {shown}{more} is damaged"
  else:  # the failure did not repeat: name the folder
    what = f"a dataset file under {folder} could not be read ({str(e).splitlines()[0]})"
  return DamagedDataset(f"{what}; move {folder} aside and rebuild it with `{rebuild}`{extra}")
