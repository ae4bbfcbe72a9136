"""Terms of the VMS-VAE objective (paper eq. 2 plus Keras-style kernel regularisation).

  loss = reconstruction + sum over TERMS of weight[name] * TERMS[name](outputs)
       = reconstruction + beta * KL(q(z|x) || N(0, I)) + l2 * sum ||kernel||^2

The weights are the config's `loss.weights` (`kl` is beta, after its warm-up). To add
a term: a function `(outputs) -> scalar` in `TERMS` and a weight in
`config.base_config()`'s `loss.weights`; the step, the logs and groups of models follow.
`outputs` holds `logits` (B, H, W, 2), `target` (B, H, W, 2), `mu` and `logvar` (B, m)
and `params` (the trainable parameters).

Each term is a per-batch mean of a per-example sum, so its scale matches the
negative log-likelihood of one whole map (Keras' `binary_crossentropy * H*W*C`):

  bce: -sum[y log p + (1 - y) log(1 - p)], p = sigmoid(logits)  (Bernoulli likelihood)
  mse: sum (y - p)^2                                            (Gaussian, up to constants)
  l1:  sum |y - p|
  kl:  -1/2 sum (1 + logvar - mu^2 - exp(logvar))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

RECONSTRUCTIONS: tuple[str, ...] = ("bce", "mse", "l1")


def reconstruction(logits: jnp.ndarray, target: jnp.ndarray, kind: str) -> jnp.ndarray:
  """Mean over the batch of the per-example summed reconstruction error.

  Args:
    logits: (B, H, W, C) pre-sigmoid map predictions.
    target: (B, H, W, C) maps in [0, 1].
    kind: "bce", "mse" or "l1".

  Returns:
    A scalar.
  """
  logits = logits.astype(jnp.float32)
  target = target.astype(jnp.float32)
  if kind == "bce":
    # log sigmoid form: exact for soft targets and stable for large |logits|.
    per_pixel = -(target * jax.nn.log_sigmoid(logits) + (1 - target) * jax.nn.log_sigmoid(-logits))
  elif kind == "mse":
    per_pixel = jnp.square(target - jax.nn.sigmoid(logits))
  elif kind == "l1":
    per_pixel = jnp.abs(target - jax.nn.sigmoid(logits))
  else:
    raise ValueError(f"unknown reconstruction loss {kind!r}; expected one of {RECONSTRUCTIONS}")
  return jnp.mean(jnp.sum(per_pixel, axis=tuple(range(1, per_pixel.ndim))))


def kl_divergence(mu: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
  """Mean over the batch of KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims."""
  per_dim = -0.5 * (1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))
  return jnp.mean(jnp.sum(per_dim, axis=-1))


def kernel_l2(params) -> jnp.ndarray:
  """Sum of squared entries of every `kernel` leaf (Dense and conv weights, not biases
  or batch-norm scales), as Keras' `kernel_regularizer=l2(...)` penalises them."""
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    last = path[-1]
    if getattr(last, "key", None) == "kernel":
      total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return total


def _kl(outputs: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  return kl_divergence(outputs["mu"], outputs["logvar"])


def _l2(outputs: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
  return kernel_l2(outputs["params"])


# The weighted terms of the loss, by the name of their weight in `loss.weights`.
TERMS: dict[str, Callable[[Mapping[str, jnp.ndarray]], jnp.ndarray]] = {"kl": _kl, "l2": _l2}


def total_loss(
  outputs: Mapping[str, jnp.ndarray], *, kind: str, weights: Mapping[str, jnp.ndarray]
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The whole objective and its terms, each logged on its own.

  Args:
    outputs: `logits`, `target`, `mu`, `logvar`, `params` (see the module docstring).
    kind: the reconstruction loss, "bce", "mse" or "l1".
    weights: a weight per term of `TERMS` to include (float scalars, traced or not).

  Returns:
    (loss, terms): terms holds `loss`, `reconstruction` and each weighted term
    unweighted under its name (its weight is logged apart by the step).
  """
  rec = reconstruction(outputs["logits"], outputs["target"], kind)
  terms = {"reconstruction": rec}
  loss = rec
  for name in sorted(weights):
    terms[name] = TERMS[name](outputs)
    loss = loss + weights[name] * terms[name]
  terms["loss"] = loss
  return loss, terms
