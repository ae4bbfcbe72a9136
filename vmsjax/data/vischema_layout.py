"""Finding VISCHEMA's files under a manual dir: images, categories, maps, splits.

`scan` lists what a VISCHEMA-style root holds (the layouts are in
vmsjax/data/vischema.py's docstring and docs/data.md): one `Item` per image, with
its category (from its folder or `categories.csv`), its split (split files, a CSV
column, or none yet) and its map file(s), matched by file stem. Problems are
attached to the image concerned, so a build can name or skip every bad file.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path

import numpy as np

from vmsjax.data import images, schema
from vmsjax.errors import VMSError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
NUMERIC_MAP_EXTENSIONS = (".npy", ".npz", ".mat")
MAP_DIRS = ("maps", "vms")
CATEGORY_CSV = "categories.csv"
SPLIT_FILES = {"train": "train.txt", "test": "test.txt"}
SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # 160 of VISCHEMA's 800 images, as in the paper

# Spellings met in file trees and papers, squashed (lower case, letters only), for
# each leaf. "Work/home", "Public Entertainment", "living-room", "01_kitchen" ... all
# squash onto one of these.
_CATEGORY_ALIASES: dict[str, tuple[str, ...]] = {
  "kitchen": ("kitchen", "kitchens"),
  "living_room": ("livingroom", "livingrooms", "living", "lounge"),
  "small_public": ("smallpublic", "publicsmall", "smallpublicspace", "smallpublicspaces"),
  "big_public": (
    "bigpublic",
    "largepublic",
    "publicbig",
    "publiclarge",
    "bigpublicspace",
    "bigpublicspaces",
  ),
  "work_home": ("workhome", "workandhome", "workorhome", "homework", "homeandwork", "work"),
  "public_entertainment": (
    "publicentertainment",
    "entertainment",
    "publicentertainments",
    "entertainmentpublic",
  ),
  "populated": ("populated", "naturalpopulated", "populatednatural"),
  "isolated": ("isolated", "naturalisolated", "isolatednatural"),
}
_ALIAS_TO_LEAF: dict[str, str] = {
  alias: leaf for leaf, aliases in _CATEGORY_ALIASES.items() for alias in aliases
}
_CSV_COLUMNS = {
  "name": ("name", "file", "filename", "image", "image_name", "id"),
  "category": ("category", "class", "label", "scene", "scene_category"),
  "split": ("split", "set", "subset"),
}


def match_category(name: str) -> str | None:
  """Maps a category spelling onto a VISCHEMA leaf, forgivingly.

  Case, spaces, hyphens, underscores, slashes and a leading number ("03_kitchen",
  "3. Kitchen") are ignored: "Work/Home", "public entertainment", "Living-Room",
  "living_room" all match.

  Args:
    name: a folder name or CSV value.

  Returns:
    One of `schema.LEAVES`, or None if the name is no known spelling.
  """
  squashed = re.sub(r"[^a-z]", "", re.sub(r"^\s*\d+\s*[-_.):]*\s*", "", name.lower()))
  return _ALIAS_TO_LEAF.get(squashed)


def stratified_split(
  categories: dict[str, str], test_fraction: float = TEST_FRACTION, seed: int = 0
) -> dict[str, str]:
  """Draws a deterministic, category-stratified train/test split.

  The test set has round(N * test_fraction) images; each category gets
  floor(n_c * test_fraction) of them, and the images left over go to the categories
  with the largest remainders (ties: the order of `schema.LEAVES`). Within a
  category the ids are sorted, permuted by numpy's PCG64 seeded with
  (seed, category index), and the first ones go to test. So the split of an image
  depends only on the ids of its category, not on the order files were listed in.

  Args:
    categories: id -> leaf category.
    test_fraction: share of the test split.
    seed: the split seed.

  Returns:
    id -> "train" or "test".
  """
  by_leaf: dict[str, list[str]] = {leaf: [] for leaf in schema.LEAVES}
  for item_id, leaf in categories.items():
    by_leaf[leaf].append(item_id)
  total = round(len(categories) * test_fraction)
  exact = {leaf: len(ids) * test_fraction for leaf, ids in by_leaf.items()}
  quota = {leaf: int(np.floor(value)) for leaf, value in exact.items()}
  left = total - sum(quota.values())
  by_remainder = sorted(
    schema.LEAVES, key=lambda leaf: (-(exact[leaf] - quota[leaf]), schema.LEAVES.index(leaf))
  )
  for leaf in by_remainder[:left]:
    quota[leaf] += 1
  split: dict[str, str] = {}
  for index, leaf in enumerate(schema.LEAVES):
    ids = sorted(by_leaf[leaf])
    order = np.random.default_rng([seed, index]).permutation(len(ids))
    for rank, position in enumerate(order):
      split[ids[position]] = "test" if rank < quota[leaf] else "train"
  return split


@dataclasses.dataclass
class Item:
  """One image found under the manual dir, with what the layout says about it."""

  id: str  # the image's file name, unique in the dataset
  image: Path
  category: str | None = None  # a leaf, once known
  split: str | None = None
  map_files: list[Path] = dataclasses.field(default_factory=list)  # .npy/.png/... or a pair
  map_pair: dict[str, Path] = dataclasses.field(default_factory=dict)  # "true"/"false" files
  problems: list[tuple[Path, str]] = dataclasses.field(default_factory=list)  # (file, why)
  ambiguous_stem: bool = False  # another image has the same stem: its map cannot be told

  def problem(self, reason: str, path: Path | None = None) -> None:
    """Records why this image cannot go in; `path` is the file at fault (the image)."""
    self.problems.append((path or self.image, reason))


@dataclasses.dataclass
class Layout:
  """What `scan` found: the items, and the files that belong to no item."""

  root: Path
  items: dict[str, Item]  # by id
  orphans: list[tuple[Path, str]]  # (file, why it matches no image): maps, CSV rows ...
  rejected: list[tuple[Path, str]]  # images found that cannot even be items (duplicates ...)
  ignored: list[Path]  # not images, maps or known metadata files
  split_source: str  # "split files", "csv", or "stratified"
  category_source: str  # "folders", "csv" or "folders+csv"


def _is_image_file(path: Path) -> bool:
  return path.suffix.lower() in IMAGE_EXTENSIONS


def _read_csv(
  path: Path, items: dict[str, Item], stems: dict[str, str], bad: images.BadFiles, splits: bool
) -> bool:
  """Reads categories.csv into `items`: the category, and the split if `splits`.

  Returns:
    Whether the CSV gave the split.
  """
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise VMSError(f"{path} cannot be read as CSV ({e}); save it as UTF-8 text") from e
  if not rows:
    raise VMSError(
      f"{path} is empty; it needs a header `name,category[,split]` and a row per image"
    )
  header = [h.strip().lower() for h in rows[0]]
  columns: dict[str, int] = {}
  for key, names in _CSV_COLUMNS.items():
    found = [i for i, h in enumerate(header) if h in names]
    if found:
      columns[key] = found[0]
  if "name" not in columns or ("category" not in columns and "split" not in columns):
    raise VMSError(
      f"{path} line 1: header {rows[0]} needs a name column ({'/'.join(_CSV_COLUMNS['name'])})"
      f" and a category or split column; e.g. `name,category,split`"
    )
  has_split = splits and "split" in columns
  seen: set[str] = set()
  for line, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue  # blank line
    if len(row) <= max(columns.values()):
      raise VMSError(f"{path} line {line}: expected {len(header)} columns, got {row}")
    name = os.path.basename(row[columns["name"]].strip())
    item_id = name if name in items else stems.get(name, stems.get(Path(name).stem))
    if item_id is None:
      bad.add(path, f"line {line} lists {name!r} but there is no such image")
      continue
    if item_id in seen:
      raise VMSError(f"{path} line {line}: {name!r} is listed twice; keep one row per image")
    seen.add(item_id)
    item = items[item_id]
    if "category" in columns:
      value = row[columns["category"]].strip()
      leaf = match_category(value)
      if leaf is None:
        item.problem(f"{CATEGORY_CSV} line {line}: unknown category {value!r}")
      elif item.category is not None and item.category != leaf:
        item.problem(f"its folder says {item.category} but {CATEGORY_CSV} line {line} says {leaf}")
      else:
        item.category = leaf
    if has_split:
      value = row[columns["split"]].strip().lower()
      if value not in SPLITS:
        item.problem(f"{CATEGORY_CSV} line {line}: split {value!r} is not train or test")
      else:
        item.split = value
  return has_split


def _read_split_files(root: Path, items: dict[str, Item], stems: dict[str, str], bad) -> None:
  """Applies train.txt / test.txt: every image in exactly one of them."""
  listed: dict[str, str] = {}
  for split, file_name in SPLIT_FILES.items():
    path = root / file_name
    try:
      lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
      raise VMSError(f"cannot read split file {path} ({e}); save it as UTF-8 text") from e
    for line, text in enumerate(lines, start=1):
      name = text.strip()
      if not name or name.startswith("#"):
        continue
      name = os.path.basename(name.replace("\\", "/"))
      item_id = name if name in items else stems.get(name, stems.get(Path(name).stem))
      if item_id is None:
        bad.add(path, f"line {line} lists {name!r} but there is no such image")
      elif item_id in listed and listed[item_id] != split:
        other = SPLIT_FILES[listed[item_id]]
        items[item_id].problem(f"listed in both {other} and {file_name}")
      else:
        listed[item_id] = split
  for item_id, item in items.items():
    if item_id not in listed:
      item.problem("listed in neither train.txt nor test.txt")
    else:
      item.split = listed[item_id]


def scan(root: Path, with_maps: bool, with_splits: bool, bad: images.BadFiles) -> Layout:
  """Lists the images, their categories, maps and splits under a VISCHEMA-style root.

  Problems that concern one image (no map, unknown category, ...) are attached to
  its item; files that belong to no image (a map without an image, a CSV row naming
  a missing file) go to `bad`; problems of the layout as a whole raise.

  Args:
    root: the folder holding `images/` (see `vmsjax.data.manual.find_root`).
    with_maps: look for maps (VISCHEMA) or not (VISCHEMA2).
    with_splits: read split files / the CSV split column (VISCHEMA) or not.
    bad: where files that belong to no image are reported.

  Raises:
    VMSError: unreadable categories.csv or split files, only one of train.txt /
      test.txt, no maps/ folder when maps are wanted.
  """
  items: dict[str, Item] = {}
  ignored: list[Path] = []
  rejected: list[tuple[Path, str]] = []
  from_folders = False
  image_dir = root / "images"
  for path in sorted(image_dir.rglob("*")):
    if path.is_dir():
      continue
    if not _is_image_file(path) or path.name.startswith("."):
      ignored.append(path)
      continue
    depth = len(path.relative_to(image_dir).parts)
    if depth > 2:
      rejected.append((path, "nested too deep: images go in images/ or images/<category>/"))
      continue
    if path.name in items:
      other = items[path.name].image.relative_to(root)
      rejected.append((path, f"same file name as {other}; image names must be unique"))
      continue
    item = Item(id=path.name, image=path)
    if depth == 2:
      from_folders = True
      folder = path.parent.name
      item.category = match_category(folder)
      if item.category is None:
        item.problem(f"folder {folder!r} is not a VISCHEMA category ({', '.join(schema.LEAVES)})")
    items[item.id] = item

  stems: dict[str, str] = {}
  for item_id in items:
    stem = Path(item_id).stem
    if with_maps and stem in stems:
      # Maps are found by stem: x.jpg and x.png could not tell theirs apart.
      first = stems[stem]
      for one, other in ((item_id, first), (first, item_id)):
        items[one].problem(f"same stem as {other} (maps are matched by stem: rename one)")
        items[one].ambiguous_stem = True
    stems.setdefault(stem, item_id)
  csv_path = root / CATEGORY_CSV
  csv_split = _read_csv(csv_path, items, stems, bad, with_splits) if csv_path.is_file() else False
  for item in items.values():
    if item.category is None and not item.problems:
      item.problem(f"no category: put it in images/<category>/ or list it in {CATEGORY_CSV}")

  split_source = "none"
  if with_splits:
    present = [name for name in SPLIT_FILES.values() if (root / name).is_file()]
    if len(present) == 1:
      raise VMSError(
        f"{root / present[0]} found without its partner; give both train.txt and test.txt,"
        " or neither (then the split is drawn, see docs/data.md)"
      )
    if present:
      for item in items.values():
        item.split = None  # the split files take precedence over a CSV column
      _read_split_files(root, items, stems, bad)
      split_source = "split files"
    else:
      split_source = "csv" if csv_split else "stratified"
      if csv_split:
        for item in items.values():
          if item.split is None and not item.problems:
            item.problem(f"no split in {CATEGORY_CSV}")

  orphans: list[tuple[Path, str]] = []
  if with_maps:
    _attach_maps(root, items, stems, orphans, ignored)
  category_source = "folders" if from_folders else "csv"
  if from_folders and csv_path.is_file():
    category_source = "folders+csv"
  return Layout(root, items, orphans, rejected, ignored, split_source, category_source)


def _attach_maps(root, items, stems, orphans, ignored) -> None:
  """Finds each image's map file(s) under maps/ (or vms/), by file stem."""
  map_dirs = [root / d for d in MAP_DIRS if (root / d).is_dir()]
  if not map_dirs:
    raise VMSError(
      f"no maps/ folder in {root}; VISCHEMA needs a map per image (see docs/data.md),"
      " or build vischema2 for images without maps"
    )
  for map_dir in map_dirs:
    for path in sorted(map_dir.rglob("*")):
      if path.is_dir():
        continue
      suffix = path.suffix.lower()
      if path.name.startswith(".") or (
        suffix not in IMAGE_EXTENSIONS and suffix not in NUMERIC_MAP_EXTENSIONS
      ):
        ignored.append(path)
        continue
      item_id = stems.get(path.stem)
      if item_id is None:
        orphans.append((path, "a map with no image of the same name"))
        continue
      item = items[item_id]
      channel = path.parent.name.lower()
      if channel in ("true", "false") and suffix in IMAGE_EXTENSIONS:
        if channel in item.map_pair:
          item.problem(f"two {channel} maps: {item.map_pair[channel]} and {path}", path)
        item.map_pair[channel] = path
      else:
        item.map_files.append(path)
  for item in items.values():
    if item.ambiguous_stem:
      continue  # already bad; which map is whose cannot be known
    found = item.map_files + sorted(item.map_pair.values())
    if len(item.map_files) > 1 or (item.map_files and item.map_pair):
      item.problem(f"several maps: {', '.join(map(str, found))}; keep one")
    elif not item.map_files and len(item.map_pair) == 1:
      (have,) = item.map_pair
      other = "false" if have == "true" else "true"
      item.problem(f"a map in maps/{have}/ but none in maps/{other}/", item.map_pair[have])
    elif not found:
      item.problem(f"an image with no map (looked for maps/**/{Path(item.id).stem}.*)")
