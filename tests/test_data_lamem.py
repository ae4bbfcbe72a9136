"""LaMem builder: strict split files, scores, per-index configs, the seeded subset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.test_data_folders import make_lamem
from vmsjax.data import catalogue, lamem, pipeline
from vmsjax.errors import VMSError


def _records(name, split, data_dir):
  source = catalogue.open_split(name, split, str(data_dir))
  return {r["id"]: r for r in (source[i] for i in range(len(source)))}


def test_parse_split_file_strict(tmp_path):
  good = tmp_path / "train_1.txt"
  good.write_text("a.jpg 0.5\n\nsub/b.jpg   0.75\n")
  entries = lamem.parse_split_file(good)
  assert [(e.name, e.score) for e in entries] == [("a.jpg", 0.5), ("sub/b.jpg", 0.75)]
  assert entries[1].source == f"{tmp_path.name}/train_1.txt:3"
  bad = tmp_path / "test_1.txt"
  bad.write_text("a.jpg 0.5\nb.jpg\nc.jpg high\nd.jpg nan\na.jpg 0.5\n/abs.jpg 0.1\ne.jpg 1 2\n")
  with pytest.raises(VMSError) as e:
    lamem.parse_split_file(bad)
  message = str(e.value)
  assert message.startswith("6 malformed line(s)")
  for line, what in [
    (2, "expected `<file> <score>`"),
    (3, "'high' is not a number"),
    (4, "is not finite"),
    (5, "already listed on line 1"),
    (6, "relative to images/"),
    (7, "expected `<file> <score>`"),
  ]:
    assert f"{bad}:{line}: " in message and what in message


def test_read_splits_missing_and_conflicting(tmp_path):
  make_lamem(tmp_path, indices=(1,))
  with pytest.raises(VMSError, match=r"splits/train_2.txt is missing"):
    lamem.read_splits(tmp_path, 2)
  first = (tmp_path / "splits" / "train_1.txt").read_text().splitlines()[0].split()[0]
  with open(tmp_path / "splits" / "test_1.txt", "a") as f:
    f.write(f"{first} 0.123\n")
  with pytest.raises(VMSError, match=rf"{first} scores .* at splits/train_1.txt:1 but 0.123"):
    lamem.read_splits(tmp_path, 1)


def test_draw_subset_is_seeded_and_sorted_first():
  entries = [lamem.Entry(f"{i:03d}.jpg", i / 10, "x") for i in (5, 1, 9, 3, 7, 2)]
  drawn = lamem.draw_subset(entries, 3, seed=0)
  names = sorted(e.name for e in entries)
  reference = [names[i] for i in sorted(np.random.default_rng(0).choice(6, 3, replace=False))]
  assert [e.name for e in drawn] == reference
  assert lamem.draw_subset(list(reversed(entries)), 3, seed=0) == drawn
  with pytest.raises(VMSError, match="cannot draw 7"):
    lamem.draw_subset(entries, 7, seed=0)


def test_split_config_builds_scores_and_images(tmp_path):
  manual = tmp_path / "manual" / "lamem"
  scores = make_lamem(manual)
  report = catalogue.build("lamem/split2", str(tmp_path / "d"), manual_dir=str(tmp_path / "manual"))
  assert report["written"] == {"train": 6, "val": 2, "test": 3}
  assert report["images_on_disk"] == 13 and report["images_listed"] == 11
  for split in ("train", "val", "test"):
    listed = lamem.parse_split_file(manual / "splits" / f"{split}_2.txt")
    records = _records("lamem/split2", split, tmp_path / "d")
    assert set(records) == {e.name for e in listed}
    for name, record in records.items():
      assert record["score"] == pytest.approx(scores[name], abs=1e-6)
      assert "category" not in record and "vms" not in record
      with Image.open(manual / "images" / name) as im:  # 32x40 -> squashed to 224x224
        reference = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
      np.testing.assert_array_equal(record["image"], reference)
  source = catalogue.open_split("lamem/split2", "train", str(tmp_path / "d"))
  batch = next(pipeline.train_batches(source, batch_size=2, seed=0))
  assert batch["score"].dtype == np.float32 and "category" not in batch
  assert catalogue.category_counts("lamem/split2", str(tmp_path / "d")) is None
  assert "train: 6 examples" in catalogue.describe("lamem/split2", str(tmp_path / "d"))


def test_subset_config(tmp_path):
  scores = make_lamem(tmp_path / "lamem", indices=(1,))
  config = lamem.LamemConfig(name="subset4", split_index=1, subset=4, subset_seed=0)
  builder = lamem.Lamem(data_dir=str(tmp_path / "d"), config=config)
  import tensorflow_datasets as tfds

  builder.download_and_prepare(
    file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=tmp_path)
  )
  listed = sorted({e.name for es in lamem.read_splits(tmp_path / "lamem", 1).values() for e in es})
  want = [listed[i] for i in sorted(np.random.default_rng(0).choice(len(listed), 4, replace=False))]
  assert builder.info.metadata["subset_ids"] == want
  assert list(builder.info.splits) == ["test"]
  records = builder.as_data_source("test")
  got = {r["id"].decode(): float(r["score"]) for r in (records[i] for i in range(len(records)))}
  assert sorted(got) == want and all(abs(got[n] - scores[n]) < 1e-6 for n in got)
  assert [c.name for c in lamem.Lamem.BUILDER_CONFIGS][-1] == "subset10k"


def test_missing_and_corrupt_images(tmp_path):
  manual = tmp_path / "lamem"
  make_lamem(manual, indices=(1,))
  entries = lamem.read_splits(manual, 1)
  missing, corrupt = entries["train"][0].name, entries["test"][0].name
  (manual / "images" / missing).unlink()
  (manual / "images" / corrupt).write_bytes(b"\xff\xd8\xff\xe0 truncated")
  with pytest.raises(VMSError) as e:
    catalogue.build("lamem", str(tmp_path / "fail"), manual_dir=str(tmp_path))
  message = str(e.value)
  assert message.startswith("2 bad file(s)")
  assert f"images/{missing}: listed at splits/train_1.txt:1 but there is no such image" in message
  assert f"images/{corrupt}" in message and "corrupt or truncated" in message
  report = catalogue.build(
    "lamem", str(tmp_path / "skip"), manual_dir=str(tmp_path), skip_bad_files=True
  )
  assert report["found_images"] == 11 and report["skipped_images"] == 2
  assert report["written"] == {"train": 5, "val": 2, "test": 2}
  assert {e["file"] for e in report["skipped"]} == {f"images/{missing}", f"images/{corrupt}"}
