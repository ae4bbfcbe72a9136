"""VISCHEMA (800 scenes with true/false VMS maps) and VISCHEMA2 (images only) as TFDS builders.

Both are manual downloads (https://www.cs.york.ac.uk/vischema/). The builders accept
the layouts a user is likely to hold; docs/data.md gives the folder trees. In short,
under the manual dir (or its `vischema/` / `vischema2/` subfolder):

- images: `images/<category>/<name>.<ext>` (a folder per category), or flat
  `images/<name>.<ext>` with `categories.csv` (header `name,category[,split]`);
- maps (VISCHEMA only), matched to images by file stem, under `maps/` (or `vms/`),
  optionally in category subfolders:
  - an RGB image `<name>.png|jpg|...`: green = true VMS, red = false VMS (the
    colours of the paper's figures), 8-bit values v stored as v / 255;
  - `<name>.npy`: an (H, W, 2) array, channel 0 true, channel 1 false;
  - `<name>.npz` / `<name>.mat` (MATLAB v5 through scipy.io, v7.3 through h5py):
    a variable `vms` (H, W, 2), or two variables `true_vms` and `false_vms` (H, W);
  - grayscale image pairs `maps/true/<name>.png` and `maps/false/<name>.png`
    (8-bit v -> v / 255, 16-bit v -> v / 65535);
- split: `train.txt` and `test.txt` (one image name per line), else a `split`
  column in categories.csv, else a category-stratified 80/20 split drawn with a
  fixed seed (see `stratified_split`), recorded in the dataset's metadata.

Maps keep their raw scale up to one documented division: image maps by their
bit depth's maximum, numeric maps (.npy/.npz/.mat) by 1 when every value of every
numeric map is <= 1, else by 255 (the paper's 0-255 scale). No per-channel
renormalisation. So MSE on the paper's 0-255 scale is 255**2 times the MSE on the
stored maps; `info.metadata["map_scale"]` records the divisors. Maps of another size
go through the image's resize rule (squash or centre_crop) with bilinear resampling.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps

from vmsjax.data import images, schema
from vmsjax.data.synthetic import png_bytes
from vmsjax.errors import VMSError
from vmsjax.records import write_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
NUMERIC_MAP_EXTENSIONS = (".npy", ".npz", ".mat")
MAP_DIRS = ("maps", "vms")
CATEGORY_CSV = "categories.csv"
SPLIT_FILES = {"train": "train.txt", "test": "test.txt"}
SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # 160 of VISCHEMA's 800 images, as in the paper
REPORT_NAME = "build_report.json"

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


def find_root(manual_dir: str | os.PathLike, subfolder: str) -> Path:
  """Returns the dataset's root: `manual_dir/subfolder` or `manual_dir`, holding `images/`.

  Raises:
    VMSError: neither holds an `images/` folder.
  """
  manual = Path(os.path.expanduser(os.fspath(manual_dir)))
  for root in (manual / subfolder, manual):
    if (root / "images").is_dir():
      return root
  raise VMSError(
    f"no images/ folder in {manual / subfolder} or {manual}; put the {subfolder} images in "
    f"{manual / subfolder}/images/<category>/<name>.jpg (see docs/data.md for the layouts)"
  )


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
    root: the folder holding `images/` (see `find_root`).
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


# Maps ------------------------------------------------------------------------------


@dataclasses.dataclass
class RawMap:
  """A map as read from its file(s), before resizing.

  Attributes:
    values: float64 (H, W, 2), channel 0 true VMS, channel 1 false, raw scale.
    divisor: what the values are divided by to land in [0, 1]; None for numeric
      maps of a float or wide-integer type, whose divisor is decided for the whole
      dataset (`numeric_divisor`).
    kind: "rgb image", "image pair", "npy", "npz" or "mat".
  """

  values: np.ndarray
  divisor: float | None
  kind: str


def _open_map_image(path: Path) -> Image.Image:
  """Opens a map image like any image (EXIF orientation applied, as to its image)."""
  try:
    image = images.open_loaded(path)
  except VMSError as e:
    raise ValueError(str(e)) from e
  try:
    return ImageOps.exif_transpose(image)
  except Exception as e:  # noqa: BLE001  a malformed EXIF block can raise many things
    raise ValueError(f"unreadable EXIF block ({type(e).__name__}: {e})") from e


def _rgb_map(path: Path) -> RawMap:
  image = _open_map_image(path)
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode not in ("RGB", "RGBA", "RGBX"):
    raise ValueError(
      f"a {image.mode} ({len(image.getbands())}-channel) map image; an RGB map is expected "
      "(green = true VMS, red = false VMS), or grayscale pairs in maps/true/ and maps/false/"
    )
  rgb = np.asarray(image.convert("RGB"), np.float64)  # (H, W, 3)
  return RawMap(np.stack([rgb[:, :, 1], rgb[:, :, 0]], axis=-1), 255.0, "rgb image")


def _grey_channel(path: Path) -> tuple[np.ndarray, float]:
  """Reads one channel of an image pair: values and the divisor of their bit depth."""
  image = _open_map_image(path)
  if image.mode == "L":
    return np.asarray(image, np.float64), 255.0
  if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    return np.asarray(image).astype(np.float64), 65535.0
  if image.mode in ("RGB", "RGBA", "P", "LA"):
    rgb = np.asarray(image.convert("RGB"), np.float64)  # (H, W, 3)
    if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2]):
      return rgb[:, :, 0], 255.0  # a grey image saved as colour
  raise ValueError(
    f"a {image.mode} map with {len(image.getbands())} different channels in a true/false "
    "folder, where a single-channel grayscale image is expected"
  )


def _pair_map(pair: dict[str, Path]) -> RawMap:
  (true, d_true), (false, d_false) = _grey_channel(pair["true"]), _grey_channel(pair["false"])
  if true.shape != false.shape:
    raise ValueError(f"true map {true.shape} and false map {false.shape} differ in size")
  if d_true != d_false:
    raise ValueError("the true and false maps have different bit depths; save both as 8-bit")
  return RawMap(np.stack([true, false], axis=-1), d_true, "image pair")


def _mat_variables(path: Path) -> dict[str, np.ndarray]:
  import scipy.io

  try:
    return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
  except NotImplementedError:  # MATLAB v7.3: an HDF5 file
    import h5py

    with h5py.File(path, "r") as f:
      # h5py shows MATLAB's column-major arrays with their axes reversed.
      return {k: np.asarray(v).T for k, v in f.items() if isinstance(v, h5py.Dataset)}


def _numeric_map(path: Path) -> RawMap:
  suffix = path.suffix.lower()
  try:
    if suffix == ".npy":
      arrays = {"vms": np.load(path, allow_pickle=False)}
    elif suffix == ".npz":
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    else:
      arrays = _mat_variables(path)
  except Exception as e:  # noqa: BLE001  numpy, scipy and h5py raise many kinds
    raise ValueError(f"cannot be read as {suffix[1:]} ({type(e).__name__}: {e})") from e
  if "vms" in arrays:
    values = np.asarray(arrays["vms"])
    if values.ndim == 3 and values.shape[0] == 2 and values.shape[2] != 2:
      values = np.moveaxis(values, 0, -1)  # (2, H, W) -> (H, W, 2)
  elif "true_vms" in arrays and "false_vms" in arrays:
    true, false = np.asarray(arrays["true_vms"]), np.asarray(arrays["false_vms"])
    if true.shape != false.shape or true.ndim != 2:
      raise ValueError(f"true_vms {true.shape} and false_vms {false.shape}: need two equal (H, W)")
    values = np.stack([true, false], axis=-1)
  elif suffix == ".npz" and len(arrays) == 1:
    values = np.asarray(next(iter(arrays.values())))
  else:
    raise ValueError(
      f"variables {sorted(arrays)}: expected `vms` (H, W, 2) or `true_vms` and `false_vms` (H, W)"
    )
  if values.ndim != 3 or values.shape[2] != 2:
    raise ValueError(f"a map of shape {values.shape}: expected (H, W, 2), true and false VMS")
  if not (np.issubdtype(values.dtype, np.number) and not np.iscomplexobj(values)):
    raise ValueError(f"a map of dtype {values.dtype}: expected real numbers")
  divisor = 255.0 if values.dtype == np.uint8 else None
  return RawMap(values.astype(np.float64), divisor, suffix[1:])


def read_raw_map(item: Item) -> RawMap:
  """Reads an item's map from its file(s) and checks its values.

  Raises:
    ValueError: unreadable file, wrong channel count or shape, NaN, infinite or
      negative values; the message says which.
  """
  if item.map_pair:
    raw = _pair_map(item.map_pair)
  elif item.map_files[0].suffix.lower() in NUMERIC_MAP_EXTENSIONS:
    raw = _numeric_map(item.map_files[0])
  else:
    raw = _rgb_map(item.map_files[0])
  if raw.values.shape[0] < 2 or raw.values.shape[1] < 2:
    raise ValueError(f"a map of shape {raw.values.shape}: too small")
  if not np.all(np.isfinite(raw.values)):
    raise ValueError(f"{int(np.sum(~np.isfinite(raw.values)))} NaN or infinite values")
  if raw.values.min() < 0:
    raise ValueError(f"negative values (min {raw.values.min():g}); VMS maps are >= 0")
  return raw


def numeric_divisor(maxima: list[float]) -> float:
  """Returns the divisor of the dataset's float numeric maps from their maxima.

  1 when every value is <= 1 (maps already in [0, 1]), else 255 (the 0-255 scale of
  the paper). Maps whose maximum exceeds 255 are bad files either way.
  """
  return 1.0 if not maxima or max(maxima) <= 1.0 else 255.0


def fit_map(raw: RawMap, divisor: float, size: int, rule: str) -> np.ndarray:
  """Scales a raw map to [0, 1] and resizes it like its image.

  Returns:
    float32 (size, size, 2) in [0, 1]. Bilinear resampling is a convex combination,
    so only float rounding can leave [0, 1]; that rounding is clipped.
  """
  fitted = images.fit_square_map((raw.values / divisor).astype(np.float32), size, rule)
  return np.clip(fitted, 0.0, 1.0)


# Builders --------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class VischemaConfig(tfds.core.BuilderConfig):
  """How the manual files become records.

  Attributes:
    resize: the rule for non-square images and maps: "squash" or "centre_crop"
      (vmsjax.data.images).
    split_seed: seed of the stratified split, used when there are no split files
      and no split column.
    test_fraction: share of the test split for the stratified split.
  """

  resize: str = "squash"
  split_seed: int = 0
  test_fraction: float = TEST_FRACTION


def _configs() -> list[VischemaConfig]:
  return [
    VischemaConfig(
      name="squash", resize="squash", description="Non-square images squashed to 224x224."
    ),
    VischemaConfig(
      name="centre_crop",
      resize="centre_crop",
      description="The centred square of each image (and map), resized to 224x224.",
    ),
  ]


class ManualBuilder(tfds.core.GeneratorBasedBuilder):
  """What the manual-download builders share: bad-file bookkeeping and a build report.

  With `skip_bad_files=True` (`vmsjax data build --skip_bad_files`) the offending
  files are left out and listed, each with its reason, in `build_report.json` next
  to the records; otherwise the build fails with a message naming every offending
  file. Either way the report's `found_images` equals the examples written plus
  `skipped_images`: nothing is dropped silently.
  """

  SUBFOLDER = ""  # the dataset's folder under a shared manual dir

  def __init__(self, *, skip_bad_files: bool = False, **kwargs: Any):
    self.skip_bad_files = skip_bad_files
    self._bad = images.BadFiles(".", skip_bad_files)
    self._report: dict[str, Any] = {}
    self._pending: set[str] = set()
    self._skipped_images = 0
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """Returns this module's file (tfds' own lookup needs importlib_resources)."""
    return epath.Path(inspect.getfile(cls))

  def _start(self, dl_manager: tfds.download.DownloadManager) -> Path:
    """Resets the bookkeeping for a build; returns the dataset's root folder."""
    manual = Path(os.fspath(dl_manager.manual_dir))
    root = find_root(manual, self.SUBFOLDER)
    self._bad = images.BadFiles(root, self.skip_bad_files)
    self._skipped_images = 0
    self._report = {
      "dataset": self.name,
      "config": self.builder_config.name,
      "version": str(self.version),
      "root": str(root),
      "skip_bad_files": self.skip_bad_files,
      "written": {},
    }
    return root

  def _skip_image(self, path: Path, reason: str) -> None:
    """Records a found image that will not be written."""
    self._bad.add(path, reason)
    self._skipped_images += 1

  def _expect_splits(self, splits, found_images: int, ignored: list[Path]) -> None:
    self._pending = set(splits)
    self._report["found_images"] = found_images
    self._report["ignored"] = [self._bad.relative(p) for p in ignored]

  def _finish_split(self, split: str, written: int) -> None:
    """Called by each split's generator at its end; the last one settles the build.

    Raises:
      VMSError: bad files were met and skipping is off (names every one).
    """
    self._report["written"][split] = written
    self._pending.discard(split)
    if self._pending:
      return
    self._bad.check(f"{self.name}/{self.builder_config.name}")
    total = sum(self._report["written"].values())
    if total + self._skipped_images != self._report["found_images"]:  # a bug, not user data
      raise RuntimeError(
        f"found {self._report['found_images']} images but wrote {total} and skipped "
        f"{self._skipped_images}"
      )
    self._report["skipped_images"] = self._skipped_images
    self._report["skipped"] = self._bad.as_records()
    if not total:
      listed = "; ".join(f"{f}: {r}" for f, r in self._bad.problems)
      raise VMSError(f"no usable image under {self._report['root']}: {listed}")
    # The data dir is the build's temporary folder here; tfds moves it into place.
    write_json(Path(os.fspath(self.data_dir)) / REPORT_NAME, self._report)


def _leaf_features(leaf: str) -> dict[str, int]:
  category = schema.LEAVES.index(leaf)
  category_mid, category_top = schema.upper_levels(category)
  return {"category": category, "category_mid": category_mid, "category_top": category_top}


class Vischema(ManualBuilder):
  """VISCHEMA: 800 scene images with true/false VMS maps, 640 train / 160 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download VISCHEMA from https://www.cs.york.ac.uk/vischema/ and arrange it as\n"
    "  <manual_dir>/vischema/images/<category>/<name>.jpg\n"
    "  <manual_dir>/vischema/maps/<name>.png (RGB: green true VMS, red false VMS)\n"
    "(other accepted layouts: docs/data.md)."
  )
  SUBFOLDER = "vischema"
  WITH_MAPS = True

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=schema.features(with_vms=self.WITH_MAPS),
      supervised_keys=("image", "vms") if self.WITH_MAPS else None,
      homepage="https://www.cs.york.ac.uk/vischema/",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._start(dl_manager)
    layout = scan(root, with_maps=self.WITH_MAPS, with_splits=self.WITH_MAPS, bad=self._bad)
    for path, reason in layout.orphans:
      self._bad.add(path, reason)
    for path, reason in layout.rejected:
      self._skip_image(path, reason)
    config: VischemaConfig = self.builder_config
    metadata: dict[str, Any] = {
      "resize": config.resize,
      "category_source": layout.category_source,
    }
    usable = [item for item in layout.items.values() if not item.problems]
    if self.WITH_MAPS:
      metadata["split"] = self._assign_splits(layout, config)
      metadata["map_scale"] = self._check_maps(usable)
    self.info.metadata.update(metadata)
    splits = SPLITS if self.WITH_MAPS else ("test",)
    self._expect_splits(splits, len(layout.items) + len(layout.rejected), layout.ignored)
    for item in layout.items.values():
      if item.problems:
        for path, reason in item.problems:
          self._bad.add(path, reason)
        self._skipped_images += 1
    good = sorted((i for i in layout.items.values() if not i.problems), key=lambda i: i.id)
    by_split = {s: [i for i in good if not self.WITH_MAPS or i.split == s] for s in splits}
    for split, members in by_split.items():
      if not members:  # tfds cannot write an empty split
        raise VMSError(
          f"no usable image for the {split} split of {root} (split from: "
          f"{layout.split_source}; {len(self._bad)} bad files: "
          + "; ".join(f"{f}: {r}" for f, r in self._bad.problems[:20])
          + ")"
        )
    return {split: self._generate_examples(split, members) for split, members in by_split.items()}

  def _assign_splits(self, layout: Layout, config: VischemaConfig) -> dict[str, Any]:
    """Fills in each item's split; returns what the metadata records about it."""
    if layout.split_source != "stratified":
      return {"source": layout.split_source}
    # Every image with a category takes part, even one whose map turns out bad: so
    # the split of a good image does not depend on which other files are broken.
    categories = {i.id: i.category for i in layout.items.values() if i.category is not None}
    drawn = stratified_split(categories, config.test_fraction, config.split_seed)
    for item_id, split in drawn.items():
      layout.items[item_id].split = split
    return {
      "source": "stratified",
      "seed": config.split_seed,
      "test_fraction": config.test_fraction,
      "test_ids": sorted(i for i, s in drawn.items() if s == "test"),
    }

  def _check_maps(self, usable: list[Item]) -> dict[str, Any]:
    """Reads every map once, marks the bad ones, and decides the numeric divisor."""
    maxima: list[tuple[Item, float]] = []
    for item in usable:
      try:
        raw = read_raw_map(item)
      except ValueError as e:
        item.problem(str(e), (item.map_files or list(item.map_pair.values()))[0])
        continue
      if raw.divisor is None:
        maxima.append((item, float(raw.values.max())))
    for item, peak in maxima:
      if peak > 255.0:
        item.problem(f"values up to {peak:g}; expected [0, 1] or [0, 255]", item.map_files[0])
    self._numeric_divisor = numeric_divisor([p for _, p in maxima if p <= 255.0])
    return {
      "image_maps": "8-bit v -> v / 255 (16-bit grayscale pairs: v / 65535)",
      "numeric_maps_divisor": self._numeric_divisor,
      "uint8_numeric_maps_divisor": 255.0,
      "paper_mse_factor": 255.0**2,
      "per_channel_normalised": False,
    }

  def _generate_examples(self, split: str, items: list[Item]) -> Iterator[tuple[str, dict]]:
    config: VischemaConfig = self.builder_config
    written = 0
    for item in items:
      try:
        image = images.read_fitted(item.image, schema.IMAGE_SIZE, config.resize)
      except VMSError as e:
        self._skip_image(item.image, str(e))
        continue
      record: dict[str, Any] = {"image": png_bytes(image), "id": item.id}
      record.update(_leaf_features(item.category))
      if self.WITH_MAPS:
        raw = read_raw_map(item)  # checked in _check_maps
        divisor = raw.divisor if raw.divisor is not None else self._numeric_divisor
        record["vms"] = fit_map(raw, divisor, schema.IMAGE_SIZE, config.resize)
      written += 1
      yield item.id, record
    self._finish_split(split, written)


class Vischema2(Vischema):
  """VISCHEMA2: FIGRIM scenes in the VISCHEMA categories, images only.

  One split, `test`: the whole set (it serves evaluation; tfds reserves `all`).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Arrange the VISCHEMA2 images as <manual_dir>/vischema2/images/<category>/<name>.jpg"
    " (other accepted layouts: docs/data.md)."
  )
  SUBFOLDER = "vischema2"
  WITH_MAPS = False
