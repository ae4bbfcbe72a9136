"""Reading a torchvision `.pth` / `.pt` state dict without torch.

`torch.save` writes a zip holding `data.pkl` and one file per storage (torch >= 1.6),
or, in the legacy format, a stream of pickles followed by the storages' bytes. The
pickle is unpickled by a restricted unpickler that only knows the handful of globals
a state dict needs, so no code from the file is ever run; the tensors come back as
numpy arrays with their torch shapes (kernels OIHW).
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from vmsjax.errors import VMSError

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


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a `torch.save(model.state_dict(), path)` file as numpy arrays, without torch.

  Returns:
    {key: array}, in the file's order, each array its own copy in torch's layout.

  Raises:
    VMSError: not a torch.save file, a corrupt or truncated one, a pickle needing
      globals other than a state dict's, or entries that are not tensors.
  """
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
