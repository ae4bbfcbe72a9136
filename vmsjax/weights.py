"""Loading ImageNet VGG-16 trunk weights exactly: Keras .h5, torchvision .pth, vmsjax .npz.

Every loader returns the Flax trunk pytree of `vmsjax.models.vgg16.VGG16Trunk`
({"block1_conv1": {"kernel": (3, 3, 3, 64) HWIO, "bias": (64,)}, ...}, float32 numpy)
together with the preprocessing the weights were trained with, so the two can never be
mixed up: Keras weights expect "caffe" input, torchvision weights expect "torch" input.

Loading is strict: a missing, extra or misshapen layer, a non-float tensor, a corrupt or
truncated file and a file that is not a VGG-16 at all each raise a one-line VMSError.
torchvision files are read without torch: the pickle inside is unpickled by a restricted
unpickler that only knows the handful of globals a state dict needs.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from vmsjax.errors import VMSError
from vmsjax.models import vgg16

Params = dict[str, dict[str, np.ndarray]]

SOURCES: tuple[str, ...] = ("keras-h5", "keras3-h5", "torchvision-pth", "vmsjax-npz")

# torchvision names its files after the first 8 hex digits of their sha256.
KNOWN_SHA256_PREFIX: dict[str, str] = {"397923af": "torchvision vgg16-397923af.pth"}
# Keras' applications/vgg16.py lists the md5 of its files (get_file(..., file_hash=md5)).
KNOWN_MD5: dict[str, str] = {
  "6d6bbae143d832006294945121d1f1fc": "keras vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
  "64373286793e3c8b2b4e3219cbf3544b": "keras vgg16_weights_tf_dim_ordering_tf_kernels.h5",
}

# torchvision's `features` indices of the 13 convolutions (ReLUs and pools in between).
TORCH_FEATURE_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# The classifier of the full model: recognised and dropped (the trunk has no use for it).
KERAS_CLASSIFIER: frozenset[str] = frozenset(
  {"flatten", "fc1", "fc2", "predictions", "dense", "dense_1", "dense_2"}
)

_NPZ_PREPROCESSING = "__preprocessing__"
_NPZ_SOURCE = "__source__"
_NPZ_SHA256 = "__sha256__"
_NPZ_KNOWN = "__known__"


@dataclasses.dataclass(frozen=True)
class VGGWeights:
  """A loaded VGG-16 trunk and where it came from.

  Attributes:
    params: the Flax `VGG16Trunk` params, float32 numpy arrays, kernels HWIO.
    preprocessing: "caffe" (Keras weights) or "torch" (torchvision weights); the only
      input preprocessing these weights are correct for.
    source: the file layout they were read from, one of `SOURCES`.
    sha256: hex sha256 of the whole file read.
    known: name of the official file this is byte for byte, or None.
  """

  params: Params
  preprocessing: str
  source: str
  sha256: str
  known: str | None


def expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """The kernel (HWIO) and bias shape of each of the 13 trunk layers."""
  shapes = {}
  cin = 3
  for block, n_conv, channels in vgg16.BLOCKS:
    for i in range(1, n_conv + 1):
      shapes[f"block{block}_conv{i}"] = {"kernel": (3, 3, cin, channels), "bias": (channels,)}
      cin = channels
  return shapes


# ---------------------------------------------------------------------------- checks


def _check_trunk(path: str, layers: dict[str, dict[str, Any]]) -> Params:
  """Validates the 13 layers exactly and returns them as float32 numpy arrays."""
  shapes = expected_shapes()
  extra = sorted(set(layers) - set(shapes))
  if extra:
    raise VMSError(
      f"{path}: unexpected layer {extra[0]!r} is not part of the VGG-16 trunk "
      f"(expected {vgg16.LAYER_NAMES[0]} .. {vgg16.LAYER_NAMES[-1]}); use plain VGG-16 "
      "ImageNet weights (not VGG-19 or a batch-norm variant)"
    )
  out: Params = {}
  for name in vgg16.LAYER_NAMES:
    if name not in layers:
      raise VMSError(
        f"{path}: layer {name} is missing, so this is not a complete VGG-16 trunk; "
        "re-download or re-export the weights"
      )
    out[name] = {}
    for part in ("kernel", "bias"):
      if part not in layers[name]:
        raise VMSError(f"{path}: layer {name} has no {part}; re-download or re-export the weights")
      arr = np.asarray(layers[name][part])
      if arr.dtype.kind != "f":
        raise VMSError(
          f"{path}: layer {name} {part} has dtype {arr.dtype}, not floating point; "
          "this is not a weights file for VGG-16"
        )
      if arr.shape != shapes[name][part]:
        raise VMSError(
          f"{path}: layer {name} {part} has shape {arr.shape}, expected "
          f"{shapes[name][part]} for VGG-16; use plain VGG-16 ImageNet weights"
        )
      out[name][part] = np.ascontiguousarray(arr, dtype=np.float32)
    extra_parts = sorted(set(layers[name]) - {"kernel", "bias"})
    if extra_parts:
      raise VMSError(
        f"{path}: layer {name} has an unexpected weight {extra_parts[0]!r}; use plain VGG-16 "
        "ImageNet weights"
      )
  return out


def _not_vgg16(path: str, found: list[str]) -> VMSError:
  shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
  return VMSError(
    f"{path}: this is not a VGG-16 weights file (its layers are: {shown or 'none'}); pass "
    "Keras vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 or torchvision vgg16-397923af.pth"
  )


def _hashes(path: str) -> tuple[str, str]:
  """(sha256, md5) of the whole file."""
  sha, md5 = hashlib.sha256(), hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      sha.update(chunk)
      md5.update(chunk)
  return sha.hexdigest(), md5.hexdigest()


def _known(sha256: str, md5: str) -> str | None:
  return KNOWN_SHA256_PREFIX.get(sha256[:8]) or KNOWN_MD5.get(md5)


# ---------------------------------------------------------------------------- Keras .h5

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


def _load_h5(path: str) -> tuple[dict[str, dict[str, np.ndarray]], str]:
  import h5py

  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise VMSError(
      f"{path}: not a readable HDF5 file ({' '.join(str(e).split())}); the file is corrupt "
      "or truncated, download it again"
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
      f"{' '.join(str(e).split())}); the file is corrupt or truncated, download it again"
    ) from e


# ---------------------------------------------------------------------------- torch .pth

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # legacy (pre-1.6, non-zip) torch.save files
_STORAGE_DTYPES: dict[str, str] = {
  "FloatStorage": "f4",
  "DoubleStorage": "f8",
  "HalfStorage": "f2",
  "LongStorage": "i8",
  "IntStorage": "i4",
  "ShortStorage": "i2",
  "CharStorage": "i1",
  "ByteStorage": "u1",
  "BoolStorage": "?",
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for `torch.FloatStorage` & co.: only its element type matters."""

  name: str


class _Storage:
  """A torch storage whose bytes are read after unpickling (legacy files put them last)."""

  def __init__(self, key: str, dtype: str, numel: int, base: _Storage | None = None, offset=0):
    self.key, self.dtype, self.numel, self.base, self.offset = key, dtype, numel, base, offset
    self.data: np.ndarray | None = None

  def array(self) -> np.ndarray:
    if self.base is not None:
      return self.base.array()[self.offset : self.offset + self.numel]
    assert self.data is not None, "storage read before its bytes were loaded"
    return self.data


@dataclasses.dataclass
class _TensorRef:
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
  # Stands in for torch._utils._rebuild_tensor{,_v2}; the extra arguments
  # (requires_grad, backward hooks, metadata) do not matter for frozen weights.
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("tensor without a storage")
  return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_unused) -> Any:
  return data  # a saved nn.Parameter: its tensor is all we need


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a state dict with no code from the file run: only allow-listed globals."""

  _ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
  }

  def __init__(self, f: BinaryIO, storages: dict[str, _Storage]):
    super().__init__(f)
    self.storages = storages

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

  def persistent_load(self, pid: Any) -> _Storage:
    # ('storage', storage_type, key, location, numel[, view_metadata (legacy only)])
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    stype, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(stype, _StorageType):
      raise pickle.UnpicklingError(f"unknown storage type {stype!r}")
    root = self.storages.get(key)
    if root is None:
      root = self.storages[key] = _Storage(key, _STORAGE_DTYPES[stype.name], numel)
    view = pid[5] if len(pid) > 5 else None
    if view is not None:  # legacy storage views: (view_key, offset, size)
      _, offset, size = view
      return _Storage(key, root.dtype, int(size), base=root, offset=int(offset))
    return root


class _NoGlobals(pickle.Unpickler):
  """For the legacy header pickles, which hold plain numbers and dicts only."""

  def find_class(self, module: str, name: str) -> Any:
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _torch_zip(path: str, zf: zipfile.ZipFile) -> tuple[Any, dict[str, _Storage]]:
  pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
  if len(pkls) != 1:
    raise VMSError(f"{path}: a zip without a single data.pkl is not a torch.save file")
  prefix = pkls[0][: -len("data.pkl")]
  order = "<"
  if prefix + "byteorder" in zf.namelist():
    order = "<" if zf.read(prefix + "byteorder").decode().strip() == "little" else ">"
  storages: dict[str, _Storage] = {}
  with zf.open(pkls[0]) as f:
    obj = _TorchUnpickler(f, storages).load()
  for key, s in storages.items():
    raw = zf.read(f"{prefix}data/{key}")
    dt = np.dtype(order + s.dtype)
    if len(raw) < s.numel * dt.itemsize:
      raise VMSError(f"{path}: storage {key} is shorter than its tensors; the file is corrupt")
    s.data = np.frombuffer(raw, dt, count=s.numel)
  return obj, storages


def _torch_legacy(path: str, f: BinaryIO) -> tuple[Any, dict[str, _Storage]]:
  head = f.read(4)
  f.seek(0)
  if head.startswith(b"PK"):
    raise VMSError(
      f"{path}: the zip archive is truncated or corrupt (no central directory); download the "
      "file again"
    )
  try:
    magic = _NoGlobals(f).load()
  except Exception:
    magic = None
  if magic != _TORCH_MAGIC:
    raise VMSError(
      f"{path}: not a torch.save file (neither a zip nor the legacy format); the file is "
      "corrupt or truncated, download it again"
    )
  _NoGlobals(f).load()  # protocol version
  sys_info = _NoGlobals(f).load()
  order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
  storages: dict[str, _Storage] = {}
  obj = _TorchUnpickler(f, storages).load()
  keys = _NoGlobals(f).load()
  for key in keys:
    s = storages.get(str(key))
    if s is None:
      raise VMSError(f"{path}: storage {key} is written but never used; the file is corrupt")
    dt = np.dtype(order + s.dtype)
    (numel,) = struct.unpack(order + "q", f.read(8))
    raw = f.read(numel * dt.itemsize)
    if numel < s.numel or len(raw) < numel * dt.itemsize:
      raise VMSError(f"{path}: storage {key} is truncated; download the file again")
    s.data = np.frombuffer(raw, dt, count=numel)
  return obj, storages


def _materialise(path: str, key: str, t: _TensorRef) -> np.ndarray:
  arr = t.storage.array()
  if any(n == 0 for n in t.size):
    return np.zeros(t.size, arr.dtype)
  last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
  if t.offset < 0 or any(s < 0 for s in t.stride) or last >= arr.size:
    raise VMSError(f"{path}: tensor {key} points outside its storage; the file is corrupt")
  view = np.lib.stride_tricks.as_strided(
    arr[t.offset :], shape=t.size, strides=[s * arr.itemsize for s in t.stride], writeable=False
  )
  return np.array(view)  # own copy: the zip's buffer is not kept alive


def _torch_state_dict(path: str) -> dict[str, np.ndarray]:
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as zf:
        obj, _ = _torch_zip(path, zf)
    else:
      with open(path, "rb") as f:
        obj, _ = _torch_legacy(path, f)
  except VMSError:
    raise
  except pickle.UnpicklingError as e:
    raise VMSError(
      f"{path}: not a plain state dict ({e}); save it with torch.save(model.state_dict(), "
      "PATH) or use torchvision's vgg16-397923af.pth"
    ) from e
  except Exception as e:  # BadZipFile, EOFError, struct.error, ... on damaged files
    raise VMSError(
      f"{path}: could not read the torch file ({type(e).__name__}: "
      f"{' '.join(str(e).split())}); the file is corrupt or truncated, download it again"
    ) from e
  if not isinstance(obj, dict):
    raise VMSError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, _TensorRef):
      raise VMSError(f"{path}: entry {key!r} is not a tensor; this is not a VGG-16 state dict")
    out[str(key)] = _materialise(path, str(key), value)
  return out


_TORCH_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def _load_pth(path: str) -> dict[str, dict[str, np.ndarray]]:
  sd = _torch_state_dict(path)
  index_to_name = dict(zip(TORCH_FEATURE_INDICES, vgg16.LAYER_NAMES, strict=True))
  layers: dict[str, dict[str, np.ndarray]] = {}
  others = []
  for key, arr in sd.items():
    if key.startswith("classifier."):
      continue
    m = _TORCH_KEY.match(key)
    if not m:
      others.append(key)
      continue
    idx, kind = int(m.group(1)), m.group(2)
    if idx not in index_to_name:
      raise VMSError(
        f"{path}: unexpected layer {key} is not a VGG-16 convolution (those are features."
        f"{{{','.join(map(str, TORCH_FEATURE_INDICES))}}}); use plain torchvision vgg16 weights, "
        "not vgg16_bn or vgg19"
      )
    name = index_to_name[idx]
    if kind == "weight":
      if arr.ndim != 4:
        raise VMSError(f"{path}: {key} has shape {arr.shape}, expected a 4-d OIHW conv kernel")
      arr = arr.transpose(2, 3, 1, 0)  # torch OIHW -> Flax HWIO
    layers.setdefault(name, {})["kernel" if kind == "weight" else "bias"] = arr
  if others:
    if not layers:
      raise _not_vgg16(path, sorted(sd))
    raise VMSError(
      f"{path}: unexpected entry {others[0]} is not part of torchvision's VGG-16; "
      "use plain torchvision vgg16 weights"
    )
  return layers


# ---------------------------------------------------------------------------- vmsjax .npz


def _load_npz(path: str) -> tuple[dict[str, dict[str, np.ndarray]], str]:
  if not zipfile.is_zipfile(path):
    raise VMSError(
      f"{path}: not a .npz (zip) archive; the file is corrupt or truncated, run vmsjax "
      "convert-vgg16 again"
    )
  try:
    with np.load(path, allow_pickle=False) as z:
      data = {k: z[k] for k in z.files}
  except Exception as e:  # BadZipFile, ValueError, OSError, EOFError on damaged files
    raise VMSError(
      f"{path}: could not read the .npz ({type(e).__name__}: {' '.join(str(e).split())}); "
      "the file is corrupt or truncated, run vmsjax convert-vgg16 again"
    ) from e
  if _NPZ_PREPROCESSING not in data:
    raise VMSError(
      f"{path}: no {_NPZ_PREPROCESSING} entry, so not written by vmsjax convert-vgg16; "
      "convert the .h5/.pth with vmsjax convert-vgg16 SRC OUT.npz"
    )
  preprocessing = str(data.pop(_NPZ_PREPROCESSING))
  if preprocessing not in vgg16.PREPROCESSING:
    raise VMSError(f"{path}: unknown preprocessing {preprocessing!r}; convert the file again")
  origin = (str(data.pop(_NPZ_SOURCE, "")), str(data.pop(_NPZ_SHA256, "")))
  known = str(data.pop(_NPZ_KNOWN, ""))
  layers: dict[str, dict[str, np.ndarray]] = {}
  for key, arr in data.items():
    name, _, part = key.partition("/")
    if part not in ("kernel", "bias"):
      raise VMSError(f"{path}: unexpected entry {key!r}; convert the file again")
    layers.setdefault(name, {})[part] = arr
  if origin[0]:
    print(
      f"{path}: converted from {known or 'an unrecognised file'} ({origin[0]}, sha256 "
      f"{origin[1][:12]}...)",
      file=sys.stderr,
    )
  return layers, preprocessing


# ---------------------------------------------------------------------------- public API


def load_vgg16(path: str | os.PathLike) -> VGGWeights:
  """Loads and validates VGG-16 trunk weights.

  Args:
    path: a Keras `.h5` (legacy `save_weights`/`save` or Keras 3 `.weights.h5`), a
      torchvision `.pth`/`.pt` state dict, or a `.npz` written by `save_npz`.

  Returns:
    The weights with the preprocessing they need ("caffe" for Keras, "torch" for
    torchvision) and the file's identity.

  Raises:
    VMSError: unknown extension, unreadable/corrupt/truncated file, or anything other
      than exactly the 13 VGG-16 convolutions with the right shapes.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VMSError(f"{path}: no such file; pass the path of a VGG-16 .h5, .pth or .npz")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".h5", ".hdf5"):
    layers, source = _load_h5(path)
    preprocessing = "caffe"
  elif ext in (".pth", ".pt"):
    layers, source, preprocessing = _load_pth(path), "torchvision-pth", "torch"
  elif ext == ".npz":
    layers, preprocessing = _load_npz(path)
    source = "vmsjax-npz"
  else:
    raise VMSError(
      f"{path}: unknown weights extension {ext or '(none)'!r}; use a Keras .h5, a torchvision "
      ".pth or a .npz from vmsjax convert-vgg16"
    )
  if layers and not set(layers) & set(vgg16.LAYER_NAMES):
    raise _not_vgg16(path, sorted(layers))
  params = _check_trunk(path, layers)
  sha256, md5 = _hashes(path)
  known = None if source == "vmsjax-npz" else _known(sha256, md5)
  if known:
    print(f"{path}: recognised the official {known}", file=sys.stderr)
  elif source != "vmsjax-npz":
    print(
      f"{path}: not a known official VGG-16 file (sha256 {sha256[:12]}...); loaded it as "
      f"{source} weights with {preprocessing} preprocessing",
      file=sys.stderr,
    )
  return VGGWeights(params, preprocessing, source, sha256, known)


def save_npz(weights: VGGWeights, out: str | os.PathLike) -> None:
  """Writes `weights` as a `.npz` that `load_vgg16` reads back with the same preprocessing.

  Keys are `block1_conv1/kernel` etc.; `__preprocessing__`, `__source__`, `__sha256__`
  and `__known__` record where the weights came from.
  """
  out = os.fspath(out)
  if not out.endswith(".npz"):
    raise VMSError(f"{out}: the converted weights file must end in .npz")
  arrays: dict[str, np.ndarray] = {}
  for name in vgg16.LAYER_NAMES:
    for part in ("kernel", "bias"):
      arrays[f"{name}/{part}"] = np.asarray(weights.params[name][part], np.float32)
  arrays[_NPZ_PREPROCESSING] = np.array(weights.preprocessing)
  arrays[_NPZ_SOURCE] = np.array(weights.source)
  arrays[_NPZ_SHA256] = np.array(weights.sha256)
  arrays[_NPZ_KNOWN] = np.array(weights.known or "")
  # Write next to the target and rename, so an interrupted run leaves no half file.
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, out)


def convert(src: str | os.PathLike, out: str | os.PathLike) -> VGGWeights:
  """Loads `src` (any supported layout), validates it and writes it to `out` (.npz)."""
  weights = load_vgg16(src)
  save_npz(weights, out)
  return weights


def load_trunk(path: str, preprocessing: str) -> Params:
  """The trunk params for training; refuses a preprocessing the weights were not made for.

  Args:
    path: weights file, see `load_vgg16`.
    preprocessing: the config's `model.encoder.preprocessing`.

  Returns:
    The Flax `VGG16Trunk` params.

  Raises:
    VMSError: as `load_vgg16`, or if `preprocessing` is not the one the file needs.
  """
  weights = load_vgg16(path)
  if preprocessing != weights.preprocessing:
    raise VMSError(
      f"{path}: {weights.source} weights need {weights.preprocessing!r} preprocessing but the "
      f"config says {preprocessing!r}; set model.encoder.preprocessing={weights.preprocessing}"
    )
  return weights.params
