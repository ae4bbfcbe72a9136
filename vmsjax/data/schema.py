"""The record schema shared by every vmsjax dataset, and the VISCHEMA category tree.

The tree (paper §3): indoor -> {private, public}, outdoor -> {man-made, natural};
private -> {kitchen, living room}, public -> {small public, big public},
man-made -> {work/home, public entertainment}, natural -> {populated, isolated}.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 224  # every stored image and map is IMAGE_SIZE x IMAGE_SIZE

LEAVES: tuple[str, ...] = (
  "kitchen",
  "living_room",
  "small_public",
  "big_public",
  "work_home",
  "public_entertainment",
  "populated",
  "isolated",
)
MIDDLE: tuple[str, ...] = ("private", "public", "man_made", "natural")
TOP: tuple[str, ...] = ("indoor", "outdoor")

LEAF_TO_MIDDLE: dict[str, str] = {
  "kitchen": "private",
  "living_room": "private",
  "small_public": "public",
  "big_public": "public",
  "work_home": "man_made",
  "public_entertainment": "man_made",
  "populated": "natural",
  "isolated": "natural",
}
MIDDLE_TO_TOP: dict[str, str] = {
  "private": "indoor",
  "public": "indoor",
  "man_made": "outdoor",
  "natural": "outdoor",
}
VMS_CHANNELS: tuple[str, ...] = ("true", "false")  # channel 0 true VMS, channel 1 false VMS


def features(with_vms: bool = True, with_score: bool = False, with_category: bool = True):
  """Returns the tfds FeaturesDict of a vmsjax record.

  Args:
    with_vms: include the (224, 224, 2) float32 `vms` map (absent for image-only sets).
    with_score: include a float32 `score` (e.g. LaMem memorability).
    with_category: include `category`, `category_mid` and `category_top`. LaMem has
      no VISCHEMA categories: its records leave all three out rather than carry a
      made-up label, and per-category tools skip datasets without them.
  """
  import tensorflow_datasets as tfds  # imported lazily: slow, and not needed by the model

  spec = {"image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))}
  if with_category:
    spec["category"] = tfds.features.ClassLabel(names=list(LEAVES))
    spec["category_mid"] = tfds.features.ClassLabel(names=list(MIDDLE))
    spec["category_top"] = tfds.features.ClassLabel(names=list(TOP))
  spec["id"] = tfds.features.Text()
  if with_vms:
    # Raw bytes: ~2x faster to write than the default list-of-floats encoding, and
    # compression gains nothing on float maps (their low bits are noise).
    spec["vms"] = tfds.features.Tensor(
      shape=(IMAGE_SIZE, IMAGE_SIZE, 2), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
    )
  if with_score:
    spec["score"] = tfds.features.Scalar(dtype=np.float32)
  return tfds.features.FeaturesDict(spec)


def upper_levels(category: int) -> tuple[int, int]:
  """Returns the (category_mid, category_top) indices of a leaf category.

  Args:
    category: index into LEAVES.

  Returns:
    Indices into MIDDLE and TOP: the two upper levels of the tree above the leaf.
  """
  mid = LEAF_TO_MIDDLE[LEAVES[category]]
  return MIDDLE.index(mid), TOP.index(MIDDLE_TO_TOP[mid])
