"""Each loss term against values computed by hand or with numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from vmsjax import losses


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_bce_matches_hand_value():
  # One example, two pixels: logits 0 (p = 0.5) with target 1, logit log(3) (p = 0.75)
  # with target 0.  -log(0.5) - log(0.25) = log 8.
  logits = jnp.asarray([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)
  target = jnp.asarray([1.0, 0.0]).reshape(1, 1, 2, 1)
  got = losses.reconstruction(logits, target, "bce")
  assert float(got) == pytest.approx(math.log(8.0), rel=1e-6)


@pytest.mark.parametrize("kind", ["bce", "mse", "l1"])
def test_reconstruction_matches_numpy(kind):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 5, 2)).astype(np.float32) * 3
  target = rng.uniform(size=(3, 4, 5, 2)).astype(np.float32)
  p = _sigmoid(logits.astype(np.float64))
  if kind == "bce":
    per = -(target * np.log(p) + (1 - target) * np.log(1 - p))
  elif kind == "mse":
    per = (target - p) ** 2
  else:
    per = np.abs(target - p)
  want = per.reshape(3, -1).sum(axis=1).mean()
  got = losses.reconstruction(jnp.asarray(logits), jnp.asarray(target), kind)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_bce_is_stable_for_saturated_logits():
  logits = jnp.asarray([80.0, -80.0]).reshape(1, 1, 2, 1)
  target = jnp.asarray([1.0, 0.0]).reshape(1, 1, 2, 1)
  got = float(losses.reconstruction(logits, target, "bce"))
  assert math.isfinite(got) and got < 1e-20


def test_unknown_reconstruction_is_rejected():
  with pytest.raises(ValueError, match="unknown reconstruction"):
    losses.reconstruction(jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 2, 2, 2)), "huber")


def test_kl_matches_closed_form():
  mu = np.asarray([[0.5, -1.0], [0.0, 0.0]], np.float32)
  logvar = np.asarray([[0.0, math.log(4.0)], [0.0, 0.0]], np.float32)
  # KL(N(mu, s^2) || N(0, 1)) = 0.5 (s^2 + mu^2 - 1 - log s^2), per dimension.
  var = np.exp(logvar)
  want = (0.5 * (var + mu**2 - 1 - logvar)).sum(axis=1).mean()
  assert float(losses.kl_divergence(jnp.asarray(mu), jnp.asarray(logvar))) == pytest.approx(
    want, rel=1e-6
  )
  # The standard normal has zero divergence.
  assert float(losses.kl_divergence(jnp.zeros((4, 3)), jnp.zeros((4, 3)))) == 0.0


def test_kernel_l2_counts_kernels_only():
  params = {
    "dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 100.0)},
    "bn": {"scale": jnp.full((3,), 100.0), "bias": jnp.ones(3)},
    "deconv": {"kernel": jnp.ones((3, 3, 1, 1))},
  }
  assert float(losses.kernel_l2(params)) == pytest.approx(6 * 4.0 + 9 * 1.0)


def test_total_loss_combines_terms_with_weights():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
  target = jnp.asarray(rng.uniform(size=(2, 4, 4, 2)), jnp.float32)
  mu = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  logvar = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  params = {"k": {"kernel": jnp.full((2, 2), 0.5)}}
  outputs = {"logits": logits, "target": target, "mu": mu, "logvar": logvar, "params": params}
  loss, terms = losses.total_loss(outputs, kind="mse", weights={"kl": 0.3, "l2": 0.02})
  rec = float(losses.reconstruction(logits, target, "mse"))
  kl = float(losses.kl_divergence(mu, logvar))
  assert float(terms["l2"]) == pytest.approx(4 * 0.25)  # unweighted: its weight is logged apart
  assert float(loss) == pytest.approx(rec + 0.3 * kl + 0.02, rel=1e-6)
  assert set(terms) == {"loss", "reconstruction", "kl", "l2"}
  # A term left out of the weights is neither computed nor logged.
  loss_kl, terms_kl = losses.total_loss(outputs, kind="mse", weights={"kl": 0.3})
  assert set(terms_kl) == {"loss", "reconstruction", "kl"}
  assert float(loss_kl) == pytest.approx(rec + 0.3 * kl, rel=1e-6)
