"""The jitted data-parallel step: sharding invariance, learning, NaN guard, frozen encoder."""

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from vmsjax import factory, progress
from vmsjax import step as step_lib


def _setup(config, devices):
  """A group of one on `devices`: (states, encoder params, jitted step, split, members)."""
  setup = factory.build(config, devices)
  state = jax.tree.map(lambda x: x[None], setup.init(config.seed))  # (1, ...): G = 1
  group = jax.device_put(step_lib.members([config]), setup.repl)
  step = step_lib.jit_step(config, setup, 1)
  aux = {"encoder": setup.enc_params}  # what the step reads besides a host batch
  return state, aux, step, setup.split, group


def _batch(n=8, size=48, seed=0):
  """Noisy images with a bright square per image; the maps are blobs on the square."""
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 100, size=(n, size, size, 3), dtype=np.uint8)
  yy, xx = np.mgrid[0:size, 0:size] / size
  vms = np.zeros((n, size, size, 2), np.float32)
  for i in range(n):
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    r = int(0.08 * size)
    image[i, int(cy * size) - r : int(cy * size) + r, int(cx * size) - r : int(cx * size) + r] = 250
    vms[i, ..., 0] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)
    vms[i, ..., 1] = np.exp(-((xx - 1 + cx) ** 2 + (yy - cy) ** 2) / 0.02)
  return {"image": image, "vms": vms}


def test_four_devices_match_one_device():
  assert jax.device_count() == 4, "conftest sets 4 simulated devices"
  config = tiny_config()
  batch = _batch()
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    state, enc, step, split, group = _setup(config, devices)
    for _ in range(2):
      state, metrics = step(state, enc, factory.device_batch(batch, split), group)
    results.append((float(metrics["loss"][0]), jax.device_get(state.params)))
  (loss1, p1), (loss4, p4) = results
  assert loss1 == pytest.approx(loss4, rel=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_batch_is_split_and_state_replicated():
  config = tiny_config()
  state, enc, step, split, group = _setup(config, jax.devices())
  batch = factory.device_batch(_batch(), split)
  assert len(batch["image"].addressable_shards) == 4
  assert batch["image"].addressable_shards[0].data.shape[0] == 2
  state, _ = step(state, enc, batch, group)
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.is_fully_replicated


def test_steps_on_a_fixed_batch_lower_the_loss():
  config = tiny_config(**{"augment.enabled": False, "optim.learning_rate": 1e-2})
  state, enc, step, split, group = _setup(config, jax.devices())
  batch = factory.device_batch(_batch(), split)
  losses = []
  for _ in range(25):
    state, metrics = step(state, enc, batch, group)
    losses.append(float(metrics["reconstruction"][0]))
  assert losses[-1] < 0.5 * losses[0], losses


def test_encoder_is_frozen_and_outside_the_optimiser():
  config = tiny_config()
  state, enc, step, split, group = _setup(config, jax.devices())
  enc_before = jax.device_get(enc)
  opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state)}
  assert (3, 3, 3, 64) not in opt_shapes and (3, 3, 512, 512) not in opt_shapes
  assert not any("block" in str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state))
  state, _ = step(state, enc, factory.device_batch(_batch(), split), group)
  for a, b in zip(jax.tree.leaves(enc_before), jax.tree.leaves(jax.device_get(enc)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_nan_loss_freezes_state_and_records_the_step():
  config = tiny_config()
  state, enc, step, split, group = _setup(config, jax.devices())
  good = _batch()
  state, _ = step(state, enc, factory.device_batch(good, split), group)
  params_good = jax.device_get(state.params)
  bad = dict(good, vms=np.full_like(good["vms"], np.nan))
  state, metrics = step(state, enc, factory.device_batch(bad, split), group)
  assert not np.isfinite(float(metrics["loss"][0]))
  assert int(state.bad_step[0]) == 1 and int(state.step[0]) == 2
  for a, b in zip(
    jax.tree.leaves(params_good), jax.tree.leaves(jax.device_get(state.params)), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  # A later good batch does not resume training from a poisoned run.
  state, _ = step(state, enc, factory.device_batch(good, split), group)
  assert int(state.bad_step[0]) == 1


def test_bfloat16_compute_keeps_params_and_optimizer_float32():
  config = tiny_config(**{"model.dtype": "bfloat16"})
  state, enc, step, split, group = _setup(config, jax.devices())
  batch = factory.device_batch(_batch(), split)
  # The convolutions and dense layers do run in bfloat16...
  assert "bf16" in step.lower(state, enc, batch, group).as_text()
  state, metrics = step(state, enc, batch, group)
  assert np.isfinite(float(metrics["loss"][0]))
  # ...while what is stored and updated stays float32.
  member = jax.tree.map(lambda x: x[0], state)  # the group's one member, unstacked
  for tree in (member.params, member.batch_stats, member.opt_state, enc):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if x.ndim > 0}
    assert dtypes == {np.dtype("float32")}, dtypes


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_lines_only_when_enabled(enabled, capsys):
  """Off a terminal, an enabled Progress prints a line per forced update (the log steps);
  a disabled one (log.progress=false, or a process other than the first) prints nothing."""
  bar = progress.Progress(total=40, batch=32, start=0, enabled=enabled)
  bar.update(10, 12.5)  # not a log step: nothing off a terminal
  bar.update(20, 11.0, force=True)
  bar.close()
  err = capsys.readouterr().err
  if enabled:
    assert err.count("\n") == 1 and "step 20/40" in err and "loss 11.0" in err
  else:
    assert err == ""
