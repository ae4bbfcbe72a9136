"""vmsjax.ridge alone: the closed form, its two forms, the penalty choice, the held-out rows."""

import numpy as np
import pytest

from vmsjax import ridge


def _problem(n: int, d: int, k: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) + rng.normal(size=d)  # off-centre: the intercept matters
  y = x @ rng.normal(size=(d, k)) + rng.normal(size=k) + 0.3 * rng.normal(size=(n, k))
  return x, y


def _direct(x: np.ndarray, y: np.ndarray, penalty: float):
  """Ridge with an unpenalised intercept by np.linalg.solve of the primal normal equations."""
  xm, ym = x.mean(0), y.mean(0)
  xc, yc = x - xm, y - ym
  w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ yc)
  return lambda z: (z - xm) @ w + ym, w


@pytest.mark.parametrize(("n", "d", "form"), [(40, 12, "primal"), (15, 60, "dual")])
def test_closed_form_equals_a_direct_solve(n, d, form):
  x, y = _problem(n, d, 7)
  x_new, _ = _problem(9, d, 7, seed=1)
  for penalty in (1e-2, 3.0, 500.0):
    got = ridge.fit(x, y, penalty)
    # The dual (kernel) form is the one used when there are more features than rows.
    assert got.form == form
    # Its factors are r = min(N, D) wide: no D x D system in the dual form.
    assert got.basis.shape == (d, min(n, d)) and got.projected.shape == (min(n, d), 7)
    predict, w = _direct(x, y, penalty)
    np.testing.assert_allclose(got.weights, w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got.predict(x_new), predict(x_new), rtol=1e-8, atol=1e-10)
    # Predicting at another penalty from the same decomposition is that penalty's fit.
    np.testing.assert_allclose(
      got.predict(x_new, penalty=2 * penalty), _direct(x, y, 2 * penalty)[0](x_new), rtol=1e-8
    )
    lo = got.predict(x_new, clip=(0.0, 1.0))
    assert lo.min() >= 0.0 and lo.max() <= 1.0
    np.testing.assert_array_equal(lo, np.clip(got.predict(x_new), 0.0, 1.0))


def test_a_huge_penalty_predicts_the_mean_target():
  x, y = _problem(20, 50, 3)
  np.testing.assert_allclose(ridge.fit(x, y, 1e12).predict(x[:4]), np.tile(y.mean(0), (4, 1)))


def test_penalty_choice_picks_the_grid_value_that_reproduces_the_held_out_targets():
  # Held-out targets made by the fit at one grid value (and clipped as scored): that
  # value has held-out error 0, every other a positive one, wherever it is in the grid.
  x, y = _problem(30, 80, 5)
  x_val, _ = _problem(10, 80, 5, seed=2)
  grid = [1e-1, 1.0, 10.0, 100.0, 1000.0]
  for k, penalty in enumerate(grid):
    y_val = np.clip(_direct(x, y, penalty)[0](x_val), 0.0, 1.0)
    chosen, errors = ridge.select_penalty(x, y, x_val, y_val, grid, clip=(0.0, 1.0))
    assert chosen == penalty
    assert errors[k] == pytest.approx(0.0, abs=1e-20)
    assert all(e > 1e-8 for i, e in enumerate(errors) if i != k)


def test_held_out_rows_are_the_last_128_or_a_fifth():
  assert ridge.held_out_count(640) == 128 and ridge.held_out_count(5000) == 128
  assert ridge.held_out_count(100) == 20 and ridge.held_out_count(3) == 1
  assert ridge.held_out_count(2) == 1
  with pytest.raises(ValueError):
    ridge.held_out_count(1)


def test_fit_with_held_out_chooses_on_the_last_rows_and_refits_on_all():
  x, y = _problem(50, 60, 4)  # more features than rows: the dual form
  y = 1 / (1 + np.exp(-y))  # in [0, 1], like maps
  fitted, info = ridge.fit_with_held_out(x, y)
  held = 10  # a fifth of 50
  assert info["held_out"] == held and info["rows"] == 50 and info["form"] == "dual"
  scale = np.mean(np.sum((x[:40] - x[:40].mean(0)) ** 2, axis=1))
  assert info["scale"] == pytest.approx(scale)
  np.testing.assert_allclose(info["penalties"], np.array(ridge.RELATIVE_GRID) * scale)
  # The held-out errors, recomputed by direct solves on the first 40 rows.
  errors = [
    np.mean((np.clip(_direct(x[:40], y[:40], p)[0](x[40:]), 0, 1) - y[40:]) ** 2)
    for p in info["penalties"]
  ]
  np.testing.assert_allclose(info["held_out_mse"], errors, rtol=1e-8)
  assert info["penalty"] == info["penalties"][int(np.argmin(errors))]
  # The returned fit is on all 50 rows, at the chosen penalty.
  assert fitted.penalty == info["penalty"]
  np.testing.assert_allclose(fitted.predict(x), _direct(x, y, info["penalty"])[0](x), rtol=1e-8)
