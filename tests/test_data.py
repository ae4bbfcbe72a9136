"""Tests of the synthetic dataset, its TFDS build, and the grain input pipeline."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vmsjax.data import catalogue, export, pipeline, schema, synthetic
from vmsjax.errors import VMSError


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  """2-D Pearson correlation (rho2D) of two maps."""
  a, b = a - a.mean(), b - b.mean()
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _inside(obj: synthetic.SceneObject, x: int, y: int) -> bool:
  return np.hypot(x - obj.x, y - obj.y) <= obj.radius


@pytest.fixture(scope="module")
def data_dir(request, tmp_path_factory) -> str:
  """A data_dir holding the full synthetic dataset (800 examples)."""
  # The suite's conftest builds it once per session (about 20 s); reuse that build
  # when there is one, so running all the tests does not build it twice.
  try:
    return request.getfixturevalue("synthetic_data_dir")
  except pytest.FixtureLookupError:
    path = str(tmp_path_factory.mktemp("tfds"))
    catalogue.build("synthetic", path)
    return path


@pytest.fixture(scope="module")
def examples() -> list[dict]:
  return [synthetic.render_example(0, "train", i) for i in range(64)]


def _fake_source(n: int) -> list[dict]:
  """A tiny in-memory source whose image encodes the example's index in base 256."""
  source = []
  for i in range(n):
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0], image[..., 1] = divmod(i, 256)
    source.append(
      {
        "image": image,
        "vms": np.zeros((2, 2, 2), np.float32),
        "category": i % 8,
        "id": f"ex_{i:04d}",
      }
    )
  return source


def _indices(batch: dict) -> list[int]:
  """The indices of a batch of `_fake_source` examples."""
  pixels = batch["image"][:, 0, 0].astype(int)
  return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


# --- render_example and the map rule -------------------------------------------


def test_render_is_deterministic_and_order_free():
  later = synthetic.render_example(0, "train", 17)
  synthetic.render_example(0, "train", 3)  # other draws in between change nothing
  again = synthetic.render_example(0, "train", 17)
  for key in ("image", "vms"):
    np.testing.assert_array_equal(later[key], again[key])
  assert later["objects"] == again["objects"]
  other = synthetic.render_example(0, "train", 18)
  assert not np.array_equal(later["image"], other["image"])
  assert not np.array_equal(later["image"], synthetic.render_example(1, "train", 17)["image"])
  assert not np.array_equal(later["image"], synthetic.render_example(0, "test", 17)["image"])


def test_render_fields(examples):
  for index, example in enumerate(examples):
    assert example["image"].dtype == np.uint8 and example["image"].shape == (224, 224, 3)
    assert example["vms"].dtype == np.float32 and example["vms"].shape == (224, 224, 2)
    assert example["category"] == index % 8
    leaf = schema.LEAVES[example["category"]]
    mid = schema.LEAF_TO_MIDDLE[leaf]
    assert schema.MIDDLE[example["category_mid"]] == mid
    assert schema.TOP[example["category_top"]] == schema.MIDDLE_TO_TOP[mid]
    assert example["id"] == f"synthetic_train_{index:04d}.png"
    assert 2 <= len(example["objects"]) <= 5


def test_render_rejects_bad_split_and_index():
  with pytest.raises(VMSError, match="train, test"):
    synthetic.render_example(0, "validation", 0)
  with pytest.raises(VMSError, match="out of range"):
    synthetic.render_example(0, "test", 160)


def test_maps_in_range_with_unit_peak_and_not_constant(examples):
  for example in examples:
    vms = example["vms"]
    assert vms.min() >= 0.0 and vms.max() <= 1.0
    for channel in range(2):
      assert vms[..., channel].max() == 1.0
      assert vms[..., channel].min() < 0.05
    assert not np.allclose(vms[..., 0], vms[..., 1], atol=0.1)


def test_objects_are_visible_and_do_not_overlap(examples):
  for example in examples:
    objects = example["objects"]
    kinds = {obj.kind for obj in objects}
    assert kinds & set(synthetic.TRUE_KINDS) and kinds & set(synthetic.FALSE_KINDS)
    for i, a in enumerate(objects):
      assert 0.12 * 224 <= a.x <= 0.88 * 224 and 0.12 * 224 <= a.y <= 0.88 * 224
      assert 12 <= a.radius <= 32
      for b in objects[i + 1 :]:
        assert np.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius
      # The object's own colour is drawn at its centre (noise aside).
      colour = example["image"][int(round(a.y)), int(round(a.x))].astype(int)
      assert np.abs(colour - synthetic._KIND_COLOURS[a.kind]).max() <= 25 + 4 * 6


def test_each_channel_peaks_on_its_own_kind_of_object(examples):
  for example in examples:
    for channel, kinds in ((0, synthetic.TRUE_KINDS), (1, synthetic.FALSE_KINDS)):
      y, x = np.unravel_index(np.argmax(example["vms"][..., channel]), (224, 224))
      hits = [obj for obj in example["objects"] if _inside(obj, x, y)]
      assert len(hits) == 1 and hits[0].kind in kinds, (example["id"], channel, hits)


def test_map_rule_by_hand():
  disc = synthetic.SceneObject("disc", 60.0, 60.0, 20.0)
  triangle = synthetic.SceneObject("triangle", 160.0, 160.0, 20.0)
  square = synthetic.SceneObject("square", 60.0, 160.0, 16.0)
  bar = synthetic.SceneObject("bar", 160.0, 60.0, 16.0, vertical=True)
  objects = [disc, triangle, square, bar]
  indoor = synthetic.vms_maps(objects, category=schema.LEAVES.index("kitchen"))
  outdoor = synthetic.vms_maps(objects, category=schema.LEAVES.index("isolated"))
  sigma = 0.75 * 20.0
  # True channel: disc 1.0, triangle 0.6 (tails from the far blob are ~1e-50).
  assert indoor[60, 60, 0] == pytest.approx(1.0)
  assert indoor[160, 160, 0] == pytest.approx(0.6)
  assert indoor[60, 70, 0] == pytest.approx(np.exp(-100 / (2 * sigma**2)), rel=1e-5)
  assert indoor[160, 60, 0] == pytest.approx(0.0, abs=1e-6)  # squares feed channel 1 only
  # False channel: square 1.0; bar 0.5 indoors and 1.0 outdoors.
  assert indoor[160, 60, 1] == pytest.approx(1.0)
  assert indoor[60, 160, 1] == pytest.approx(0.5)
  assert outdoor[60, 160, 1] == pytest.approx(1.0)
  np.testing.assert_array_equal(indoor[..., 0], outdoor[..., 0])
  with pytest.raises(ValueError, match="both VMS channels"):
    synthetic.vms_maps([disc], category=0)


def test_a_fixed_map_cannot_explain_the_true_maps(examples):
  ys, xs = np.mgrid[0:224, 0:224]
  centre_bias = np.exp(-((xs - 111.5) ** 2 + (ys - 111.5) ** 2) / (2 * 56.0**2))
  mean_train_map = np.mean([e["vms"][..., 0] for e in examples], axis=0)
  test_maps = [synthetic.render_example(0, "test", i)["vms"][..., 0] for i in range(32)]
  assert np.mean([_pearson(centre_bias, m) for m in test_maps]) < 0.3
  assert np.mean([_pearson(mean_train_map, m) for m in test_maps]) < 0.3


# --- the TFDS build -------------------------------------------------------------


def test_build_counts_and_ids(data_dir):
  assert catalogue.is_built("synthetic", data_dir)
  for split, size in (("train", 640), ("test", 160)):
    source = catalogue.open_split("synthetic", split, data_dir)
    assert pipeline.num_examples(source) == size
    ids = source.ids()
    assert sorted(ids) == [f"synthetic_{split}_{i:04d}.png" for i in range(size)]
    categories = np.array([int(re.search(r"_(\d+)\.png", i).group(1)) % 8 for i in ids])
    assert np.bincount(categories, minlength=8).tolist() == [size // 8] * 8


def test_read_back_equals_render(data_dir):
  source = catalogue.open_split("synthetic", "test", data_dir)
  for position in (0, 1, 77, 159):
    record = source[position]
    assert set(record) == {"image", "vms", "category", "category_mid", "category_top", "id"}
    index = int(re.search(r"_(\d+)\.png", record["id"]).group(1))
    expected = synthetic.render_example(0, "test", index)
    assert record["image"].dtype == np.uint8 and record["vms"].dtype == np.float32
    np.testing.assert_array_equal(record["image"], expected["image"])
    np.testing.assert_allclose(record["vms"], expected["vms"], atol=1e-6, rtol=0)
    for key in ("category", "category_mid", "category_top", "id"):
      assert record[key] == expected[key]


def test_open_split_errors(data_dir, tmp_path):
  empty = str(tmp_path / "nothing_here")
  assert not catalogue.is_built("synthetic", empty)
  with pytest.raises(VMSError) as info:
    catalogue.open_split("synthetic", "train", empty)
  message = str(info.value)
  assert empty in message and "vmsjax data build synthetic --data_dir" in message
  assert "\n" not in message
  with pytest.raises(VMSError, match="train, test"):
    catalogue.open_split("synthetic", "validation", data_dir)
  for call in (
    lambda: catalogue.open_split("nope", "train", data_dir),
    lambda: catalogue.build("nope", data_dir),
    lambda: catalogue.is_built("nope", data_dir),
  ):
    with pytest.raises(VMSError, match="synthetic"):
      call()


def test_dataset_record(data_dir):
  record = catalogue.dataset_record("synthetic", data_dir)
  assert json.loads(json.dumps(record)) == record
  assert record["builder"] == "vms_synthetic"
  assert record["version"] == "1.0.0" and record["config"] == "seed0"
  assert record["num_examples"] == {"train": 640, "test": 160}
  assert re.fullmatch(r"[0-9a-f]{64}", record["fingerprint"])
  assert catalogue.dataset_record("synthetic", data_dir)["fingerprint"] == record["fingerprint"]
  text = catalogue.describe("synthetic", data_dir)
  assert "train: 640 examples" in text and record["fingerprint"] in text


# --- train_batches ----------------------------------------------------------------


def test_train_batches_real_source_one_epoch(data_dir):
  source = catalogue.open_split("synthetic", "train", data_dir)
  stream = pipeline.train_batches(source, batch_size=32, seed=0)
  seen = []
  for _ in range(20):
    batch = next(stream)
    assert set(batch) == {"image", "vms", "category"}
    assert batch["image"].shape == (32, 224, 224, 3) and batch["image"].dtype == np.uint8
    assert batch["vms"].shape == (32, 224, 224, 2) and batch["vms"].dtype == np.float32
    assert batch["category"].shape == (32,) and batch["category"].dtype == np.int32
    seen += [image.tobytes() for image in batch["image"]]
  assert len(set(seen)) == 640  # every training image exactly once per epoch


def test_train_batches_epochs_cover_each_example_once_and_reshuffle():
  source = _fake_source(100)
  stream = pipeline.train_batches(source, batch_size=10, seed=3)
  epochs = [sum((_indices(next(stream)) for _ in range(10)), []) for _ in range(3)]
  for order in epochs:
    assert sorted(order) == list(range(100))
  assert epochs[0] != epochs[1] != epochs[2]
  other_seed = pipeline.train_batches(source, batch_size=10, seed=4)
  assert _indices(next(other_seed)) != epochs[0][:10]


def test_train_batches_resume_at_any_step():
  source = _fake_source(100)
  reference = pipeline.train_batches(source, batch_size=16, seed=7)
  batches = [next(reference) for _ in range(15)]  # 240 examples: crosses 2 epoch ends
  for k in (0, 1, 6, 7, 14):
    resumed = next(pipeline.train_batches(source, batch_size=16, seed=7, start_step=k))
    for key in batches[k]:
      np.testing.assert_array_equal(resumed[key], batches[k][key])


def test_train_batches_processes_split_each_global_batch():
  source = _fake_source(100)
  single = pipeline.train_batches(source, batch_size=12, seed=1)
  parts = [
    pipeline.train_batches(source, batch_size=12, seed=1, process_index=p, process_count=3)
    for p in range(3)
  ]
  for _ in range(12):
    whole = _indices(next(single))
    slices = [_indices(next(stream)) for stream in parts]
    assert all(len(s) == 4 for s in slices)
    assert sum(slices, []) == whole
    assert len(set(sum(slices, []))) == 12  # disjoint


def test_train_batches_argument_errors():
  source = _fake_source(10)
  with pytest.raises(VMSError, match="divisible"):
    next(pipeline.train_batches(source, batch_size=32, seed=0, process_count=3))
  with pytest.raises(VMSError, match="process_index"):
    next(pipeline.train_batches(source, batch_size=32, seed=0, process_index=2, process_count=2))
  with pytest.raises(VMSError, match="batch_size"):
    next(pipeline.train_batches(source, batch_size=0, seed=0))
  with pytest.raises(VMSError, match="empty"):
    next(pipeline.train_batches([], batch_size=4, seed=0))


# --- eval_batches -----------------------------------------------------------------


def test_eval_batches_cover_the_split_once_in_id_order(data_dir):
  source = catalogue.open_split("synthetic", "test", data_dir)
  batches = list(pipeline.eval_batches(source, batch_size=50))
  assert [len(b["id"]) for b in batches] == [50, 50, 50, 10]
  assert [b["image"].shape[0] for b in batches] == [50, 50, 50, 10]
  ids = sum((b["id"] for b in batches), [])
  assert ids == [f"synthetic_test_{i:04d}.png" for i in range(160)]
  categories = np.concatenate([b["category"] for b in batches])
  assert categories.dtype == np.int32 and categories.tolist() == [i % 8 for i in range(160)]
  expected = synthetic.render_example(0, "test", 57)
  np.testing.assert_array_equal(batches[1]["image"][7], expected["image"])


def test_eval_batches_on_a_plain_list():
  source = _fake_source(10)[::-1]
  batches = list(pipeline.eval_batches(source, batch_size=4))
  assert [b["id"] for b in batches] == [
    [f"ex_{i:04d}" for i in range(0, 4)],
    [f"ex_{i:04d}" for i in range(4, 8)],
    [f"ex_{i:04d}" for i in range(8, 10)],
  ]


def test_tfds_opencv_note_is_dropped_and_other_absl_lines_kept(synthetic_data_dir, caplog):
  import logging

  from absl import logging as absl_logging

  source = catalogue.open_split("synthetic", "test", synthetic_data_dir)
  with caplog.at_level(logging.INFO, logger="absl"):
    source[0]  # the first numpy decode of the process is where tfds logs its advice
    absl_logging.warning(
      "OpenCV is not installed. We recommend using OpenCV because it is faster according to"
      " our benchmarks. Defaulting to PIL to decode images..."
    )
    absl_logging.warning("some other absl warning")
  assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["some other absl warning"]


def test_export_refuses_ids_sharing_a_stem_before_writing(tmp_path):
  image = np.zeros((4, 4, 3), np.uint8)
  records = [{"id": "x.jpg", "image": image}, {"id": "x.png", "image": image}]
  with pytest.raises(VMSError, match=r"'x.jpg' and 'x.png' .* both be written as x.png"):
    export.export(records, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  paths = export.export(records[:1], tmp_path / "out")
  assert paths == [tmp_path / "out" / "x.png"]
  assert (tmp_path / "out" / "ids.csv").read_text().splitlines() == ["file,id", "x.png,x.jpg"]
