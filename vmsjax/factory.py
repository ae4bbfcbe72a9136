"""Everything a run is built from, made from its config: the one place that builds them.

Training, inference, the feature cache, the benchmarks and the tests all call this
module, so a model trained by `vmsjax train` is the model that `vmsjax evaluate`,
`vmsjax predict` and `experiments/benchmark.py` run.

  make_model(config)      VMSVAE(**config.model): the head and decoder
  make_encoder(config)    the frozen VGG-16 trunk (its parameters: encoder_params)
  make_optimizer(lr)      Adam
  data_mesh(devices)      the 1-D mesh "data"; shardings(mesh) -> (replicated, split)
  init_state(...)         a fresh TrainState
  build(config)           all of the above at once, as a `Setup`

Randomness: `config.seed` is the model's root key (parameter init here, latent noise in
the step); `data.seed` (`data_seed`) seeds the input side: data order, augmentation and
a random trunk, so that runs differing only in `seed` see the same inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vmsjax import tuning
from vmsjax.errors import VMSError
from vmsjax.models import vae, vgg16

# Typical standard deviation of a preprocessed natural-image pixel, per preprocessing.
RANDOM_TRUNK_INPUT_SPREAD = {"caffe": 60.0, "torch": 1.0}

# Fixed sub-keys: of the model's root key (init) and of the input side's (a random trunk).
INIT_KEY, ENCODER_KEY = 0, 1


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The frozen encoder is not here: it is never trained.

  Attributes:
    step: number of steps taken.
    params: trainable parameters (latent head and decoder).
    batch_stats: batch-norm running statistics.
    opt_state: Adam's state for `params`.
    bad_step: the first step whose loss or gradients were not finite, or -1. From
      that step on the state keeps its last good values.
  """

  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  bad_step: jnp.ndarray


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.dtype(config.model.dtype)


def image_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  return (config.data.image_size, config.data.image_size)


def feature_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  h, w = image_hw(config)
  return (h // vgg16.STRIDE, w // vgg16.STRIDE)


def data_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of the input side: data order, augmentation draws and a random trunk.

  It is `data.seed`, apart from `seed` (parameter init and latent noise), so that runs
  differing only in `seed` see the same batches and can be trained together. A saved
  config without it (older runs) used `seed` for both.
  """
  return int(config.data.get("seed", config.seed))


def make_model(config: ml_collections.ConfigDict) -> vae.VMSVAE:
  """`VMSVAE(**config.model)` (but the encoder section), at the config's image size,
  with the decoder form `vmsjax.tuning` chooses for this backend."""
  fields = {
    k: tuple(v) if isinstance(v, list | tuple) else v
    for k, v in config.model.items()
    if k != "encoder"
  }
  vae.check_image_size(*image_hw(config), fields.get("decoder_channels", ()))
  return vae.VMSVAE(**fields, out_hw=image_hw(config), conv_method=tuning.decoder_form())


def make_encoder(config: ml_collections.ConfigDict) -> vgg16.VGG16Trunk:
  return vgg16.VGG16Trunk(dtype=compute_dtype(config))


def make_optimizer(learning_rate: float | jnp.ndarray) -> optax.GradientTransformation:
  """Adam at `learning_rate` (a Python float, or a traced scalar inside the step)."""
  return optax.adam(learning_rate)


def encoder_params(config: ml_collections.ConfigDict):
  """The frozen VGG-16 trunk parameters: loaded from a file, or random if allowed.

  A random trunk is drawn from `data_seed(config)`: models that differ only in `seed`
  share it.
  """
  if config.model.encoder.weights:
    from vmsjax import weights  # loading real weights is its own module

    return weights.load_trunk(config.model.encoder.weights, config.model.encoder.preprocessing)
  if not config.model.encoder.allow_random:
    raise VMSError(
      "model.encoder.weights is empty and this config needs ImageNet VGG-16 weights: get "
      "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (Keras) and pass "
      "--config.model.encoder.weights=PATH, or set --config.model.encoder.allow_random=true "
      "to train on a random frozen trunk"
    )
  root = jax.random.key(data_seed(config))
  params = vgg16.random_params(jax.random.fold_in(root, ENCODER_KEY))
  # The trunk is ReLU-homogeneous with zero biases, so its output scales with the first
  # kernel. Dividing it by the typical spread of the preprocessed pixels (~60 on the
  # Caffe 0-255 scale, ~1 for torch's standardised input) gives O(1) features, the
  # magnitude a head initialised for unit inputs expects.
  spread = RANDOM_TRUNK_INPUT_SPREAD[config.model.encoder.preprocessing]
  first = dict(params["block1_conv1"], kernel=params["block1_conv1"]["kernel"] / spread)
  return dict(params, block1_conv1=first)


def init_state(
  config: ml_collections.ConfigDict,
  model: vae.VMSVAE,
  tx: optax.GradientTransformation,
  root: jax.Array,
) -> TrainState:
  """A fresh state from the model's root key `jax.random.key(config.seed)`."""
  fh, fw = feature_hw(config)
  feats = jnp.zeros((1, fh, fw, vgg16.FEATURES), jnp.float32)
  k = jax.random.fold_in(root, INIT_KEY)
  k_params, k_latent = jax.random.split(k)
  variables = model.init({"params": k_params, "latent": k_latent}, feats, train=False, sample=True)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(params),
    bad_step=jnp.full((), -1, jnp.int32),
  )


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named "data" over `devices` (default: every device of the job)."""
  return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), ("data",))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """(replicated, batch-split) shardings."""
  return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def stacked_split(mesh: Mesh) -> NamedSharding:
  """The sharding of K batches stacked on a leading axis: each split along axis 1."""
  return NamedSharding(mesh, P(None, "data"))


def device_batch(batch: dict, split: NamedSharding, keys: Sequence[str] | None = None) -> dict:
  """Host batch (this process's slice) -> global arrays split over the data axis."""
  keys = tuple(batch) if keys is None else keys
  return {k: jax.make_array_from_process_local_data(split, np.asarray(batch[k])) for k in keys}


@dataclasses.dataclass
class Setup:
  """What a config builds: model, encoder and its parameters, optimiser, mesh.

  Attributes:
    config: the config it was built from.
    model: the head and decoder (`make_model`).
    encoder: the frozen trunk module (`make_encoder`).
    enc_params: the trunk's parameters, replicated over `mesh`.
    tx: Adam at the config's learning rate (the step builds each member's own).
    mesh: the data mesh; `repl` and `split` its two shardings.
  """

  config: ml_collections.ConfigDict
  model: vae.VMSVAE
  encoder: vgg16.VGG16Trunk
  enc_params: Any
  tx: optax.GradientTransformation
  mesh: Mesh
  repl: NamedSharding
  split: NamedSharding
  _init: Any = dataclasses.field(default=None, init=False, repr=False)  # per instance

  def init(self, seed: int) -> TrainState:
    """A fresh state from `seed`, replicated over the mesh (one compilation per Setup)."""
    if self._init is None:
      self._init = jax.jit(
        lambda r: init_state(self.config, self.model, self.tx, r), out_shardings=self.repl
      )
    return self._init(jax.random.key(seed))


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Setup:
  """Builds everything `config` describes, on a mesh over `devices` (default: all)."""
  mesh = data_mesh(devices)
  repl, split = shardings(mesh)
  return Setup(
    config=config,
    model=make_model(config),
    encoder=make_encoder(config),
    enc_params=jax.device_put(encoder_params(config), repl),
    tx=make_optimizer(config.optim.learning_rate),
    mesh=mesh,
    repl=repl,
    split=split,
  )
