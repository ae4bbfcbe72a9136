"""`vmsjax data export`: a split's images as lossless files, with the ids they stand for."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmsjax.errors import VMSError

IDS_FILE = "ids.csv"  # written beside the exported images: file,id


def export(source: Sequence, out: str | Path, limit: int | None = None) -> list[Path]:
  """Writes a split's images as PNG files (lossless), its maps as .npy, and `ids.csv`.

  The first `limit` records in id order (all when None) go to `out/<id stem>.png` and,
  where the dataset has maps, `out/maps/<id stem>.npy` (float32 (224, 224, 2)). The
  images are what the model reads, so `vmsjax predict` on the folder sees exactly the
  dataset's pixels. `out/ids.csv` maps each written file to its record's id
  (`file,id` rows, a header line, in id order).

  Why a mapping file, not files named after the ids: the ids of VISCHEMA and LaMem
  are source names (`sun_02091302.jpg`) and the records hold decoded pixels, so the
  id's own name means PNG bytes behind a `.jpg` name (a file lying about its format)
  or a JPEG re-encoding (lossy: a predictor would not see the dataset's pixels). The
  files stay lossless PNGs named by stem, unique within an export (shared stems are
  refused), and `ids.csv` says which id each is. `vmsjax study scores` joins a
  predictor's `<stem>.png` names by stem (`studies.reference.match_ids`).

  Returns:
    The image paths, in id order.

  Raises:
    VMSError: a non-positive `limit`, or two records whose ids share a stem.
  """
  import csv

  from PIL import Image

  if limit is not None and limit <= 0:
    raise VMSError(f"--limit must be a positive number of images, got {limit}")
  out = Path(out)
  ids = source.ids() if hasattr(source, "ids") else [source[i]["id"] for i in range(len(source))]
  order = sorted(range(len(source)), key=lambda i: ids[i])[:limit]
  label = "/".join(str(getattr(source, k)) for k in ("name", "split") if hasattr(source, k))
  seen: dict[str, str] = {}  # checked before anything is written: no partial folder
  for i in order:
    stem = Path(ids[i]).stem
    if stem in seen:
      raise VMSError(
        f"records {seen[stem]!r} and {ids[i]!r} of {label or 'the source'} would both be "
        f"written as {stem}.png; rename one of the two source files and rebuild the dataset"
      )
    seen[stem] = ids[i]
  written, rows = [], []
  for i in order:
    example = source[i]
    stem = Path(example["id"]).stem
    path = out / f"{stem}.png"
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(example["image"]).save(path, format="PNG")
    if "vms" in example:
      (out / "maps").mkdir(exist_ok=True)
      np.save(out / "maps" / f"{stem}.npy", example["vms"].astype(np.float32))
    written.append(path)
    rows.append((path.name, example["id"]))
  if rows:
    # Through a temporary name: an interrupted export leaves no half mapping.
    tmp = out / f".{IDS_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      csv.writer(f).writerows([("file", "id"), *rows])
    os.replace(tmp, out / IDS_FILE)
  return written
