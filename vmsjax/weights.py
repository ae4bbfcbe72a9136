"""Loading ImageNet VGG-16 trunk weights exactly: Keras .h5/.keras, torchvision .pth, .npz.

Every loader returns the Flax trunk pytree of `vmsjax.models.vgg16.VGG16Trunk`
({"block1_conv1": {"kernel": (3, 3, 3, 64) HWIO, "bias": (64,)}, ...}, float32 numpy)
together with the preprocessing the weights were trained with, so the two can never be
mixed up: Keras weights expect "caffe" input, torchvision weights expect "torch" input.

Loading is strict: a missing, extra or misshapen layer, a non-float tensor, a corrupt or
truncated file and a file that is not a VGG-16 at all each raise a one-line VMSError.
The file formats are read by vmsjax.weights_keras (.h5, .keras) and vmsjax.weights_torch
(.pth, read without torch: a restricted unpickler that only knows the handful of globals a
state dict needs); this module maps their layers onto the trunk, checks them, and
reads and writes vmsjax's own .npz. Before a reader runs, the file's first bytes are
checked against its extension (`sniff`), so a file of another format (a .keras or a
.pth renamed .h5, an HTML error page saved as weights) is named for what it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import zipfile
from typing import Any

import numpy as np

from vmsjax import weights_keras, weights_torch
from vmsjax.errors import VMSError
from vmsjax.models import vgg16

Params = dict[str, dict[str, np.ndarray]]

SOURCES: tuple[str, ...] = (
  "keras-h5",
  "keras3-h5",
  "keras3-keras",
  "torchvision-pth",
  "vmsjax-npz",
)

# torchvision names its files after the first 8 hex digits of their sha256.
KNOWN_SHA256_PREFIX: dict[str, str] = {"397923af": "torchvision vgg16-397923af.pth"}
# Keras' applications/vgg16.py lists the md5 of its files (get_file(..., file_hash=md5)).
KNOWN_MD5: dict[str, str] = {
  "6d6bbae143d832006294945121d1f1fc": "keras vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
  "64373286793e3c8b2b4e3219cbf3544b": "keras vgg16_weights_tf_dim_ordering_tf_kernels.h5",
}

# torchvision's `features` indices of the 13 convolutions (ReLUs and pools in between).
TORCH_FEATURE_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

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


# ------------------------------------------------------------ torchvision state dict -> trunk

_TORCH_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def _load_pth(path: str) -> dict[str, dict[str, np.ndarray]]:
  sd = weights_torch.read_state_dict(path)
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


# ---------------------------------------------------------------------------- sniffing

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a member first; an empty archive

# Extension -> the kinds of `sniff` its reader takes. "unknown" and "damaged-zip" go to
# the .pth and .npz readers, whose own messages say what is wrong with such files.
_ACCEPTS: dict[str, tuple[str, ...]] = {
  ".h5": ("hdf5",),
  ".hdf5": ("hdf5",),
  ".keras": ("keras", "damaged-zip"),
  ".pth": ("torch", "pickle", "unknown", "damaged-zip"),
  ".pt": ("torch", "pickle", "unknown", "damaged-zip"),
  ".npz": ("npz", "unknown", "damaged-zip"),
}
_EXPECTED = {
  ".h5": "an HDF5 file (Keras weights)",
  ".hdf5": "an HDF5 file (Keras weights)",
  ".keras": "a Keras 3 .keras archive",
  ".pth": "a PyTorch torch.save file",
  ".pt": "a PyTorch torch.save file",
  ".npz": "a .npz from vmsjax convert-vgg16",
}
_ADVICE = {
  "hdf5": "rename it to .h5",
  "keras": "rename it to .keras",
  "torch": "rename it to .pth",
  "pickle": "if torch.save wrote it, rename it to .pth",
  "npz": "rename it to .npz",
  "zip": "pass the weights file inside it (.h5, .pth), not the archive",
  "damaged-zip": "the file is corrupt or truncated, download it again",
  "unknown": "the file is corrupt or truncated, download it again",
}


def _hdf5_at(f: Any, size: int) -> bool:
  """An HDF5 superblock at offset 0, 512, 1024, 2048, ... (after a user block)."""
  offset = 0
  while offset + len(_HDF5_SIGNATURE) <= size:
    f.seek(offset)
    if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
      return True
    offset = 512 if offset == 0 else offset * 2
  return False


def sniff(path: str) -> tuple[str, str]:
  """What a file is, from its first bytes (and a zip's member names), not its name.

  Returns:
    (kind, description): kind one of "hdf5", "keras" (a .keras zip holding
    model.weights.h5), "torch" (torch.save's zip, with data.pkl), "npz", "zip",
    "damaged-zip", "pickle" (torch.save's legacy format among others), "npy",
    "gzip", "image", "html", "text", "empty", "unknown"; the description is a
    phrase for messages ("a Keras 3 .keras archive (a zip holding model.weights.h5)").
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(512)
    if not head:
      return "empty", "an empty file (0 bytes)"
    if _hdf5_at(f, size):
      return "hdf5", "an HDF5 file"
  if head[:4] in _ZIP_SIGNATURES:
    try:
      with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
      return "damaged-zip", "a damaged or truncated zip archive"
    if weights_keras.KERAS_ARCHIVE_WEIGHTS in names or {"config.json", "metadata.json"} <= set(
      names
    ):
      return (
        "keras",
        f"a Keras 3 .keras archive (a zip holding {weights_keras.KERAS_ARCHIVE_WEIGHTS})",
      )
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
      return "torch", "a PyTorch torch.save archive (a zip holding data.pkl)"
    if names and all(n.endswith(".npy") for n in names):
      return "npz", "a numpy .npz archive"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return "zip", f"a zip archive (holding {shown or 'nothing'})"
  if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
    return "pickle", "a Python pickle (the format of legacy torch.save files)"
  if head.startswith(b"\x93NUMPY"):
    return "npy", "a single numpy .npy array"
  if head.startswith(b"\x1f\x8b"):
    return "gzip", "a gzip-compressed file"
  if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8")):
    return "image", "an image (PNG, JPEG or GIF)"
  try:
    text = head.decode("utf-8")
  except UnicodeDecodeError as e:
    # A multi-byte character cut at byte 512 is still text; anything else is not.
    text = head[: e.start].decode("utf-8") if e.start >= len(head) - 3 else ""
  if text and all(c.isprintable() or c in "\t\r\n" for c in text):
    start = text.lstrip().lower()
    if start.startswith(("<!doctype html", "<html")) or "<html" in start[:200]:
      return "html", "an HTML page (typically what a failed or login-walled download saves)"
    first = " ".join(text.split())[:40]
    return "text", f"a text file (starting {first!r})"
  return "unknown", "a file whose first bytes match no known format"


def _check_content(path: str, ext: str) -> None:
  """Refuses a file whose content is not what its extension promises, naming what it is."""
  kind, what = sniff(path)
  if kind in _ACCEPTS[ext]:
    return
  advice = _ADVICE.get(kind, "download the weights again")
  raise VMSError(f"{path}: this is {what}, not {_EXPECTED[ext]}; {advice}")


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
    VMSError: unknown extension, a file whose content is another format than its
      extension says (the message names what it is), unreadable/corrupt/truncated
      file, or anything other than exactly the 13 VGG-16 convolutions with the right
      shapes.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VMSError(f"{path}: no such file; pass the path of a VGG-16 .h5, .pth or .npz")
  ext = os.path.splitext(path)[1].lower()
  if ext in _ACCEPTS:
    _check_content(path, ext)
  if ext in (".h5", ".hdf5"):
    layers, source = weights_keras.read_h5(path)
    preprocessing = "caffe"
  elif ext == ".keras":
    layers, source = weights_keras.read_keras_archive(path)
    preprocessing = "caffe"
  elif ext in (".pth", ".pt"):
    layers, source, preprocessing = _load_pth(path), "torchvision-pth", "torch"
  elif ext == ".npz":
    layers, preprocessing = _load_npz(path)
    source = "vmsjax-npz"
  else:
    kind, what = sniff(path)
    if kind in ("hdf5", "keras", "torch", "npz"):
      advice = _ADVICE[kind]
    else:
      advice = "use a Keras .h5 or .keras, a torchvision .pth or a .npz from vmsjax convert-vgg16"
    raise VMSError(
      f"{path}: unknown weights extension {ext or '(none)'!r}, and the file is {what}; {advice}"
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
