"""A trained workdir as a predictor: restore a checkpoint, then maps or latents for images.

Shared by `vmsjax evaluate`, `vmsjax predict` and the studies, so all of them predict
the same way: images (uint8 RGB, already at the dataset's stored size or any size)
are resized with the training resize to `data.image_size`, encoded by the frozen
trunk, and decoded with z = mu and batch-norm running statistics unless latent
samples are asked for.

A `Trained` comes from a workdir's checkpoint (`load`) or from arrays, such as a model
file's (`from_arrays`, used by `vmsjax.model_file`); both predict through the same
compiled functions below, so their maps are the same bits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmsjax import config as config_lib
from vmsjax import factory, pixels
from vmsjax import workdir as workdir_lib
from vmsjax.data import augment
from vmsjax.errors import VMSError


def load_config(workdir: Path) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json)."""
  saved = config_lib.read_saved(workdir)
  if saved is None:
    raise VMSError(
      f"{workdir / 'config.json'} not found: {workdir} is not a vmsjax training workdir"
    )
  return config_from_saved(saved)


def config_from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A config from its saved JSON dict, renamed keys already moved (`config.upgrade`)."""
  cfg = ml_collections.ConfigDict(saved)
  # JSON turns tuples into lists; the model wants tuples.
  with cfg.unlocked():
    cfg.model.decoder_channels = tuple(cfg.model.decoder_channels)
  return cfg


@dataclasses.dataclass
class Trained:
  """A restored checkpoint with everything needed to run it.

  `workdir` is the training workdir it was restored from, or None when it was built
  from a model file (`model_file`, see `from_arrays`).
  """

  workdir: Path | None
  config: ml_collections.ConfigDict
  step: int
  state: Any  # train.TrainState, replicated over `mesh`
  enc_params: Any
  model: Any
  encoder: Any
  mesh: Any
  _fns: dict = dataclasses.field(default_factory=dict, repr=False)
  model_file: Path | None = None

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def batch_size(self) -> int:
    """The evaluation batch, rounded to a multiple of the device count."""
    n = jax.device_count()
    b = int(self.config.eval.batch_size)
    return b if b % n == 0 else n * max(1, b // n)


def load(workdir: str | Path, checkpoint: int | None = None) -> Trained:
  """Restores checkpoint `checkpoint` (default: the newest that restores) of a workdir.

  A damaged newest checkpoint is skipped with a note on stderr (and left where it is:
  reading a workdir never changes it; the next `vmsjax train` moves it aside).

  Raises:
    VMSError: not a workdir, no checkpoint, no checkpoint at that step, or that step
      (or, by default, every step) damaged.
  """
  workdir = Path(workdir)
  config = load_config(workdir)
  setup = factory.build(config)
  state = setup.init(config.seed)
  mngr = workdir_lib.checkpoint_manager(workdir, config)
  try:
    steps = mngr.all_steps()
    if not steps:
      raise VMSError(f"no checkpoint in {workdir / 'checkpoints'}; run vmsjax train first")
    if checkpoint is None:
      found = workdir_lib.restore_newest(mngr, state)
      if found is None:
        raise VMSError(
          f"no checkpoint in {workdir / 'checkpoints'} restores (steps {steps} are damaged)"
        )
      state, _, step = found
    else:
      if checkpoint not in steps:
        raise VMSError(
          f"checkpoint {checkpoint} not in {workdir / 'checkpoints'}; available: {steps}"
        )
      step = checkpoint
      state, _ = workdir_lib.restore(mngr, step, state)
  finally:
    mngr.close()
  from vmsjax import environment

  # The dataset is left out (it may not be built here): versions, devices, CPU, flags
  # and the trunk are what a reader of this checkpoint's numbers needs to know about.
  environment.warn_if_changed(workdir, environment.record(config, None, setup.enc_params))
  return Trained(
    workdir, config, int(step), state, setup.enc_params, setup.model, setup.encoder, setup.mesh
  )


def from_arrays(
  config: ml_collections.ConfigDict,
  params: Any,
  batch_stats: Any,
  enc_params: Any,
  step: int,
  model_file: Path | None = None,
) -> Trained:
  """A `Trained` from host arrays: the head and decoder, their batch statistics, the trunk.

  The model, encoder and mesh are made by the factory functions `factory.build` uses;
  `factory.build` itself is not called because it would read (or draw) the trunk named
  by `config.model.encoder`, which the caller already holds. Prediction reads only
  `params` and `batch_stats`, but the state also gets a fresh optimiser state so that it
  has the structure of a restored one: the compiled programs are then the very ones
  `load`'s `Trained` runs (one compilation cache entry, the same bits).

  Args:
    config: the resolved config the arrays were trained with.
    params: the `TrainState.params` tree (host or device arrays).
    batch_stats: the `TrainState.batch_stats` tree.
    enc_params: the frozen trunk's parameters.
    step: the training step they come from.
    model_file: the file they were read from, if any (recorded by `vmsjax predict`).
  """
  mesh = factory.data_mesh()
  repl, _ = factory.shardings(mesh)
  state = factory.TrainState(
    step=np.asarray(step, np.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=factory.make_optimizer(config.optim.learning_rate).init(params),
    bad_step=np.asarray(-1, np.int32),
  )
  return Trained(
    workdir=None,
    config=config,
    step=int(step),
    state=jax.device_put(state, repl),
    enc_params=jax.device_put(enc_params, repl),
    model=factory.make_model(config),
    encoder=factory.make_encoder(config),
    mesh=mesh,
    model_file=model_file,
  )


def _pad(x: np.ndarray, n: int) -> np.ndarray:
  if len(x) == n:
    return x
  pad = np.repeat(x[-1:], n - len(x), axis=0)  # repeats are dropped after prediction
  return np.concatenate([x, pad])


def _compiled(trained: Trained, name: str, samples: int = 0):
  key = (name, samples)
  if key in trained._fns:
    return trained._fns[key]
  config, model, encoder = trained.config, trained.model, trained.encoder
  repl, split = factory.shardings(trained.mesh)
  variables = lambda state: {"params": state.params, "batch_stats": state.batch_stats}  # noqa: E731

  if name == "maps":

    def fn(state, enc_params, image):
      feats = _features(config, encoder, enc_params, image)
      logits, mu, _ = model.apply(variables(state), feats, train=False, sample=False)
      return jax.nn.sigmoid(logits), mu

    out = (split, split)
  elif name == "samples":

    def fn(state, enc_params, image, rng):
      feats = _features(config, encoder, enc_params, image)

      def one(key):
        logits, _, _ = model.apply(
          variables(state), feats, train=False, sample=True, rngs={"latent": key}
        )
        return jax.nn.sigmoid(logits)

      draws = jax.lax.map(one, jax.random.split(rng, samples))  # (K, B, H, W, 2)
      return jnp.mean(draws, 0), jnp.std(draws, 0)

    out = (split, split)
  else:
    raise ValueError(name)
  in_sh = (repl, repl, split) + ((repl,) if name == "samples" else ())
  trained._fns[key] = jax.jit(fn, in_shardings=in_sh, out_shardings=out)
  return trained._fns[key]


def _features(config, encoder, enc_params, image):
  """Trunk features of uint8 images of any size (resized like training inputs)."""
  ident = augment.identity(image.shape[0])
  resized = augment.warp(image, ident, factory.image_hw(config))
  return pixels.encode(config, encoder, enc_params, resized)


def _batched(trained: Trained, images: np.ndarray, call) -> list[tuple[np.ndarray, ...]]:
  """Runs `call(device_images)` over fixed-size padded batches; returns trimmed outputs."""
  _, split = factory.shardings(trained.mesh)
  b = trained.batch_size
  outs = []
  for start in range(0, len(images), b):
    chunk = np.asarray(images[start : start + b])
    n = len(chunk)
    x = factory.device_batch({"image": _pad(chunk, b)}, split, keys=("image",))["image"]
    outs.append(tuple(np.asarray(o)[:n] for o in call(x)))
  return outs


def predict(trained: Trained, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps (z = mu) and latent means for a stack of images.

  Args:
    trained: from `load`.
    images: uint8 (N, H, W, 3) RGB; any H, W (resized to `data.image_size`).

  Returns:
    maps float32 (N, S, S, 2) in [0, 1] (channel 0 true VMS, 1 false VMS), and
    mu float32 (N, m).
  """
  images = _check_images(images)
  fn = _compiled(trained, "maps")
  outs = _batched(trained, images, lambda x: fn(trained.state, trained.enc_params, x))
  if not outs:
    return _empty(trained)
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def predict_samples(
  trained: Trained, images: np.ndarray, samples: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel mean and standard deviation of the maps over `samples` latent draws.

  Each draw is z = mu + sigma * eps with eps ~ N(0, I); batch k uses the key
  fold_in(key(seed), k), so the result is a pure function of (checkpoint, images,
  samples, seed, batch size).

  Returns:
    mean, std: float32 (N, S, S, 2).
  """
  if samples < 1:
    raise VMSError(f"--samples must be >= 1, got {samples}")
  images = _check_images(images)
  fn = _compiled(trained, "samples", samples)
  root = jax.random.key(seed)
  counter = iter(range(1 << 30))
  outs = _batched(
    trained,
    images,
    lambda x: fn(trained.state, trained.enc_params, x, jax.random.fold_in(root, next(counter))),
  )
  if not outs:
    m, _ = _empty(trained)
    return m, m
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _empty(trained: Trained) -> tuple[np.ndarray, np.ndarray]:
  s = trained.image_size
  return np.zeros((0, s, s, 2), np.float32), np.zeros((0, trained.config.model.latent), np.float32)


def _check_images(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise VMSError(
      f"expected uint8 RGB images of shape (N, H, W, 3), got {images.dtype} {images.shape}"
    )
  return images
