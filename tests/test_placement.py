"""How batches reach the step changes nothing: data on the device or decoded on the host
(with 0, 1 or 2 worker threads), one step per call or K, give bit-identical runs."""

import jax
import numpy as np
import pytest

from tests.conftest import restored, tiny_config
from vmsjax import factory, inputs, train
from vmsjax import step as step_lib
from vmsjax.data import catalogue, pipeline

STEPS = {"train.steps_per_epoch": 6, "checkpoint.every_steps": 4, "log.every_steps": 1}


def _run(tmp_path, data_dir, name, **over):
  c = tiny_config(**{"data.data_dir": data_dir, **STEPS, **over})
  train.train_and_evaluate(c, tmp_path / name)
  return c, tmp_path / name


def _metrics(work):
  import json

  return [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]


def test_placements_workers_and_steps_per_call_are_bit_identical(tmp_path, synthetic_data_dir):
  c, ref = _run(tmp_path, synthetic_data_dir, "host0", **{"data.placement": "host"})
  variants = {  # against host, 0 workers, 1 step per call
    # 6 steps, checkpoints at 4: calls of 3 + 1 (to the checkpoint) + 2 (to the end).
    "device_k3": {"data.placement": "device", "train.steps_per_call": 3},
    "host1": {"data.placement": "host", "data.workers": 1},
    "host2_k4": {"data.placement": "host", "data.workers": 2, "train.steps_per_call": 4},
  }
  want_state, want_meta = restored(ref, c)
  want_metrics = _metrics(ref)
  assert [r["step"] for r in want_metrics] == list(range(1, 7))
  for name, over in variants.items():
    cv, work = _run(tmp_path, synthetic_data_dir, name, **over)
    for step in (4, 6):  # both checkpoints, the one inside a K-step stretch included
      a, _ = restored(ref, c, step)
      b, meta = restored(work, cv, step)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=f"{name} at step {step}")
    assert meta["config_fingerprint"] == want_meta["config_fingerprint"]  # a resumable key
    got = _metrics(work)
    assert [r["step"] for r in got] == list(range(1, 7)), name
    for r, w in zip(got, want_metrics, strict=True):
      assert {k: v for k, v in r.items() if k != "time"} == {
        k: v for k, v in w.items() if k != "time"
      }, (name, r["step"])


def test_auto_placement_follows_the_device_memory(monkeypatch, synthetic_data_dir):
  c = tiny_config(**{"data.data_dir": synthetic_data_dir, "train.epochs": 80})  # 7680 reads
  source = catalogue.open_split("synthetic", "train", synthetic_data_dir)
  need = inputs.split_bytes(source)
  assert need == 640 * (224 * 224 * 3 + 4 * 224 * 224 * 2)
  limit = need / inputs.DEVICE_DATA_FRACTION
  monkeypatch.setattr(inputs, "device_memory_bytes", lambda device=None: int(limit))
  assert inputs.placement(c, source) == "device"  # exactly at the fraction
  monkeypatch.setattr(inputs, "device_memory_bytes", lambda device=None: int(limit) - 1)
  assert inputs.placement(c, source) == "host"
  # A run that reads fewer records than the split holds decodes only those, on the host.
  monkeypatch.setattr(inputs, "device_memory_bytes", lambda device=None: int(limit))
  with c.unlocked():
    c.train.epochs = 1  # 12 steps x 8 = 96 records of 640
  assert inputs.placement(c, source) == "host"
  for forced in ("device", "host"):
    with c.unlocked():
      c.data.placement = forced
    assert inputs.placement(c, source) == forced  # an explicit choice is kept


def test_maps_are_stored_compactly_only_when_exact():
  k = np.arange(256, dtype=np.float32).reshape(4, 4, 4, 4)[..., :2] / np.float32(255.0)
  codes = inputs._map_codes(k)
  assert codes.dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(inputs._maps_from_codes(codes)), k)
  smooth = np.linspace(0, 1, 64, dtype=np.float32).reshape(2, 4, 4, 2)  # not on the 1/255 grid
  assert inputs._map_codes(smooth).dtype == np.float32


def test_device_indices_are_the_host_batches_records():
  src = [{"image": np.full((2, 2, 3), i, np.uint8), "vms": np.zeros((2, 2, 2))} for i in range(10)]
  for proc in (0, 1):
    host = pipeline.train_batches(src, 4, 3, 2, proc, 2, workers=1)
    index = pipeline.batch_indices(10, 4, 3, 2, proc, 2)
    for _ in range(7):
      np.testing.assert_array_equal(next(host)["image"][:, 0, 0, 0], next(index))


def test_four_devices_match_one_with_the_data_on_the_device(synthetic_data_dir):
  c = tiny_config(**{"data.data_dir": synthetic_data_dir, "data.placement": "device"})
  source = catalogue.open_split("synthetic", "train", synthetic_data_dir)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    setup = factory.build(c, devices)
    feed = inputs.open_inputs(c, source, "", setup)
    assert feed.keys == ("index",) and feed.aux["image"].sharding.is_fully_replicated
    states = jax.tree.map(lambda x: x[None], setup.init(c.seed))
    group = jax.device_put(step_lib.members([c]), setup.repl)
    fn = step_lib.jit_step(c, setup, 1)
    reader = feed.reader(0, setup.mesh)
    for _ in range(2):
      states, metrics = fn(states, feed.aux, reader.take(), group)
    results.append((float(metrics["loss"][0]), jax.device_get(states.params)))
  (loss1, p1), (loss4, p4) = results
  assert loss1 == pytest.approx(loss4, rel=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_compilation_cache_goes_beside_the_workdir(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    c = tiny_config()
    assert (
      train.use_compilation_cache(c, tmp_path / "sweep" / "p1") == tmp_path / "sweep" / ".jax_cache"
    )
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "sweep" / ".jax_cache")
    # Set once per process: a later run keeps it (JAX reads it at the first compilation).
    assert (
      train.use_compilation_cache(c, tmp_path / "other" / "p") == tmp_path / "sweep" / ".jax_cache"
    )
    jax.config.update("jax_compilation_cache_dir", None)
    with c.unlocked():
      c.train.compilation_cache = ""
    assert train.use_compilation_cache(c, tmp_path / "p") is None
    assert not jax.config.jax_compilation_cache_dir
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
