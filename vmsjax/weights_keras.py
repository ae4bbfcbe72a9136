"""Reading the VGG-16 layers of Keras weights: HDF5 files (.h5, .hdf5) and .keras archives.

Two HDF5 layouts: Keras 1/2 `save_weights` / `save` files, whose root attrs list the
layer groups (`layer_names`, `weight_names`), and Keras 3 `.weights.h5` files, whose
layers sit under `layers/<name>/vars/{0,1}`. A Keras 3 `.keras` archive (`model.save`)
is a zip whose `model.weights.h5` has the Keras 3 layout; it is read in place, without
unpacking the archive to disk. Either way the result is the raw layers,
{name: {"kernel": HWIO, "bias": (C,)}}, classifier dropped; vmsjax.weights checks
them strictly.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

import numpy as np

from vmsjax.errors import VMSError
from vmsjax.models import vgg16

# The classifier of the full model: recognised and dropped (the trunk has no use for it).
KERAS_CLASSIFIER: frozenset[str] = frozenset(
  {"flatten", "fc1", "fc2", "predictions", "dense", "dense_1", "dense_2"}
)

# Keras 1 names weights `<layer>_W_1:0`/`<layer>_b_1:0`, tf.keras 2 `kernel:0`/`bias:0`.
_KERAS_KERNEL = re.compile(r"(^|[/_])(kernel|w)(_\d+)?(:\d+)?$", re.IGNORECASE)
_KERAS_BIAS = re.compile(r"(^|[/_])(bias|b)(_\d+)?(:\d+)?$", re.IGNORECASE)
# Keras 3 names container entries after the layer class: conv2d, conv2d_1, ..., conv2d_12.
_KERAS3_CONV = re.compile(r"^conv2d(?:_(\d+))?$")


def _as_str(x: Any) -> str:
  return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _read_dataset(path: str, layer: str, ds: Any) -> np.ndarray:
  import h5py

  if not isinstance(ds, h5py.Dataset):
    raise VMSError(f"{path}: layer {layer} has a group where a weight array belongs; not Keras")
  return np.asarray(ds[()])


def _dataset_paths(group: Any) -> list[str]:
  """Paths of all datasets under `group` (for files without `weight_names` attrs)."""
  import h5py

  paths: list[str] = []
  group.visititems(lambda n, o: paths.append(n) if isinstance(o, h5py.Dataset) else None)
  return paths


def _keras_legacy_layers(path: str, root: Any) -> dict[str, dict[str, np.ndarray]]:
  """Layers of a Keras 1/2 `save_weights`/`save` file: root attrs list layer groups."""
  if "layer_names" in root.attrs:
    names = [_as_str(n) for n in root.attrs["layer_names"]]
  else:
    names = list(root.keys())
  layers: dict[str, dict[str, np.ndarray]] = {}
  for name in names:
    if name not in root:
      raise VMSError(f"{path}: layer {name} is listed but has no weights group; file is corrupt")
    g = root[name]
    if "weight_names" in g.attrs:
      weight_names = [_as_str(w) for w in g.attrs["weight_names"]]
    else:
      weight_names = _dataset_paths(g)
    if not weight_names or name in KERAS_CLASSIFIER:
      continue  # input, pooling, flatten and the classifier
    parts: dict[str, np.ndarray] = {}
    for wn in weight_names:
      arr = _read_dataset(path, name, g[wn])
      base = wn.rsplit("/", 1)[-1]
      if _KERAS_KERNEL.search(base):
        part = "kernel"
      elif _KERAS_BIAS.search(base):
        part = "bias"
      else:
        raise VMSError(
          f"{path}: layer {name} has an unexpected weight {wn!r}; use plain VGG-16 weights"
        )
      if part in parts:
        raise VMSError(f"{path}: layer {name} has two {part}s; use plain VGG-16 weights")
      parts[part] = arr
    layers[name] = parts
  return layers


def _keras3_layers(path: str, root: Any) -> dict[str, dict[str, np.ndarray]]:
  """Layers of a Keras 3 `.weights.h5`: `layers/<name>/vars/{0,1}`, maybe nested."""
  import h5py

  found: list[tuple[str, Any]] = []

  def visit(name: str, obj: Any) -> None:
    if isinstance(obj, h5py.Group) and "vars" in obj and name.rsplit("/", 1)[-1] != "vars":
      found.append((name.rsplit("/", 1)[-1], obj["vars"]))

  root.visititems(visit)
  layers: dict[str, dict[str, np.ndarray]] = {}
  by_class: dict[int, dict[str, np.ndarray]] = {}
  for name, v in found:
    keys = sorted(v.keys(), key=lambda k: int(k) if k.isdigit() else -1)
    if not keys or name in KERAS_CLASSIFIER:
      continue
    if keys != ["0", "1"]:
      raise VMSError(
        f"{path}: layer {name} holds variables {keys}, expected a kernel and a bias; "
        "use plain VGG-16 weights"
      )
    parts = {
      "kernel": _read_dataset(path, name, v["0"]),
      "bias": _read_dataset(path, name, v["1"]),
    }
    m = _KERAS3_CONV.match(name)
    if m:
      by_class[int(m.group(1) or 0)] = parts
    else:
      layers[name] = parts
  if by_class:
    if layers or sorted(by_class) != list(range(len(by_class))):
      raise VMSError(
        f"{path}: Keras 3 layers are neither all named (block1_conv1 ...) nor a complete "
        "conv2d, conv2d_1, ... sequence; re-export the weights from keras.applications.VGG16"
      )
    if len(by_class) != len(vgg16.LAYER_NAMES):
      raise VMSError(
        f"{path}: holds {len(by_class)} convolutions, VGG-16 has {len(vgg16.LAYER_NAMES)}; "
        "use plain VGG-16 weights"
      )
    layers = {vgg16.LAYER_NAMES[i]: by_class[i] for i in range(len(by_class))}
  return layers


# The weights inside a Keras 3 `.keras` archive (keras/src/saving/saving_lib.py).
KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"


def read_h5(path: str) -> tuple[dict[str, dict[str, np.ndarray]], str]:
  """Reads the layers of a Keras HDF5 file.

  Returns:
    The layers by name ({"kernel", "bias"} arrays as stored) and the layout read,
    "keras-h5" (Keras 1/2) or "keras3-h5".

  Raises:
    VMSError: not an HDF5 file, a corrupt or truncated one, or weights that are not
      a plain convolution stack.
  """
  return _read_hdf5(path, path, "download it again")


def read_keras_archive(path: str) -> tuple[dict[str, dict[str, np.ndarray]], str]:
  """Reads the layers of a Keras 3 `.keras` archive (its `model.weights.h5`).

  Returns:
    The layers by name, as `read_h5`, and the layout "keras3-keras".

  Raises:
    VMSError: not a zip, a damaged one, a zip without `model.weights.h5`, or weights
      that `read_h5` would refuse.
  """
  again = "save it again with Keras' model.save"
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise VMSError(
      f"{path}: not a readable .keras archive ({' '.join(str(e).split())}); the file is "
      f"corrupt or truncated, {again}"
    ) from e
  with zf:
    names = zf.namelist()
    if KERAS_ARCHIVE_WEIGHTS not in names:
      shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
      hint = (
        "its weights are in model.weights.npz, which vmsjax does not read: save them with "
        "model.save_weights('vgg16.weights.h5') and pass that"
        if "model.weights.npz" in names
        else "pass a .keras written by Keras 3's model.save, or a .h5 weights file"
      )
      raise VMSError(
        f"{path}: the archive has no {KERAS_ARCHIVE_WEIGHTS} (it holds {shown or 'nothing'}); "
        + hint
      )
    info = zf.getinfo(KERAS_ARCHIVE_WEIGHTS)
    where = f"{path} ({KERAS_ARCHIVE_WEIGHTS} inside)"
    try:
      with zf.open(info) as member:
        # Keras stores the member uncompressed, and then h5py reads it in place
        # (ZipExtFile seeks cheaply); a deflated member would re-inflate on every
        # backwards seek, so that one is read into memory first.
        fileobj = member if info.compress_type == zipfile.ZIP_STORED else io.BytesIO(member.read())
        layers, _ = _read_hdf5(where, fileobj, again)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise VMSError(
        f"{where}: could not be read ({type(e).__name__}: {' '.join(str(e).split())}); "
        f"the archive is corrupt or truncated, {again}"
      ) from e
  return layers, "keras3-keras"


def _read_hdf5(path: str, source: Any, again: str) -> tuple[dict[str, dict[str, np.ndarray]], str]:
  """Reads the layers of an HDF5 file or file object; messages name `path`."""
  import h5py

  try:
    f = h5py.File(source, "r")
  except OSError as e:
    raise VMSError(
      f"{path}: not a readable HDF5 file ({' '.join(str(e).split())}); the file is corrupt "
      f"or truncated, {again}"
    ) from e
  try:
    with f:
      if "layers" in f and isinstance(f["layers"], h5py.Group):
        return _keras3_layers(path, f["layers"]), "keras3-h5"
      root = f["model_weights"] if "model_weights" in f else f
      return _keras_legacy_layers(path, root), "keras-h5"
  except VMSError:
    raise
  except Exception as e:  # h5py raises OSError/KeyError/RuntimeError on damaged files
    raise VMSError(
      f"{path}: could not read the HDF5 contents ({type(e).__name__}: "
      f"{' '.join(str(e).split())}); the file is corrupt or truncated, {again}"
    ) from e
