"""Extending the model by config alone: a new loss term, a decoder of another depth.

A loss term is a function in `losses.TERMS` and a weight under `loss.weights`; nothing
else is touched (here the function is installed with monkeypatch, the weight set on
the config). It must then train alone, in a group and on cached features. A decoder of
any depth is a `model.decoder_channels` override.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import restored, tiny_config
from vmsjax import cli, config, inference, losses, train
from vmsjax.errors import VMSError

SHORT = {"train.steps_per_epoch": 3, "checkpoint.every_steps": 3, "log.every_steps": 1}


def total_variation(outputs):
  """Mean over the batch of the summed absolute differences of neighbouring map pixels."""
  p = jax.nn.sigmoid(outputs["logits"])
  dy = jnp.abs(p[:, 1:] - p[:, :-1]).sum(axis=(1, 2, 3))
  dx = jnp.abs(p[:, :, 1:] - p[:, :, :-1]).sum(axis=(1, 2, 3))
  return jnp.mean(dy + dx)


@pytest.fixture
def with_tv(monkeypatch):
  monkeypatch.setitem(losses.TERMS, "tv", total_variation)


def _tv_config(data_dir, weight, **over):
  c = tiny_config(**{"data.data_dir": data_dir, **SHORT, **over})
  with c.unlocked():
    c.loss.weights.tv = weight
  config.validate(c)
  return c


def _records(workdir):
  return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(workdir, c):
  return jax.tree.leaves(restored(workdir, c)[0].params)


def test_a_new_loss_term_trains_alone_grouped_and_cached(with_tv, synthetic_data_dir, tmp_path):
  on, off = _tv_config(synthetic_data_dir, 50.0), _tv_config(synthetic_data_dir, 0.0)
  assert "loss.weights.tv" in config.member_keys(on)  # a number of `loss`: may differ in a group

  # Alone: the term is logged with its weight and enters the loss.
  train.train_and_evaluate(on, tmp_path / "alone")
  recs = _records(tmp_path / "alone")
  assert [r["step"] for r in recs] == [1, 2, 3]
  for r in recs:
    assert r["tv"] > 0 and r["weight_tv"] == 50.0
    weighted = sum(r[f"weight_{t}"] * r[t] for t in ("kl", "l2", "tv"))
    assert r["loss"] == pytest.approx(r["reconstruction"] + weighted, rel=1e-5)

  # In a group with a member whose tv weight is 0: the on-member trains as it did alone,
  # and the weight really took effect (the members' parameters differ).
  train.train_group([on, off], [tmp_path / "g_on", tmp_path / "g_off"])
  for a, g in zip(_params(tmp_path / "alone", on), _params(tmp_path / "g_on", on), strict=True):
    np.testing.assert_allclose(g, a, rtol=1e-4, atol=1e-5)
  gap = max(
    float(np.abs(a - b).max())
    for a, b in zip(_params(tmp_path / "g_on", on), _params(tmp_path / "g_off", off), strict=True)
  )
  assert gap > 1e-4
  assert _records(tmp_path / "g_off")[0]["weight_tv"] == 0.0

  # On cached features.
  cached = _tv_config(
    synthetic_data_dir,
    50.0,
    **{"features.cache": "memory", "features.views": 1, "features.cache_dir": str(tmp_path / "fc")},
  )
  train.train_and_evaluate(cached, tmp_path / "cached")
  recs = _records(tmp_path / "cached")
  assert len(recs) == 3 and all(r["tv"] > 0 and np.isfinite(r["loss"]) for r in recs)


def test_an_unknown_loss_term_is_refused(synthetic_data_dir):
  with pytest.raises(VMSError, match=r"loss.weights.tv.*names no loss term"):
    _tv_config(synthetic_data_dir, 1.0)


@pytest.mark.parametrize(
  ("channels", "size", "layers"), [("(16,8,8)", 32, 4), ("(16,8,8,8,8)", 64, 6)]
)
def test_a_decoder_of_another_depth_by_override(
  channels, size, layers, tmp_path, synthetic_data_dir
):
  work = tmp_path / "run"
  argv = [
    "train",
    "--config",
    str(config.REPO_ROOT / "configs" / "synthetic.py") + ":tiny",
    "--workdir",
    str(work),
    f"--config.data.data_dir={synthetic_data_dir}",
    f"--config.model.decoder_channels={channels}",
    f"--config.data.image_size={size}",
    "--config.train.steps_per_epoch=2",
  ]
  assert cli.main(argv) == 0
  trained = inference.load(work)
  decoder = trained.state.params["decoder"]
  convs = sorted(k for k in decoder if k.startswith("deconv"))
  assert convs == [f"deconv{i}" for i in range(1, layers + 1)]
  assert decoder[f"deconv{layers}"]["kernel"].shape[-1] == 2  # the output layer: two maps
  images = np.zeros((3, 40, 40, 3), np.uint8)
  maps, _ = inference.predict(trained, images)
  assert maps.shape == (3, size, size, 2)
  assert all(np.isfinite(r["loss"]) for r in _records(work))


def test_a_decoder_too_deep_for_the_image_is_a_config_error(capsys):
  argv = ["train", "--config.model.decoder_channels=(8,8,8,8,8)", "--config.data.image_size=32"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "data.image_size=32" in err and "multiple of 64" in err and len(err.splitlines()) == 1
