"""Map metrics against independent references (numpy, scipy), constant and all-zero maps."""

import numpy as np
import pytest
from scipy import special, stats

from vmsjax import metrics
from vmsjax.data import schema

MATLAB_EPS = 2.220446049250313e-16


def _maps(seed, shape=(5, 8, 9)):
  rng = np.random.default_rng(seed)
  a = rng.uniform(size=shape)
  b = 0.3 * a + rng.uniform(size=shape)
  return a, b


def test_rho2d_matches_corrcoef():
  a, b = _maps(0)
  got = metrics.rho2d(a, b)
  want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_cc_matches_pearsonr_and_rho2d():
  a, b = _maps(3)
  b[2] = b[2] ** 3  # a non-linear relation: CC stays the linear correlation
  got = metrics.cc(a, b)
  want = [stats.pearsonr(a[i].ravel(), b[i].ravel()).statistic for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-10)
  np.testing.assert_allclose(got, metrics.rho2d(a, b), rtol=1e-12)


def _sim_reference(p, t):
  """similarity.m, written out on one pair of maps."""
  p = (p - p.min()) / (p.max() - p.min())
  t = (t - t.min()) / (t.max() - t.min())
  return sum(min(x, y) for x, y in zip(p.ravel() / p.sum(), t.ravel() / t.sum(), strict=True))


def test_sim_matches_reference_and_bounds():
  a, b = _maps(4)
  got = metrics.sim(a, b)
  want = [_sim_reference(a[i], b[i]) for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-10)
  assert np.all((got > 0) & (got < 1))
  np.testing.assert_allclose(metrics.sim(b, b), 1.0, rtol=1e-12)
  # Min-max first: adding a constant to the prediction does not change SIM.
  np.testing.assert_allclose(metrics.sim(a + 5.0, b), got, rtol=1e-10)
  # Disjoint supports (after min-max): 0.
  left, right = np.zeros((1, 4, 4)), np.zeros((1, 4, 4))
  left[0, :, :2], right[0, :, 2:] = 1.0, 1.0
  assert metrics.sim(left, right)[0] == 0.0


def test_kld_matches_scipy_entropy():
  a, b = _maps(5)
  got = metrics.kld(a, b)  # KL(target b || prediction a)
  want = [stats.entropy(b[i].ravel(), a[i].ravel()) for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-9)
  # Also against scipy.special.rel_entr with the maps normalised by hand.
  p, t = a[0].ravel() / a[0].sum(), b[0].ravel() / b[0].sum()
  np.testing.assert_allclose(got[0], special.rel_entr(t, p).sum(), rtol=1e-9)
  np.testing.assert_allclose(metrics.kld(b, b), 0.0, atol=1e-12)
  assert metrics.EPS == MATLAB_EPS


def test_kld_eps_terms_as_the_benchmark():
  # Prediction zero where the target has mass: finite, t * log(eps + t / eps).
  target = np.zeros((1, 3, 3))
  target[0, 1, 1] = 2.0
  pred = np.zeros((1, 3, 3))
  pred[0, 0, 0] = 1.0
  got = metrics.kld(pred, target)[0]
  assert np.isclose(got, np.log(MATLAB_EPS + 1.0 / MATLAB_EPS))
  assert 36.0 < got < 36.1
  # An all-zero prediction is scored the same way (stays zero, no normalisation).
  assert metrics.kld(np.zeros((1, 3, 3)), target)[0] == got


def test_undefined_values_policy():
  rng = np.random.default_rng(1)
  target = rng.uniform(size=(4, 6, 6))
  pred = rng.uniform(size=(4, 6, 6))
  target[1] = 0.0  # an all-zero ground truth (a false VMS nobody marked)
  target[2] = 0.4  # a constant, non-zero ground truth
  pred[3] = 0.7  # a constant prediction
  r, c, s, k = (f(pred, target) for f in (metrics.rho2d, metrics.cc, metrics.sim, metrics.kld))
  # Correlations: undefined with either map constant.
  assert np.isfinite(r[0]) and np.isnan(r[1:]).all()
  assert np.isfinite(c[0]) and np.isnan(c[1:]).all()
  # SIM: undefined for a constant ground truth; a flat prediction scores 0.
  assert np.isfinite(s[0]) and np.isnan(s[1:3]).all() and s[3] == 0.0
  # KLD: undefined only for an all-zero ground truth; a constant one is the uniform
  # distribution, and a constant prediction is the uniform prediction.
  assert np.isnan(k[1]) and np.isfinite(k[[0, 2, 3]]).all()
  uniform = np.full(36, 1 / 36)
  np.testing.assert_allclose(k[2], stats.entropy(uniform, pred[2].ravel()), rtol=1e-9)
  np.testing.assert_allclose(k[3], stats.entropy(target[3].ravel(), uniform), rtol=1e-9)


def test_per_image_and_summary_exclusions():
  rng = np.random.default_rng(1)
  target = rng.uniform(size=(3, 6, 6, 2))
  target[1, ..., 1] = 0.0  # an all-zero false map
  target[2, ..., 1] = 0.4  # a constant false map
  pred = rng.uniform(size=(3, 6, 6, 2))
  per = metrics.per_image(pred, target)
  assert set(per) == set(metrics.CHANNELS)
  assert set(per["true"]) == set(metrics.METRICS)
  assert np.isnan(per["false"]["rho2d"][1:]).all()
  assert np.isfinite(per["true"]["rho2d"]).all()
  summary = metrics.summarise(per)
  assert summary["false"]["constant"] == 2 and summary["true"]["constant"] == 0
  assert summary["false"]["rho2d"] == per["false"]["rho2d"][0]
  assert summary["false"]["cc"] == pytest.approx(per["false"]["cc"][0], rel=1e-12)
  assert summary["false"]["excluded"] == {"rho2d": 2, "cc": 2, "sim": 2, "kld": 1, "mse": 0}
  assert summary["false"]["kld"] == pytest.approx(np.mean(per["false"]["kld"][[0, 2]]))
  assert summary["false"]["images"] == 3
  # The `all` map of image 1 is the true map alone: defined.
  assert summary["all"]["constant"] == 0


def test_mse_and_all_channel():
  rng = np.random.default_rng(2)
  pred = rng.uniform(size=(4, 5, 5, 2))
  target = rng.uniform(size=(4, 5, 5, 2))
  per = metrics.per_image(pred, target)
  want_all = ((pred.sum(-1) - target.sum(-1)) ** 2).reshape(4, -1).mean(1)
  np.testing.assert_allclose(per["all"]["mse"], want_all)
  s = metrics.summarise(per)
  assert s["true"]["mse_255"] == np.float64(s["true"]["mse"] * 255**2)
  want_rho = [
    np.corrcoef(pred[i].sum(-1).ravel(), target[i].sum(-1).ravel())[0, 1] for i in range(4)
  ]
  np.testing.assert_allclose(per["all"]["rho2d"], want_rho, rtol=1e-10)


def test_per_image_rejects_bad_shapes():
  with pytest.raises(ValueError, match="B, H, W, 2"):
    metrics.per_image(np.zeros((2, 4, 4, 2)), np.zeros((2, 4, 4, 3)))


def test_by_category_hand_made():
  # Six 2x2 images; the prediction is the target plus noise on some pixels. Each
  # image's rho2D is known by construction: 1 (exact), or -1 (inverted).
  base = np.array([[0.0, 1.0], [0.5, 0.2]])
  target = np.stack([np.stack([base, base.T], -1)] * 6)  # (6, 2, 2, 2)
  pred = target.copy()
  pred[[1, 4]] = 1.0 - pred[[1, 4]]  # images 1 and 4 inverted: rho2D -1
  cats = np.array([0, 0, 1, 4, 4, 7])  # kitchen x2, living_room, work_home x2, isolated
  per = metrics.per_image(pred, target)
  got = metrics.by_category(per, cats)

  leaf = got["leaf"]
  assert list(leaf) == list(schema.LEAVES)
  assert [leaf[n]["true"]["images"] for n in schema.LEAVES] == [2, 1, 0, 0, 2, 0, 0, 1]
  assert leaf["kitchen"]["true"]["rho2d"] == pytest.approx(0.0)  # mean of 1 and -1
  assert leaf["living_room"]["false"]["rho2d"] == pytest.approx(1.0)
  assert leaf["work_home"]["true"]["rho2d"] == pytest.approx(0.0)
  assert leaf["isolated"]["all"]["rho2d"] == pytest.approx(1.0)
  assert np.isnan(leaf["big_public"]["true"]["rho2d"])

  middle = got["middle"]
  # private = kitchen + living_room: images 0, 1, 2 -> (1 - 1 + 1) / 3.
  assert middle["private"]["true"]["images"] == 3
  assert middle["private"]["true"]["rho2d"] == pytest.approx(1 / 3)
  assert middle["public"]["true"]["images"] == 0
  assert middle["man_made"]["true"]["rho2d"] == pytest.approx(0.0)
  assert middle["natural"]["true"]["rho2d"] == pytest.approx(1.0)
  top = got["top"]
  assert top["indoor"]["true"]["images"] == 3 and top["outdoor"]["true"]["images"] == 3
  assert top["outdoor"]["true"]["rho2d"] == pytest.approx(1 / 3)  # 1, -1, 1
  # MSE of the inverted images: mean((1 - 2x)^2) over pixels.
  inv_mse = np.mean((1 - 2 * base) ** 2)
  assert top["outdoor"]["true"]["mse"] == pytest.approx(inv_mse / 3)
  for level in got.values():
    assert sum(c["true"]["images"] for c in level.values()) == 6

  (best, best_v), (worst, worst_v) = metrics.best_and_worst(leaf, "true")
  assert (best, best_v) == ("living_room", pytest.approx(1.0))
  assert worst in ("kitchen", "work_home") and worst_v == pytest.approx(0.0)
  assert metrics.best_and_worst({}, "true") is None


def test_by_category_rejects_unknown_ids():
  per = metrics.per_image(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2)))
  with pytest.raises(ValueError, match="category ids"):
    metrics.by_category(per, np.array([8]))


def test_fit_scale_is_least_squares():
  rng = np.random.default_rng(6)
  s = rng.uniform(size=(3, 4, 4))
  target = rng.uniform(size=(3, 4, 4, 2))
  got = metrics.fit_scale(s, target)
  for c in range(2):
    a, *_ = np.linalg.lstsq(s.reshape(-1, 1), target[..., c].ravel(), rcond=None)
    np.testing.assert_allclose(got[..., c], a[0] * s, rtol=1e-6)
  # One map for every image broadcasts.
  one = metrics.fit_scale(s[0], target)
  assert one.shape == target.shape and np.allclose(one[0] / one[0, 0, 0], one[1] / one[1, 0, 0])


def test_centre_bias_peaks_at_centre():
  c = metrics.centre_bias(33, 33)
  assert np.unravel_index(np.argmax(c), c.shape) == (16, 16)
  assert c.max() == 1.0
  # Corner pixel centre is (0.5 - 0.5/33) from the centre on both axes; sigma 0.25.
  d = 0.5 - 0.5 / 33
  assert np.isclose(c[0, 0], np.exp(-0.5 * 2 * d * d / 0.25**2))


@pytest.mark.parametrize("scale", [1e-10, 1e-200, 255.0, 1e10])
def test_scaled_maps_agree_across_metrics(scale):
  # Constancy is relative to a map's own scale: a map times 1e-10 is the same map
  # to every metric, not a flat one (an absolute std threshold called it constant).
  m, other = _maps(7)
  assert not metrics.is_constant(scale * m).any()
  np.testing.assert_allclose(metrics.cc(scale * m, m), 1.0, rtol=1e-12)
  np.testing.assert_allclose(metrics.rho2d(scale * m, m), 1.0, rtol=1e-12)
  np.testing.assert_allclose(metrics.sim(scale * m, m), 1.0, rtol=1e-12)
  np.testing.assert_allclose(metrics.kld(scale * m, m), 0.0, atol=1e-12)
  # Against another map, scaling either side changes none of them.
  for f in (metrics.cc, metrics.sim, metrics.kld):
    np.testing.assert_allclose(f(scale * other, m), f(other, m), rtol=1e-9)
    np.testing.assert_allclose(f(other, scale * m), f(other, m), rtol=1e-9)


@pytest.mark.parametrize("value", [0.0, 1e-12, 0.4, 200.0])
def test_constant_maps_agree_across_metrics(value):
  rng = np.random.default_rng(2)
  m = rng.uniform(size=(2, 6, 6))
  flat = np.full((2, 6, 6), value)
  # Rounding noise far below the map's own scale is still constant.
  flat[:, 0, 0] *= 1 + 1e-12
  assert metrics.is_constant(flat).all()
  assert np.isnan(metrics.cc(flat, m)).all() and np.isnan(metrics.cc(m, flat)).all()
  assert np.isnan(metrics.rho2d(flat, m)).all()
  assert (metrics.sim(flat, m) == 0.0).all() and np.isnan(metrics.sim(m, flat)).all()
  k = metrics.kld(m, flat)
  if value == 0.0:
    assert np.isnan(k).all()  # an all-zero ground truth is no distribution
  else:  # a constant one is the uniform distribution, whatever its level
    uniform = np.full(36, 1 / 36)
    want = [stats.entropy(uniform, m[i].ravel()) for i in range(2)]
    np.testing.assert_allclose(k, want, rtol=1e-9)
