"""Reading VISCHEMA's VMS map files and bringing them to [0, 1] at the image's size.

Map formats (see vmsjax/data/vischema.py's docstring and docs/data.md): an RGB image
(green = true VMS, red = false VMS), a pair of grayscale images in `true/` and
`false/`, or a numeric `.npy` / `.npz` / `.mat` array. Values keep their raw scale up
to one documented division (`RawMap.divisor`, `numeric_divisor`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vmsjax.data import images
from vmsjax.data.vischema_layout import NUMERIC_MAP_EXTENSIONS, Item
from vmsjax.errors import VMSError


@dataclasses.dataclass
class RawMap:
  """A map as read from its file(s), before resizing.

  Attributes:
    values: float64 (H, W, 2), channel 0 true VMS, channel 1 false, raw scale.
    divisor: what the values are divided by to land in [0, 1]; None for numeric
      maps of a float or wide-integer type, whose divisor is decided for the whole
      dataset (`numeric_divisor`).
    kind: "rgb image", "image pair", "npy", "npz" or "mat".
  """

  values: np.ndarray
  divisor: float | None
  kind: str


def _open_map_image(path: Path) -> Image.Image:
  """Opens a map image like any image (EXIF orientation applied, as to its image)."""
  try:
    image = images.open_loaded(path)
  except VMSError as e:
    raise ValueError(str(e)) from e
  try:
    return ImageOps.exif_transpose(image)
  except Exception as e:  # noqa: BLE001  a malformed EXIF block can raise many things
    raise ValueError(f"unreadable EXIF block ({type(e).__name__}: {e})") from e


def _rgb_map(path: Path) -> RawMap:
  image = _open_map_image(path)
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode not in ("RGB", "RGBA", "RGBX"):
    raise ValueError(
      f"a {image.mode} ({len(image.getbands())}-channel) map image; an RGB map is expected "
      "(green = true VMS, red = false VMS), or grayscale pairs in maps/true/ and maps/false/"
    )
  rgb = np.asarray(image.convert("RGB"), np.float64)  # (H, W, 3)
  return RawMap(np.stack([rgb[:, :, 1], rgb[:, :, 0]], axis=-1), 255.0, "rgb image")


def _grey_channel(path: Path) -> tuple[np.ndarray, float]:
  """Reads one channel of an image pair: values and the divisor of their bit depth."""
  image = _open_map_image(path)
  if image.mode == "L":
    return np.asarray(image, np.float64), 255.0
  if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    return np.asarray(image).astype(np.float64), 65535.0
  if image.mode in ("RGB", "RGBA", "P", "LA"):
    rgb = np.asarray(image.convert("RGB"), np.float64)  # (H, W, 3)
    if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2]):
      return rgb[:, :, 0], 255.0  # a grey image saved as colour
  raise ValueError(
    f"a {image.mode} map with {len(image.getbands())} different channels in a true/false "
    "folder, where a single-channel grayscale image is expected"
  )


def _pair_map(pair: dict[str, Path]) -> RawMap:
  (true, d_true), (false, d_false) = _grey_channel(pair["true"]), _grey_channel(pair["false"])
  if true.shape != false.shape:
    raise ValueError(f"true map {true.shape} and false map {false.shape} differ in size")
  if d_true != d_false:
    raise ValueError("the true and false maps have different bit depths; save both as 8-bit")
  return RawMap(np.stack([true, false], axis=-1), d_true, "image pair")


def _mat_variables(path: Path) -> dict[str, np.ndarray]:
  import scipy.io

  try:
    return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
  except NotImplementedError:  # MATLAB v7.3: an HDF5 file
    import h5py

    with h5py.File(path, "r") as f:
      # h5py shows MATLAB's column-major arrays with their axes reversed.
      return {k: np.asarray(v).T for k, v in f.items() if isinstance(v, h5py.Dataset)}


def _numeric_map(path: Path) -> RawMap:
  suffix = path.suffix.lower()
  try:
    if suffix == ".npy":
      arrays = {"vms": np.load(path, allow_pickle=False)}
    elif suffix == ".npz":
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    else:
      arrays = _mat_variables(path)
  except Exception as e:  # noqa: BLE001  numpy, scipy and h5py raise many kinds
    raise ValueError(f"cannot be read as {suffix[1:]} ({type(e).__name__}: {e})") from e
  if "vms" in arrays:
    values = np.asarray(arrays["vms"])
    if values.ndim == 3 and values.shape[0] == 2 and values.shape[2] != 2:
      values = np.moveaxis(values, 0, -1)  # (2, H, W) -> (H, W, 2)
  elif "true_vms" in arrays and "false_vms" in arrays:
    true, false = np.asarray(arrays["true_vms"]), np.asarray(arrays["false_vms"])
    if true.shape != false.shape or true.ndim != 2:
      raise ValueError(f"true_vms {true.shape} and false_vms {false.shape}: need two equal (H, W)")
    values = np.stack([true, false], axis=-1)
  elif suffix == ".npz" and len(arrays) == 1:
    values = np.asarray(next(iter(arrays.values())))
  else:
    raise ValueError(
      f"variables {sorted(arrays)}: expected `vms` (H, W, 2) or `true_vms` and `false_vms` (H, W)"
    )
  if values.ndim != 3 or values.shape[2] != 2:
    raise ValueError(f"a map of shape {values.shape}: expected (H, W, 2), true and false VMS")
  if not (np.issubdtype(values.dtype, np.number) and not np.iscomplexobj(values)):
    raise ValueError(f"a map of dtype {values.dtype}: expected real numbers")
  divisor = 255.0 if values.dtype == np.uint8 else None
  return RawMap(values.astype(np.float64), divisor, suffix[1:])


def read_raw_map(item: Item) -> RawMap:
  """Reads an item's map from its file(s) and checks its values.

  Raises:
    ValueError: unreadable file, wrong channel count or shape, NaN, infinite or
      negative values; the message says which.
  """
  if item.map_pair:
    raw = _pair_map(item.map_pair)
  elif item.map_files[0].suffix.lower() in NUMERIC_MAP_EXTENSIONS:
    raw = _numeric_map(item.map_files[0])
  else:
    raw = _rgb_map(item.map_files[0])
  if raw.values.shape[0] < 2 or raw.values.shape[1] < 2:
    raise ValueError(f"a map of shape {raw.values.shape}: too small")
  if not np.all(np.isfinite(raw.values)):
    raise ValueError(f"{int(np.sum(~np.isfinite(raw.values)))} NaN or infinite values")
  if raw.values.min() < 0:
    raise ValueError(f"negative values (min {raw.values.min():g}); VMS maps are >= 0")
  return raw


def numeric_divisor(maxima: list[float]) -> float:
  """Returns the divisor of the dataset's float numeric maps from their maxima.

  1 when every value is <= 1 (maps already in [0, 1]), else 255 (the 0-255 scale of
  the paper). Maps whose maximum exceeds 255 are bad files either way.
  """
  return 1.0 if not maxima or max(maxima) <= 1.0 else 255.0


def fit_map(raw: RawMap, divisor: float, size: int, rule: str) -> np.ndarray:
  """Scales a raw map to [0, 1] and resizes it like its image.

  Returns:
    float32 (size, size, 2) in [0, 1]. Bilinear resampling is a convex combination,
    so only float rounding can leave [0, 1]; that rounding is clipped.
  """
  fitted = images.fit_square_map((raw.values / divisor).astype(np.float32), size, rule)
  return np.clip(fitted, 0.0, 1.0)
