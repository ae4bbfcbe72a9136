"""A trained model as one file (`.vmsmodel`): write it from a workdir, load it anywhere.

`vmsjax export-model --workdir W --out model.vmsmodel` writes, and `load(path)` (also
`vmsjax.load_model`) and `vmsjax predict --model` read, a file that needs neither the
workdir nor the dataset:

  model.vmsmodel        a zip archive, every member stored (not compressed):
    manifest.json       UTF-8 JSON, the keys below
    params/P.npy        the head and decoder parameters (`TrainState.params`), one .npy
                        per leaf; P is the leaf's path in the tree joined by "/", e.g.
                        params/Decoder_0/ConvTranspose_0/kernel.npy
    batch_stats/P.npy   the batch-norm running statistics (`TrainState.batch_stats`)
    encoder/P.npy       the frozen VGG-16 trunk (`block1_conv1/kernel` ...), unless the
                        file was written with `--no-encoder`

manifest.json:

  format            "vmsjax-model"
  format_version    1 (an integer; `FORMAT_VERSION`). A reader refuses a larger one.
  vmsjax_version    the version that wrote the file
  source            {"workdir": the absolute path it was exported from, "step": N}
  config            the resolved training config (as the workdir's config.json)
  dataset           the workdir's dataset.json (name, version, fingerprint), or null
  preprocessing     what the model expects of an image: uint8 RGB of any size, resized
                    (bilinear, the training resize) to image_size x image_size, then the
                    trunk's input preprocessing ("caffe" or "torch", `models.vgg16`)
  encoder           {"included": bool, "checksum": `environment.tree_checksum` of the
                    trunk, "preprocessing", "weights": the file the run was trained
                    with ("" for a random trunk), "random": bool}
  members           {member name: sha256 hex of its bytes}, for every other member
  checksum          sha256 hex of the manifest without this key, serialised as
                    json.dumps(..., sort_keys=True, separators=(",", ":"))

Reading is strict and each failure is one `VMSError` line: not a zip or truncated,
a zip member failing its CRC, a member missing, unlisted or with another sha256, a
manifest checksum mismatch, another format or a newer format version, arrays that do
not fit the model the config builds, and a trunk whose checksum is not the recorded
one. A file written without its trunk is loaded with `encoder_weights`: a VGG-16
weights file (.h5, .pth, or .npz from `vmsjax convert-vgg16`), or "random" to draw the
random trunk of a run trained with `model.encoder.allow_random` again from its config
(the checksum confirms it is the same trunk).

The same model gives the same file, byte for byte: members are written in a fixed
order with a fixed timestamp, and the manifest holds no time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vmsjax import __version__, environment, factory, inference
from vmsjax import config as config_lib
from vmsjax.errors import VMSError

FORMAT = "vmsjax-model"
FORMAT_VERSION = 1
SUFFIX = ".vmsmodel"
MANIFEST = "manifest.json"
TREES: tuple[str, ...] = ("params", "batch_stats", "encoder")
RANDOM_TRUNK = "random"  # `encoder_weights` value: draw the config's random trunk again

_REQUIRED = ("source", "config", "preprocessing", "encoder", "members")  # dicts in a manifest
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip time: the same bytes for the same model
_AGAIN = "copy it again or re-export it with vmsjax export-model"


@dataclasses.dataclass
class Model:
  """A loaded model file: `predict`, `sample` and `scores` for uint8 RGB images.

  Attributes:
    trained: the `inference.Trained` the maps are computed with (the same compiled
      functions as `vmsjax predict --workdir`).
    manifest: the file's manifest (see the module docstring).
    path: the file it was read from.
  """

  trained: inference.Trained
  manifest: dict[str, Any]
  path: Path

  @property
  def image_size(self) -> int:
    """S: maps are (S, S, 2) whatever the size of the images."""
    return self.trained.image_size

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Maps (z = mu) of uint8 (N, H, W, 3) RGB images -> float32 (N, S, S, 2) in [0, 1].

    Channel 0 is the true VMS, channel 1 the false VMS.
    """
    maps, _ = inference.predict(self.trained, images)
    return maps

  def sample(self, images: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation over `k` latent draws (`predict_samples`).

    Returns:
      mean, std: float32 (N, S, S, 2).
    """
    return inference.predict_samples(self.trained, images, k, seed)

  def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """The per-image scores `vmsjax predict` writes to scores.csv.

    Returns:
      {"memorability": float64 (N,), "false_memorability": float64 (N,)}: the mean of
      the true and of the false map (`studies.stats.map_scores`).
    """
    from vmsjax.studies import stats

    s = stats.map_scores(self.predict(images))  # (N, 2)
    return {name: s[:, c] for c, name in enumerate(stats.SCORES)}


# ---------------------------------------------------------------------------- writing


def export(
  workdir: str | os.PathLike,
  out: str | os.PathLike,
  step: int | None = None,
  include_encoder: bool = True,
) -> dict[str, Any]:
  """Writes checkpoint `step` (default: the latest) of a training workdir as a model file.

  Args:
    workdir: a trained workdir.
    out: the file to write (must end in `.vmsmodel`; replaced atomically).
    step: the checkpoint.
    include_encoder: write the trunk's parameters; without them only its checksum is
      recorded and the trunk must be named at load time.

  Returns:
    The manifest written.

  Raises:
    VMSError: as `inference.load`, a wrong suffix, an unreadable dataset.json, or an
      unwritable `out`.
  """
  workdir, out = Path(workdir), Path(out)
  _check_suffix(out)
  return write(inference.load(workdir, step), out, include_encoder)


def write(trained: inference.Trained, out: str | os.PathLike, include_encoder: bool = True) -> dict:
  """Writes a restored workdir checkpoint (`inference.load`) as a model file.

  The dataset record is read from `trained.workdir`. Arguments, return value and errors
  as `export`.
  """
  out = Path(out)
  _check_suffix(out)
  if trained.workdir is None:
    raise VMSError(f"--out {out}: only a workdir's checkpoint is exported, not a model file's")
  workdir, config = Path(trained.workdir), trained.config
  trees = {
    "params": jax.device_get(trained.state.params),
    "batch_stats": jax.device_get(trained.state.batch_stats),
    "encoder": jax.device_get(trained.enc_params),
  }
  members: dict[str, bytes] = {}
  for tree in TREES if include_encoder else TREES[:2]:
    for key, leaf in _flatten(trees[tree]).items():
      buf = io.BytesIO()
      np.save(buf, leaf, allow_pickle=False)
      members[f"{tree}/{key}.npy"] = buf.getvalue()
  enc = config.model.encoder
  body = {
    "format": FORMAT,
    "format_version": FORMAT_VERSION,
    "vmsjax_version": __version__,
    "source": {"workdir": str(workdir.resolve()), "step": trained.step},
    "config": json.loads(config_lib.to_json(config)),
    "dataset": _dataset_record(workdir),
    "preprocessing": {
      "input": "uint8 RGB, (N, H, W, 3), any H and W",
      "resize": "bilinear, to image_size x image_size (the training resize, data.augment.warp)",
      "image_size": int(config.data.image_size),
      "trunk": str(enc.preprocessing),
    },
    "encoder": {
      "included": bool(include_encoder),
      "checksum": environment.tree_checksum(trees["encoder"]),
      "preprocessing": str(enc.preprocessing),
      "weights": str(enc.weights),
      "random": not enc.weights,
    },
    "members": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
  }
  manifest = json.loads(json.dumps(body))  # as a reader will parse it
  manifest["checksum"] = _manifest_checksum(manifest)
  tmp = out.with_name(out.name + ".tmp")
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
      z.writestr(_info(MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
      for name, data in members.items():
        z.writestr(_info(name), data)
    os.replace(tmp, out)  # an interrupted export leaves no half file under the name
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise VMSError(f"--out {out}: could not write the model file ({e.strerror or e})") from e
  return manifest


def _check_suffix(out: Path) -> None:
  if out.suffix != SUFFIX:
    raise VMSError(f"--out {out}: a model file must end in {SUFFIX}, e.g. model{SUFFIX}")


def _info(name: str) -> zipfile.ZipInfo:
  info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
  info.compress_type = zipfile.ZIP_STORED
  return info


def _dataset_record(workdir: Path) -> dict | None:
  path = workdir / "dataset.json"
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise VMSError(f"{path}: not readable JSON ({e}); the workdir's records are damaged") from e


def _manifest_checksum(manifest: dict[str, Any]) -> str:
  body = {k: v for k, v in manifest.items() if k != "checksum"}
  text = json.dumps(body, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def _keys(tree: Any) -> list[str]:
  """The names ("a/b/c") of a tree's leaves, in its leaf order; the tree is nested dicts."""
  out = []
  for path, _ in jax.tree_util.tree_leaves_with_path(tree):
    keys = [getattr(p, "key", None) for p in path]
    if not all(isinstance(k, str) and k and "/" not in k for k in keys):
      # Flax parameter trees are dicts of plain names; anything else is a bug here.
      raise ValueError(f"cannot name leaf {jax.tree_util.keystr(path)} in a model file")
    out.append("/".join(keys))
  return out


def _flatten(tree: Any) -> dict[str, np.ndarray]:
  """{"a/b/c": leaf as numpy} for a tree of nested string-keyed dicts."""
  leaves = jax.tree_util.tree_leaves(tree)
  return {k: np.asarray(leaf) for k, leaf in zip(_keys(tree), leaves, strict=True)}


# ---------------------------------------------------------------------------- reading


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
  """The manifest and the flat arrays ({tree: {"a/b": array}}) of a model file, checked.

  Raises:
    VMSError: a missing, damaged or truncated file, another format, a newer format
      version, or a member whose sha256 is not the manifest's.
  """
  path = Path(path)
  if not path.is_file():
    raise VMSError(f"{path}: no such file; pass a {SUFFIX} written by vmsjax export-model")
  if not zipfile.is_zipfile(path):
    raise VMSError(
      f"{path}: not a vmsjax model file (no zip directory: damaged or truncated); {_AGAIN}"
    )
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
      if MANIFEST not in names:
        raise VMSError(
          f"{path}: not a vmsjax model file (no {MANIFEST}); pass a {SUFFIX} written by "
          "vmsjax export-model"
        )
      manifest = _check_manifest(path, json.loads(z.read(MANIFEST).decode("utf-8")))
      listed = manifest["members"]
      unlisted = sorted(set(names) - set(listed) - {MANIFEST})
      if unlisted:
        raise VMSError(
          f"{path}: damaged model file (member {unlisted[0]} is not in its manifest); {_AGAIN}"
        )
      arrays: dict[str, dict[str, np.ndarray]] = {tree: {} for tree in TREES}
      for name, digest in listed.items():
        if name not in names:
          raise VMSError(f"{path}: damaged model file (member {name} is missing); {_AGAIN}")
        data = z.read(name)  # zipfile checks the member's CRC-32
        if hashlib.sha256(data).hexdigest() != digest:
          raise VMSError(f"{path}: damaged model file ({name} fails its sha256); {_AGAIN}")
        tree, _, key = name.partition("/")
        if tree not in arrays or not key.endswith(".npy"):
          raise VMSError(f"{path}: damaged model file (unknown member {name}); {_AGAIN}")
        arrays[tree][key.removesuffix(".npy")] = np.load(io.BytesIO(data), allow_pickle=False)
  except VMSError:
    raise
  except Exception as e:  # zipfile, json and numpy each fail their own way on damaged bytes
    reason = f"{type(e).__name__}: {' '.join(str(e).split())}"
    raise VMSError(f"{path}: damaged model file ({reason}); {_AGAIN}") from e
  return manifest, arrays


def _check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise VMSError(
      f"{path}: not a vmsjax model file ({MANIFEST} has no format {FORMAT!r}); pass a "
      f"{SUFFIX} written by vmsjax export-model"
    )
  version = manifest.get("format_version")
  if not isinstance(version, int) or isinstance(version, bool) or version < 1:
    raise VMSError(f"{path}: damaged model file (format_version {version!r}); {_AGAIN}")
  if version > FORMAT_VERSION:
    raise VMSError(
      f"{path}: model file format {version} (written by vmsjax "
      f"{manifest.get('vmsjax_version', '?')}) is newer than this vmsjax {__version__} reads "
      f"(format {FORMAT_VERSION}); upgrade vmsjax to load it"
    )
  if manifest.get("checksum") != _manifest_checksum(manifest):
    raise VMSError(f"{path}: damaged model file ({MANIFEST} fails its checksum); {_AGAIN}")
  lacking = [k for k in _REQUIRED if not isinstance(manifest.get(k), dict)]
  if lacking or not isinstance(manifest["source"].get("step"), int):
    what = lacking[0] if lacking else "source.step"
    raise VMSError(f"{path}: damaged model file ({MANIFEST} has no {what}); {_AGAIN}")
  return manifest


def load(path: str | os.PathLike, encoder_weights: str | os.PathLike | None = None) -> Model:
  """Loads a model file for prediction.

  Args:
    path: a `.vmsmodel` written by `export`.
    encoder_weights: the trunk, for a file written without it: a VGG-16 weights file
      (.h5, .pth, .npz) or "random" (the config's random trunk, drawn again). With a
      file that holds its trunk it may be given too, and must be the same trunk.

  Returns:
    A `Model`.

  Raises:
    VMSError: as `read`; arrays that do not fit the config's model; no trunk, or a
      trunk other than the one the model was trained with.
  """
  path = Path(path)
  manifest, arrays = read(path)
  config = inference.config_from_saved(config_lib.upgrade(manifest["config"]))
  params, batch_stats = _model_trees(path, manifest, config, arrays)
  enc_params = _trunk(path, manifest, config, arrays["encoder"], encoder_weights)
  trained = inference.from_arrays(
    config, params, batch_stats, enc_params, int(manifest["source"]["step"]), model_file=path
  )
  return Model(trained, manifest, path)


def _model_trees(path: Path, manifest: dict, config, arrays: dict) -> tuple[Any, Any]:
  """The params and batch_stats trees, checked against the model `config` builds."""
  try:
    model = factory.make_model(config)
    tx = factory.make_optimizer(config.optim.learning_rate)
    shapes = jax.eval_shape(lambda k: factory.init_state(config, model, tx, k), jax.random.key(0))
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise VMSError(
      f"{path}: its config does not build a model in vmsjax {__version__} ({e}); load it with "
      f"the vmsjax that wrote it ({manifest.get('vmsjax_version', '?')})"
    ) from e
  return (
    _unflatten(path, "params", arrays["params"], shapes.params),
    _unflatten(path, "batch_stats", arrays["batch_stats"], shapes.batch_stats),
  )


def _unflatten(path: Path, tree: str, flat: dict[str, np.ndarray], expected: Any) -> Any:
  """`flat` arranged as `expected` (a tree of ShapeDtypeStruct), every leaf checked."""
  leaves, treedef = jax.tree_util.tree_flatten(expected)
  keys = _keys(expected)
  missing = [k for k in keys if k not in flat]
  extra = sorted(set(flat) - set(keys))
  if missing or extra:
    what = f"no {tree}/{missing[0]}" if missing else f"an unexpected {tree}/{extra[0]}"
    raise VMSError(
      f"{path}: holds {what} for the model its config builds; load it with the vmsjax that "
      "wrote it, or re-export it"
    )
  for key, want in zip(keys, leaves, strict=True):
    got = flat[key]
    if got.shape != want.shape or got.dtype != want.dtype:
      raise VMSError(
        f"{path}: {tree}/{key} is {got.dtype}{list(got.shape)}, the model needs "
        f"{want.dtype}{list(want.shape)}; re-export it"
      )
  return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def _trunk(path: Path, manifest: dict, config, flat: dict, encoder_weights) -> Any:
  """The frozen trunk: the file's own or the one named, checked against the checksum."""
  from vmsjax import weights

  enc = manifest["encoder"]
  if encoder_weights is None and not enc["included"]:
    named = "--encoder_weights random" if enc["random"] else f"--encoder_weights {enc['weights']}"
    raise VMSError(
      f"{path} was exported without its trunk (--no-encoder): name the VGG-16 it was trained "
      f"with, {named} (load_model(path, encoder_weights=...) in Python)"
    )
  if encoder_weights is None:
    shapes = weights.expected_shapes()
    expected = {
      layer: {part: jax.ShapeDtypeStruct(s, np.float32) for part, s in parts.items()}
      for layer, parts in shapes.items()
    }
    params, source = _unflatten(path, "encoder", flat, expected), path
  elif str(encoder_weights) == RANDOM_TRUNK:
    random_config = config.copy_and_resolve_references()
    with random_config.unlocked():
      random_config.model.encoder.weights = ""
      random_config.model.encoder.allow_random = True
    params, source = factory.encoder_params(random_config), RANDOM_TRUNK
  else:
    params = weights.load_trunk(os.fspath(encoder_weights), enc["preprocessing"])
    source = encoder_weights
  got = environment.tree_checksum(params)
  if got != enc["checksum"]:
    trained_with = "a random trunk" if enc["random"] else enc["weights"]
    raise VMSError(
      f"{source}: this trunk (checksum {got[:12]}...) is not the one {path.name} was trained "
      f"with (checksum {enc['checksum'][:12]}..., {trained_with}); pass that trunk"
    )
  return params
