"""A deterministic synthetic VMS dataset: the embedded default that needs no download.

Every example is a flat, cartoon "scene" in one of the 8 VISCHEMA leaf categories,
with a true and a false VMS map computed from the objects in it by a fixed rule.
The data is a function of (seed, split, index) alone, so two machines that build it
get the same records, whatever order they generate them in.

Splits: `train` has 640 examples, `test` 160; example i has category i % 8, so each
split is balanced (80 / 20 per category). Ids are `synthetic_{split}_{index:04d}.png`.

Scene:

- Background: the upper part (wall, or sky for outdoor categories) and the lower
  part (floor, or ground) meet at a horizon; both colours and the horizon height are
  typical of the category, with jitter. Outdoor skies brighten towards the horizon.
- Objects: 2 to 5, of 4 kinds, each kind with its own colour family (with jitter):
  `disc` (red), `square` (blue), `triangle` (yellow, apex up), `bar` (purple,
  horizontal or vertical). Radius r ~ U[12, 32] px; the shape fits inside the circle
  of radius r. Centres ~ U[0.12, 0.88] of each side, so the layout is not biased
  to the centre. Footprint circles never overlap (a gap of at least 6 px), so every
  object is fully visible apart from what the image border cuts. The first object is
  a disc or triangle and the second a square or bar, so both maps always have a
  source; an extra object that finds no free place in 100 tries is left out.
- Gaussian pixel noise (sigma 6 grey levels) over everything, then clip to uint8.

THE MAP RULE (the ground truth of this dataset). With pixel centres at integer
(x, y) = (column, row), each object o of kind k, centre c_o and radius r_o adds a blob
w_k * exp(-|p - c_o|^2 / (2 * (0.75 * r_o)^2)) to one channel:

- channel 0, true VMS ("memorable" objects): disc w = 1.0, triangle w = 0.6;
- channel 1, false VMS ("schema-typical" objects): square w = 1.0, bar w = 0.5 in
  indoor categories and 1.0 in outdoor ones;
- each channel is then divided by its own maximum: values in [0, 1], max exactly 1.

So the maps depend on what each object is, where it is and how big it is, differ
between channels, and cannot be explained by a fixed centre-bias map.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from vmsjax.data import schema
from vmsjax.errors import VMSError

SPLIT_SIZES: dict[str, int] = {"train": 640, "test": 160}
# Folded into the seed sequence so each split draws from its own stream.
_SPLIT_CODES: dict[str, int] = {"train": 0, "test": 1}

KINDS: tuple[str, ...] = ("disc", "square", "triangle", "bar")
TRUE_KINDS: tuple[str, ...] = ("disc", "triangle")  # feed channel 0
FALSE_KINDS: tuple[str, ...] = ("square", "bar")  # feed channel 1
TRUE_WEIGHTS: dict[str, float] = {"disc": 1.0, "triangle": 0.6}
FALSE_WEIGHTS: dict[str, float] = {"square": 1.0}
BAR_WEIGHT: dict[str, float] = {"indoor": 0.5, "outdoor": 1.0}  # by top-level category
SIGMA_PER_RADIUS = 0.75

RADIUS_RANGE = (12.0, 32.0)
CENTRE_RANGE = (0.12, 0.88)  # fraction of the side
MIN_GAP = 6.0  # px between footprint circles
NOISE_STD = 6.0
_PLACEMENT_TRIES = 100

_KIND_COLOURS: dict[str, tuple[int, int, int]] = {
  "disc": (205, 45, 40),
  "square": (40, 70, 200),
  "triangle": (235, 190, 30),
  "bar": (140, 50, 160),
}
_KIND_JITTER = 25.0

# Per leaf: (upper colour, lower colour, horizon as a fraction of the height).
_BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float]] = {
  "kitchen": ((225, 225, 210), (170, 100, 70), 0.62),
  "living_room": ((215, 195, 160), (120, 80, 45), 0.66),
  "small_public": ((190, 200, 185), (110, 110, 110), 0.60),
  "big_public": ((235, 230, 215), (180, 175, 170), 0.72),
  "work_home": ((170, 200, 230), (90, 90, 95), 0.45),
  "public_entertainment": ((120, 170, 230), (200, 180, 130), 0.50),
  "populated": ((150, 190, 235), (90, 150, 70), 0.40),
  "isolated": ((90, 140, 210), (70, 100, 50), 0.35),
}
_BACKGROUND_JITTER = 12.0
_HORIZON_JITTER = 0.05


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object drawn in a synthetic scene.

  Attributes:
    kind: one of KINDS.
    x: centre column, px.
    y: centre row, px.
    radius: radius of the footprint circle the shape fits in, px.
    vertical: for a bar, whether its long axis is vertical (ignored otherwise).
  """

  kind: str
  x: float
  y: float
  radius: float
  vertical: bool = False

  def mask(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Returns a boolean mask of the pixels the shape covers.

    Args:
      xs: column coordinates, broadcastable against `ys` (e.g. (1, W)).
      ys: row coordinates (e.g. (H, 1)).
    """
    dx, dy, r = xs - self.x, ys - self.y, self.radius
    if self.kind == "disc":
      return dx**2 + dy**2 <= r**2
    if self.kind == "square":
      half = r / np.sqrt(2.0)  # corners on the footprint circle
      return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if self.kind == "triangle":
      # Equilateral, apex up, vertices on the footprint circle; the half-width
      # grows by 1/sqrt(3) per row below the apex.
      return (dy <= r / 2) & (np.abs(dx) <= (dy + r) / np.sqrt(3.0))
    if self.kind == "bar":
      long, short = 0.95 * r, 0.3 * r  # corner at 0.996 r: inside the circle
      along, across = (dy, dx) if self.vertical else (dx, dy)
      return (np.abs(along) <= long) & (np.abs(across) <= short)
    raise ValueError(f"unknown object kind {self.kind!r}")

  def blob(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Returns the unweighted Gaussian blob of this object (peak 1 at its centre)."""
    sigma = SIGMA_PER_RADIUS * self.radius
    return np.exp(-((xs - self.x) ** 2 + (ys - self.y) ** 2) / (2.0 * sigma**2))


def map_weights(kind: str, category: int) -> tuple[float, float]:
  """Returns the (true, false) channel weights of an object of `kind` in `category`.

  Args:
    kind: one of KINDS.
    category: index into schema.LEAVES.
  """
  if kind == "bar":
    top = schema.TOP[schema.upper_levels(category)[1]]
    return 0.0, BAR_WEIGHT[top]
  return TRUE_WEIGHTS.get(kind, 0.0), FALSE_WEIGHTS.get(kind, 0.0)


def vms_maps(
  objects: list[SceneObject], category: int, size: int = schema.IMAGE_SIZE
) -> np.ndarray:
  """Applies the map rule (see the module docstring) to a list of objects.

  Args:
    objects: the objects of the scene; at least one must feed each channel.
    category: index into schema.LEAVES (the bar's false weight depends on it).
    size: side of the square map, px.

  Returns:
    float32 (size, size, 2) in [0, 1], each channel with max exactly 1.
  """
  ys, xs = np.ogrid[0:size, 0:size]
  maps = np.zeros((size, size, 2), np.float64)
  for obj in objects:
    weights = map_weights(obj.kind, category)
    blob = obj.blob(xs, ys)
    for channel, weight in enumerate(weights):
      if weight:
        maps[..., channel] += weight * blob
  peaks = maps.max(axis=(0, 1))
  if not np.all(peaks > 0):
    raise ValueError("both VMS channels need at least one object that feeds them")
  # Divide in float64 and cast once: the peak pixel becomes exactly 1.0.
  return (maps / peaks).astype(np.float32)


def _check_split(split: str) -> None:
  if split not in SPLIT_SIZES:
    raise VMSError(
      f"unknown split {split!r} of the synthetic dataset; valid splits: {', '.join(SPLIT_SIZES)}"
    )


def _jitter_colour(
  rng: np.random.Generator, base: tuple[int, int, int], amount: float
) -> np.ndarray:
  return np.clip(np.asarray(base, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _background(rng: np.random.Generator, category: int, size: int) -> np.ndarray:
  leaf = schema.LEAVES[category]
  upper, lower, horizon = _BACKGROUNDS[leaf]
  upper_rgb = _jitter_colour(rng, upper, _BACKGROUND_JITTER)
  lower_rgb = _jitter_colour(rng, lower, _BACKGROUND_JITTER)
  horizon_row = int(round((horizon + rng.uniform(-_HORIZON_JITTER, _HORIZON_JITTER)) * size))
  image = np.empty((size, size, 3), np.float64)
  image[:horizon_row] = upper_rgb
  image[horizon_row:] = lower_rgb
  top = schema.MIDDLE_TO_TOP[schema.LEAF_TO_MIDDLE[leaf]]
  if top == "outdoor" and horizon_row > 0:
    # Haze: the sky brightens towards the horizon, a cue indoor walls lack.
    t = np.linspace(0.0, 1.0, horizon_row)[:, None, None]
    image[:horizon_row] = upper_rgb + t * 0.35 * (255.0 - upper_rgb)
  return image


def _place_objects(rng: np.random.Generator, size: int) -> list[SceneObject]:
  num = int(rng.integers(2, 6))  # 2..5 objects
  # The first two kinds guarantee a source for each map; the rest are free.
  kinds = [TRUE_KINDS[rng.integers(2)], FALSE_KINDS[rng.integers(2)]]
  kinds += [KINDS[k] for k in rng.integers(len(KINDS), size=num - 2)]
  low, high = CENTRE_RANGE[0] * size, CENTRE_RANGE[1] * size
  placed: list[SceneObject] = []
  for i, kind in enumerate(kinds):
    # The required objects are placed early in an empty image, so they always
    # fit; the generous bound only keeps the loop finite.
    tries = _PLACEMENT_TRIES if i >= 2 else 100 * _PLACEMENT_TRIES
    for _ in range(tries):
      x, y = rng.uniform(low, high, 2)
      radius = rng.uniform(*RADIUS_RANGE)
      vertical = bool(rng.integers(2))
      if all(np.hypot(x - o.x, y - o.y) >= radius + o.radius + MIN_GAP for o in placed):
        placed.append(SceneObject(kind, float(x), float(y), float(radius), vertical))
        break
    else:
      if i < 2:
        raise RuntimeError("could not place a required object")  # never happens
  return placed


def render_example(
  seed: int, split: str, index: int, size: int = schema.IMAGE_SIZE
) -> dict[str, Any]:
  """Renders one synthetic example, deterministically from (seed, split, index).

  Args:
    seed: dataset seed (the builder's default is 0).
    split: "train" or "test".
    index: position in the split, 0 <= index < SPLIT_SIZES[split].
    size: side of the image, px (the dataset uses schema.IMAGE_SIZE).

  Returns:
    A dict with `image` uint8 (size, size, 3), `vms` float32 (size, size, 2),
    `category`, `category_mid`, `category_top` (ints indexing schema.LEAVES,
    MIDDLE, TOP), `id` (str) and `objects` (list[SceneObject], the objects drawn).

  Raises:
    VMSError: unknown split or index out of range.
  """
  _check_split(split)
  if not 0 <= index < SPLIT_SIZES[split]:
    raise VMSError(f"synthetic {split} index {index} out of range [0, {SPLIT_SIZES[split]})")
  # A seed sequence per example, not one stream per split: any example can be
  # rendered alone, in any order, in any process.
  rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))
  category = index % len(schema.LEAVES)
  category_mid, category_top = schema.upper_levels(category)

  image = _background(rng, category, size)
  objects = _place_objects(rng, size)
  ys, xs = np.ogrid[0:size, 0:size]
  for obj in objects:
    image[obj.mask(xs, ys)] = _jitter_colour(rng, _KIND_COLOURS[obj.kind], _KIND_JITTER)
  image += rng.normal(0.0, NOISE_STD, image.shape)
  image = np.clip(np.round(image), 0, 255).astype(np.uint8)

  return {
    "image": image,
    "vms": vms_maps(objects, category, size),
    "category": category,
    "category_mid": category_mid,
    "category_top": category_top,
    "id": f"synthetic_{split}_{index:04d}.png",
    "objects": objects,
  }


def png_bytes(image: np.ndarray) -> bytes:
  """Encodes a uint8 (H, W, 3) image as PNG with Pillow (tfds needs TF for numpy input)."""
  buffer = io.BytesIO()
  # Level 1: noisy images barely compress anyway, and the build stays fast.
  Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


@dataclasses.dataclass(eq=False)
class VmsSyntheticConfig(tfds.core.BuilderConfig):
  """A synthetic VMS dataset configuration: the seed every example derives from."""

  seed: int = 0


class VmsSynthetic(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the synthetic VMS dataset (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: 640 train / 160 test, map rule v1."}
  BUILDER_CONFIGS = [
    VmsSyntheticConfig(name="seed0", seed=0, description="The default seed, 0."),
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """Returns this module's file, the place tfds looks for a checksums file."""
    # tfds 4.9.10 resolves this for builders inside a package through the
    # `importlib_resources` backport, which it does not install; the plain file
    # path is what its own fallback returns.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self) rather than dataset_info_from_configs: the latter
    # looks up package metadata and fails for builders outside the tfds tree.
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=schema.features(with_vms=True),
      supervised_keys=("image", "vms"),
    )

  def _split_generators(
    self, dl_manager: tfds.download.DownloadManager
  ) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for index in range(SPLIT_SIZES[split]):
      example = render_example(self.builder_config.seed, split, index)
      yield (
        example["id"],
        {
          "image": png_bytes(example["image"]),
          "vms": example["vms"],
          "category": example["category"],
          "category_mid": example["category_mid"],
          "category_top": example["category_top"],
          "id": example["id"],
        },
      )
