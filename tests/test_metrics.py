"""Map metrics against numpy references, including constant maps."""

import numpy as np

from vmsjax import metrics


def test_rho2d_matches_corrcoef():
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(5, 8, 9))
  b = 0.3 * a + rng.uniform(size=(5, 8, 9))
  got = metrics.rho2d(a, b)
  want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_constant_maps_are_nan_and_counted():
  rng = np.random.default_rng(1)
  target = rng.uniform(size=(3, 6, 6, 2))
  target[1, ..., 1] = 0.0  # an all-zero false map
  target[2, ..., 1] = 0.4  # a constant false map
  pred = rng.uniform(size=(3, 6, 6, 2))
  per = metrics.per_image(pred, target)
  assert np.isnan(per["false"]["rho2d"][1:]).all()
  assert np.isfinite(per["true"]["rho2d"]).all()
  summary = metrics.summarise(per)
  assert summary["false"]["constant"] == 2 and summary["true"]["constant"] == 0
  assert summary["false"]["rho2d"] == per["false"]["rho2d"][0]
  assert summary["false"]["images"] == 3


def test_mse_and_all_channel():
  rng = np.random.default_rng(2)
  pred = rng.uniform(size=(4, 5, 5, 2))
  target = rng.uniform(size=(4, 5, 5, 2))
  per = metrics.per_image(pred, target)
  want_all = ((pred.sum(-1) - target.sum(-1)) ** 2).reshape(4, -1).mean(1)
  np.testing.assert_allclose(per["all"]["mse"], want_all)
  s = metrics.summarise(per)
  assert s["true"]["mse_255"] == np.float64(s["true"]["mse"] * 255**2)


def test_centre_bias_peaks_at_centre():
  c = metrics.centre_bias(33, 33)
  assert np.unravel_index(np.argmax(c), c.shape) == (16, 16)
  assert c.max() == 1.0
  # Corner pixel centre is (0.5 - 0.5/33) from the centre on both axes; sigma 0.25.
  d = 0.5 - 0.5 / 33
  assert np.isclose(c[0, 0], np.exp(-0.5 * 2 * d * d / 0.25**2))
