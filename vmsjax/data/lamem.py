"""LaMem (Khosla et al. 2015: 60,000 images with memorability scores) as a TFDS builder.

A manual download (http://memorability.csail.mit.edu/download.html). Under the
manual dir (or its `lamem/` subfolder):

  images/<file>.jpg
  splits/{train,val,test}_{1..5}.txt    lines `<file> <score>`, e.g. `00000001.jpg 0.8451`

Records: `image` (224x224 by the config's resize rule, default squash), `id` (the
file name) and `score` (float32, the memorability score of the split file). LaMem
has no VISCHEMA scene categories, so its records have no `category*` features (no
made-up label); per-category tools skip it.

Configs:

- `split1` ... `split5`: splits `train`, `val`, `test` from `splits/*_<k>.txt`;
- `subset10k`: one split `test`, the paper's 10,000-image subset as vmsjax draws
  it: 10,000 images sampled without replacement by numpy's PCG64 seeded with 0 from
  the union of split 1's train, val and test lists (sorted by file name first).
  The list of ids drawn is recorded in `info.metadata["subset_ids"]`. (LaMem's own
  `test_1.txt` also holds 10,000 images: `lamem/split1`, split `test`, is the
  other reading of "the 10,000 image subset used in [6]".)

The split files are parsed strictly: every non-blank line is exactly a file name
and a finite number, a file is listed at most once per split file, and the same
file has the same score in every list; a violation fails the build with the split
file's name and line number (it cannot be skipped: the file is damaged as a whole).
An image listed but missing or unreadable is a bad file (named in the error, or
skipped and reported with `--skip_bad_files`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vmsjax.data import images, schema
from vmsjax.data.manual import ManualBuilder
from vmsjax.data.synthetic import png_bytes
from vmsjax.errors import VMSError

SPLITS = ("train", "val", "test")
NUM_SPLIT_INDICES = 5
SUBSET_SIZE = 10_000
_SCORE_TOLERANCE = 1e-6  # the same image's score in two lists may differ by print rounding


@dataclasses.dataclass(frozen=True)
class Entry:
  """One line of a split file."""

  name: str
  score: float
  source: str  # "splits/train_1.txt:12", for messages


def parse_split_file(path: str | os.PathLike) -> list[Entry]:
  """Parses a LaMem split file strictly: lines `<file> <score>`.

  Blank lines are skipped. Everything else must be exactly two whitespace-separated
  fields, a file name relative to images/ (no absolute path, no "..") and a finite
  number, each file at most once.

  Args:
    path: the split file.

  Returns:
    The entries in file order.

  Raises:
    VMSError: unreadable file, or malformed lines (every one is named, with its
      line number).
  """
  path = Path(path)
  try:
    text = path.read_text(encoding="utf-8-sig")
  except (OSError, UnicodeDecodeError) as e:
    raise VMSError(f"cannot read LaMem split file {path} ({e})") from e
  entries: list[Entry] = []
  errors: list[str] = []
  seen: dict[str, int] = {}
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split()
    where = f"{path}:{number}"
    if len(fields) != 2:
      errors.append(f"{where}: expected `<file> <score>`, got {line.strip()!r}")
      continue
    name, value = fields
    try:
      score = float(value)
    except ValueError:
      errors.append(f"{where}: score {value!r} is not a number")
      continue
    if not math.isfinite(score):
      errors.append(f"{where}: score {value!r} is not finite")
      continue
    if os.path.isabs(name) or ".." in Path(name).parts:
      errors.append(f"{where}: {name!r} must be a file name relative to images/")
      continue
    if name in seen:
      errors.append(f"{where}: {name!r} already listed on line {seen[name]}")
      continue
    seen[name] = number
    entries.append(Entry(name, score, f"{path.parent.name}/{path.name}:{number}"))
  if errors:
    raise VMSError(f"{len(errors)} malformed line(s) in LaMem split files: " + "; ".join(errors))
  return entries


def read_splits(root: Path, index: int) -> dict[str, list[Entry]]:
  """Reads `splits/{train,val,test}_<index>.txt` under a LaMem root.

  Raises:
    VMSError: a missing or malformed split file, or one image with two different
      scores (both places are named).
  """
  splits: dict[str, list[Entry]] = {}
  errors: list[str] = []
  for split in SPLITS:
    path = root / "splits" / f"{split}_{index}.txt"
    if not path.is_file():
      raise VMSError(
        f"LaMem split file {path} is missing; expected splits/{{train,val,test}}_{index}.txt"
        " with lines `<file> <score>` (see docs/data.md)"
      )
    try:
      splits[split] = parse_split_file(path)
    except VMSError as e:
      errors.append(str(e))
  if errors:
    raise VMSError(" | ".join(errors))
  first: dict[str, Entry] = {}
  for entries in splits.values():
    for entry in entries:
      other = first.setdefault(entry.name, entry)
      if abs(other.score - entry.score) > _SCORE_TOLERANCE:
        errors.append(
          f"{entry.name} scores {other.score} at {other.source} but {entry.score} at {entry.source}"
        )
  if errors:
    raise VMSError("conflicting LaMem scores: " + "; ".join(errors))
  return splits


def draw_subset(entries: list[Entry], size: int, seed: int) -> list[Entry]:
  """Draws `size` distinct images, deterministically: sorted by name, then PCG64(seed).

  Raises:
    VMSError: fewer than `size` images to draw from.
  """
  unique = sorted({e.name: e for e in entries}.values(), key=lambda e: e.name)
  if len(unique) < size:
    raise VMSError(f"cannot draw {size} LaMem images from the {len(unique)} listed")
  picked = np.random.default_rng(seed).choice(len(unique), size=size, replace=False)
  return [unique[i] for i in sorted(picked)]


@dataclasses.dataclass(eq=False)
class LamemConfig(tfds.core.BuilderConfig):
  """Which LaMem split files, and whether to draw a subset.

  Attributes:
    split_index: k of `splits/*_<k>.txt`, 1..5.
    subset: 0 for the train/val/test splits; n > 0 for one split `test` of n images
      drawn from the union of split k's lists (see `draw_subset`).
    subset_seed: the seed of that draw.
    resize: "squash" or "centre_crop" (vmsjax.data.images).
  """

  split_index: int = 1
  subset: int = 0
  subset_seed: int = 0
  resize: str = "squash"


def _configs() -> list[LamemConfig]:
  configs = [
    LamemConfig(
      name=f"split{k}",
      split_index=k,
      description=f"LaMem's split {k}: train/val/test from splits/*_{k}.txt.",
    )
    for k in range(1, NUM_SPLIT_INDICES + 1)
  ]
  configs.append(
    LamemConfig(
      name="subset10k",
      split_index=1,
      subset=SUBSET_SIZE,
      subset_seed=0,
      description="10,000 images drawn with seed 0 from split 1's lists: one split `test`.",
    )
  )
  return configs


class Lamem(ManualBuilder):
  """LaMem: images with memorability scores, no maps, no categories."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download LaMem from http://memorability.csail.mit.edu/download.html and extract it as\n"
    "  <manual_dir>/lamem/images/*.jpg\n"
    "  <manual_dir>/lamem/splits/{train,val,test}_{1..5}.txt"
  )
  SUBFOLDER = "lamem"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=schema.features(with_vms=False, with_score=True, with_category=False),
      supervised_keys=("image", "score"),
      homepage="http://memorability.csail.mit.edu/",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._start(dl_manager)
    config: LamemConfig = self.builder_config
    if not 1 <= config.split_index <= NUM_SPLIT_INDICES:
      raise VMSError(f"LaMem split_index {config.split_index} not in 1..{NUM_SPLIT_INDICES}")
    lists = read_splits(root, config.split_index)
    metadata: dict[str, Any] = {"resize": config.resize, "split_index": config.split_index}
    if config.subset:
      drawn = draw_subset(
        [e for es in lists.values() for e in es], config.subset, config.subset_seed
      )
      lists = {"test": drawn}  # "all" is reserved by tfds
      metadata.update(
        subset=config.subset, subset_seed=config.subset_seed, subset_ids=[e.name for e in drawn]
      )
    self.info.metadata.update(metadata)
    listed = {e.name for es in lists.values() for e in es}
    on_disk = sum(1 for p in (root / "images").rglob("*") if p.is_file())
    self._report["images_on_disk"] = on_disk
    self._report["images_listed"] = len(listed)
    self._expect_splits(lists, sum(len(es) for es in lists.values()), [])
    return {
      split: self._generate_examples(split, root / "images", entries)
      for split, entries in lists.items()
    }

  def _generate_examples(
    self, split: str, image_dir: Path, entries: list[Entry]
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    config: LamemConfig = self.builder_config
    written = 0
    for entry in entries:
      path = image_dir / entry.name
      if not path.is_file():
        self._skip_image(path, f"listed at {entry.source} but there is no such image")
        continue
      try:
        image = images.read_fitted(path, schema.IMAGE_SIZE, config.resize)
      except VMSError as e:
        self._skip_image(path, str(e))
        continue
      written += 1
      yield entry.name, {"image": png_bytes(image), "id": entry.name, "score": entry.score}
    self._finish_split(split, written)
