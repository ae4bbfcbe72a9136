"""Bad inputs: a build names every offending file, or skips them and reports each one."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from tests.test_data_folders import make_vischema, write_png
from vmsjax import cli
from vmsjax.data import catalogue
from vmsjax.errors import VMSError

SIZE = (32, 32)


def _add_bad_files(root) -> dict[str, tuple[str, str]]:
  """Adds one offending file of each kind; returns kind -> (file name, reason pattern)."""
  rng = np.random.default_rng(9)
  kitchen = root / "images" / "Kitchen"

  def good_image(name):
    write_png(kitchen / name, rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))

  def good_map(stem):
    write_png(root / "maps" / f"{stem}.png", rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))

  (kitchen / "corrupt.jpg").write_text("this is not a JPEG")
  good_map("corrupt")
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
  (kitchen / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
  good_map("truncated")
  good_image("nomap.png")
  good_map("orphan")  # a map with no image
  good_image("grey.png")
  write_png(root / "maps" / "grey.png", rng.integers(0, 256, SIZE, dtype=np.uint8))  # mode L
  good_image("threech.png")
  np.save(root / "maps" / "threech.npy", rng.random((*SIZE, 3)))
  good_image("nan.png")
  nan = rng.random((*SIZE, 2))
  nan[3, 4, 1] = np.nan
  np.save(root / "maps" / "nan.npy", nan)
  good_image("neg.png")
  np.save(root / "maps" / "neg.npy", rng.random((*SIZE, 2)) - 0.5)
  write_png(root / "images" / "Office" / "office.png", rng.integers(0, 256, (*SIZE, 3), np.uint8))
  good_map("office")
  # The same file name in two category folders (make_vischema wrote Kitchen/kitc0_00.png).
  write_png(root / "images" / "living room" / "kitc0_00.png", np.zeros((*SIZE, 3), np.uint8))
  good_image("twin.png")
  good_image("twin.jpg")
  good_map("twin")
  return {
    "corrupt": ("corrupt.jpg", "not an image"),
    "truncated": ("truncated.png", "corrupt or truncated"),
    "image without map": ("nomap.png", "image with no map"),
    "map without image": ("orphan.png", "map with no image"),
    "grey map image": ("grey.png", "L \\(1-channel\\) map image"),
    "npy with 3 channels": ("threech.npy", r"shape \(32, 32, 3\)"),
    "NaN": ("nan.npy", "1 NaN or infinite values"),
    "negative": ("neg.npy", "negative values"),
    "unknown category": ("office.png", "'Office' is not a VISCHEMA category"),
    "duplicate name": ("living room/kitc0_00.png", "same file name as images/Kitchen/kitc0_00"),
    "same stem": ("twin.jpg", r"same stem as twin.png \(maps are matched by stem"),
  }


BAD_IMAGES = 11  # every kind is one bad image, but the orphan map (0) and the twins (2)


@pytest.fixture(scope="module")
def bad_builds(tmp_path_factory):
  """The same folder built twice: without skipping (fails) and with --skip_bad_files."""
  base = tmp_path_factory.mktemp("bad")
  manual = base / "manual"
  expected = make_vischema(manual, per_category=3, shape=SIZE)
  kinds = _add_bad_files(manual)
  with pytest.raises(VMSError) as failure:
    catalogue.build("vischema", str(base / "fail"), manual_dir=str(manual))
  failed_builder = catalogue._builder("vischema", str(base / "fail"))
  report = catalogue.build(
    "vischema", str(base / "skip"), manual_dir=str(manual), skip_bad_files=True
  )
  return expected, kinds, str(failure.value), failed_builder, report, base


KINDS = [
  "corrupt",
  "truncated",
  "image without map",
  "map without image",
  "grey map image",
  "npy with 3 channels",
  "NaN",
  "negative",
  "unknown category",
  "duplicate name",
  "same stem",
]


@pytest.mark.parametrize("kind", KINDS)
def test_failed_build_names_the_file_and_why(bad_builds, kind):
  _, kinds, message, _, _, _ = bad_builds
  name, reason = kinds[kind]
  # The message has each offending file followed by its reason.
  assert any(name in part and re.search(reason, part) for part in message.split("; ")), (
    f"{kind}: {name} / {reason} not in {message}"
  )


def test_failed_build_lists_all_and_writes_nothing(bad_builds):
  _, kinds, message, builder, _, _ = bad_builds
  # One entry per bad file: the kinds, plus the second twin.
  assert message.startswith(f"{len(kinds) + 1} bad file(s)") and "--skip_bad_files" in message
  assert not builder.is_prepared()


@pytest.mark.parametrize("kind", KINDS)
def test_skip_report_lists_the_file_and_why(bad_builds, kind):
  _, kinds, _, _, report, _ = bad_builds
  name, reason = kinds[kind]
  matches = [e for e in report["skipped"] if e["file"].endswith(name)]
  assert len(matches) == 1, report["skipped"]
  assert re.search(reason, matches[0]["reason"])


def test_skip_build_counts_add_up(bad_builds, capsys):
  expected, kinds, _, _, report, base = bad_builds
  # 24 good images + 11 bad ones (the orphan map is not an image): nothing vanishes.
  assert report["found_images"] == len(expected) + BAD_IMAGES
  assert report["skipped_images"] == BAD_IMAGES
  assert sum(report["written"].values()) == len(expected)
  written = set()
  for split in ("train", "test"):
    source = catalogue.open_split("vischema", split, str(base / "skip"))
    written |= set(source.ids())
  assert written == set(expected)
  assert cli.main(["data", "info", "vischema", "--data_dir", str(base / "skip")]) == 0
  printed = catalogue.format_report(catalogue.build_report("vischema", str(base / "skip")))
  assert f"skipped {BAD_IMAGES} images" in printed and "orphan.png" in printed


def test_cli_failure_is_one_line_naming_files(tmp_path, capsys):
  make_vischema(tmp_path / "m", per_category=1, shape=SIZE)
  (tmp_path / "m" / "images" / "Kitchen" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
  (tmp_path / "m" / "maps" / "broken.png").write_bytes(b"")
  args = ["data", "build", "vischema", "--manual_dir", str(tmp_path / "m")]
  assert cli.main([*args, "--data_dir", str(tmp_path / "d")]) == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: tfds progress bars
  assert last.startswith("vmsjax: error: 1 bad file(s)")
  # The empty map is found before any image is decoded; its image is left alone.
  assert "maps/broken.png: not an image Pillow can read" in last


def test_maps_over_255_are_bad(tmp_path):
  make_vischema(tmp_path / "m", map_format="npy", per_category=2, shape=SIZE)
  np.save(tmp_path / "m" / "maps" / "kitc0_00.npy", np.full((*SIZE, 2), 300.0))
  with pytest.raises(VMSError, match=r"kitc0_00.npy: values up to 300"):
    catalogue.build("vischema", str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))


def test_split_with_no_readable_image_is_an_error_even_when_skipping(tmp_path):
  root = tmp_path / "m" / "vischema2" / "images" / "Kitchen"
  root.mkdir(parents=True)
  for name in ("a.jpg", "b.jpg"):
    (root / name).write_bytes(b"\xff\xd8\xff")  # a JPEG that stops after its first marker
  with pytest.raises(
    VMSError, match=r"no usable image under .*: images/Kitchen/a.jpg: not an image .*b.jpg"
  ):
    catalogue.build("vischema2", str(tmp_path / "d"), str(tmp_path / "m"), skip_bad_files=True)
