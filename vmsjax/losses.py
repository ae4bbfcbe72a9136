"""Terms of the VMS-VAE objective (paper eq. 2 plus Keras-style kernel regularisation).

  loss = reconstruction + beta * KL(q(z|x) || N(0, I)) + l2 * sum ||kernel||^2

Each term is a per-batch mean of a per-example sum, so its scale matches the
negative log-likelihood of one whole map (Keras' `binary_crossentropy * H*W*C`):

  bce: -sum[y log p + (1 - y) log(1 - p)], p = sigmoid(logits)  (Bernoulli likelihood)
  mse: sum (y - p)^2                                            (Gaussian, up to constants)
  l1:  sum |y - p|
  kl:  -1/2 sum (1 + logvar - mu^2 - exp(logvar))
"""

from __future__ import annotations

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


def total_loss(
  logits: jnp.ndarray,
  target: jnp.ndarray,
  mu: jnp.ndarray,
  logvar: jnp.ndarray,
  params,
  *,
  kind: str,
  beta: float,
  l2: float,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The whole objective and its terms (each logged on its own).

  Returns:
    (loss, terms) with terms `reconstruction`, `kl`, `l2` (already weighted by l2)
    and `loss`.
  """
  rec = reconstruction(logits, target, kind)
  kl = kl_divergence(mu, logvar)
  reg = l2 * kernel_l2(params)
  loss = rec + beta * kl + reg
  return loss, {"loss": loss, "reconstruction": rec, "kl": kl, "l2": reg}
