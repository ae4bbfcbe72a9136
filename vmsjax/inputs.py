"""The inputs stage of the training step: what feeds the head-and-decoder update.

Two kinds, chosen by `features.cache`, both giving the update the same thing, trunk
features (B, H/32, W/32, 512) and target maps (B, H, W, 2):

  pixels  ("off")           the host reads batch k of the training split
                            (`data.pipeline.train_batches`); on the device the step
                            augments it and runs the frozen trunk (`vmsjax.pixels`).
  cached  ("memory"/"disk") the frozen trunk's output for K stored augmentation views
                            (`vmsjax.cache`); the step gathers (memory) or receives
                            (disk) batch k's rows and warps the maps with their views.

Host side, `open_inputs` gives both as an `Inputs`: what the step reads besides the
batch (`aux`: the trunk's parameters or the cache's device table) and the host batches
from a given step. Device side, `features` turns one batch into (features, maps).
Batch k is a pure function of (data.seed, k, process) for either kind.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vmsjax import cache, distributed, factory, pixels
from vmsjax.data import augment
from vmsjax.errors import VMSError


def open_training_data(config: ml_collections.ConfigDict):
  """Checks the batch against the devices and opens the training split.

  With `data.auto_build`, process 0 builds a missing dataset while the others wait.
  """
  from vmsjax.data import catalogue

  n_dev = jax.device_count()
  if config.train.batch_size % n_dev:
    raise VMSError(
      f"invalid config value train.batch_size={config.train.batch_size}: must be divisible "
      f"by the number of devices ({n_dev})"
    )
  data_dir = config.data.data_dir
  if (
    distributed.is_main()
    and not catalogue.is_built(config.data.name, data_dir)
    and config.data.auto_build
  ):
    print(f"building dataset {config.data.name} into {data_dir} ...", file=sys.stderr)
    catalogue.build(config.data.name, data_dir)
  distributed.barrier("dataset ready")
  return catalogue.open_split(config.data.name, "train", data_dir)


@dataclasses.dataclass
class Inputs:
  """A run's training inputs, opened.

  Attributes:
    aux: what the step reads besides the batch, on the device: the trunk's parameters
      (pixels) or the cache's table ({} in disk mode).
    keys: the keys of a host batch.
    batches: a function start_step -> iterator of this process's host batches.
  """

  aux: Any
  keys: tuple[str, ...]
  batches: Any

  def device_batches(self, start_step: int, split) -> Iterator[dict[str, jax.Array]]:
    """Batches from `start_step` on, as global arrays split over the data axis."""
    for batch in self.batches(start_step):
      yield factory.device_batch(batch, split, self.keys)


def open_inputs(
  config: ml_collections.ConfigDict, source, dataset_fingerprint: str, setup: factory.Setup
) -> Inputs:
  """Opens the training inputs of `config`'s kind (building the feature cache if needed).

  Args:
    config: the run's config (for a group, any member's: inputs are shared).
    source: the training split (`open_training_data`).
    dataset_fingerprint: the dataset record's fingerprint (keys the feature cache).
    setup: the run's `factory.Setup` (mesh, trunk parameters).
  """
  from vmsjax.data import pipeline

  process = (jax.process_index(), jax.process_count())
  if config.features.cache == "off":

    def batches(start: int):
      return pipeline.train_batches(
        source,
        config.train.batch_size,
        seed=factory.data_seed(config),
        start_step=start,
        process_index=process[0],
        process_count=process[1],
      )

    return Inputs(aux=setup.enc_params, keys=("image", "vms"), batches=batches)
  fcache = cache.open_or_build(config, source, dataset_fingerprint, setup.enc_params)
  print(f"{'built' if fcache.built else 'using'} feature cache {fcache.path}", file=sys.stderr)
  return Inputs(
    aux=cache.device_table(fcache, config, setup.repl),
    keys=cache.batch_keys(config),
    batches=lambda start: cache.train_batches(fcache, config, start, *process),
  )


def features(
  config: ml_collections.ConfigDict, encoder, aux, batch: dict, k_augment: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """One batch's trunk features (B, h, w, 512) float32 and target maps (B, H, W, 2).

  Pixels: augment with `k_augment`, then the trunk with parameters `aux`. Cached: in
  memory mode the batch holds (example, view) indices and its rows are gathered from
  the device table `aux`; in disk mode it holds the rows. The map is warped with the
  view's stored draw, the transform its image features got; `k_augment` is unused.
  """
  if config.features.cache == "off":
    image, vms = pixels.augmented_inputs(config, k_augment, batch)
    return pixels.encode(config, encoder, aux, image), vms
  if "index" in batch:  # memory mode: gather this batch's rows on the device
    ex, view = batch["index"][:, 0], batch["index"][:, 1]
    rows = {"feats": aux["feats"][ex, view], "draw": aux["draw"][ex, view], "vms": aux["vms"][ex]}
  else:
    rows = batch
  feats = rows["feats"].astype(jnp.float32)
  vms = augment.warp(rows["vms"], rows["draw"], factory.image_hw(config))
  return feats, vms
