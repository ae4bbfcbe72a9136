"""The frozen-encoder feature cache: content, order, sharing, resume, damage, bfloat16.

Building a cache costs K encoder passes over the whole training split, so the tests
that go through `train_and_evaluate` train on the first 24 records of the synthetic
split (`catalogue.open_split` patched to a subset) with K = 2.
"""

import json
import os

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from vmsjax import cache, config, factory, pixels, train
from vmsjax import step as step_lib
from vmsjax.data import augment, catalogue, pipeline
from vmsjax.errors import VMSError

SUBSET = 24


class _Subset:
  """The first `n` records of a split: a small training set for cache tests."""

  def __init__(self, source, n):
    self._source, self._n = source, n

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    if not -self._n <= i < self._n:
      raise IndexError(i)
    return self._source[i % self._n]


def _cfg(data_dir, cache_dir, **overrides):
  base = {
    "data.data_dir": data_dir,
    "features.cache": "disk",
    "features.views": 2,
    "features.cache_dir": str(cache_dir),
    "log.progress": False,
  }
  return tiny_config(**{**base, **overrides})


@pytest.fixture
def small_train(monkeypatch, synthetic_data_dir):
  """Makes training read only the first SUBSET training records."""
  real = catalogue.open_split

  def open_split(name, split, data_dir):
    src = real(name, split, data_dir)
    return _Subset(src, SUBSET) if split == "train" else src

  monkeypatch.setattr(catalogue, "open_split", open_split)
  return _Subset(real("synthetic", "train", synthetic_data_dir), SUBSET)


@pytest.fixture(scope="module")
def built(tmp_path_factory, synthetic_data_dir):
  """A cache of 12 training records x 3 views at 32x32 (float32)."""
  c = _cfg(synthetic_data_dir, tmp_path_factory.mktemp("fc"), **{"features.views": 3})
  source = _Subset(catalogue.open_split("synthetic", "train", synthetic_data_dir), 12)
  enc = factory.encoder_params(c)
  fc = cache.open_or_build(c, source, "test-fingerprint", enc)
  return c, source, enc, fc


# --------------------------------------------------------------------------- config, key


def test_unknown_cache_mode_is_rejected():
  with pytest.raises(VMSError, match=r"features.cache='ram'.*off, memory, disk"):
    tiny_config(**{"features.cache": "ram"})
  with pytest.raises(VMSError, match="features.views"):
    tiny_config(**{"features.views": 0})


def test_key_covers_what_changes_features_and_only_that():
  c = tiny_config()
  fields = cache.key_fields(c, "fp", "enc")
  key = cache.cache_key(fields)
  same = {"model.latent": 6, "loss.reconstruction": "l1", "seed": 3, "optim.learning_rate": 0.1}
  for k, v in same.items():
    assert cache.cache_key(cache.key_fields(tiny_config(**{k: v}), "fp", "enc")) == key, k
  other = {
    "data.image_size": 64,
    "augment.max_shift": 0.2,
    "augment.flip": False,
    "features.views": 3,
    "data.seed": 1,
    "model.dtype": "bfloat16",
    "model.encoder.preprocessing": "torch",
  }
  for k, v in other.items():
    assert cache.cache_key(cache.key_fields(tiny_config(**{k: v}), "fp", "enc")) != key, k
  assert cache.cache_key(cache.key_fields(c, "fp2", "enc")) != key
  assert cache.cache_key(cache.key_fields(c, "fp", "enc2")) != key
  # The random trunk's digest changes with data.seed, which draws it.
  d0 = cache.encoder_digest(factory.encoder_params(c))
  assert d0 == cache.encoder_digest(factory.encoder_params(tiny_config(seed=5)))
  assert d0 != cache.encoder_digest(factory.encoder_params(tiny_config(**{"data.seed": 1})))


# --------------------------------------------------------------------------- content


def test_cached_features_are_the_encoder_on_the_warped_image(built):
  c, source, enc, fc = built
  assert fc.feats.shape == (12, 3, 1, 1, 512) and fc.feats.dtype == np.float32
  np.testing.assert_array_equal(fc.draw, cache.draws(c, 12))
  # The draws are real augmentations: shifted, zoomed and (some) flipped.
  assert np.abs(fc.draw[..., augment.SHIFT_X]).max() > 0.02
  assert np.abs(fc.draw[..., augment.ZOOM] - 1).max() > 0.02
  assert 0 < fc.draw[..., augment.FLIP].sum() < fc.draw[..., augment.FLIP].size
  encoder = factory.make_encoder(c)
  for ex, view in [(0, 0), (5, 2), (11, 1)]:
    image = source[ex]["image"][None]  # (1, 224, 224, 3)
    warped = augment.warp(image, fc.draw[ex, view][None], factory.image_hw(c))
    want = np.asarray(pixels.encode(c, encoder, enc, warped))[0]
    np.testing.assert_allclose(fc.feats[ex, view], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fc.vms[ex], source[ex]["vms"])
  # Different views of one image give different features.
  assert not np.allclose(fc.feats[5, 0], fc.feats[5, 1])


def test_batch_order_matches_train_batches():
  src = [{"category": np.int32(i), "image": np.zeros((2, 2, 3), np.uint8)} for i in range(20)]
  for proc in range(2):
    ref = pipeline.train_batches(src, 8, seed=3, process_index=proc, process_count=2)
    rows = cache.batch_rows(20, 4, 8, 3, process_index=proc, process_count=2)
    for _ in range(7):  # 56 positions: crosses two epoch boundaries mid-batch
      got = next(rows)
      np.testing.assert_array_equal(got[:, 0], next(ref)["category"])
      assert ((got[:, 1] >= 0) & (got[:, 1] < 4)).all()
  # Resuming at step 5 reads what step 5 read; views vary across epochs.
  all_rows = cache.batch_rows(20, 4, 8, 3)
  seq = [next(all_rows) for _ in range(10)]
  np.testing.assert_array_equal(next(cache.batch_rows(20, 4, 8, 3, start_step=5)), seq[5])
  view_of = {}
  for pos, (ex, v) in enumerate(np.concatenate(seq)):
    view_of.setdefault(int(ex), []).append((pos // 20, int(v)))
  assert any(len({v for _, v in seen}) > 1 for seen in view_of.values())


def test_step_warps_the_map_with_the_stored_draw(built):
  c, source, enc, fc = built
  cm = _cfg(c.data.data_dir, c.features.cache_dir, **{"features.cache": "memory"})
  setup = factory.build(cm)
  root = jax.random.key(c.seed)
  rows = np.asarray([[0, 0], [3, 1], [5, 2], [7, 0], [8, 1], [9, 2], [10, 0], [11, 2]], np.int32)
  ex, view = rows[:, 0], rows[:, 1]
  state0 = jax.device_get(setup.init(c.seed))  # host: the step donates

  # Reference: the head step on the stored features and the map warped by hand.
  raw = np.stack([source[i]["vms"] for i in ex])
  _, k_latent = step_lib.step_keys(root, state0.step)
  hyper = step_lib.hyperparams(c)
  feats = np.asarray(fc.feats[ex, view])
  ref = jax.jit(lambda s, v: step_lib.head_step(c, setup.model, s, feats, v, k_latent, hyper)[1])
  want = ref(state0, augment.warp(raw, fc.draw[ex, view], (32, 32)))
  wrong = ref(state0, augment.warp(raw, fc.draw[ex, (view + 1) % 3], (32, 32)))

  # The cached step, memory mode: it gathers the rows and warps the maps itself. (Disk
  # mode feeds the same rows from the host; the resume test shows both give the same bits.)
  batch = factory.device_batch({"index": rows}, setup.split, keys=cache.batch_keys(cm))
  step = step_lib.jit_step(cm, setup, 1)
  states = jax.device_put(jax.tree.map(lambda x: x[None], state0), setup.repl)
  group = jax.device_put(step_lib.members([cm]), setup.repl)
  _, got = step(states, cache.device_table(fc, cm, setup.repl), batch, group)
  got = {k: v[0] for k, v in got.items()}
  for name in want:
    np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=1e-5, err_msg=name)
  # A map warped with another view's draw gives another loss: the check can fail.
  shift = abs(float(wrong["reconstruction"]) / float(want["reconstruction"]) - 1)
  assert shift > 1e-4  # 10x the tolerance above


# --------------------------------------------------------------------------- damage


def _copy(fc, tmp_path):
  import shutil

  dst = tmp_path / fc.path.name
  shutil.copytree(fc.path, dst)
  return dst


@pytest.mark.parametrize(
  "file,damage",
  [("feats.npy", "truncate"), ("vms.npy", "flip"), ("draw.npy", "delete"), ("meta.json", "junk")],
)
def test_damaged_cache_file_is_named(built, tmp_path, file, damage):
  path = _copy(built[3], tmp_path)
  target = path / file
  data = target.read_bytes()
  if damage == "truncate":
    target.write_bytes(data[: len(data) // 2])
  elif damage == "flip":
    target.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
  elif damage == "delete":
    target.unlink()
  else:
    target.write_text("{not json")
  with pytest.raises(VMSError) as err:
    cache.load(path)
  msg = str(err.value)
  assert str(target) in msg and "delete the cache directory" in msg and str(path) in msg


def test_interrupted_build_leaves_nothing_trusted(tmp_path, synthetic_data_dir, monkeypatch):
  c = _cfg(synthetic_data_dir, tmp_path / "fc", **{"features.views": 1})
  source = _Subset(catalogue.open_split("synthetic", "train", synthetic_data_dir), 40)
  enc = factory.encoder_params(c)
  real = cache._encode_views_fn
  calls = []

  def dying(config, mesh):
    f = real(config, mesh)

    def g(*args):
      calls.append(1)
      if len(calls) == 2:  # the second chunk: half the cache is written
        raise KeyboardInterrupt
      return f(*args)

    return g

  monkeypatch.setattr(cache, "_encode_views_fn", dying)
  with pytest.raises(KeyboardInterrupt):
    cache.open_or_build(c, source, "fp", enc)
  assert list((tmp_path / "fc").iterdir()) == []  # no half cache, no temp dir
  monkeypatch.setattr(cache, "_encode_views_fn", real)
  fc = cache.open_or_build(c, source, "fp", enc)
  assert fc.built and fc.feats.shape[:2] == (40, 1)


# --------------------------------------------------------------------------- training


def _losses(workdir, key="loss"):
  recs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["step"], r[key]) for r in recs if r["split"] == "train"]


def test_runs_share_the_cache_and_resume_bit_identical(
  tmp_path, synthetic_data_dir, small_train, monkeypatch
):
  """A: disk cache, 12 steps straight (builds the cache). B: memory cache, 8 steps, then
  resumed to 12 (finds the cache). B ends bit-identical to A, and the loss fell."""
  builds, traces = [], []
  real_build, real_encode = cache.build, pixels.encode

  def counting_build(*args, **kwargs):
    builds.append(1)
    return real_build(*args, **kwargs)

  def counting_encode(*args, **kwargs):
    traces.append(1)  # called when a jitted function using the trunk is traced
    return real_encode(*args, **kwargs)

  monkeypatch.setattr(cache, "build", counting_build)
  monkeypatch.setattr(pixels, "encode", counting_encode)
  fc_dir = tmp_path / "fc"

  def cfg(epochs, mode):
    over = {"features.cache": mode, "train.steps_per_epoch": 4, "train.epochs": epochs}
    return _cfg(synthetic_data_dir, fc_dir, **over, **{"optim.learning_rate": 3e-3})

  straight = jax.device_get(train.train_and_evaluate(cfg(3, "disk"), tmp_path / "a"))
  entries = sorted(p.name for p in fc_dir.iterdir())
  mtimes = {p.name: p.stat().st_mtime_ns for p in (fc_dir / entries[0]).iterdir()}
  assert builds == [1] and traces == [1] and len(entries) == 1

  train.train_and_evaluate(cfg(2, "memory"), tmp_path / "b")
  assert _losses(tmp_path / "b")[-1][0] == 8
  resumed = jax.device_get(train.train_and_evaluate(cfg(3, "memory"), tmp_path / "b"))
  assert builds == [1] and traces == [1]  # the later runs never ran the encoder
  assert sorted(p.name for p in fc_dir.iterdir()) == entries
  assert {p.name: p.stat().st_mtime_ns for p in (fc_dir / entries[0]).iterdir()} == mtimes

  assert int(resumed.step) == 12
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(x, y)
  assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
  rec = [r for _, r in _losses(tmp_path / "a", "reconstruction")]
  assert len(rec) == 12 and np.mean(rec[-3:]) < 0.9 * np.mean(rec[:3]), rec


# --------------------------------------------------------------------------- bfloat16


def test_bfloat16_cache_stores_the_trunk_output(tmp_path, synthetic_data_dir):
  c = _cfg(synthetic_data_dir, tmp_path / "fc", **{"features.views": 1, "model.dtype": "bfloat16"})
  source = _Subset(catalogue.open_split("synthetic", "train", synthetic_data_dir), 8)
  enc = factory.encoder_params(c)
  fc = cache.open_or_build(c, source, "fp", enc)
  assert str(fc.feats.dtype) == "bfloat16"
  assert json.loads((fc.path / "meta.json").read_text())["arrays"]["feats"]["dtype"] == "bfloat16"
  assert os.path.getsize(fc.path / "feats.npy") < 8 * 512 * 4  # two bytes a value
  # The uncached step's path under bfloat16. Not bit-equal: a jitted, sharded trunk fuses
  # and rounds bfloat16 differently from this eager one, so compare by relative error.
  encoder = factory.make_encoder(c)
  warped = augment.warp(np.stack([source[i]["image"] for i in range(8)]), fc.draw[:, 0], (32, 32))
  want = np.asarray(pixels.encode(c, encoder, enc, warped))  # float32 holding bf16 values
  got = np.asarray(fc.feats[:, 0]).astype(np.float32)
  assert np.linalg.norm(got - want) < 1e-2 * np.linalg.norm(want)
  # Reopening gives the same bits (bfloat16 goes through the .npy file as uint16).
  again = cache.load(fc.path)
  np.testing.assert_array_equal(again.feats.view(np.uint16), fc.feats.view(np.uint16))


def test_config_group_is_documented_in_base_config():
  base = config.base_config()
  assert base.features.cache == "off" and base.features.views == 8
  assert "features.cache_dir" in config.RESUMABLE_KEYS
