"""GBVS port: MATLAB building blocks against independent references, then whole maps."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vmsjax import cli, saliency
from vmsjax.data.images import read_rgb
from vmsjax.errors import VMSError

SIDE = 128  # the MATLAB code's smallest accepted size, and cheap here


def _disc_image(center, background="flat", side=SIDE, seed=0):
  """A red disc (radius 10) on mid grey, or on a grey random texture."""
  rng = np.random.default_rng(seed)
  if background == "flat":
    img = np.full((side, side, 3), 120, np.uint8)
  else:
    img = rng.integers(90, 150, size=(side, side, 1), dtype=np.uint8).repeat(3, axis=2)
  yy, xx = np.mgrid[:side, :side]
  img[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 < 100] = (230, 30, 30)
  return img


def _peak(saliency_map):
  return np.array(np.unravel_index(np.argmax(saliency_map), saliency_map.shape))


# --- MATLAB imresize -------------------------------------------------------------------


def test_resize_matches_pillow_bicubic_inside():
  # Pillow's float bicubic uses the same kernel (a = -0.5), the same pixel centres and
  # the same kernel stretching when shrinking; it only treats the edges differently
  # (renormalises instead of mirroring), so interior pixels must agree.
  rng = np.random.default_rng(0)
  x = rng.random((40, 30)).astype(np.float32)
  out_h, out_w = 17, 71  # shrink rows (antialiased), enlarge columns
  ours = (
    saliency.resize_matrix(40, out_h) @ x.astype(np.float64) @ saliency.resize_matrix(30, out_w).T
  )
  pil = np.asarray(Image.fromarray(x).resize((out_w, out_h), Image.Resampling.BICUBIC))
  inner = (slice(3, out_h - 3), slice(6, out_w - 6))
  np.testing.assert_allclose(ours[inner], pil[inner], atol=2e-5)
  assert np.abs(ours - pil).max() > 1e-4  # the edges do differ: mirroring is in effect


def test_resize_keeps_constants_and_linear_ramps():
  for n_in, n_out in [(7, 20), (20, 7), (56, 32), (14, 32), (32, 224)]:
    m = saliency.resize_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
  # Keys' cubic reproduces linear functions: an integer upsampling of a ramp is the ramp
  # sampled at the output pixel centres, away from the mirrored edges.
  factor, n = 4, 12
  out = saliency.resize_matrix(n, n * factor) @ np.arange(n, dtype=np.float64)
  centres = (np.arange(n * factor) + 0.5) / factor - 0.5
  inside = slice(2 * factor, -2 * factor)
  np.testing.assert_allclose(out[inside], centres[inside], atol=1e-12)
  # Same size: the identity.
  np.testing.assert_allclose(saliency.resize_matrix(9, 9), np.eye(9), atol=1e-12)


def test_jax_imresize_applies_the_matrices():
  rng = np.random.default_rng(1)
  x = rng.random((2, 14, 20)).astype(np.float32)
  got = np.asarray(saliency.imresize(jnp.asarray(x), (32, 9)))
  want = np.einsum(
    "oh,bhw,pw->bop", saliency.resize_matrix(14, 32), x, saliency.resize_matrix(20, 9)
  )
  np.testing.assert_allclose(got, want, atol=1e-5)


# --- mySubsample, Gabor filters, borders -----------------------------------------------


def _mex_lowpass6_dec(src):
  """A line-by-line port of the mex's lowPass6xDecX for one row (n >= 4)."""
  n = len(src)
  out = [((src[0] + src[1]) * 10.0 + src[2] * 5.0 + src[3]) / 26.0]
  x = 0
  while x < n - 5:
    s = src[x:]
    out.append(((s[1] + s[4]) * 5.0 + (s[2] + s[3]) * 10.0 + (s[0] + s[5])) / 32.0)
    x += 2
  s = src[x:]
  if x == n - 5:
    out.append(((s[1] + s[4]) * 5.0 + (s[2] + s[3]) * 10.0 + s[0]) / 31.0)
  else:
    out.append((s[0] + s[1] * 5.0 + (s[2] + s[3]) * 10.0) / 26.0)
  return np.array(out)


@pytest.mark.parametrize("n", [11, 12, 13, 14, 28, 57])
def test_decimation_matches_mex_loop(n):
  rng = np.random.default_rng(n)
  row = rng.random(n)
  want = _mex_lowpass6_dec(row)
  assert len(want) == n // 2
  np.testing.assert_allclose(saliency.decimation_matrix(n) @ row, want, atol=1e-12)


def test_subsample_is_separable_and_skips_small_images():
  rng = np.random.default_rng(2)
  x = rng.random((23, 16)).astype(np.float32)
  got = np.asarray(saliency.subsample(jnp.asarray(x)))
  want = np.stack([_mex_lowpass6_dec(c) for c in x.T.astype(np.float64)]).T  # columns
  want = np.stack([_mex_lowpass6_dec(r) for r in want])  # then rows
  np.testing.assert_allclose(got, want, atol=1e-6)
  small = rng.random((10, 40)).astype(np.float32)  # the mex leaves <= 10 unchanged
  np.testing.assert_array_equal(np.asarray(saliency.subsample(jnp.asarray(small))), small)


def test_gabor_kernels():
  g0 = saliency.gabor_kernel(0, 0)
  g90 = saliency.gabor_kernel(0, 90)
  assert g0.shape == (27, 27)  # half-size ceil(4 * sqrt(10)) = 13
  for g in (g0, g90, saliency.gabor_kernel(45, 0)):
    assert abs(g.sum()) < 1e-12
    assert (g**2).sum() == pytest.approx(1.0)
  np.testing.assert_allclose(g0, g0[::-1, ::-1], atol=1e-12)  # even phase
  np.testing.assert_allclose(g90, -g90[::-1, ::-1], atol=1e-12)  # odd phase
  np.testing.assert_allclose(saliency.gabor_kernel(90, 0), g0.T, atol=1e-12)
  # Angle 0 oscillates down the rows (cos(2 i)) and is smooth along them.
  centre = saliency.gabor_kernel(0, 0)[:, 13]
  assert np.argmax(centre) == 13 and centre[13] > 0 > centre[13 + 2 - 1]


def test_border_mask_matches_step_by_step_attenuation():
  rng = np.random.default_rng(3)
  data = rng.random((9, 14))
  b = 4
  want = data.copy()
  coeffs = np.arange(1, b + 1) / (b + 1)
  for i, c in enumerate(coeffs):  # top and bottom, then left and right (corners twice)
    want[i, :] *= c
    want[-1 - i, :] *= c
  for j, c in enumerate(coeffs):
    want[:, j] *= c
    want[:, -1 - j] *= c
  np.testing.assert_allclose(data * saliency.border_mask(9, 14, b), want)
  # A border wider than half the map is cut to floor(side / 2) on both axes.
  mask = saliency.border_mask(6, 40, 13)
  assert mask[3, 20] == pytest.approx(3 / 4) and mask[2, 3] == pytest.approx(3 / 4 * 4 / 4)


def test_working_size_follows_aspect_ratio():
  assert saliency.working_size(224, 224) == (32, 32)
  assert saliency.working_size(480, 640) == (24, 32)
  assert saliency.working_size(600, 512) == (32, 27)  # 27.3
  assert saliency.working_size(100, 64) == (32, 20)  # 20.48
  assert saliency.working_size(64, 200) == (10, 32)  # 10.24


# --- Markov chain and DKL --------------------------------------------------------------


def test_markov_equilibrium_matches_numpy_eigenvector():
  rng = np.random.default_rng(4)
  a = rng.random((30, 30)) ** 3
  a /= a.sum(axis=0, keepdims=True)  # column-stochastic: M[to, from]
  vals, vecs = np.linalg.eig(a)
  want = np.real(vecs[:, np.argmax(np.real(vals))])
  want /= want.sum()
  got, iters = saliency.markov_equilibrium(jnp.asarray(a, jnp.float32), tol=1e-7)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  # The default stopping rule of principalEigenvectorRaw.m: same count as a float64 loop.
  v, df, count = np.full(30, 1 / 30), 1.0, 0
  while df > saliency.TOL:
    new = a @ v
    df, v, count = np.linalg.norm(new - v), new, count + 1
  got, iters = saliency.markov_equilibrium(jnp.asarray(a, jnp.float32))
  assert abs(int(iters) - count) <= 1
  np.testing.assert_allclose(np.asarray(got), v / v.sum(), atol=1e-5)


def test_dkl_matches_numpy_matrix_product():
  rng = np.random.default_rng(5)
  levels = np.array([0, 1, 2, 127, 128, 254, 255]) / 255.0
  rgb = np.concatenate([rng.random((50, 3)), np.stack([levels] * 3, axis=1)])
  rgb = rgb.astype(np.float32)
  got = np.asarray(saliency.rgb_to_dkl(jnp.asarray(rgb)))
  # The lookup (ceil(v * 255), 1-based, clamped) as MATLAB does it in double: exact for
  # float32 values (float32 * 255 fits in a double).
  index = np.clip(np.ceil(rgb.astype(np.float64) * 255), 1, 256).astype(int) - 1
  linear = saliency.GAMMA_TABLE[index, [0, 1, 2]]
  lms0 = np.array([34.918538957799996, 19.314796676499999, 0.585610818500000])
  rgb2lms = np.array(
    [[18.32535, 44.60077, 7.46216], [4.09544, 28.20135, 6.66066], [0.02114, 0.10325, 1.05258]]
  )
  f = 1.0 / (lms0[0] + lms0[1])
  r = math.hypot(lms0[0], lms0[1])
  lms2dkl = np.array(
    [
      [math.sqrt(3) * f, math.sqrt(3) * f, 0.0],
      [r / lms0[0] * f, -r / lms0[1] * f, 0.0],
      [-f, -f, (lms0[0] + lms0[1]) / lms0[2] * f],
    ]
  )
  want = ((linear @ rgb2lms.T - lms0) @ lms2dkl.T) * [0.5774, 2.7525, 0.4526]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The table itself: 256 monotone rows ending at 1.
  assert saliency.GAMMA_TABLE.shape == (256, 3)
  assert (np.diff(saliency.GAMMA_TABLE, axis=0) > 0).all()
  np.testing.assert_array_equal(saliency.GAMMA_TABLE[-1], 1.0)
  # ceil: v = k / 255 exactly would read row k - 1, 0 reads row 0, 1 reads row 254.
  idx = np.asarray(saliency.dkl_lut_index(jnp.asarray([0.0, 0.5, 1.0])))
  np.testing.assert_array_equal(idx, [0, 127, 254])


def test_dkl_lookup_sees_the_exact_side_of_each_level():
  # rgb2dkl.m gets float32 numbers (mySubsample's output) held in doubles, so
  # ceil(v * 255) is exact: fl32(k / 255) reads row k or k + 1 (1-based) depending on
  # how k / 255 rounded. A float32 product would round 255 * v to k and always say k.
  v = (np.arange(256) / 255).astype(np.float32)
  v = np.concatenate([v, np.nextafter(v, np.float32(2)), np.nextafter(v, np.float32(-1))])
  v = np.clip(v, 0, 1)
  want = [min(max(math.ceil(Fraction(float(x)) * 255), 1), 256) - 1 for x in v]
  got = np.asarray(saliency.dkl_lut_index(jnp.asarray(v)))
  np.testing.assert_array_equal(got, want)
  assert len({w - k for k, w in enumerate(want[1:256], start=1)}) == 2  # both sides occur


def test_graph_activation_matches_numpy_chain_and_is_uniform_on_constants():
  rng = np.random.default_rng(8)
  h, w = 8, 11
  fmap = rng.random((h, w))
  # The chain written out in float64 from the MATLAB rules: weight from node c to node r
  # exp(-|p_r - p_c|^2 / (2 (0.15 * mean(h, w))^2)) * |A(r) - A(c)|, columns normalised.
  pos = [(i, j) for i in range(h) for j in range(w)]
  sigma = 0.15 * (h + w) / 2
  markov = np.zeros((h * w, h * w))
  for r, (ri, rj) in enumerate(pos):
    for c, (ci, cj) in enumerate(pos):
      d2 = (ri - ci) ** 2 + (rj - cj) ** 2
      markov[r, c] = math.exp(-d2 / (2 * sigma**2)) * abs(fmap[ri, rj] - fmap[ci, cj])
  markov /= markov.sum(axis=0, keepdims=True)
  vals, vecs = np.linalg.eig(markov)
  want = np.real(vecs[:, np.argmax(np.real(vals))])
  want = (want / want.sum()).reshape(h, w)
  weights = jnp.asarray(saliency.graph_weights(h, w), jnp.float32)
  got = np.asarray(saliency.graph_activation(jnp.asarray(fmap, jnp.float32), weights, tol=1e-7))
  np.testing.assert_allclose(got, want, atol=1e-6)
  # A constant map: MATLAB's NaN guard returns the uniform start vector.
  flat = np.asarray(saliency.graph_activation(jnp.full((h, w), 0.3), weights))
  np.testing.assert_allclose(flat, 1 / (h * w), rtol=1e-6)


# --- whole maps ------------------------------------------------------------------------


def test_gbvs_map_shape_range_and_dtype():
  rng = np.random.default_rng(6)
  img = rng.integers(0, 256, size=(96, 130, 3), dtype=np.uint8)
  m = saliency.gbvs(img)
  assert m.shape == (96, 130) and m.dtype == np.float32
  assert np.isfinite(m).all()
  assert m.min() == pytest.approx(0.0, abs=1e-6) and m.max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("background", ["flat", "texture"])
def test_lone_disc_gets_the_peak(background):
  m = saliency.gbvs(_disc_image((40, 84), background))
  assert np.linalg.norm(_peak(m) - [40, 84]) <= 6


def test_translating_the_disc_moves_the_peak():
  a = saliency.gbvs(_disc_image((36, 40), "texture", seed=7))
  b = saliency.gbvs(_disc_image((86, 90), "texture", seed=7))
  np.testing.assert_allclose(_peak(b) - _peak(a), [50, 50], atol=6)


def test_batch_equals_one_at_a_time():
  # Two images in one vmapped chunk: the shape the command test below compiles too.
  images = np.stack([_disc_image((40, 84)), _disc_image((86, 90), "texture")])
  batch = saliency.gbvs_batch(images, batch_size=2)
  assert batch.shape == (2, SIDE, SIDE) and batch.dtype == np.float32
  for image, m in zip(images, batch, strict=True):
    np.testing.assert_allclose(m, saliency.gbvs(image), atol=1e-5)
  assert not np.allclose(batch[0], batch[1], atol=0.1)


def test_grey_images_skip_the_colour_channel(tmp_path):
  from vmsjax.commands import saliency as command

  grey = np.full((SIDE, SIDE), 90, np.uint8)
  yy, xx = np.mgrid[:SIDE, :SIDE]
  grey[(yy - 70) ** 2 + (xx - 40) ** 2 < 100] = 200
  m = saliency.gbvs(grey)
  assert m.shape == (SIDE, SIDE) and np.linalg.norm(_peak(m) - [70, 40]) <= 6
  # The same pixels as RGB add the DKL maps, so the result differs.
  assert np.abs(m - saliency.gbvs(np.repeat(grey[:, :, None], 3, axis=2))).max() > 1e-3
  # The command reads grey files as grey.
  Image.fromarray(grey).save(tmp_path / "g.png")
  Image.fromarray(_disc_image((40, 84))).save(tmp_path / "c.png")
  assert command.read_image(str(tmp_path / "g.png")).shape == (SIDE, SIDE)
  assert command.read_image(str(tmp_path / "c.png")).shape == (SIDE, SIDE, 3)


def test_bad_inputs_are_refused():
  with pytest.raises(VMSError, match="uint8"):
    saliency.gbvs(np.zeros((64, 64, 3), np.float32))
  with pytest.raises(VMSError, match=r"\(H, W, 3\)"):
    saliency.gbvs(np.zeros((64, 64, 4), np.uint8))
  with pytest.raises(VMSError, match=r"\(N, H, W, 3\)"):
    saliency.gbvs_batch(np.zeros((64, 64, 3), np.uint8)[None, None])
  with pytest.raises(VMSError, match="too small"):
    saliency.gbvs(np.zeros((20, 64, 3), np.uint8))
  with pytest.raises(VMSError, match="elongated"):
    saliency.gbvs(np.zeros((40, 400, 3), np.uint8))


# --- against a literal transliteration of the MATLAB code -----------------------------


def _natural_scene(height, width, seed, noise=2.0, levels=None):
  """A smooth random colour field, a few soft-edged coloured blobs and a striped patch.

  `noise` adds Gaussian sensor-like noise (grey levels); `levels` quantises to multiples
  of that many grey levels first (flat regions, where the DKL table lookup is sensitive).
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height, :width] / max(height, width)
  img = np.zeros((height, width, 3)) + rng.uniform(60, 180, 3)
  for _ in range(4):  # low-frequency colour variation
    f = rng.uniform(0.5, 3.0, 2)
    phase = rng.uniform(0, 2 * np.pi, 3)
    img += rng.uniform(5, 25, 3) * np.cos(2 * np.pi * (f[0] * yy + f[1] * xx)[..., None] + phase)
  for _ in range(rng.integers(3, 6)):  # objects
    cy, cx = rng.uniform(0.1, 0.9, 2) * [height / max(height, width), width / max(height, width)]
    ry, rx = rng.uniform(0.03, 0.15, 2)
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    alpha = np.clip((1.2 - d) * 4, 0, 1)[..., None]
    img = img * (1 - alpha) + rng.uniform(0, 255, 3) * alpha
  y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)  # oriented texture
  patch = img[y0 : y0 + height // 4, x0 : x0 + width // 4]
  angle = rng.uniform(0, np.pi)
  stripes = np.cos(40 * (np.cos(angle) * yy + np.sin(angle) * xx))[
    : patch.shape[0], : patch.shape[1]
  ]
  patch += 30 * stripes[..., None]
  if levels:
    img = np.round(img / levels) * levels
  img += rng.normal(0, noise, img.shape) if noise else 0
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
  "shape, seed, noise, levels",
  [
    ((224, 224), 0, 2.0, None),  # the project's image size
    ((240, 320), 1, 3.0, None),  # landscape, 24 x 32 working maps
    ((224, 224), 2, 0.0, 24),  # flat regions: exercises the exact DKL table lookup
  ],
)
def test_gbvs_matches_literal_matlab_transliteration(shape, seed, noise, levels):
  from tests import gbvs_reference

  img = _natural_scene(*shape, seed, noise, levels)
  want = gbvs_reference.gbvs(img)
  got = saliency.gbvs(img)
  assert got.shape == want.shape == shape
  rho = np.corrcoef(got.ravel(), want.ravel())[0, 1]
  assert rho >= 0.99, rho
  # Measured: rho > 1 - 1e-6 and max |difference| < 1e-3; float32 against float64.
  assert np.abs(got - want).max() < 0.01


def test_feature_maps_match_literal_matlab_transliteration():
  from tests import gbvs_reference as ref

  img = _natural_scene(224, 224, 3, 2.0)
  grframe, param = ref.initGBVS(img.shape)
  raw = ref.getFeatureMaps(img.astype(np.float64) / 255, param)
  want = []  # the port's order: per level D1 D2 D3, I, O1..O4
  for lev in ref.LEVELS:
    want += [raw["dklcolor"]["val"][t][lev] for t in (1, 2, 3)]
    want += [raw["intensity"]["val"][1][lev]]
    want += [raw["orientation"]["val"][t][lev] for t in (1, 2, 3, 4)]
  got = np.asarray(jax.jit(saliency.feature_maps)(jnp.asarray(img, jnp.float32) / 255.0))
  assert got.shape == (24, 32, 32)
  for i, (g, w) in enumerate(zip(got, want, strict=True)):
    # I and O: float32 rounding only. D: also the odd table row where the port's float32
    # pyramid value and the mex's fall on two sides of a level (measured <= 2.1e-4).
    rel = 1e-3 if i % 8 < 3 else 2e-5
    np.testing.assert_allclose(g, w, atol=rel * np.ptp(w), err_msg=f"map {i}")
  # The graph step on one of them, against the reference's principalEigenvectorRaw.
  act_want = ref.graphsalapply_algtype2(want[4], grframe, ref.SIGMA_FRAC_ACT, ref.TOL)
  weights = jnp.asarray(saliency.graph_weights(32, 32), jnp.float32)
  act_got = np.asarray(saliency.graph_activation(jnp.asarray(got[4]), weights))
  np.testing.assert_allclose(act_got, act_want, rtol=1e-3, atol=1e-7)


# --- the command -----------------------------------------------------------------------


def test_cli_writes_maps_and_names_the_corrupt_file(tmp_path, capsys):
  src = tmp_path / "images"
  src.mkdir()
  Image.fromarray(_disc_image((40, 84))).save(src / "flat.png")
  Image.fromarray(_disc_image((86, 90), "texture")).save(src / "texture.png")
  (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  (src / "notes.txt").write_text("not an image, ignored by extension")
  out = tmp_path / "out"

  code = cli.main(["saliency", str(src), "--out", str(out), "--batch_size", "2"])
  captured = capsys.readouterr()
  assert code == 2
  assert "broken.jpg" in captured.err and "flat.png" not in captured.err
  assert sorted(p.name for p in out.iterdir()) == [
    "flat.npy",
    "flat.png",
    "texture.npy",
    "texture.png",
  ]
  for name in ("flat", "texture"):
    m = np.load(out / f"{name}.npy")
    np.testing.assert_allclose(m, saliency.gbvs(read_rgb(src / f"{name}.png")), atol=1e-5)
    with Image.open(out / f"{name}.png") as png:
      assert png.mode == "RGBA" and png.width > 100  # matplotlib figure with a colour bar

  grey_out = tmp_path / "grey"
  code = cli.main(
    [
      "saliency",
      str(src / "flat.png"),
      "--out",
      str(grey_out),
      "--png",
      "grey",
      "--batch_size",
      "2",
    ]
  )
  assert code == 0
  grey = np.asarray(Image.open(grey_out / "flat.png"))
  assert grey.shape == (SIDE, SIDE) and grey.dtype == np.uint8
  np.testing.assert_array_equal(grey, np.round(np.load(grey_out / "flat.npy") * 255))


def test_cli_refuses_missing_inputs_and_clashing_names(tmp_path, capsys):
  assert cli.main(["saliency", str(tmp_path / "nope.png"), "--out", str(tmp_path)]) == 2
  assert "nope.png" in capsys.readouterr().err
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  for d in ("a", "b"):
    Image.fromarray(_disc_image((40, 84))).save(tmp_path / d / "x.png")
  code = cli.main(
    ["saliency", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]
  )
  assert code == 2
  assert "x.npy" in capsys.readouterr().err
