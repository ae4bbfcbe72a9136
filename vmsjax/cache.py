"""The frozen-encoder feature cache: train the head and decoder without running VGG-16.

The encoder is frozen and costs ~96% of a step's arithmetic, and a sweep recomputes
the same features for every run and epoch. The cache computes them once: for each
training image it draws K augmentation transforms (`features.views`, seeded by
`data.seed`), warps the image with each, and stores the trunk's output. Training
then reads batch k in the same example order as `pipeline.train_batches` (seed, k);
each (epoch, example) picks one of its K views by a draw seeded by (data.seed,
epoch), and the example's map is warped at train time with that view's stored draw,
so image features and map always see the same transform. The latent noise stays
fresh at every step. What changes against the uncached run: K fixed views per image
instead of a fresh draw every step (docs/speed.md measures it).

On disk, under `features.cache_dir` (default `<data_dir>/feature_cache`), a cache is
a directory named by a content key, the sha256 of everything that changes the
features (dataset fingerprint, encoder parameters, preprocessing, image size,
augmentation settings, K, the draw seed, model.dtype, this file's format version):

  <key>/meta.json   what went into the key, shapes, dtypes and each file's sha256
  <key>/feats.npy   (N, K, H/32, W/32, 512) float32, or bfloat16 stored as uint16
  <key>/draw.npy    (N, K, 4) float32 transform parameters (augment.draw columns)
  <key>/vms.npy     (N, Hs, Ws, 2) float32 maps as stored in the dataset

N is the number of training records, in file order. A cache is built in a temporary
sibling directory and renamed into place only when complete, so a killed build never
leaves a half cache that a later run trusts. Opening a cache checks every file's size,
header and sha256; a damaged one is an error (VMSError naming the file and telling to
delete the directory), not a silent rebuild: a damaged cache usually means a disk or
copy problem the user should know about.

Modes: `memory` puts the whole cache on the device (replicated) and gathers each
batch's rows inside the jitted step; `disk` keeps it memory-mapped on the host and
sends each batch's rows, for caches larger than device memory. Both compute the same
numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding

from vmsjax import factory, pixels
from vmsjax.data import augment
from vmsjax.errors import VMSError
from vmsjax.models import vgg16

FORMAT_VERSION = 1
FILES = ("feats.npy", "draw.npy", "vms.npy")
_DRAW_KEY = 0x63616368  # sub-key ("cach") of jax.random.key(data.seed) for the K draws
_VIEW_STREAM = 0x76696577  # third word of the view-choice seed ("view"): its own stream


@dataclasses.dataclass
class FeatureCache:
  """An opened cache: host arrays (memory-mapped), its directory and its record.

  Attributes:
    path: the cache directory.
    meta: the content of meta.json.
    feats: (N, K, h, w, 512) float32 or bfloat16 trunk features.
    draw: (N, K, 4) float32 augmentation parameters of each view.
    vms: (N, Hs, Ws, 2) float32 maps as stored in the dataset.
    built: whether this process built it (False: found on disk).
  """

  path: Path
  meta: dict[str, Any]
  feats: np.ndarray
  draw: np.ndarray
  vms: np.ndarray
  built: bool = False

  @property
  def num_examples(self) -> int:
    return int(self.feats.shape[0])

  @property
  def views(self) -> int:
    return int(self.feats.shape[1])


def feature_dtype(config: ml_collections.ConfigDict) -> np.dtype:
  """Storage dtype of the features: that of the trunk's output under `model.dtype`.

  Under bfloat16 the trunk's output is bfloat16 (cast to float32 only for the head),
  so storing bfloat16 loses nothing and halves the cache.
  """
  return np.dtype(ml_dtypes.bfloat16) if config.model.dtype == "bfloat16" else np.dtype("float32")


def cache_root(config: ml_collections.ConfigDict) -> Path:
  """The directory holding caches: `features.cache_dir`, else `<data_dir>/feature_cache`."""
  if config.features.cache_dir:
    return Path(os.path.expanduser(config.features.cache_dir))
  return Path(os.path.expanduser(config.data.data_dir)) / "feature_cache"


def effective_views(config: ml_collections.ConfigDict) -> int:
  """K; with augmentation off every view would be the identity, so one is kept."""
  return config.features.views if config.augment.enabled else 1


def encoder_digest(enc_params) -> str:
  """sha256 of the trunk's parameter values (covers file weights and random inits alike)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(enc_params))
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{arr.dtype.str}{arr.shape};".encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()


def key_fields(
  config: ml_collections.ConfigDict, dataset_fingerprint: str, enc_digest: str
) -> dict[str, Any]:
  """Everything that changes the cached arrays; the cache key is their hash."""
  aug = config.augment
  return {
    "format": FORMAT_VERSION,
    "dataset": config.data.name,
    "split": "train",
    "dataset_fingerprint": dataset_fingerprint,
    "encoder_params_sha256": enc_digest,
    "preprocessing": config.model.encoder.preprocessing,
    "image_size": int(config.data.image_size),
    "augment": {
      "enabled": bool(aug.enabled),
      "max_shift": float(aug.max_shift) if aug.enabled else 0.0,
      "zoom_range": float(aug.zoom_range) if aug.enabled else 0.0,
      "flip": bool(aug.flip) if aug.enabled else False,
    },
    "views": effective_views(config),
    "draw_seed": factory.data_seed(config),
    "dtype": config.model.dtype,
  }


def cache_key(fields: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def draws(config: ml_collections.ConfigDict, n: int) -> np.ndarray:
  """(n, K, 4) augmentation parameters of every view of every training example."""
  k = effective_views(config)
  if not config.augment.enabled:
    return np.asarray(augment.identity(n)).reshape(n, 1, 4)
  key = jax.random.fold_in(jax.random.key(factory.data_seed(config)), _DRAW_KEY)
  aug = config.augment
  flat = augment.draw(key, n * k, aug.max_shift, aug.zoom_range, aug.flip)  # (n*K, 4)
  return np.asarray(flat, np.float32).reshape(n, k, 4)


# --------------------------------------------------------------------------- building


def _encode_views_fn(config: ml_collections.ConfigDict, mesh: Mesh):
  """jit(enc_params, image (B,Hs,Ws,3) uint8, draw (B,4)) -> (B,h,w,512) stored dtype."""
  repl, split = factory.shardings(mesh)
  encoder = factory.make_encoder(config)
  hw = factory.image_hw(config)
  store = jnp.dtype(feature_dtype(config))

  def f(enc_params, image, draw):
    # Exactly the uncached step's path: one warp, then preprocess and the trunk.
    x = augment.warp(image, draw, hw)  # (B, H, W, 3) on 0-255
    return pixels.encode(config, encoder, enc_params, x).astype(store)

  return jax.jit(f, in_shardings=(repl, split, split), out_shardings=split)


def _sha256_file(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def _storage_view(arr: np.ndarray) -> np.ndarray:
  """bfloat16 is not a dtype .npy headers know: store its bits as uint16."""
  return arr.view(np.uint16) if arr.dtype == ml_dtypes.bfloat16 else arr


def build(
  config: ml_collections.ConfigDict,
  source,
  fields: dict[str, Any],
  enc_params,
  target: Path,
  chunk: int = 32,
) -> None:
  """Computes a cache into a temporary directory and renames it to `target`.

  Args:
    config: the run's config.
    source: the training split (random access to records with `image` and `vms`).
    fields: `key_fields(...)`, written to meta.json.
    enc_params: the frozen trunk's parameters.
    target: the final cache directory; must not exist yet.
    chunk: images per encoder call (rounded up to a multiple of the local devices).
  """
  n = len(source)
  if n == 0:
    raise VMSError(f"cannot build a feature cache of an empty split: {source!r}")
  mesh = factory.data_mesh(jax.local_devices())
  n_dev = len(jax.local_devices())
  chunk = -(-min(chunk, n) // n_dev) * n_dev  # a multiple of the devices, at most ~n
  fh, fw = factory.feature_hw(config)
  dtype = feature_dtype(config)
  all_draws = draws(config, n)  # (N, K, 4)
  k = all_draws.shape[1]
  first = source[0]
  vms_shape = (n, *np.asarray(first["vms"]).shape)

  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f".building-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    feats = np.lib.format.open_memmap(
      tmp / "feats.npy",
      mode="w+",
      dtype=np.uint16 if dtype == ml_dtypes.bfloat16 else dtype,
      shape=(n, k, fh, fw, vgg16.FEATURES),
    )
    vms = np.lib.format.open_memmap(tmp / "vms.npy", mode="w+", dtype=np.float32, shape=vms_shape)
    np.save(tmp / "draw.npy", all_draws)
    encode = _encode_views_fn(config, mesh)
    repl, split = factory.shardings(mesh)
    params = jax.device_put(enc_params, repl)
    for lo in range(0, n, chunk):
      hi = min(lo + chunk, n)
      records = [source[i] for i in range(lo, hi)]
      image = np.stack([np.asarray(r["image"], np.uint8) for r in records])
      vms[lo:hi] = np.stack([np.asarray(r["vms"], np.float32) for r in records])
      pad = chunk - (hi - lo)  # one shape for every call: a single compilation
      image = np.concatenate([image, np.repeat(image[-1:], pad, axis=0)]) if pad else image
      for v in range(k):
        d = all_draws[lo:hi, v]
        d = np.concatenate([d, np.repeat(d[-1:], pad, axis=0)]) if pad else d
        out = np.asarray(encode(params, image, d))[: hi - lo]  # (b, h, w, 512)
        feats[lo:hi, v] = _storage_view(out)
    feats.flush()
    vms.flush()
    del feats, vms
    meta = {
      "key": target.name,
      "fields": fields,
      "num_examples": n,
      "views": k,
      "arrays": {
        "feats": {"shape": [n, k, fh, fw, vgg16.FEATURES], "dtype": str(dtype)},
        "draw": {"shape": list(all_draws.shape), "dtype": "float32"},
        "vms": {"shape": list(vms_shape), "dtype": "float32"},
      },
      "sha256": {name: _sha256_file(tmp / name) for name in FILES},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    try:
      tmp.rename(target)
    except OSError:
      if not (target / "meta.json").exists():
        raise
      # Another process finished the same cache first: theirs is as good as ours.
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# --------------------------------------------------------------------------- opening


def _damaged(path: Path, why: str) -> VMSError:
  return VMSError(
    f"feature cache file {path} is damaged ({why}); delete the cache directory "
    f"{path.parent} and rerun to rebuild it"
  )


def load(path: Path, verify: bool = True) -> FeatureCache:
  """Opens a built cache directory (memory-mapped), checking every file.

  Raises:
    VMSError: a missing, truncated or altered file (the message names it and says to
      delete the cache directory).
  """
  path = Path(path)
  meta_path = path / "meta.json"
  try:
    meta = json.loads(meta_path.read_text())
    arrays, sums = meta["arrays"], meta["sha256"]
  except FileNotFoundError as e:
    raise _damaged(meta_path, "missing") from e
  except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise _damaged(meta_path, f"not a cache record: {type(e).__name__}") from e
  opened = {}
  for name in FILES:
    file = path / name
    stem = name.removesuffix(".npy")
    try:
      arr = np.load(file, mmap_mode="r")
    except FileNotFoundError as e:
      raise _damaged(file, "missing") from e
    except (ValueError, OSError, EOFError) as e:  # bad header or shorter than its header says
      raise _damaged(file, f"{type(e).__name__}: {e}") from e
    want = arrays[stem]
    dtype = want["dtype"]
    if dtype == "bfloat16":
      if arr.dtype != np.uint16:
        raise _damaged(file, f"dtype {arr.dtype}, expected bfloat16 bits")
      arr = arr.view(ml_dtypes.bfloat16)
    if list(arr.shape) != list(want["shape"]) or str(arr.dtype) != dtype:
      raise _damaged(file, f"shape {arr.shape} {arr.dtype}, expected {want['shape']} {dtype}")
    if verify and _sha256_file(file) != sums.get(name):
      raise _damaged(file, "content differs from its checksum in meta.json")
    opened[stem] = arr
  return FeatureCache(path=path, meta=meta, **opened)


def open_or_build(
  config: ml_collections.ConfigDict, source, dataset_fingerprint: str, enc_params
) -> FeatureCache:
  """Finds the cache for this config's data, encoder and augmentation, or builds it.

  Args:
    config: the run's config (`features`, `augment`, `data`, `model.encoder`, dtype).
    source: the training split.
    dataset_fingerprint: `catalogue.dataset_record(...)["fingerprint"]`.
    enc_params: the frozen trunk's parameters.

  Returns:
    The opened cache; `built` says whether this call computed it.
  """
  fields = key_fields(config, dataset_fingerprint, encoder_digest(enc_params))
  target = cache_root(config) / cache_key(fields)
  built = False
  if not target.exists():
    views = effective_views(config)
    print(
      f"building feature cache {target} ({len(source)} images x {views} views) ...",
      file=sys.stderr,
    )
    try:
      build(config, source, fields, enc_params, target)
    except OSError as e:
      raise VMSError(
        f"cannot write the feature cache under {target.parent} ({e.strerror or e}); set "
        "--config.features.cache_dir to a writable directory"
      ) from e
    built = True
  cache = load(target)
  if cache.meta.get("fields") != fields:
    raise _damaged(target / "meta.json", "its key fields do not match its directory name")
  if cache.num_examples != len(source):
    raise _damaged(target / "feats.npy", f"{cache.num_examples} rows for {len(source)} records")
  cache.built = built
  return cache


# --------------------------------------------------------------------------- training


class _EpochViews:
  """Which of the K views example i uses in epoch e: a draw seeded by (seed, e)."""

  def __init__(self, size: int, views: int, seed: int):
    self._size, self._views, self._seed = size, views, seed
    self._cache: dict[int, np.ndarray] = {}

  def __call__(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        self._cache.pop(next(iter(self._cache)))
      rng = np.random.default_rng([self._seed, epoch, _VIEW_STREAM])
      self._cache[epoch] = rng.integers(0, self._views, self._size)
    return self._cache[epoch]


def batch_rows(
  size: int,
  views: int,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[np.ndarray]:
  """Yields (b, 2) int32 (example, view) rows of this process's batches from `start_step`.

  The examples are those `pipeline.train_batches(source, batch_size, seed, ...)` yields
  at the same step, in the same order; the view is a pure function of (seed, epoch,
  example), so batch k depends only on k and a resumed run reads what it would have.
  """
  from vmsjax.data import pipeline

  # The same order object and positions train_batches uses, so they can never drift apart.
  order = pipeline.EpochOrder(size, seed)
  choice = _EpochViews(size, views, seed)
  for positions in pipeline.batch_positions(batch_size, start_step, process_index, process_count):
    rows = np.empty((len(positions), 2), np.int32)
    for r, position in enumerate(positions):
      example = order(position)
      rows[r] = (example, choice(position // size)[example])
    yield rows


def train_batches(
  cache: FeatureCache,
  config: ml_collections.ConfigDict,
  start_step: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Host batches of the cached inputs (`vmsjax.inputs`), by mode.

  memory: {"index": (b, 2) int32 (example, view)}, gathered on the device.
  disk:   {"feats": (b, h, w, 512), "draw": (b, 4), "vms": (b, Hs, Ws, 2)} read here.
  """
  rows = batch_rows(
    cache.num_examples,
    cache.views,
    config.train.batch_size,
    factory.data_seed(config),
    start_step,
    process_index,
    process_count,
  )
  for idx in rows:
    if config.features.cache == "memory":
      yield {"index": idx}
    else:
      ex, view = idx[:, 0], idx[:, 1]
      yield {
        "feats": np.asarray(cache.feats[ex, view]),
        "draw": np.asarray(cache.draw[ex, view]),
        "vms": np.asarray(cache.vms[ex]),
      }


def batch_keys(config) -> tuple[str, ...]:
  """The keys of `train_batches`' batches under `features.cache`."""
  return ("index",) if config.features.cache == "memory" else ("feats", "draw", "vms")


def device_table(cache: FeatureCache, config, repl: NamedSharding) -> dict[str, jax.Array]:
  """The arrays the step reads: the whole cache, replicated (memory), or {} (disk)."""
  if config.features.cache != "memory":
    return {}
  out = {}
  for name in ("feats", "draw", "vms"):
    host = getattr(cache, name)
    out[name] = jax.make_array_from_callback(host.shape, repl, lambda i, h=host: np.asarray(h[i]))
  return out
