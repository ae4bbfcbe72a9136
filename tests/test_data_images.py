"""vmsjax.data.images: images in the wild -> RGB uint8, and the square-fit rules."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vmsjax.data import images
from vmsjax.errors import VMSError


def _rng_image(h=20, w=30, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png16(path, values: np.ndarray, colour_type: int) -> None:
  """Writes a 16-bit PNG by hand (Pillow cannot write 16-bit colour): filter 0 rows."""
  h, w = values.shape[:2]
  raw = b"".join(b"\x00" + values[r].astype(">u2").tobytes() for r in range(h))

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", ihdr)
    + chunk(b"IDAT", zlib.compress(raw))
    + chunk(b"IEND", b"")
  )


def test_rgb_png_roundtrip_exact(tmp_path):
  rgb = _rng_image()
  Image.fromarray(rgb).save(tmp_path / "a.png")
  out = images.read_rgb(tmp_path / "a.png")
  assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
  np.testing.assert_array_equal(out, rgb)


def test_grayscale_repeated_over_channels(tmp_path):
  grey = _rng_image()[:, :, 0]
  Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
  out = images.read_rgb(tmp_path / "g.png")
  np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_sixteen_bit_grayscale_scaled_not_clipped(tmp_path):
  values = np.array([[0, 257, 32768, 65535], [1000, 60000, 128, 65280]], np.uint16)
  _png16(tmp_path / "g16.png", values, colour_type=0)
  out = images.read_rgb(tmp_path / "g16.png")
  expected = np.round(values / 65535.0 * 255.0).astype(np.uint8)
  np.testing.assert_array_equal(out[:, :, 0], expected)
  np.testing.assert_array_equal(out[:, :, 2], expected)
  assert out[0, 3, 0] == 255 and out[0, 1, 0] == 1  # full range, not clipped at 255


def test_sixteen_bit_colour_within_one_level(tmp_path):
  values = np.random.default_rng(1).integers(0, 65536, (6, 9, 3)).astype(np.uint16)
  _png16(tmp_path / "c16.png", values, colour_type=2)
  out = images.read_rgb(tmp_path / "c16.png").astype(int)
  exact = np.round(values / 65535.0 * 255.0)
  assert np.abs(out - exact).max() <= 1
  # A 16-bit file made from an 8-bit one (v = 257 k) comes back exactly.
  eight = _rng_image(6, 9, seed=2)
  _png16(tmp_path / "c16b.png", eight.astype(np.uint16) * 257, colour_type=2)
  np.testing.assert_array_equal(images.read_rgb(tmp_path / "c16b.png"), eight)


def test_cmyk_converted(tmp_path):
  cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
  cmyk.save(tmp_path / "c.jpg", quality=100)
  cmyk.save(tmp_path / "c.tif")
  np.testing.assert_array_equal(images.read_rgb(tmp_path / "c.tif")[0, 0], [255, 0, 0])
  jpg = images.read_rgb(tmp_path / "c.jpg").astype(int)
  assert jpg.shape == (3, 4, 3) and np.abs(jpg[1, 1] - [255, 0, 0]).max() <= 8


def test_palette_transparency_composited_on_white(tmp_path):
  pal = Image.new("P", (4, 2))
  pal.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
  pal.putdata([0, 1, 1, 0, 1, 1, 0, 0])
  pal.info["transparency"] = 0
  pal.save(tmp_path / "p.png", transparency=0)
  out = images.read_rgb(tmp_path / "p.png")
  np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent -> white
  np.testing.assert_array_equal(out[0, 1], [200, 10, 20])
  black = images.read_rgb(tmp_path / "p.png", background=(0, 0, 0))
  np.testing.assert_array_equal(black[0, 0], [0, 0, 0])
  # A palette image without transparency is a plain palette lookup.
  pal2 = Image.new("P", (2, 1))
  pal2.putpalette([9, 8, 7, 1, 2, 3] + [0] * 762)
  pal2.putdata([1, 0])
  pal2.save(tmp_path / "q.png")
  np.testing.assert_array_equal(images.read_rgb(tmp_path / "q.png"), [[[1, 2, 3], [9, 8, 7]]])


def test_rgba_half_alpha_mixed_with_background(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[..., 0] = 100
  rgba[..., 3] = [[255, 0], [128, 255]]
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  out = images.read_rgb(tmp_path / "a.png").astype(int)
  assert list(out[0, 0]) == [100, 0, 0] and list(out[0, 1]) == [255, 255, 255]
  mix = 100 * 128 / 255 + 255 * 127 / 255
  assert abs(out[1, 0, 0] - mix) <= 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(tmp_path, orientation):
  # A stored image with a bright top-left block; the tag says how to turn it.
  stored = np.zeros((40, 60, 3), np.uint8)
  stored[:10, :10] = 255
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
  out = images.read_rgb(tmp_path / "r.jpg")
  turn = {3: 2, 6: -1, 8: 1}[orientation]  # quarter turns counter-clockwise (np.rot90)
  expected = np.rot90(stored, turn)
  assert out.shape == expected.shape
  assert np.abs(out.astype(int) - expected).mean() < 6


def test_bad_files_raise_naming_the_file(tmp_path):
  missing = tmp_path / "missing.jpg"
  with pytest.raises(VMSError, match="missing.jpg"):
    images.read_rgb(missing)
  text = tmp_path / "notes.jpg"
  text.write_text("not an image")
  with pytest.raises(VMSError, match="notes.jpg.*not an image"):
    images.read_rgb(text)
  buffer = io.BytesIO()
  Image.fromarray(_rng_image(64, 64)).save(buffer, "JPEG")
  (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
  with pytest.raises(VMSError, match="cut.jpg.*(corrupt|truncated)"):
    images.read_rgb(tmp_path / "cut.jpg")
  buffer = io.BytesIO()
  Image.fromarray(_rng_image(64, 64)).save(buffer, "PNG")
  (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:200])
  with pytest.raises(VMSError, match="cut.png"):
    images.read_rgb(tmp_path / "cut.png")
  Image.fromarray(np.ones((3, 3), np.float32)).save(tmp_path / "f.tif")
  with pytest.raises(VMSError, match="f.tif"):
    images.read_rgb(tmp_path / "f.tif")


def test_decompression_bomb_refused(tmp_path, monkeypatch):
  Image.fromarray(_rng_image(40, 40)).save(tmp_path / "big.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: over the warning limit
  with pytest.raises(VMSError, match="big.png.*too large"):
    images.read_rgb(tmp_path / "big.png")


def test_fit_square_rules():
  wide = np.zeros((20, 41, 3), np.uint8)
  wide[:, 10:30] = 200  # the centred 20x20 square... plus the dropped right column
  assert images.crop_box(20, 41, "centre_crop") == (10, 0, 30, 20)
  assert images.crop_box(41, 20, "centre_crop") == (0, 10, 20, 30)
  assert images.crop_box(20, 41, "squash") == (0, 0, 41, 20)
  crop = images.fit_square(wide, 20, "centre_crop")
  np.testing.assert_array_equal(crop, wide[:, 10:30])  # same size after crop: no resampling
  squash = images.fit_square(wide, 20, "squash")
  assert squash.shape == (20, 20, 3) and squash[:, 0].max() == 0 and squash[:, 10].min() == 200
  up = images.fit_square(wide, 64, "centre_crop")
  assert up.shape == (64, 64, 3) and up.min() == 200
  with pytest.raises(VMSError, match="resize rule"):
    images.fit_square(wide, 20, "stretch")


def test_fit_square_map_matches_pillow_and_keeps_scale():
  rng = np.random.default_rng(3)
  values = (rng.random((30, 50, 2)) * 255).astype(np.float32)  # a 0..255 map stays 0..255
  out = images.fit_square_map(values, 16, "centre_crop")
  assert out.shape == (16, 16, 2) and out.dtype == np.float32
  for c in range(2):
    ref = Image.fromarray(values[:, 10:40, c]).resize((16, 16), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(out[:, :, c], np.asarray(ref), rtol=1e-6)
  assert out.max() > 150  # a 0..255 map is not rescaled
  # Independent check: bilinear (a triangle filter) keeps a linear ramp linear away
  # from the borders; output pixel j of a 2x shrink samples input x = 2 j + 0.5.
  ramp = np.tile(np.arange(40, dtype=np.float32)[None, :, None], (40, 1, 2))
  shrunk = images.fit_square_map(ramp, 20)
  np.testing.assert_allclose(shrunk[5, 2:18, 1], 2 * np.arange(2, 18) + 0.5, atol=1e-4)
  # A constant map stays that constant: no renormalisation.
  const = np.full((7, 9, 2), 0.25, np.float32)
  np.testing.assert_allclose(images.fit_square_map(const, 5), 0.25, rtol=1e-6)
  same = images.fit_square_map(values[:16, :16], 16)
  np.testing.assert_array_equal(same, values[:16, :16])
