"""Generated VISCHEMA / LaMem folders for the data tests, and unit tests of the layout rules.

`make_vischema` writes a small folder in one of the accepted layouts and returns
what a correct build must contain, computed independently of the builder.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmsjax.data import manual, schema, vischema_layout, vischema_maps
from vmsjax.data.images import BadFiles
from vmsjax.errors import VMSError

# Folder spellings a user may have, one per leaf (in schema.LEAVES order).
FOLDER_NAMES = (
  "Kitchen",
  "living room",
  "Small-Public",
  "big_public",
  "work-home",
  "Public Entertainment",
  "03_populated",
  "ISOLATED",
)


def write_png(path: Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def make_vischema(
  root: Path,
  layout: str = "folders",
  map_format: str = "rgb",
  per_category: int = 3,
  shape: tuple[int, int] = (224, 224),
  map_shape: tuple[int, int] | None = None,
  split: str = "stratified",
  seed: int = 0,
) -> dict[str, dict]:
  """Writes a VISCHEMA-style folder and returns the expected records by id.

  Args:
    root: the dataset root to create (holds images/, maps/, ...).
    layout: "folders" (images/<category>/) or "csv" (flat + categories.csv).
    map_format: "rgb" (PNG, green true, red false), "npy" (float [0, 1]), "npz255"
      (true_vms/false_vms in 0..255 floats), "mat" (MATLAB `vms`), "pair" (grayscale
      maps/true + maps/false), or "none" (VISCHEMA2).
    per_category: images per leaf.
    shape: image (H, W).
    map_shape: map (H, W), default `shape`.
    split: "stratified", "files" (train.txt/test.txt) or "csv" (a split column).
    seed: content seed.

  Returns:
    id -> {"image": uint8 (H, W, 3), "raw_map": float64 (h, w, 2) in [0, 1]
    (before resizing), "category": leaf, "split": "train"/"test"/None}.
  """
  rng = np.random.default_rng(seed)
  map_shape = map_shape or shape
  expected: dict[str, dict] = {}
  csv_rows = ["name,category" + (",split" if split == "csv" else "")]
  for c, (leaf, folder) in enumerate(zip(schema.LEAVES, FOLDER_NAMES, strict=True)):
    for k in range(per_category):
      name = f"{leaf[:4]}{c}_{k:02d}.png"
      image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
      sub = folder if layout == "folders" else ""
      write_png(root / "images" / sub / name, image)
      item_split = ("test" if k == 0 else "train") if split != "stratified" else None
      if layout == "csv" or split == "csv":
        label = folder.replace("-", " ")
        csv_rows.append(f"{name},{label}" + (f",{item_split}" if split == "csv" else ""))
      stem = name[:-4]
      raw = None
      if map_format == "rgb":
        rgb = rng.integers(0, 256, (*map_shape, 3), dtype=np.uint8)
        write_png(root / "maps" / f"{stem}.png", rgb)
        raw = np.stack([rgb[:, :, 1], rgb[:, :, 0]], -1) / 255.0
      elif map_format == "npy":
        raw = rng.random((*map_shape, 2))
        (root / "maps").mkdir(exist_ok=True)
        np.save(root / "maps" / f"{stem}.npy", raw.astype(np.float32))
        raw = raw.astype(np.float32).astype(np.float64)
      elif map_format == "npz255":
        raw255 = np.round(rng.random((*map_shape, 2)) * 255.0)
        (root / "maps").mkdir(exist_ok=True)
        np.savez(root / "maps" / f"{stem}.npz", true_vms=raw255[..., 0], false_vms=raw255[..., 1])
        raw = raw255 / 255.0
      elif map_format == "mat":
        import scipy.io

        raw = rng.random((*map_shape, 2))
        (root / "maps" / folder).mkdir(parents=True, exist_ok=True)  # maps in subfolders too
        scipy.io.savemat(root / "maps" / folder / f"{stem}.mat", {"vms": raw})
      elif map_format == "pair":
        grey = rng.integers(0, 256, (*map_shape, 2), dtype=np.uint8)
        write_png(root / "maps" / "true" / f"{stem}.png", grey[..., 0])
        write_png(root / "maps" / "false" / f"{stem}.png", grey[..., 1])
        raw = grey / 255.0
      expected[name] = {"image": image, "raw_map": raw, "category": leaf, "split": item_split}
  if layout == "csv" or split == "csv":
    (root / "categories.csv").write_text("\n".join(csv_rows) + "\n")
  if split == "files":
    for s in ("train", "test"):
      names = [n for n, e in expected.items() if e["split"] == s]
      (root / f"{s}.txt").write_text("\n".join(names) + "\n")
  return expected


def make_lamem(root: Path, sizes=(6, 2, 3), indices=(1, 2), seed=0) -> dict[str, float]:
  """Writes a LaMem-style folder (32x40 JPEGs); returns the score of each image."""
  rng = np.random.default_rng(seed)
  total = sum(sizes) + 2  # two images listed nowhere
  scores = {f"{i:08d}.jpg": round(float(rng.uniform(0.4, 1.0)), 4) for i in range(total)}
  for name in scores:
    write_png_jpg = root / "images" / name
    write_png_jpg.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(write_png_jpg)
  (root / "splits").mkdir(parents=True, exist_ok=True)
  names = sorted(scores)
  for k in indices:
    order = np.random.default_rng(k).permutation(sum(sizes))
    start = 0
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
      chosen = [names[i] for i in order[start : start + size]]
      start += size
      text = "".join(f"{n} {scores[n]}\n" for n in chosen)
      (root / "splits" / f"{split}_{k}.txt").write_text(text)
  return scores


# Unit tests of the layout rules (no tfds build).


@pytest.mark.parametrize(
  "name,leaf",
  [
    ("Kitchen", "kitchen"),
    ("living room", "living_room"),
    ("Living-Room", "living_room"),
    ("small_public", "small_public"),
    ("Big Public", "big_public"),
    ("work/home", "work_home"),
    ("Work-Home", "work_home"),
    ("public entertainment", "public_entertainment"),
    ("03_populated", "populated"),
    ("1. Isolated", "isolated"),
  ],
)
def test_match_category_forgiving(name, leaf):
  assert vischema_layout.match_category(name) == leaf


@pytest.mark.parametrize("name", ["office", "beach", "", "kitchenette"])
def test_match_category_unknown(name):
  assert vischema_layout.match_category(name) is None


def test_stratified_split_counts_determinism_and_order_independence():
  categories = {f"{leaf}_{k:03d}.jpg": leaf for leaf in schema.LEAVES for k in range(100)}
  split = vischema_layout.stratified_split(categories, 0.2, seed=0)
  assert collections.Counter(split.values()) == {"train": 640, "test": 160}
  per_leaf = collections.Counter(categories[i] for i, s in split.items() if s == "test")
  assert set(per_leaf.values()) == {20}
  shuffled = dict(reversed(list(categories.items())))
  assert vischema_layout.stratified_split(shuffled, 0.2, seed=0) == split
  other = vischema_layout.stratified_split(categories, 0.2, seed=1)
  assert other != split and collections.Counter(other.values())["test"] == 160


def test_stratified_split_uneven_categories_hits_total():
  sizes = [7, 3, 11, 0, 5, 9, 2, 13]  # 50 images: 10 test by largest remainder
  categories = {
    f"{leaf}{k}": leaf for leaf, n in zip(schema.LEAVES, sizes, strict=True) for k in range(n)
  }
  split = vischema_layout.stratified_split(categories, 0.2, seed=3)
  assert sum(s == "test" for s in split.values()) == 10
  for leaf, n in zip(schema.LEAVES, sizes, strict=True):
    test = sum(1 for i, s in split.items() if s == "test" and categories[i] == leaf)
    assert int(np.floor(n * 0.2)) <= test <= int(np.floor(n * 0.2)) + 1


def test_scan_folders_csv_and_split_files(tmp_path):
  expected = make_vischema(
    tmp_path, layout="csv", map_format="npy", per_category=2, split="files", shape=(8, 8)
  )
  (tmp_path / "images" / "Thumbs.db").write_bytes(b"x")
  bad = BadFiles(tmp_path, skip=False)
  layout = vischema_layout.scan(tmp_path, with_maps=True, with_splits=True, bad=bad)
  assert not len(bad) and layout.split_source == "split files" and layout.category_source == "csv"
  assert {i: (it.category, it.split) for i, it in layout.items.items()} == {
    i: (e["category"], e["split"]) for i, e in expected.items()
  }
  assert all(not it.problems and len(it.map_files) == 1 for it in layout.items.values())
  assert [p.name for p in layout.ignored] == ["Thumbs.db"]


def test_scan_layout_errors(tmp_path):
  make_vischema(tmp_path, per_category=1, shape=(8, 8), split="files")
  (tmp_path / "test.txt").unlink()
  with pytest.raises(VMSError, match="train.txt found without its partner"):
    vischema_layout.scan(tmp_path, True, True, BadFiles(tmp_path, False))
  with pytest.raises(VMSError, match="no images/ folder"):
    manual.find_root(tmp_path / "nowhere", "vischema")
  assert manual.find_root(tmp_path, "vischema") == tmp_path
  (tmp_path / "categories.csv").write_text("file,colour\na.png,red\n")
  with pytest.raises(VMSError, match="categories.csv line 1"):
    vischema_layout.scan(tmp_path, True, False, BadFiles(tmp_path, False))


def test_matlab_v73_maps_read_through_h5py(tmp_path):
  import h5py
  import scipy.io

  path = tmp_path / "a.mat"
  vms = np.random.default_rng(0).random((5, 7, 2))
  with h5py.File(path, "w", userblock_size=512) as f:
    f["vms"] = vms.T  # MATLAB is column-major: HDF5 sees the axes reversed
  header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."
  with open(path, "r+b") as f:
    f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")
  with pytest.raises(NotImplementedError):
    scipy.io.loadmat(path)  # so the h5py path is the one exercised
  raw = vischema_maps.read_raw_map(
    vischema_layout.Item("a.png", tmp_path / "a.png", map_files=[path])
  )
  np.testing.assert_array_equal(raw.values, vms)
  assert raw.kind == "mat" and raw.divisor is None


def test_numeric_map_variants(tmp_path):
  rng = np.random.default_rng(1)
  true, false = rng.random((4, 6)), rng.random((4, 6))
  np.savez(tmp_path / "split.npz", true_vms=true, false_vms=false)
  np.save(tmp_path / "chw.npy", np.stack([true, false]))  # (2, H, W) is transposed
  np.save(tmp_path / "u8.npy", np.full((4, 6, 2), 255, np.uint8))
  np.savez(tmp_path / "wrong.npz", foo=true, bar=false)
  item = vischema_layout.Item("x.png", tmp_path / "x.png")
  for name in ("split.npz", "chw.npy"):
    item.map_files = [tmp_path / name]
    np.testing.assert_array_equal(vischema_maps.read_raw_map(item).values[..., 1], false)
  item.map_files = [tmp_path / "u8.npy"]
  assert vischema_maps.read_raw_map(item).divisor == 255.0  # uint8 arrays are on the 0-255 scale
  item.map_files = [tmp_path / "wrong.npz"]
  with pytest.raises(ValueError, match=r"variables \['bar', 'foo'\]"):
    vischema_maps.read_raw_map(item)
  assert (
    vischema_maps.numeric_divisor([0.2, 1.0]) == 1.0
    and vischema_maps.numeric_divisor([3.0]) == 255.0
  )
