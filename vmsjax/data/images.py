"""Reading images in the wild as RGB uint8, and fitting them to the model's square input.

`read_rgb` opens anything Pillow can read and returns uint8 (H, W, 3):

- EXIF orientation (JPEG, TIFF, WebP ...) is applied, so the array is upright as
  a viewer shows it; the orientation tag is then irrelevant.
- Grayscale ("1", "L") is repeated over the three channels.
- 16-bit grayscale ("I;16*", and "I", which Pillow uses for some 16-bit files) is
  scaled with round(v * 255 / 65535), so 65535 -> 255 and 257 * k -> k exactly;
  values are never clipped at 255. 16-bit colour PNGs are reduced to 8 bits by
  Pillow's decoder itself (it keeps the high byte, floor(v / 256)): exact for 16-bit
  files made from 8-bit ones (v = 257 * k), within one grey level otherwise.
- CMYK (including Adobe's inverted CMYK JPEGs, which Pillow's decoder undoes) and
  YCbCr, LAB, HSV are converted with Pillow's `convert("RGB")`.
- Transparency (palette images with a transparent index, "LA", "PA", "RGBA") is
  composited over a background, white by default: a transparent pixel becomes the
  background colour, a half-transparent one the alpha-weighted mix. (Dropping the
  alpha channel instead would expose whatever colour the encoder left under
  transparent pixels, often black.)
- Animated images (GIF, APNG): the first frame.
- Floating-point images (mode "F") have no agreed range and are refused.

A file that is missing, not an image, corrupt or truncated, or too large to be a
photo (Pillow's decompression-bomb limit) raises `VMSError` naming the file.
Pillow opens files lazily, so the pixels are decoded (`load()`) inside the check.

Resizing to the model's input (`fit_square`), two rules for non-square images:

- `squash` (default, what Keras' `load_img(target_size=...)` does, so what the paper's
  pipeline most likely did): the whole image is resized to size x size and its
  aspect ratio changes;
- `centre_crop`: the largest centred square is cut out (when the excess is odd the
  extra pixel is dropped from the right / bottom), then resized.

Images are resampled with Pillow's bilinear filter (antialiased when shrinking);
maps with `fit_square_map`, the same crop and float bilinear resampling per channel,
so an image and its map stay aligned.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vmsjax.errors import VMSError

ResizeRule = Literal["squash", "centre_crop"]
RESIZE_RULES: tuple[str, ...] = ("squash", "centre_crop")
WHITE = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def open_loaded(path: str | os.PathLike) -> Image.Image:
  """Opens `path` with Pillow and decodes its pixels (mode as stored, no EXIF turn).

  Raises:
    VMSError: missing file, not an image, corrupt or truncated, too large; the
      message names the file.
  """
  name = os.fspath(path)
  if not os.path.isfile(name):
    raise VMSError(f"image file {name} does not exist (or is not a file); check the path")
  try:
    with warnings.catch_warnings():
      # Over Pillow's pixel limit it only warns until twice the limit; a scene
      # photo of that size is a mistake either way.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(name)
      image.load()  # Image.open only reads the header: decode now, to catch truncation
  except UnidentifiedImageError as e:
    raise VMSError(f"{name} is not an image Pillow can read ({e}); remove or replace it") from e
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise VMSError(f"{name} is too large to be a scene photo ({e}); resize or remove it") from e
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise VMSError(f"{name} is corrupt or truncated ({e}); re-download or remove it") from e
  return image


def _upright(image: Image.Image, name: str) -> Image.Image:
  """Applies the EXIF orientation tag, if any."""
  try:
    return ImageOps.exif_transpose(image)
  except Exception as e:  # noqa: BLE001  a malformed EXIF block can raise many things
    raise VMSError(
      f"{name} has an unreadable EXIF block ({type(e).__name__}: {e}); re-save the image"
    ) from e


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> np.ndarray:
  """Converts a loaded Pillow image of any mode to uint8 (H, W, 3).

  See the module docstring for the rule per mode.

  Args:
    image: a loaded Pillow image (EXIF orientation already applied if wanted).
    background: RGB colour transparent pixels are composited over.

  Returns:
    uint8 (H, W, 3).

  Raises:
    ValueError: a floating-point ("F") image.
  """
  mode = image.mode
  if mode == "RGB":
    return np.asarray(image, np.uint8).copy()
  if mode in _SIXTEEN_BIT_MODES:
    values = np.asarray(image).astype(np.float64)  # (H, W), uint16 or int32
    grey = np.round(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
  if mode == "F":
    raise ValueError("floating-point image (mode F): no agreed value range")
  if mode == "P" and "transparency" in image.info:
    image, mode = image.convert("RGBA"), "RGBA"
  if mode in _ALPHA_MODES:
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return np.asarray(Image.alpha_composite(base, rgba).convert("RGB"), np.uint8).copy()
  return np.asarray(image.convert("RGB"), np.uint8).copy()


def read_rgb(path: str | os.PathLike, background: tuple[int, int, int] = WHITE) -> np.ndarray:
  """Reads any image Pillow can open as upright RGB uint8.

  Args:
    path: the image file.
    background: RGB colour that transparency is composited over (default white).

  Returns:
    uint8 (H, W, 3), EXIF orientation applied (see the module docstring).

  Raises:
    VMSError: the file is missing, not an image, corrupt or truncated, too large,
      or a floating-point image; the message names the file.
  """
  name = os.fspath(path)
  image = _upright(open_loaded(name), name)
  try:
    return to_rgb(image, background)
  except (OSError, ValueError) as e:
    raise VMSError(f"{name} cannot be converted to RGB ({e}); re-save it as 8-bit RGB") from e


def crop_box(height: int, width: int, rule: str = "squash") -> tuple[int, int, int, int]:
  """Returns the (left, top, right, bottom) box of an image that a resize rule keeps.

  Args:
    height: image rows.
    width: image columns.
    rule: "squash" (the whole image) or "centre_crop" (the largest centred square;
      an odd excess drops the extra pixel on the right / bottom).

  Raises:
    VMSError: unknown rule.
  """
  if rule == "squash":
    return 0, 0, width, height
  if rule == "centre_crop":
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side
  raise VMSError(f"unknown resize rule {rule!r}; valid rules: {', '.join(RESIZE_RULES)}")


def fit_square(image: np.ndarray, size: int = 224, rule: str = "squash") -> np.ndarray:
  """Resizes an RGB image to size x size by a rule (module docstring), bilinear.

  Args:
    image: uint8 (H, W, 3).
    size: side of the output.
    rule: "squash" or "centre_crop".

  Returns:
    uint8 (size, size, 3); the input itself (a copy) when it already has that size.

  Raises:
    VMSError: unknown rule.
  """
  left, top, right, bottom = crop_box(image.shape[0], image.shape[1], rule)
  cropped = image[top:bottom, left:right]  # (side, side, 3) or (H, W, 3)
  if cropped.shape[:2] == (size, size):
    return np.array(cropped, np.uint8)
  pil = Image.fromarray(np.ascontiguousarray(cropped, np.uint8))
  return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), np.uint8).copy()


def fit_square_map(values: np.ndarray, size: int = 224, rule: str = "squash") -> np.ndarray:
  """Resizes a float map (H, W, C) to size x size with the same rule as `fit_square`.

  Each channel is resampled in float32 with Pillow's bilinear filter (mode "F"), so
  the values keep their scale: no clipping and no quantisation.

  Args:
    values: float (H, W, C).
    size: side of the output.
    rule: "squash" or "centre_crop".

  Returns:
    float32 (size, size, C); the values unchanged when the map already has that size.

  Raises:
    VMSError: unknown rule.
  """
  left, top, right, bottom = crop_box(values.shape[0], values.shape[1], rule)
  cropped = np.asarray(values[top:bottom, left:right], np.float32)  # (h, w, C)
  if cropped.shape[:2] == (size, size):
    return cropped.copy()
  channels = [
    np.asarray(
      Image.fromarray(np.ascontiguousarray(cropped[:, :, c]), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
      ),
      np.float32,
    )
    for c in range(cropped.shape[2])
  ]
  return np.stack(channels, axis=-1)  # (size, size, C)


def read_fitted(
  path: str | os.PathLike,
  size: int = 224,
  rule: str = "squash",
  background: tuple[int, int, int] = WHITE,
) -> np.ndarray:
  """`read_rgb` then `fit_square`: a file as the model's uint8 (size, size, 3) input.

  Raises:
    VMSError: as `read_rgb`, or an unknown rule.
  """
  return fit_square(read_rgb(path, background), size, rule)


# Building datasets from files in the wild: the bad files of a build are collected,
# never dropped silently.


class BadFiles:
  """Collects the offending files of a dataset build, with the reason for each.

  A build records every problem it meets (`add`) and goes on, so that one failed
  build names every offending file, not only the first. At the end (`check`) it
  either fails with all of them or, when skipping is allowed, lets the build finish
  without them; the builder then writes them to its build report.
  """

  def __init__(self, root: str | os.PathLike, skip: bool):
    self.root = os.fspath(root)
    self.skip = skip
    self._reasons: dict[str, list[str]] = {}  # file -> reasons, files in the order met

  def add(self, path: str | os.PathLike, reason: str) -> None:
    """Records that `path` cannot go into the dataset, and why."""
    full = os.fspath(path)
    if reason.startswith(full + " "):  # a VMSError's "<path> is ...": name the file once
      reason = reason[len(full) + 1 :]
      reason = reason[3:] if reason.startswith("is ") else reason
    reasons = self._reasons.setdefault(self.relative(path), [])
    if reason not in reasons:
      reasons.append(reason)

  @property
  def problems(self) -> list[tuple[str, str]]:
    """(file, reason) per bad file, in the order met; a file's reasons joined by " | "."""
    return [(f, " | ".join(r)) for f, r in self._reasons.items()]

  def relative(self, path: str | os.PathLike) -> str:
    """Returns `path` relative to the build's root where it lies under it."""
    name = os.fspath(path)
    try:
      rel = os.path.relpath(name, self.root)
    except ValueError:  # another drive on Windows
      return name
    return name if rel.startswith("..") else rel

  def __len__(self) -> int:
    """The number of bad files."""
    return len(self._reasons)

  def as_records(self) -> list[dict[str, str]]:
    """Returns the problems as [{"file": ..., "reason": ...}] for a JSON report."""
    return [{"file": f, "reason": r} for f, r in self.problems]

  def check(self, what: str) -> None:
    """Fails the build with every problem unless skipping is allowed.

    Args:
      what: the dataset being built, for the message.

    Raises:
      VMSError: there are problems and `skip` is off; the message lists every file.
    """
    if not self.problems or self.skip:
      return
    listed = "; ".join(f"{f}: {r}" for f, r in self.problems)
    raise VMSError(
      f"{len(self.problems)} bad file(s) in {self.root} while building {what}: {listed}. "
      "Fix or remove them, or rebuild with --skip_bad_files to leave them out "
      "(they are then listed in the dataset's build_report.json)"
    )
