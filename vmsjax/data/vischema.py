"""VISCHEMA (800 scenes with true/false VMS maps) and VISCHEMA2 (images only) as TFDS builders.

Both are manual downloads (https://www.cs.york.ac.uk/vischema/). The builders accept
the layouts a user is likely to hold; docs/data.md gives the folder trees. In short,
under the manual dir (or its `vischema/` / `vischema2/` subfolder):

- images: `images/<category>/<name>.<ext>` (a folder per category), or flat
  `images/<name>.<ext>` with `categories.csv` (header `name,category[,split]`);
- maps (VISCHEMA only), matched to images by file stem, under `maps/` (or `vms/`),
  optionally in category subfolders:
  - an RGB image `<name>.png|jpg|...`: green = true VMS, red = false VMS (the
    colours of the paper's figures), 8-bit values v stored as v / 255;
  - `<name>.npy`: an (H, W, 2) array, channel 0 true, channel 1 false;
  - `<name>.npz` / `<name>.mat` (MATLAB v5 through scipy.io, v7.3 through h5py):
    a variable `vms` (H, W, 2), or two variables `true_vms` and `false_vms` (H, W);
  - grayscale image pairs `maps/true/<name>.png` and `maps/false/<name>.png`
    (8-bit v -> v / 255, 16-bit v -> v / 65535);
- split: `train.txt` and `test.txt` (one image name per line), else a `split`
  column in categories.csv, else a category-stratified 80/20 split drawn with a
  fixed seed (see `stratified_split`), recorded in the dataset's metadata.

Maps keep their raw scale up to one documented division: image maps by their
bit depth's maximum, numeric maps (.npy/.npz/.mat) by 1 when every value of every
numeric map is <= 1, else by 255 (the paper's 0-255 scale). No per-channel
renormalisation. So MSE on the paper's 0-255 scale is 255**2 times the MSE on the
stored maps; `info.metadata["map_scale"]` records the divisors. Maps of another size
go through the image's resize rule (squash or centre_crop) with bilinear resampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from vmsjax.data import images, schema
from vmsjax.data.manual import ManualBuilder
from vmsjax.data.synthetic import png_bytes
from vmsjax.data.vischema_layout import SPLITS, TEST_FRACTION, Item, Layout, scan, stratified_split
from vmsjax.data.vischema_maps import fit_map, numeric_divisor, read_raw_map
from vmsjax.errors import VMSError


@dataclasses.dataclass(eq=False)
class VischemaConfig(tfds.core.BuilderConfig):
  """How the manual files become records.

  Attributes:
    resize: the rule for non-square images and maps: "squash" or "centre_crop"
      (vmsjax.data.images).
    split_seed: seed of the stratified split, used when there are no split files
      and no split column.
    test_fraction: share of the test split for the stratified split.
  """

  resize: str = "squash"
  split_seed: int = 0
  test_fraction: float = TEST_FRACTION


def _configs() -> list[VischemaConfig]:
  return [
    VischemaConfig(
      name="squash", resize="squash", description="Non-square images squashed to 224x224."
    ),
    VischemaConfig(
      name="centre_crop",
      resize="centre_crop",
      description="The centred square of each image (and map), resized to 224x224.",
    ),
  ]


def _leaf_features(leaf: str) -> dict[str, int]:
  category = schema.LEAVES.index(leaf)
  category_mid, category_top = schema.upper_levels(category)
  return {"category": category, "category_mid": category_mid, "category_top": category_top}


class Vischema(ManualBuilder):
  """VISCHEMA: 800 scene images with true/false VMS maps, 640 train / 160 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download VISCHEMA from https://www.cs.york.ac.uk/vischema/ and arrange it as\n"
    "  <manual_dir>/vischema/images/<category>/<name>.jpg\n"
    "  <manual_dir>/vischema/maps/<name>.png (RGB: green true VMS, red false VMS)\n"
    "(other accepted layouts: docs/data.md)."
  )
  SUBFOLDER = "vischema"
  WITH_MAPS = True

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=schema.features(with_vms=self.WITH_MAPS),
      supervised_keys=("image", "vms") if self.WITH_MAPS else None,
      homepage="https://www.cs.york.ac.uk/vischema/",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._start(dl_manager)
    layout = scan(root, with_maps=self.WITH_MAPS, with_splits=self.WITH_MAPS, bad=self._bad)
    for path, reason in layout.orphans:
      self._bad.add(path, reason)
    for path, reason in layout.rejected:
      self._skip_image(path, reason)
    config: VischemaConfig = self.builder_config
    metadata: dict[str, Any] = {
      "resize": config.resize,
      "category_source": layout.category_source,
    }
    usable = [item for item in layout.items.values() if not item.problems]
    if self.WITH_MAPS:
      metadata["split"] = self._assign_splits(layout, config)
      metadata["map_scale"] = self._check_maps(usable)
    self.info.metadata.update(metadata)
    splits = SPLITS if self.WITH_MAPS else ("test",)
    self._expect_splits(splits, len(layout.items) + len(layout.rejected), layout.ignored)
    for item in layout.items.values():
      if item.problems:
        for path, reason in item.problems:
          self._bad.add(path, reason)
        self._skipped_images += 1
    good = sorted((i for i in layout.items.values() if not i.problems), key=lambda i: i.id)
    by_split = {s: [i for i in good if not self.WITH_MAPS or i.split == s] for s in splits}
    for split, members in by_split.items():
      if not members:  # tfds cannot write an empty split
        raise VMSError(
          f"no usable image for the {split} split of {root} (split from: "
          f"{layout.split_source}; {len(self._bad)} bad files: "
          + "; ".join(f"{f}: {r}" for f, r in self._bad.problems[:20])
          + ")"
        )
    return {split: self._generate_examples(split, members) for split, members in by_split.items()}

  def _assign_splits(self, layout: Layout, config: VischemaConfig) -> dict[str, Any]:
    """Fills in each item's split; returns what the metadata records about it."""
    if layout.split_source != "stratified":
      return {"source": layout.split_source}
    # Every image with a category takes part, even one whose map turns out bad: so
    # the split of a good image does not depend on which other files are broken.
    categories = {i.id: i.category for i in layout.items.values() if i.category is not None}
    drawn = stratified_split(categories, config.test_fraction, config.split_seed)
    for item_id, split in drawn.items():
      layout.items[item_id].split = split
    return {
      "source": "stratified",
      "seed": config.split_seed,
      "test_fraction": config.test_fraction,
      "test_ids": sorted(i for i, s in drawn.items() if s == "test"),
    }

  def _check_maps(self, usable: list[Item]) -> dict[str, Any]:
    """Reads every map once, marks the bad ones, and decides the numeric divisor."""
    maxima: list[tuple[Item, float]] = []
    for item in usable:
      try:
        raw = read_raw_map(item)
      except ValueError as e:
        item.problem(str(e), (item.map_files or list(item.map_pair.values()))[0])
        continue
      if raw.divisor is None:
        maxima.append((item, float(raw.values.max())))
    for item, peak in maxima:
      if peak > 255.0:
        item.problem(f"values up to {peak:g}; expected [0, 1] or [0, 255]", item.map_files[0])
    self._numeric_divisor = numeric_divisor([p for _, p in maxima if p <= 255.0])
    return {
      "image_maps": "8-bit v -> v / 255 (16-bit grayscale pairs: v / 65535)",
      "numeric_maps_divisor": self._numeric_divisor,
      "uint8_numeric_maps_divisor": 255.0,
      "paper_mse_factor": 255.0**2,
      "per_channel_normalised": False,
    }

  def _generate_examples(self, split: str, items: list[Item]) -> Iterator[tuple[str, dict]]:
    config: VischemaConfig = self.builder_config
    written = 0
    for item in items:
      try:
        image = images.read_fitted(item.image, schema.IMAGE_SIZE, config.resize)
      except VMSError as e:
        self._skip_image(item.image, str(e))
        continue
      record: dict[str, Any] = {"image": png_bytes(image), "id": item.id}
      record.update(_leaf_features(item.category))
      if self.WITH_MAPS:
        raw = read_raw_map(item)  # checked in _check_maps
        divisor = raw.divisor if raw.divisor is not None else self._numeric_divisor
        record["vms"] = fit_map(raw, divisor, schema.IMAGE_SIZE, config.resize)
      written += 1
      yield item.id, record
    self._finish_split(split, written)


class Vischema2(Vischema):
  """VISCHEMA2: FIGRIM scenes in the VISCHEMA categories, images only.

  One split, `test`: the whole set (it serves evaluation; tfds reserves `all`).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Arrange the VISCHEMA2 images as <manual_dir>/vischema2/images/<category>/<name>.jpg"
    " (other accepted layouts: docs/data.md)."
  )
  SUBFOLDER = "vischema2"
  WITH_MAPS = False
