"""Training: state, the jitted data-parallel step, checkpoints and the loop.

The step runs under `jax.jit` over a 1-D mesh named "data" that spans every device:
batches are split along it, the train state and the frozen encoder are replicated,
and the state is donated. Randomness comes from two root keys: `config.seed` (parameter
init, latent noise) and `data.seed` (data order, augmentation, a random trunk; see
`data_seed`); the step folds in its own step number and splits named streams (`augment`,
`latent`), so a run resumed at step k computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vmsjax import config as config_lib
from vmsjax import distributed, losses, records
from vmsjax.data import augment
from vmsjax.errors import VMSError
from vmsjax.models import vae, vgg16

# Typical standard deviation of a preprocessed natural-image pixel, per preprocessing.
RANDOM_TRUNK_INPUT_SPREAD = {"caffe": 60.0, "torch": 1.0}

# Fixed sub-keys of the root key.
_INIT_KEY, _ENCODER_KEY, _STEP_KEY = 0, 1, 2


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
  return jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32


def image_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  return (config.data.image_size, config.data.image_size)


def make_encoder(config: ml_collections.ConfigDict) -> vgg16.VGG16Trunk:
  return vgg16.VGG16Trunk(dtype=compute_dtype(config))


def make_model(config: ml_collections.ConfigDict) -> vae.VMSVAE:
  vae.check_image_size(*image_hw(config))
  return vae.VMSVAE(
    dense=config.model.dense,
    latent=config.model.latent,
    out_hw=image_hw(config),
    channels=tuple(config.model.decoder_channels),
    kernel=config.model.kernel,
    output_batchnorm=config.model.output_batchnorm,
    dtype=compute_dtype(config),
  )


def make_optimizer(
  config: ml_collections.ConfigDict, learning_rate: float | jnp.ndarray | None = None
) -> optax.GradientTransformation:
  """Adam at `optim.learning_rate`, or at `learning_rate` (a traced scalar under vmap)."""
  lr = config.optim.learning_rate if learning_rate is None else learning_rate
  return optax.adam(lr)


def feature_hw(config: ml_collections.ConfigDict) -> tuple[int, int]:
  h, w = image_hw(config)
  return (h // vgg16.STRIDE, w // vgg16.STRIDE)


def data_seed(config: ml_collections.ConfigDict) -> int:
  """The seed of the input side: data order, augmentation draws and a random trunk.

  It is `data.seed`, apart from `seed` (parameter init and latent noise), so that runs
  differing only in `seed` see the same batches and can be trained together
  (`vmsjax.multi`). A saved config without it (older runs) used `seed` for both.
  """
  return int(config.data.get("seed", config.seed))


def encoder_params(config: ml_collections.ConfigDict, root: jax.Array | None = None):
  """The frozen VGG-16 trunk parameters: loaded from a file, or random if allowed.

  A random trunk is drawn from `data_seed(config)`, whatever `root` is (kept for
  callers): models that differ only in `seed` share it.
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
  params = vgg16.random_params(jax.random.fold_in(root, _ENCODER_KEY))
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
  fh, fw = feature_hw(config)
  feats = jnp.zeros((1, fh, fw, vgg16.FEATURES), jnp.float32)
  k = jax.random.fold_in(root, _INIT_KEY)
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


def resized_inputs(config, batch):
  """Resizes a stored batch to the model's input size, without augmentation."""
  hw = image_hw(config)
  ident = augment.identity(batch["image"].shape[0])
  return augment.warp(batch["image"], ident, hw), augment.warp(batch["vms"], ident, hw)


def augmented_inputs(config, rng, batch):
  """Augments (or just resizes) a batch on the device; returns image on 0-255 and maps."""
  if not config.augment.enabled:
    return resized_inputs(config, batch)
  return augment.augment(
    rng,
    batch["image"],
    batch["vms"],
    image_hw(config),
    max_shift=config.augment.max_shift,
    zoom_range=config.augment.zoom_range,
    flip=config.augment.flip,
  )


def encode(config, encoder: vgg16.VGG16Trunk, enc_params, image):
  """Frozen trunk features of 0-255 RGB images; no gradient flows into the trunk.

  On CPU, for images of at least 128x128, a batch of more than 4 that 4 divides goes
  through the trunk 4 images at a time (`lax.map`): at 224x224 a whole batch's block-1
  activation (411 MB at batch 32) is far beyond the caches, and micro-batches run ~1.4x
  more images per CPU-second (docs/benchmarks.md). Same features to float rounding. On
  GPU/TPU the whole batch goes at once: there micro-batches would only serialise work.
  """

  def trunk(image):
    x = vgg16.preprocess(image, config.model.encoder.preprocessing)
    return encoder.apply({"params": enc_params}, x.astype(encoder.dtype))

  micro, (b, h, w) = 4, image.shape[:3]
  # Measured on a 2-core CPU, trunk alone at batch 32: micro-batches take 0.74x the
  # time of the whole batch at 224x224, 0.79x at 128x128, but 1.4x at 64x64.
  big = h * w >= 128 * 128
  if jax.default_backend() == "cpu" and big and b > micro and b % micro == 0:
    chunks = image.reshape(b // micro, micro, *image.shape[1:])  # (B/4, 4, H, W, 3)
    feats = jax.lax.map(trunk, chunks)  # (B/4, 4, H/32, W/32, 512)
    feats = feats.reshape(b, *feats.shape[2:])
  else:
    feats = trunk(image)
  return jax.lax.stop_gradient(feats.astype(jnp.float32))  # (B, H/32, W/32, 512)


def kl_weight(config, step: jnp.ndarray) -> jnp.ndarray:
  """beta, ramped linearly from 0 over the first `loss.kl_warmup_steps` steps.

  A warm-up keeps the KL term from closing the latent before the decoder has learnt
  to use it (posterior collapse: the model then draws the mean map for every image).
  """
  warm = config.loss.kl_warmup_steps
  if warm <= 0:
    return jnp.asarray(config.loss.beta, jnp.float32)
  return config.loss.beta * jnp.minimum(1.0, step.astype(jnp.float32) / warm)


def default_hyper(config, step: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """The per-step loss weights of a run: {"beta": after warm-up, "l2"}, float32 scalars.

  They are an argument of `head_step` rather than read from the config inside it, so
  several models with different weights can share one step under `jax.vmap`.
  """
  return {"beta": kl_weight(config, step), "l2": jnp.asarray(config.loss.l2, jnp.float32)}


def head_step(
  config,
  model: vae.VMSVAE,
  tx: optax.GradientTransformation,
  state: TrainState,
  feats: jnp.ndarray,
  vms: jnp.ndarray,
  k_latent: jax.Array,
  hyper: dict[str, jnp.ndarray],
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimiser step of the latent head and decoder on given trunk features.

  Everything after the frozen encoder: a pure function of its arguments, so it can be
  `jax.vmap`ped over (state, k_latent, hyper) to train several models on one batch.
  `config` only supplies static choices (the reconstruction loss).

  Args:
    config: the run's config (only `loss.reconstruction` is read).
    model: the trainable part of the VAE.
    tx: the optimiser.
    state: the train state before the step.
    feats: (B, H/32, W/32, 512) float32 trunk features.
    vms: (B, H, W, 2) target maps in [0, 1].
    k_latent: key of the `latent` stream for this step.
    hyper: {"beta", "l2"} float32 scalars (see `default_hyper`).

  Returns:
    (new state, metrics): metrics are loss, reconstruction, kl, l2, grad_norm, beta.
    A non-finite loss or gradient leaves params, batch stats and optimiser state as
    they were and records the step in `bad_step`.
  """

  def loss_fn(params):
    (logits, mu, logvar), updates = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      feats,
      train=True,
      sample=True,
      rngs={"latent": k_latent},
      mutable=["batch_stats"],
    )
    loss, terms = losses.total_loss(
      logits,
      vms,
      mu,
      logvar,
      params,
      kind=config.loss.reconstruction,
      beta=hyper["beta"],
      l2=hyper["l2"],
    )
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
  metrics = dict(terms, grad_norm=grad_norm, beta=hyper["beta"])
  return new_state, metrics


def step_keys(root: jax.Array, step: jnp.ndarray) -> tuple[jax.Array, jax.Array]:
  """(augment, latent) keys of one step: fold the step into the root's step stream."""
  rng = jax.random.fold_in(jax.random.fold_in(root, _STEP_KEY), step)
  k_augment, k_latent = jax.random.split(rng)
  return k_augment, k_latent


def make_train_step(config, model, tx, encoder):
  """Returns step(state, enc_params, batch, root) -> (state, metrics), not yet jitted."""

  def step(state: TrainState, enc_params, batch, root):
    # Augmentation follows data.seed, latent noise follows seed (equal by default).
    k_augment, _ = step_keys(jax.random.key(data_seed(config)), state.step)
    _, k_latent = step_keys(root, state.step)
    image, vms = augmented_inputs(config, k_augment, batch)
    feats = encode(config, encoder, enc_params, image)
    hyper = default_hyper(config, state.step)
    return head_step(config, model, tx, state, feats, vms, k_latent, hyper)

  return step


def data_mesh() -> Mesh:
  """A 1-D mesh over every device, axis "data" (Auto axis type)."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """(replicated, batch-split) shardings."""
  return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def jit_train_step(config, model, tx, encoder, mesh: Mesh):
  repl, split = shardings(mesh)
  return jax.jit(
    make_train_step(config, model, tx, encoder),
    in_shardings=(repl, repl, split, repl),
    out_shardings=(repl, repl),
    donate_argnums=(0,),
  )


def device_batch(batch: dict, split: NamedSharding, keys=("image", "vms")) -> dict:
  """Host batch (this process's slice) -> global arrays split over the data axis."""
  return {k: jax.make_array_from_process_local_data(split, np.asarray(batch[k])) for k in keys}


# --------------------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: Path, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    (workdir / "checkpoints").absolute(),
    options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep, create=True),
  )


def save(mngr: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
  step = int(state.step)
  mngr.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=True,
  )


def restore(mngr: ocp.CheckpointManager, step: int, target: TrainState) -> tuple[TrainState, dict]:
  """Restores the state at `step` into the shapes/shardings of `target`."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    out = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
  except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
    raise VMSError(
      f"checkpoint {step} in {mngr.directory} cannot be restored ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}); delete that step's folder to fall back "
      "to an earlier one, or use a new --workdir"
    ) from e
  return out["state"], dict(out["meta"])


def check_workdir_config(workdir: Path, config) -> None:
  """Refuses to resume a workdir whose run was made with a different config."""
  saved = config_lib.read_saved(workdir)
  if saved is None:
    return
  diffs = config_lib.differences(saved, config)
  if diffs:
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    raise VMSError(
      f"workdir {workdir} holds a run with a different config ({shown}); "
      "use a new --workdir, or rerun with the saved config.json's values"
    )


def prepare_workdir(workdir: Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    # One probe per process: the processes of a multi-host job share the workdir.
    probe = workdir / f".write_test.{socket.gethostname()}.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink(missing_ok=True)
  except OSError as e:
    raise VMSError(
      f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir"
    ) from e


def truncate_metrics(workdir: Path, step: int) -> None:
  """Drops metric lines logged after `step` (a resumed run logs them again)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill
      continue
    if rec.get("step", 0) <= step:
      kept.append(line)
  path.write_text("".join(k + "\n" for k in kept))


# --------------------------------------------------------------------------- loop


class Progress:
  """A one-line progress bar on a terminal, a line per log step otherwise; nothing when
  disabled (`log.progress=false`, and on every process but the first)."""

  def __init__(self, total: int, batch: int, start: int, enabled: bool):
    self.total, self.batch, self.start = total, batch, start
    self.t0 = time.perf_counter()
    self.enabled = enabled
    self.tty = enabled and sys.stderr.isatty()

  def update(self, step: int, loss: float | None, force: bool = False) -> None:
    if not self.enabled:
      return
    done = step - self.start
    dt = max(time.perf_counter() - self.t0, 1e-9)
    sps = done / dt
    eta = (self.total - step) / sps if sps > 0 else float("inf")
    eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
    loss_s = f" loss {loss:.1f}" if loss is not None else ""
    width = 24
    filled = int(width * step / max(self.total, 1))
    line = (
      f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total}"
      f" {sps:.2f} steps/s {sps * self.batch:.1f} img/s ETA {eta_s}{loss_s}"
    )
    if self.tty:
      sys.stderr.write("\r" + line)
      sys.stderr.flush()
    elif force:
      print(line, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.tty:
      sys.stderr.write("\n")


def open_training_data(config: ml_collections.ConfigDict):
  """Checks the batch against the devices and opens the training split.

  With `data.auto_build`, process 0 builds a missing dataset while the others wait.
  """
  from vmsjax.data import pipeline

  n_dev = jax.device_count()
  if config.train.batch_size % n_dev:
    raise VMSError(
      f"invalid config value train.batch_size={config.train.batch_size}: must be divisible "
      f"by the number of devices ({n_dev})"
    )
  data_dir = config.data.data_dir
  if (
    distributed.is_main()
    and not pipeline.is_built(config.data.name, data_dir)
    and config.data.auto_build
  ):
    print(f"building dataset {config.data.name} into {data_dir} ...", file=sys.stderr)
    pipeline.build(config.data.name, data_dir)
  distributed.barrier("dataset ready")
  return pipeline.open_split(config.data.name, "train", data_dir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
  """Trains (resuming from workdir's latest checkpoint) and returns the final state."""
  from vmsjax.data import pipeline

  config_lib.validate(config)
  workdir = Path(workdir)
  prepare_workdir(workdir)
  check_workdir_config(workdir, config)

  source = open_training_data(config)
  data_dir = config.data.data_dir
  main = distributed.is_main()  # process 0 writes the run's records

  model, tx, encoder = make_model(config), make_optimizer(config), make_encoder(config)
  mesh = data_mesh()
  repl, split = shardings(mesh)
  root = jax.random.key(config.seed)
  enc_params = jax.device_put(encoder_params(config, root), repl)
  state = jax.jit(lambda r: init_state(config, model, tx, r), out_shardings=repl)(root)

  mngr = checkpoint_manager(workdir, config)
  fp = config_lib.fingerprint(config)
  latest = mngr.latest_step()
  if latest is not None:
    state, meta = restore(mngr, latest, state)
    if meta.get("config_fingerprint") != fp:
      raise VMSError(
        f"checkpoint {latest} in {workdir} was made with a different config "
        f"(fingerprint {meta.get('config_fingerprint')} != {fp}); use a new --workdir"
      )
    if main:
      truncate_metrics(workdir, latest)
    print(f"resuming from checkpoint {latest} in {workdir}", file=sys.stderr)

  dataset_rec = pipeline.dataset_record(config.data.name, data_dir)
  if main:
    records.write_json(workdir / "config.json", config.to_dict())
    records.write_json(workdir / "versions.json", records.package_versions())
    records.write_json(workdir / "dataset.json", dataset_rec)

  total = config_lib.total_steps(config)
  start = int(state.step)
  if config.features.cache == "off":
    step_fn = jit_train_step(config, model, tx, encoder, mesh)
    step_aux = enc_params  # the step's second argument: what it reads besides the batch
    batch_keys = ("image", "vms")
    batches = pipeline.train_batches(
      source,
      config.train.batch_size,
      seed=data_seed(config),
      start_step=start,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  else:  # frozen-encoder features computed once (vmsjax/cache.py); the trunk never runs here
    from vmsjax import cache

    fcache = cache.open_or_build(config, source, dataset_rec["fingerprint"], enc_params)
    print(f"{'built' if fcache.built else 'using'} feature cache {fcache.path}", file=sys.stderr)
    step_fn = cache.jit_step(config, model, tx, mesh)
    step_aux = cache.device_table(fcache, config, repl)
    batch_keys = cache.batch_keys(config)
    batches = cache.train_batches(fcache, config, start, jax.process_index(), jax.process_count())
  writer = records.MetricWriter(workdir) if main else records.NullWriter()
  progress = Progress(total, config.train.batch_size, start, config.log.progress and main)
  meta = {"config_fingerprint": fp, "dataset": config.data.name}
  last_saved = latest
  pending: list[tuple[int, dict]] = []
  try:
    for step in range(start, total):
      batch = device_batch(next(batches), split, keys=batch_keys)
      state, metrics = step_fn(state, step_aux, batch, root)
      pending.append((step + 1, metrics))
      at_end = step + 1 == total
      if (step + 1) % config.log.every_steps == 0 or at_end:
        _flush_metrics(writer, pending, state, workdir, last_saved)
        pending = []
        progress.update(step + 1, float(metrics["loss"]), force=True)
      if (step + 1) % config.checkpoint.every_steps == 0 or at_end:
        _check_finite(state, workdir, last_saved)
        save(mngr, state, dict(meta, step=step + 1, next_batch=step + 1))
        last_saved = step + 1
      _maybe_kill_for_test(step + 1, mngr)
    mngr.wait_until_finished()
  finally:
    progress.close()
    writer.close()
    mngr.close()
  return state


def _flush_metrics(writer, pending, state, workdir, last_saved) -> None:
  _check_finite(state, workdir, last_saved)
  host = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, host, strict=True):
    writer.write(step, m)
  writer.flush()


def _check_finite(state: TrainState, workdir: Path, last_saved: int | None) -> None:
  bad = int(state.bad_step)
  if bad >= 0:
    kept = (
      f"the last good checkpoint is step {last_saved}"
      if last_saved is not None
      else "no checkpoint was written"
    )
    raise VMSError(
      f"loss or gradients became NaN/Inf at step {bad + 1}; training stopped and {kept} "
      f"in {workdir}; lower optim.learning_rate or check the data"
    )


def _maybe_kill_for_test(step: int, mngr: ocp.CheckpointManager) -> None:
  """Fault injection for the resume test: SIGKILL this process after step N.

  Set VMSJAX_KILL_AFTER_STEP=N. It waits for checkpoint writes already under way (so
  the test knows which checkpoint survives), then sends a real SIGKILL: no cleanup and
  no flush, like a preempted job.
  """
  import os

  at = os.environ.get("VMSJAX_KILL_AFTER_STEP")
  if at and int(at) == step:
    import signal

    mngr.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)
