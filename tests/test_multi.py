"""Many models per step: a group trains each member as if it had run alone."""

import json
import shutil

import jax
import numpy as np
import pytest

from tests.conftest import restored, tiny_config
from vmsjax import config as config_lib
from vmsjax import train
from vmsjax.errors import VMSError

# Two members: the second differs in seed, the kl weight (and its warm-up), l2 and the
# learning rate.
MEMBERS = (
  {"seed": 0},
  {
    "seed": 1,
    "loss.weights.kl": 0.5,
    "loss.kl_warmup_steps": 4,
    "loss.weights.l2": 0.01,
    "optim.learning_rate": 3e-3,
  },
)


def _configs(data_dir, **common):
  return [tiny_config(**{"data.data_dir": data_dir, **common, **m}) for m in MEMBERS]


_restore = restored


def _metrics(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def group_dirs(tmp_path_factory, synthetic_data_dir):
  """The MEMBERS trained as one group (12 steps, checkpoints at 4, 8, 12)."""
  root = tmp_path_factory.mktemp("group")
  dirs = [root / f"m{i}" for i in range(len(MEMBERS))]
  states = train.train_group(_configs(synthetic_data_dir), dirs)
  return dirs, states


def test_group_equals_each_model_alone(group_dirs, synthetic_data_dir, trained_workdir, tmp_path):
  dirs, states = group_dirs
  configs = _configs(synthetic_data_dir)
  # Member 0 has the tiny config itself: conftest's `trained_workdir` is its run alone.
  assert config_lib.flat(configs[0]) == config_lib.flat(
    tiny_config(**{"data.data_dir": synthetic_data_dir})
  )
  alone_dirs = [trained_workdir, tmp_path / "alone1"]
  train.train_and_evaluate(configs[1], alone_dirs[1])
  finals = []
  for i, (config, work) in enumerate(zip(configs, dirs, strict=True)):
    alone, alone_meta = _restore(alone_dirs[i], config)
    grouped, meta = _restore(work, config)
    assert int(grouped.step) == int(alone.step) == 12
    assert meta == alone_meta  # config fingerprint, dataset, step, next batch
    # Batching the members changes the order of some float sums (step 1 agrees to ~1e-7).
    # Adam, and ReLU units that sit at zero for some example, amplify that rounding noise
    # over the steps: at step 4 the state still agrees to ~1e-5; by step 12 a unit may
    # have crossed zero in one run and not the other, moving a few coordinates by up to
    # a few learning rates. Two members differ by ~1e-1.
    for step, rtol, atol in ((4, 1e-4, 1e-5), (12, 1e-2, 5e-3)):
      a_k = _restore(alone_dirs[i], config, step)[0]
      g_k = _restore(work, config, step)[0]
      for a, g in zip(jax.tree.leaves(a_k.params), jax.tree.leaves(g_k.params), strict=True):
        np.testing.assert_allclose(g, a, rtol=rtol, atol=atol, err_msg=f"step {step}")
    for g, s in zip(jax.tree.leaves(grouped), jax.tree.leaves(states[i]), strict=True):
      np.testing.assert_array_equal(np.asarray(s), g)  # the returned state is the saved one
    assert max(int(alone.bad_step), int(grouped.bad_step)) == -1
    # Same records as alone: the config, and one metrics line per logged step with the
    # same numbers (beta follows each member's own warm-up).
    for name in ("config.json", "dataset.json"):
      assert json.loads((work / name).read_text()) == json.loads((alone_dirs[i] / name).read_text())
    ma, mg = _metrics(alone_dirs[i]), _metrics(work)
    assert [r["step"] for r in mg] == [r["step"] for r in ma] == list(range(1, 13))
    for ra, rg in zip(ma, mg, strict=True):
      tol = 1e-6 if rg["step"] == 1 else 1e-4 if rg["step"] <= 4 else 1e-2
      for k in ("loss", "reconstruction", "kl", "l2", "weight_kl", "weight_l2", "grad_norm"):
        assert rg[k] == pytest.approx(ra[k], rel=tol, abs=1e-6), (i, k, rg["step"])
    assert list((work / "tb").iterdir()), "TensorBoard events written"
    finals.append(grouped)
  # The members really differ (seeds, loss weights and learning rates took effect).
  k0, k1 = (jax.tree.leaves(f.params)[0] for f in finals)
  assert np.abs(k0 - k1).max() > 1e-2


def test_resume_of_a_stopped_group_is_identical(group_dirs, synthetic_data_dir, tmp_path):
  """Stop after 8 steps, lose one member's checkpoint 8, rerun: the same as straight."""
  dirs, _ = group_dirs
  configs = _configs(synthetic_data_dir)
  work = [tmp_path / f"m{i}" for i in range(len(MEMBERS))]
  train.train_group(configs, work, stop_at=8)
  # As if killed between saving members' checkpoints: member 1 only has step 4, so the
  # group restarts at 4 and member 0 recomputes 5..8 without writing them again.
  shutil.rmtree(work[1] / "checkpoints" / "8")
  train.train_group(configs, work)
  for i, (config, w) in enumerate(zip(configs, work, strict=True)):
    resumed, _ = _restore(w, config)
    straight, _ = _restore(dirs[i], config)  # same computation as the 12-step group
    assert int(resumed.step) == 12
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
      np.testing.assert_array_equal(a, b)
    steps = [r["step"] for r in _metrics(w)]
    assert steps == list(range(1, 13)), (i, steps)
    assert [r["loss"] for r in _metrics(w)] == [r["loss"] for r in _metrics(dirs[i])]
  # A finished group is left alone.
  again = train.train_group(configs, work)
  assert int(again[0].step) == 12


def test_configs_that_cannot_be_grouped_are_refused(synthetic_data_dir, tmp_path):
  a = tiny_config(**{"data.data_dir": synthetic_data_dir})
  b = tiny_config(**{"data.data_dir": synthetic_data_dir, "model.latent": 8})
  with pytest.raises(VMSError, match="model.latent"):
    train.train_group([a, b], [tmp_path / "a", tmp_path / "b"])
  with pytest.raises(VMSError, match="distinct workdirs"):
    train.train_group([a, a], [tmp_path / "a", tmp_path / "a"])
  c = tiny_config(**{"data.data_dir": synthetic_data_dir, "seed": 5, "loss.weights.kl": 2.0})
  assert config_lib.group_key(a) == config_lib.group_key(c)
  assert config_lib.group_key(a) != config_lib.group_key(b)


def test_group_on_the_feature_cache_equals_alone(synthetic_data_dir, tmp_path):
  """With `features.cache` on, the group reads one cache and trains as each alone."""
  cached = {
    "features.cache": "memory",
    "features.views": 1,
    "features.cache_dir": str(tmp_path / "cache"),
  }
  configs = _configs(synthetic_data_dir, **cached)
  train.train_group(configs, [tmp_path / "g0", tmp_path / "g1"], stop_at=4)
  assert len(list((tmp_path / "cache").iterdir())) == 1  # one cache for the group
  train.train_and_evaluate(configs[1], tmp_path / "alone1")  # finds the group's cache
  assert len(list((tmp_path / "cache").iterdir())) == 1
  a, _ = _restore(tmp_path / "alone1", configs[1], 4)
  g, _ = _restore(tmp_path / "g1", configs[1], 4)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(g.params), strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)
  ma, mg = _metrics(tmp_path / "alone1"), _metrics(tmp_path / "g1")
  for ra, rg in zip(ma[:4], mg[:4], strict=True):
    assert rg["loss"] == pytest.approx(ra["loss"], rel=1e-5), rg["step"]
