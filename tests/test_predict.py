"""`vmsjax predict`: maps, overlays, scores and latent-sample statistics for image files."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from vmsjax import cli, figures, inference
from vmsjax import predict as predict_lib
from vmsjax.errors import VMSError

# Two sizes, so images are grouped by size; one non-square.
SIZES = {"a.png": (40, 52), "b.png": (40, 52), "c.jpg": (64, 48)}
SAMPLES = 48


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A folder of three readable images, one corrupt file and one non-image file."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(3)
  arrays = {}
  for name, (h, w) in SIZES.items():
    # Smooth content (JPEG-friendly): a gradient plus a few blocks.
    y, x = np.mgrid[:h, :w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1).astype(np.uint8)
    img[rng.integers(0, h // 2) :, : rng.integers(4, w)] //= 2
    Image.fromarray(img).save(folder / name, quality=95)
    arrays[name] = np.asarray(Image.open(folder / name).convert("RGB"))
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
  (folder / "notes.txt").write_text("not an image")
  return folder, arrays


@pytest.fixture(scope="module")
def run(images, trained_workdir, tmp_path_factory):
  """One `vmsjax predict --samples` over the folder, through the CLI entry point."""
  folder, _ = images
  out = tmp_path_factory.mktemp("predict") / "out"
  err, std = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
    code = cli.main(
      [
        "predict",
        "--workdir",
        str(trained_workdir),
        str(folder),
        "--out",
        str(out),
        "--samples",
        str(SAMPLES),
        "--seed",
        "5",
      ]
    )
  return code, err.getvalue(), out


@pytest.fixture(scope="module")
def trained(trained_workdir):
  return inference.load(trained_workdir)


def _stem(name):
  return name.rsplit(".", 1)[0]


def test_corrupt_file_named_and_others_written(run, images):
  code, err, out = run
  assert code == 2
  assert "broken.png" in err and "Traceback" not in err
  summary = [ln for ln in err.splitlines() if "wrote maps for" in ln]
  assert len(summary) == 1 and "3 images" in summary[0] and "skipped 1" in summary[0]
  for name in SIZES:
    assert (out / "npy" / f"{_stem(name)}.npy").is_file()
  assert not (out / "npy" / "broken.npy").exists()
  record = json.loads((out / "predict.json").read_text())
  assert [s["path"].endswith("broken.png") for s in record["skipped"]] == [True]
  assert record["images"] == 3 and record["samples"] == SAMPLES
  assert [p.endswith("notes.txt") for p in record["ignored"]] == [True]


def test_npy_maps_equal_inference_predict(run, images, trained):
  _, _, out = run
  _, arrays = images
  s = trained.image_size
  for name, image in arrays.items():
    expected, _ = inference.predict(trained, image[None])
    got = np.load(out / "npy" / f"{_stem(name)}.npy")
    assert got.dtype == np.float32 and got.shape == (s, s, 2)
    np.testing.assert_allclose(got, expected[0], atol=1e-6)
    full = np.load(out / "full" / f"{_stem(name)}.npy")
    assert full.shape == (*image.shape[:2], 2)
    assert 0.0 <= full.min() and full.max() <= 1.0
    # Resizing keeps a map's mean to within interpolation error.
    np.testing.assert_allclose(full.mean((0, 1)), got.mean((0, 1)), atol=0.02)


def test_csv_scores_are_channel_means(run, images):
  _, _, out = run
  with open(out / "scores.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["id"] for r in rows] == list(SIZES)  # input (sorted) order
  for r in rows:
    maps = np.load(out / "npy" / f"{_stem(r['id'])}.npy").astype(np.float64)
    assert float(r["memorability"]) == pytest.approx(maps[..., 0].mean(), abs=1e-12)
    assert float(r["false_memorability"]) == pytest.approx(maps[..., 1].mean(), abs=1e-12)
    std = np.load(out / "samples" / f"{_stem(r['id'])}_std.npy").astype(np.float64)
    assert float(r["true_std"]) == pytest.approx(std[..., 0].mean(), rel=1e-6)
    assert r["path"].endswith(r["id"])


def test_samples_mean_and_std(run, trained):
  _, _, out = run
  for name in SIZES:
    mean = np.load(out / "samples" / f"{_stem(name)}_mean.npy")
    std = np.load(out / "samples" / f"{_stem(name)}_std.npy")
    mu_map = np.load(out / "npy" / f"{_stem(name)}.npy")
    assert mean.shape == std.shape == mu_map.shape
    assert (std >= 0).all() and std.max() > 0
    # With many draws the mean map is near the z = mu map (a sigmoid of a decoder
    # that is smooth in z), and the difference is small next to the spread.
    assert np.abs(mean - mu_map).mean() < 0.02
    assert np.abs(mean - mu_map).mean() < 3 * std.mean() + 1e-4


def test_pngs_open_with_expected_sizes(run, images):
  _, _, out = run
  _, arrays = images
  for name, image in arrays.items():
    h, w = image.shape[:2]
    with Image.open(out / "overlay" / f"{_stem(name)}.png") as im:
      assert im.size == (w, h) and im.mode == "RGB"
      overlay = np.asarray(im)
    full = np.load(out / "full" / f"{_stem(name)}.npy")
    np.testing.assert_array_equal(overlay, figures.overlay(image, full))
    with Image.open(out / "png" / f"{_stem(name)}.png") as im:
      assert im.size == figures.panel_size(1, 3)
    with Image.open(out / "samples" / f"{_stem(name)}.png") as im:
      assert im.size == figures.panel_size(2, 2)


def test_overlay_blend_rule():
  image = np.full((2, 3, 3), 100, np.uint8)
  maps = np.zeros((2, 3, 2), np.float32)
  maps[0, 1] = (1.0, 0.0)  # true only
  maps[0, 2] = (0.0, 0.25)  # a quarter false
  maps[1, 0] = (1.0, 1.0)  # both
  got = figures.overlay(image, maps, opacity=0.6).astype(int)
  np.testing.assert_array_equal(got[0, 0], [100, 100, 100])  # empty: the image
  np.testing.assert_array_equal(got[0, 1], [40, 40 + 153, 40])  # 0.4*100 + 0.6*255 green
  np.testing.assert_array_equal(got[0, 2], [123, 85, 85])  # 0.85*100 + 0.15*255 red
  np.testing.assert_array_equal(got[1, 0], [193, 193, 40])  # yellow
  # peak=True divides both maps by their joint maximum first.
  faint = maps * 0.4
  np.testing.assert_array_equal(
    figures.overlay(image, faint, peak=True), figures.overlay(image, maps)
  )
  assert not np.array_equal(figures.overlay(image, faint), figures.overlay(image, maps))


def test_repeated_names_get_distinct_ids(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "y").mkdir()
  files = [tmp_path / "x" / "im.png", tmp_path / "y" / "im.png", tmp_path / "x" / "im~2.png"]
  assert predict_lib.assign_ids(files) == ["im.png", "im~3.png", "im~2.png"]


def test_missing_input_is_one_line_error(capsys, tmp_path, trained_workdir):
  code = cli.main(
    ["predict", "--workdir", str(trained_workdir), str(tmp_path / "nope.png"), "--out", "o"]
  )
  err = capsys.readouterr().err
  assert code == 2 and "nope.png" in err and len(err.strip().splitlines()) == 1
  with pytest.raises(VMSError, match="no images given"):
    predict_lib.find_images([])


def test_count_says_predicted_and_skipped_when_the_only_file_is_skipped(images, trained, tmp_path):
  folder, _ = images
  lines, warned = [], []
  result = predict_lib.predict_files(
    trained,
    predict_lib.Found([folder / "broken.png"], []),
    tmp_path / "out",
    log=lines.append,
    warn=warned.append,
  )
  assert result.rows == [] and len(result.skipped) == 1 and len(warned) == 1
  assert lines == ["1/1 files done: 0 predicted, 1 skipped"]


def test_normalise_per_image_changes_the_overlays_only(images, trained, tmp_path):
  folder, arrays = images
  found = predict_lib.Found([folder / "c.jpg"], [])
  outs = {}
  for mode in predict_lib.NORMALISE:
    outs[mode] = tmp_path / mode
    predict_lib.predict_files(
      trained, found, outs[mode], figures_too=False, log=lambda _: None, normalise=mode
    )
  raw, shown = outs["none"], outs["per-image"]
  np.testing.assert_array_equal(np.load(raw / "npy" / "c.npy"), np.load(shown / "npy" / "c.npy"))
  assert (raw / "scores.csv").read_text() == (shown / "scores.csv").read_text()
  full = np.load(shown / "full" / "c.npy")
  scaled = predict_lib.per_image_range(full)
  np.testing.assert_allclose(scaled.min((0, 1)), 0.0)
  np.testing.assert_allclose(scaled.max((0, 1)), 1.0, rtol=1e-6)
  with Image.open(shown / "overlay" / "c.png") as im:
    np.testing.assert_array_equal(np.asarray(im), figures.overlay(arrays["c.jpg"], scaled))
  with Image.open(raw / "overlay" / "c.png") as im:
    assert not np.array_equal(np.asarray(im), figures.overlay(arrays["c.jpg"], scaled))
  assert json.loads((shown / "predict.json").read_text())["normalise"] == "per-image"
  with pytest.raises(VMSError, match="--normalise"):
    predict_lib.predict_files(trained, found, tmp_path / "x", normalise="global")
