"""VISCHEMA / VISCHEMA2 builders: each accepted layout builds and reads back exactly."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from PIL import Image

from tests.test_data_folders import make_vischema
from vmsjax import cli
from vmsjax.data import catalogue, pipeline, schema
from vmsjax.errors import VMSError


def _records(name, split, data_dir):
  source = catalogue.open_split(name, split, str(data_dir))
  return {r["id"]: r for r in (source[i] for i in range(len(source)))}


def _check_categories(record, leaf):
  category = schema.LEAVES.index(leaf)
  assert record["category"] == category
  mid, top = record["category_mid"], record["category_top"]
  assert schema.MIDDLE[mid] == schema.LEAF_TO_MIDDLE[leaf]
  assert schema.TOP[top] == schema.MIDDLE_TO_TOP[schema.MIDDLE[mid]]


def _pil_resize_map(raw, box, size=224):
  """Reference: crop (left, top, right, bottom), then Pillow float bilinear per channel."""
  left, top, right, bottom = box
  channels = [
    np.asarray(
      Image.fromarray(np.ascontiguousarray(raw[top:bottom, left:right, c], np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR
      )
    )
    for c in range(2)
  ]
  return np.stack(channels, -1)


@pytest.fixture(scope="module")
def folders_build(tmp_path_factory):
  """The common layout: images/<category>/, RGB map PNGs, no split file (drawn split)."""
  base = tmp_path_factory.mktemp("vischema")
  expected = make_vischema(base / "manual" / "vischema", per_category=3)
  data_dir = base / "data"
  report = catalogue.build("vischema", str(data_dir), manual_dir=str(base / "manual"))
  return expected, data_dir, report


def test_folders_rgb_maps_bit_exact(folders_build):
  expected, data_dir, report = folders_build
  train, test = _records("vischema", "train", data_dir), _records("vischema", "test", data_dir)
  # 24 images: round(24 * 0.2) = 5 in test; every image exactly once.
  assert len(test) == 5 and len(train) == 19
  assert sorted(train) + sorted(test) != [] and set(train) | set(test) == set(expected)
  assert not set(train) & set(test)
  # Stratified: 3 per category -> floor(0.6) = 0 each, remainders give 5 leaves one.
  per_leaf = collections.Counter(expected[i]["category"] for i in test)
  assert set(per_leaf.values()) == {1} and len(per_leaf) == 5
  for item_id, record in {**train, **test}.items():
    want = expected[item_id]
    np.testing.assert_array_equal(record["image"], want["image"])
    assert record["vms"].dtype == np.float32 and record["vms"].shape == (224, 224, 2)
    # Green = true (channel 0), red = false (channel 1), stored as v / 255.
    np.testing.assert_allclose(record["vms"], want["raw_map"], rtol=0, atol=1e-7)
    _check_categories(record, want["category"])
  assert report["found_images"] == 24 and report["skipped_images"] == 0
  assert report["written"] == {"train": 19, "test": 5} and report["skipped"] == []


def test_drawn_split_recorded_in_metadata_and_stable(folders_build, tmp_path):
  expected, data_dir, _ = folders_build
  builder = catalogue._prepared_builder("vischema", str(data_dir))
  split = builder.info.metadata["split"]
  assert split["source"] == "stratified" and split["seed"] == 0
  assert sorted(split["test_ids"]) == sorted(_records("vischema", "test", data_dir))
  assert builder.info.metadata["map_scale"]["paper_mse_factor"] == 255.0**2
  # The same files in another order of creation (other folder) give the same split.
  again = make_vischema(tmp_path / "vischema", per_category=3)
  assert again.keys() == expected.keys()
  catalogue.build("vischema", str(tmp_path / "data"), manual_dir=str(tmp_path))
  meta = catalogue._prepared_builder("vischema", str(tmp_path / "data")).info.metadata
  assert meta["split"]["test_ids"] == split["test_ids"]


def test_batches_carry_category_and_maps(folders_build):
  expected, data_dir, _ = folders_build
  source = catalogue.open_split("vischema", "train", str(data_dir))
  batch = next(pipeline.train_batches(source, batch_size=4, seed=0))
  assert batch["image"].shape == (4, 224, 224, 3) and batch["vms"].shape == (4, 224, 224, 2)
  assert batch["category"].dtype == np.int32 and batch["category"].shape == (4,)
  batches = list(pipeline.eval_batches(catalogue.open_split("vischema", "test", str(data_dir)), 4))
  ids = [i for b in batches for i in b["id"]]
  assert ids == sorted(ids) and len(ids) == 5
  cats = np.concatenate([b["category"] for b in batches])
  assert [schema.LEAVES[c] for c in cats] == [expected[i]["category"] for i in ids]


def test_processes_read_disjoint_slices_of_each_batch(folders_build):
  _, data_dir, _ = folders_build
  source = catalogue.open_split("vischema", "train", str(data_dir))
  whole = next(pipeline.train_batches(source, batch_size=4, seed=1, start_step=3))
  parts = [
    next(pipeline.train_batches(source, 4, 1, start_step=3, process_index=p, process_count=2))
    for p in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([p["vms"] for p in parts]), whole["vms"])
  np.testing.assert_array_equal(np.concatenate([p["category"] for p in parts]), whole["category"])


def test_data_cli_build_and_info(folders_build, capsys):
  expected, data_dir, _ = folders_build
  assert cli.main(["data", "info", "vischema", "--data_dir", str(data_dir)]) == 0
  out = capsys.readouterr().out
  assert "train: 19 examples" in out and "test: 5 examples" in out
  counts = catalogue.category_counts("vischema", str(data_dir))
  total = collections.Counter(e["category"] for e in expected.values())
  assert {leaf: counts["train"][leaf] + counts["test"][leaf] for leaf in schema.LEAVES} == total
  for leaf in schema.LEAVES:  # the per-category table: a row per leaf, a column per split
    assert f"{leaf} " in out
    row = next(line for line in out.splitlines() if line.strip().startswith(leaf + " "))
    assert row.split()[1:] == [str(counts["train"][leaf]), str(counts["test"][leaf])]
  # Rebuilding is a no-op that prints the same description and the build report.
  args = ["data", "build", "vischema", "--manual_dir", "/nonexistent", "--data_dir", str(data_dir)]
  assert cli.main(args) == 0
  assert "found 24 images; wrote 19 train, 5 test; skipped 0 images" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
  empty = tmp_path / "manual"
  empty.mkdir()
  args = ["data", "build", "vischema", "--manual_dir", str(empty), "--data_dir", str(tmp_path)]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "missing or empty" in err and str(empty) in err
  assert cli.main(["data", "info", "vischema", "--data_dir", str(tmp_path)]) == 2
  assert "vmsjax data build vischema --manual_dir DIR" in capsys.readouterr().err
  assert cli.main(["data", "info", "vischema/nope", "--data_dir", str(tmp_path)]) == 2
  assert "vischema/centre_crop" in capsys.readouterr().err
  with pytest.raises(VMSError, match="generated"):
    catalogue.build("synthetic", str(tmp_path), manual_dir=str(tmp_path))


def test_flat_csv_npy_centre_crop(tmp_path):
  expected = make_vischema(
    tmp_path / "m", layout="csv", map_format="npy", per_category=2, shape=(48, 64), split="csv"
  )
  catalogue.build("vischema/centre_crop", str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  train = _records("vischema/centre_crop", "train", tmp_path / "d")
  test = _records("vischema/centre_crop", "test", tmp_path / "d")
  assert {i for i, e in expected.items() if e["split"] == "test"} == set(test)
  assert len(train) == 8
  box = (8, 0, 56, 48)  # the centred 48x48 square of a 48x64 image
  for item_id, record in {**train, **test}.items():
    want = expected[item_id]
    crop = Image.fromarray(want["image"][:, 8:56]).resize((224, 224), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(record["image"], np.asarray(crop))
    reference = np.clip(_pil_resize_map(want["raw_map"], box), 0, 1)
    np.testing.assert_allclose(record["vms"], reference, atol=1e-6)
    _check_categories(record, want["category"])
  meta = catalogue._prepared_builder("vischema/centre_crop", str(tmp_path / "d")).info.metadata
  assert meta["split"] == {"source": "csv"} and meta["resize"] == "centre_crop"
  assert meta["map_scale"]["numeric_maps_divisor"] == 1.0


def test_split_files_npz_0_255_maps_of_another_size(tmp_path):
  expected = make_vischema(
    tmp_path / "m" / "vischema",
    map_format="npz255",
    per_category=2,
    shape=(224, 224),
    map_shape=(56, 56),
    split="files",
  )
  report = catalogue.build("vischema", str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  assert report["written"] == {"train": 8, "test": 8}
  test = _records("vischema", "test", tmp_path / "d")
  assert set(test) == {i for i, e in expected.items() if e["split"] == "test"}
  meta = catalogue._prepared_builder("vischema", str(tmp_path / "d")).info.metadata
  assert meta["map_scale"]["numeric_maps_divisor"] == 255.0
  for item_id, record in test.items():
    want = expected[item_id]
    np.testing.assert_array_equal(record["image"], want["image"])
    reference = _pil_resize_map(want["raw_map"], (0, 0, 56, 56))
    np.testing.assert_allclose(record["vms"], np.clip(reference, 0, 1), atol=1e-6)
    # Bilinear upsampling of a 0..255 map / 255 stays within [0, 1] and keeps its scale.
    assert abs(record["vms"].max() - want["raw_map"].max()) < 0.05


@pytest.mark.parametrize("map_format", ["mat", "pair"])
def test_mat_and_grayscale_pair_maps(tmp_path, map_format):
  expected = make_vischema(tmp_path / "m", map_format=map_format, per_category=2, split="csv")
  catalogue.build("vischema", str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  records = {
    **_records("vischema", "test", tmp_path / "d"),
    **_records("vischema", "train", tmp_path / "d"),
  }
  assert set(records) == set(expected)
  for item_id, record in records.items():
    np.testing.assert_array_equal(record["image"], expected[item_id]["image"])
    np.testing.assert_allclose(record["vms"], expected[item_id]["raw_map"], atol=1e-7)


def test_vischema2_images_only(tmp_path):
  expected = make_vischema(tmp_path / "m" / "vischema2", map_format="none", per_category=2)
  report = catalogue.build("vischema2", str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  assert report["written"] == {"test": 16}
  records = _records("vischema2", "test", tmp_path / "d")
  assert set(records) == set(expected)
  for item_id, record in records.items():
    assert "vms" not in record
    np.testing.assert_array_equal(record["image"], expected[item_id]["image"])
    _check_categories(record, expected[item_id]["category"])
  batch = next(
    iter(pipeline.eval_batches(catalogue.open_split("vischema2", "test", tmp_path / "d"), 16))
  )
  assert "vms" not in batch and batch["category"].shape == (16,)


def test_images_in_the_wild_become_rgb_records(tmp_path):
  """Grayscale, CMYK, palette, 16-bit and EXIF-rotated files all build, as read_rgb reads them."""
  from vmsjax.data import images

  rng = np.random.default_rng(5)
  folder = tmp_path / "m" / "images" / "kitchen"
  folder.mkdir(parents=True)
  Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8), "L").save(folder / "grey.jpg")
  Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
  Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).convert("P").save(
    folder / "palette.png"
  )
  Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16)).save(folder / "deep.png")
  exif = Image.Exif()
  exif[0x0112] = 6  # stored sideways: the viewer turns it 90 degrees clockwise
  tall = np.zeros((40, 60, 3), np.uint8)
  tall[:, :30] = 255
  Image.fromarray(tall).save(folder / "rotated.jpg", exif=exif, quality=95)
  catalogue.build("vischema2/centre_crop", str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  records = _records("vischema2/centre_crop", "test", tmp_path / "d")
  assert sorted(records) == ["cmyk.jpg", "deep.png", "grey.jpg", "palette.png", "rotated.jpg"]
  for name, record in records.items():
    assert record["image"].dtype == np.uint8 and record["image"].shape == (224, 224, 3)
    want = images.read_fitted(folder / name, 224, "centre_crop")
    np.testing.assert_array_equal(record["image"], want)
  # Upright, the rotated image is 60 tall x 40 wide with the white half on top.
  rotated = records["rotated.jpg"]["image"].astype(int)
  assert rotated[:100].mean() > 200 and rotated[124:].mean() < 50
  assert np.abs(records["cmyk.jpg"]["image"][100, 100].astype(int) - [255, 0, 0]).max() <= 8
  grey = records["grey.jpg"]["image"]
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
