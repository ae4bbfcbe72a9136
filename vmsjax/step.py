"""The training step: the inputs stage, then the head-and-decoder update of every member.

A run is a group of G >= 1 members (a run alone is a group of one) whose configs
differ only in `config.member_keys`: the model seed and the numbers of the `loss` and
`optim` sections. The step computes the inputs once (`inputs.features`: augmentation
and the frozen trunk, or cached rows) and `jax.vmap`s `head_step` over the members'
stacked train states, model keys and hyperparameters:

  step(states, aux, batch, members) -> (states, metrics)
    states   TrainState with a leading axis G (replicated, donated)
    aux      the trunk's parameters or the feature cache's table (replicated)
    batch    one global batch, split over the data axis
    members  {"key": (G, ...) raw key data of jax.random.key(seed),
              "hyper": `hyperparams` stacked, leaves (G,)}  (replicated)
    metrics  {name: (G,)}: loss, reconstruction, each term of `losses.TERMS`, its
              weight as weight_<name>, grad_norm

Randomness: step k folds k into each root's step stream; the augmentation key comes
from `data.seed` (shared by the group), the latent key from the member's `seed`, so a
run resumed at step k computes what an uninterrupted run computes. The
hyperparameters are arguments, not constants of the compiled step, so every group of
the same static config (and size) reuses one compilation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vmsjax import config as config_lib
from vmsjax import factory, inputs, losses
from vmsjax.factory import TrainState

STEP_KEY = 2  # sub-key of a root key for the per-step streams (0, 1: factory's)


def step_keys(root: jax.Array, step: jnp.ndarray) -> tuple[jax.Array, jax.Array]:
  """(augment, latent) keys of one step: fold the step into the root's step stream."""
  rng = jax.random.fold_in(jax.random.fold_in(root, STEP_KEY), step)
  k_augment, k_latent = jax.random.split(rng)
  return k_augment, k_latent


def hyperparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The numbers of the traced sections (`loss`, `optim`) as float32 scalars, nested.

  These, with `seed`, are what may differ between members of a group
  (`config.member_keys`); e.g. {"loss": {"kl_warmup_steps", "weights": {"kl", "l2"}},
  "optim": {"learning_rate"}}.
  """
  keys = [k for k in config_lib.member_keys(config) if k != "seed"]
  flat = config_lib.flat(config)
  out: dict[str, Any] = {}
  for key in keys:
    *path, leaf = key.split(".")
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = np.float32(flat[key])
  return out


def members(configs: Sequence[ml_collections.ConfigDict]) -> dict[str, Any]:
  """The step's `members` argument for a group, host arrays with a leading axis G."""
  per = [hyperparams(c) for c in configs]
  keys = [np.asarray(jax.random.key_data(jax.random.key(c.seed))) for c in configs]
  return {"key": np.stack(keys), "hyper": jax.tree.map(lambda *xs: np.stack(xs), *per)}


def loss_weights(hyper_loss: Mapping[str, Any], step: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Each term's weight at `step`: `loss.weights`, with the kl weight ramped linearly
  from 0 over `loss.kl_warmup_steps` steps (0: no warm-up).

  A warm-up keeps the KL term from closing the latent before the decoder has learnt to
  use it (posterior collapse: the model then draws the mean map for every image).
  """
  weights = dict(hyper_loss["weights"])
  if "kl" in weights:
    warm = hyper_loss["kl_warmup_steps"]
    ramp = jnp.minimum(1.0, step.astype(jnp.float32) / jnp.maximum(warm, 1.0))
    weights["kl"] = jnp.where(warm > 0, weights["kl"] * ramp, weights["kl"])
  return weights


def head_step(
  config: ml_collections.ConfigDict,
  model,
  state: TrainState,
  feats: jnp.ndarray,
  vms: jnp.ndarray,
  k_latent: jax.Array,
  hyper: Mapping[str, Any],
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimiser step of the latent head and decoder of one member on given features.

  Args:
    config: static choices only (`loss.reconstruction`).
    model: the trainable part of the VAE.
    state: the member's state before the step.
    feats: (B, H/32, W/32, 512) float32 trunk features.
    vms: (B, H, W, 2) target maps in [0, 1].
    k_latent: key of the `latent` stream for this step.
    hyper: the member's `hyperparams` (traced scalars).

  Returns:
    (new state, metrics). A non-finite loss or gradient leaves params, batch stats and
    optimiser state as they were and records the step in `bad_step`.
  """
  weights = loss_weights(hyper["loss"], state.step)
  tx = factory.make_optimizer(hyper["optim"]["learning_rate"])

  def loss_fn(params):
    (logits, mu, logvar), updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      feats,
      train=True,
      sample=True,
      rngs={"latent": k_latent},
      mutable=["batch_stats"],
    )
    outputs = {"logits": logits, "target": vms, "mu": mu, "logvar": logvar, "params": params}
    loss, terms = losses.total_loss(outputs, kind=config.loss.reconstruction, weights=weights)
    return loss, (terms, updates["batch_stats"])

  (loss, (terms, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, new_opt = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)

  def keep_good(new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

  new_state = TrainState(
    step=state.step + 1,
    params=keep_good(new_params, state.params),
    batch_stats=keep_good(new_stats, state.batch_stats),
    opt_state=keep_good(new_opt, state.opt_state),
    bad_step=jnp.where((state.bad_step < 0) & ~ok, state.step, state.bad_step),
  )
  metrics = dict(terms, grad_norm=grad_norm, **{f"weight_{k}": w for k, w in weights.items()})
  return new_state, metrics


def make_step(config: ml_collections.ConfigDict, setup: factory.Setup):
  """step(states, aux, batch, members) -> (states, metrics), not yet jitted (see above).

  `config` is any member's: the step reads only what members share from it.
  """
  model, encoder = setup.model, setup.encoder
  data_root = jax.random.key(factory.data_seed(config))

  def step(states: TrainState, aux, batch, group):
    k = states.step[0]  # the members move in lock-step
    k_augment, _ = step_keys(data_root, k)
    feats, vms = inputs.features(config, encoder, aux, batch, k_augment)  # once per batch

    def one(state, key_data, hyper):
      _, k_latent = step_keys(jax.random.wrap_key_data(key_data), k)
      return head_step(config, model, state, feats, vms, k_latent, hyper)

    return jax.vmap(one)(states, group["key"], group["hyper"])

  return step


# Jitted steps by (the group's static config, its size, K, devices, modules): a process that trains
# the same kind of group again (the next points of a sweep, a resumed run) reuses the
# compiled step. Members' seeds and hyperparameters are arguments, not part of the key.
_JITTED: dict[tuple, Any] = {}


def make_steps(config: ml_collections.ConfigDict, setup: factory.Setup):
  """steps(states, aux, batches, members) -> (states, metrics): `make_step` over K
  batches stacked on a leading axis (`lax.scan`), metrics stacked {name: (K, G)}."""
  one = make_step(config, setup)

  def steps(states, aux, batches, group):
    return jax.lax.scan(lambda s, batch: one(s, aux, batch, group), states, batches)

  return steps


def jit_step(config: ml_collections.ConfigDict, setup: factory.Setup, size: int, k: int = 1):
  """The step under `jax.jit` over the setup's mesh: batch split, the rest replicated,
  the states donated. With k > 1, `make_steps`: k steps per call, batches (k, B, ...)."""
  devices = tuple(d.id for d in setup.mesh.devices.flat)
  # The modules' fields too: a setup whose model was changed (another decoder form) is
  # another program, though its config is the same.
  key = (config_lib.group_key(config), size, k, devices, repr(setup.model), repr(setup.encoder))
  if key not in _JITTED:
    repl = setup.repl
    split = setup.split if k == 1 else factory.stacked_split(setup.mesh)
    _JITTED[key] = jax.jit(
      make_step(config, setup) if k == 1 else make_steps(config, setup),
      in_shardings=(repl, repl, split, repl),
      out_shardings=(repl, repl),
      donate_argnums=(0,),
    )
  return _JITTED[key]
