"""The inputs stage of the training step: what feeds the head-and-decoder update.

Two kinds, chosen by `features.cache`, both giving the update the same thing, trunk
features (B, H/32, W/32, 512) and target maps (B, H, W, 2):

  pixels  ("off")           batch k of the training split, augmented on the device and
                            run through the frozen trunk (`vmsjax.pixels`). Where the
                            split lives is `data.placement`:
                              host    the host decodes batch k
                                      (`data.pipeline.train_batches`, `data.workers`
                                      threads ahead) and sends it;
                              device  the split is decoded once and kept on every
                                      device (replicated); the host sends batch k's
                                      record indices (`data.pipeline.batch_indices`)
                                      and the step gathers the rows;
                              auto    device when the split fits in
                                      DEVICE_DATA_FRACTION of one device's memory
                                      and the run reads it at least once.
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
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmsjax import cache, distributed, factory, pixels
from vmsjax.data import augment
from vmsjax.errors import VMSError

# `data.placement=auto` keeps the split on the device when its arrays take at most this
# fraction of one device's memory: the rest is for the model, its activations and XLA.
DEVICE_DATA_FRACTION = 0.25


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

  def reader(self, start_step: int, mesh) -> Reader:
    """Reads the batches from `start_step` on onto the devices of `mesh`."""
    return Reader(self, start_step, mesh)


class Reader:
  """The host batches of an `Inputs`, sent to the devices one call at a time."""

  def __init__(self, feed: Inputs, start_step: int, mesh):
    self._keys = feed.keys
    self._batches = feed.batches(start_step)
    self._split = factory.shardings(mesh)[1]
    self._stacked = factory.stacked_split(mesh)

  def take(self, k: int = 1) -> dict[str, jax.Array]:
    """The next batch (k = 1), or the next k stacked on a leading axis, split over the
    data axis."""
    hosts = [next(self._batches) for _ in range(k)]
    if k == 1:
      return factory.device_batch(hosts[0], self._split, self._keys)
    stacked = {key: np.stack([h[key] for h in hosts]) for key in self._keys}
    return factory.device_batch(stacked, self._stacked, self._keys)


def device_memory_bytes(device: jax.Device | None = None) -> int:
  """One device's memory: what an accelerator reports, the host's RAM for a CPU."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def split_bytes(source) -> int:
  """The bytes a split takes as arrays (image uint8, maps float32), from its first record."""
  first = source[0]
  per = np.asarray(first["image"]).size + 4 * np.asarray(first["vms"]).size
  return per * len(source)


def placement(config: ml_collections.ConfigDict, source) -> str:
  """`data.placement` resolved: "device" or "host" (see the module docstring).

  `auto` is "device" when the split fits in DEVICE_DATA_FRACTION of one device's memory
  and the run reads at least as many records as the split holds (so reading it whole,
  once, costs no more than the host path would); otherwise "host".
  """
  if config.data.placement != "auto":
    return config.data.placement
  fits = split_bytes(source) <= DEVICE_DATA_FRACTION * device_memory_bytes()
  reads = config.train.epochs * config.train.steps_per_epoch * config.train.batch_size
  return "device" if fits and reads >= len(source) else "host"


# uint8 map code -> map value, computed on the host as the datasets compute it (k / 255
# in float32). A lookup, not a division on the device, whose rounding may differ.
_MAP_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _map_codes(vms: np.ndarray) -> np.ndarray:
  """The maps as uint8 codes k (k / 255 the map) when that is exact, else float32.

  The real datasets' maps come from 8-bit images divided by 255, so uint8 loses
  nothing and takes a quarter of the memory. The synthetic maps are not quantised:
  they stay float32 (float16 would change the numbers against the host path).
  """
  codes = np.rint(vms * 255.0)
  if codes.min() >= 0 and codes.max() <= 255:
    codes = codes.astype(np.uint8)
    if np.array_equal(_MAP_VALUES[codes], vms):
      return codes
  return vms.astype(np.float32)


def _maps_from_codes(maps: jax.Array) -> jax.Array:
  if maps.dtype == jnp.uint8:
    return jnp.asarray(_MAP_VALUES)[maps]
  return maps


def resident_split(config: ml_collections.ConfigDict, source, setup: factory.Setup) -> dict:
  """The whole split on every device: {"image": (N, Hs, Ws, 3) uint8, "vms": (N, Hs, Ws, 2)
  uint8 codes or float32}, read once, in record order."""
  from vmsjax.data import pipeline

  rows = pipeline.read_split(source, workers=config.data.workers)
  arrays = {"image": np.asarray(rows["image"], np.uint8), "vms": _map_codes(rows["vms"])}
  return {k: jax.device_put(v, setup.repl) for k, v in arrays.items()}


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
  batch, seed = config.train.batch_size, factory.data_seed(config)
  if config.features.cache == "off" and placement(config, source) == "device":
    aux = {"encoder": setup.enc_params, **resident_split(config, source, setup)}

    def indices(start: int):
      for idx in pipeline.batch_indices(len(source), batch, seed, start, *process):
        yield {"index": idx}

    return Inputs(aux=aux, keys=("index",), batches=indices)
  if config.features.cache == "off":

    def batches(start: int):
      return pipeline.train_batches(
        source, batch, seed, start, *process, workers=config.data.workers
      )

    return Inputs(aux={"encoder": setup.enc_params}, keys=("image", "vms"), batches=batches)
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

  Pixels: the batch's records (sent, or gathered from the split in `aux` by index),
  augmented with `k_augment`, then the trunk with parameters `aux["encoder"]`. Cached:
  in memory mode the batch holds (example, view) indices and its rows are gathered
  from the device table `aux`; in disk mode it holds the rows. The map is warped with
  the view's stored draw, the transform its image features got; `k_augment` is unused.
  """
  if config.features.cache == "off":
    if "index" in batch:  # the split lives on the device: gather this batch's records
      batch = {"image": aux["image"][batch["index"]], "vms": aux["vms"][batch["index"]]}
    batch = dict(batch, vms=_maps_from_codes(batch["vms"]))
    image, vms = pixels.augmented_inputs(config, k_augment, batch)
    return pixels.encode(config, encoder, aux["encoder"], image), vms
  if "index" in batch:  # memory mode: gather this batch's rows on the device
    ex, view = batch["index"][:, 0], batch["index"][:, 1]
    rows = {"feats": aux["feats"][ex, view], "draw": aux["draw"][ex, view], "vms": aux["vms"][ex]}
  else:
    rows = batch
  feats = rows["feats"].astype(jnp.float32)
  vms = augment.warp(rows["vms"], rows["draw"], factory.image_hw(config))
  return feats, vms
