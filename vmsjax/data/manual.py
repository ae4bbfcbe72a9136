"""What the manual-download TFDS builders share (VISCHEMA, VISCHEMA2, LaMem).

A manual dataset is built from files the user downloads by hand (`--manual_dir`).
`ManualBuilder` finds the dataset's root under the manual dir, keeps the bad-file
bookkeeping (vmsjax.data.images.BadFiles) and writes the build report
(`build_report.json` next to the records) that accounts for every image found.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from vmsjax.data import images
from vmsjax.errors import VMSError
from vmsjax.records import write_json

REPORT_NAME = "build_report.json"


def find_root(manual_dir: str | os.PathLike, subfolder: str) -> Path:
  """Returns the dataset's root: `manual_dir/subfolder` or `manual_dir`, holding `images/`.

  Raises:
    VMSError: neither holds an `images/` folder.
  """
  manual = Path(os.path.expanduser(os.fspath(manual_dir)))
  for root in (manual / subfolder, manual):
    if (root / "images").is_dir():
      return root
  raise VMSError(
    f"no images/ folder in {manual / subfolder} or {manual}; put the {subfolder} images in "
    f"{manual / subfolder}/images/<category>/<name>.jpg (see docs/data.md for the layouts)"
  )


class ManualBuilder(tfds.core.GeneratorBasedBuilder):
  """What the manual-download builders share: bad-file bookkeeping and a build report.

  With `skip_bad_files=True` (`vmsjax data build --skip_bad_files`) the offending
  files are left out and listed, each with its reason, in `build_report.json` next
  to the records; otherwise the build fails with a message naming every offending
  file. Either way the report's `found_images` equals the examples written plus
  `skipped_images`: nothing is dropped silently.
  """

  SUBFOLDER = ""  # the dataset's folder under a shared manual dir

  def __init__(self, *, skip_bad_files: bool = False, **kwargs: Any):
    self.skip_bad_files = skip_bad_files
    self._bad = images.BadFiles(".", skip_bad_files)
    self._report: dict[str, Any] = {}
    self._pending: set[str] = set()
    self._skipped_images = 0
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """Returns this module's file (tfds' own lookup needs importlib_resources)."""
    return epath.Path(inspect.getfile(cls))

  def _start(self, dl_manager: tfds.download.DownloadManager) -> Path:
    """Resets the bookkeeping for a build; returns the dataset's root folder."""
    manual = Path(os.fspath(dl_manager.manual_dir))
    root = find_root(manual, self.SUBFOLDER)
    self._bad = images.BadFiles(root, self.skip_bad_files)
    self._skipped_images = 0
    self._report = {
      "dataset": self.name,
      "config": self.builder_config.name,
      "version": str(self.version),
      "root": str(root),
      "skip_bad_files": self.skip_bad_files,
      "written": {},
    }
    return root

  def _skip_image(self, path: Path, reason: str) -> None:
    """Records a found image that will not be written."""
    self._bad.add(path, reason)
    self._skipped_images += 1

  def _expect_splits(self, splits, found_images: int, ignored: list[Path]) -> None:
    self._pending = set(splits)
    self._report["found_images"] = found_images
    self._report["ignored"] = [self._bad.relative(p) for p in ignored]

  def _finish_split(self, split: str, written: int) -> None:
    """Called by each split's generator at its end; the last one settles the build.

    Raises:
      VMSError: bad files were met and skipping is off (names every one).
    """
    self._report["written"][split] = written
    self._pending.discard(split)
    if self._pending:
      return
    self._bad.check(f"{self.name}/{self.builder_config.name}")
    total = sum(self._report["written"].values())
    if total + self._skipped_images != self._report["found_images"]:  # a bug, not user data
      raise RuntimeError(
        f"found {self._report['found_images']} images but wrote {total} and skipped "
        f"{self._skipped_images}"
      )
    self._report["skipped_images"] = self._skipped_images
    self._report["skipped"] = self._bad.as_records()
    if not total:
      listed = "; ".join(f"{f}: {r}" for f, r in self._bad.problems)
      raise VMSError(f"no usable image under {self._report['root']}: {listed}")
    # The data dir is the build's temporary folder here; tfds moves it into place.
    write_json(Path(os.fspath(self.data_dir)) / REPORT_NAME, self._report)
