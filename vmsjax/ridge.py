"""Ridge regression in closed form, with its penalty chosen on held-out rows: a linear probe.

`vmsjax evaluate --baselines ridge` fits one from the frozen trunk's features of the
training images to their flattened maps (docs/evaluation.md, "The ridge baseline"). This
module is the numerical part only (numpy, float64), testable alone:

  fit(x, y, penalty)            minimises |y - (x - x_mean) W - y_mean|^2 + penalty |W|^2
  select_penalty(...)           held-out mean squared error of each penalty of a grid
  held_out_count(n)             how many of n rows are held out (128, or 20% of fewer)
  fit_with_held_out(x, y)       choose the penalty on the last rows, refit on all of them

The intercept is not penalised (rows and targets are centred on the fitted rows' means),
so a very large penalty predicts the mean training map.

Cost. With N rows, D features and K outputs, the solution is written through the
eigendecomposition of the smaller Gram matrix: x^T x (D x D, "primal") when D <= N,
else x x^T (N x N, "dual", the kernel form W = x^T (x x^T + penalty I)^-1 y). Either way
it costs O(N D min(N, D)) plus O(N K min(N, D)) for the targets, never O(D^3) for D > N
(real VGG-16 at 224 px: D = 25088, N = 640), and a whole grid of penalties reuses one
decomposition. W itself (D x K, 25088 x 100352 at 224 px) is never formed: a fit keeps a
D x r projection and an r x K target matrix, r = min(N, D).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Penalties tried, relative to `penalty_scale` (the mean squared norm of a centred row):
# from nearly unpenalised to nearly the mean map, a factor of 10 apart.
RELATIVE_GRID: tuple[float, ...] = tuple(10.0**k for k in range(-3, 4))
# Rows held out to choose the penalty: the last HELD_OUT, or HELD_OUT_FRACTION of the
# rows when that is fewer (fewer than 640 rows).
HELD_OUT = 128
HELD_OUT_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Fit:
  """A fitted ridge regression: `predict(x) = (x - x_mean) @ W + y_mean`.

  W = basis @ diag(1 / (eigenvalues + penalty)) @ projected, kept factored.

  Attributes:
    x_mean: (D,) mean of the fitted rows.
    y_mean: (K,) mean of their targets.
    penalty: the (absolute) penalty.
    form: "primal" (eigendecomposition of x^T x, D <= N) or "dual" (of x x^T, D > N).
    basis: (D, r) float64: the eigenvectors (primal) or x_c^T times them (dual).
    eigenvalues: (r,) of the Gram matrix, clipped at 0.
    projected: (r, K): the eigenvectors' transpose applied to x_c^T y_c (primal) or y_c.
  """

  x_mean: np.ndarray
  y_mean: np.ndarray
  penalty: float
  form: str
  basis: np.ndarray
  eigenvalues: np.ndarray
  projected: np.ndarray

  @property
  def weights(self) -> np.ndarray:
    """W (D, K), formed on request (large for many features and outputs)."""
    return (self.basis / (self.eigenvalues + self.penalty)) @ self.projected

  def predict(
    self, x: np.ndarray, clip: tuple[float, float] | None = None, penalty: float | None = None
  ) -> np.ndarray:
    """Predictions (M, K) float64 for rows x (M, D), optionally clipped to [lo, hi].

    Args:
      x: (M, D) rows.
      clip: (lo, hi) to clip the predictions to, or None.
      penalty: predict as if fitted with this penalty instead (same rows and targets:
        the decomposition does not depend on it).
    """
    lam = self.penalty if penalty is None else float(penalty)
    xc = np.asarray(x, np.float64) - self.x_mean
    out = ((xc @ self.basis) / (self.eigenvalues + lam)) @ self.projected + self.y_mean
    return out if clip is None else np.clip(out, *clip)


def penalty_scale(x: np.ndarray) -> float:
  """The mean squared norm of a centred row of x (N, D): trace(x_c x_c^T) / N.

  The scale of the eigenvalues, so that a relative penalty means the same for any
  feature magnitude; 1.0 when every row is the same (no scale to speak of).
  """
  x = np.asarray(x, np.float64)
  s = float(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1)))
  return s if s > 0 else 1.0


def fit(x: np.ndarray, y: np.ndarray, penalty: float) -> Fit:
  """The ridge regression of y (N, K) on x (N, D) with an unpenalised intercept.

  Args:
    x: (N, D) rows, N >= 1.
    y: (N, K) targets.
    penalty: > 0 (the Gram matrix may be singular).

  Returns:
    The fit, in the primal form when D <= N, else in the dual (kernel) form.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
    raise ValueError(f"expected x (N, D) and y (N, K) with N >= 1, got {x.shape}, {y.shape}")
  if not penalty > 0:
    raise ValueError(f"the penalty must be > 0, got {penalty}")
  x_mean, y_mean = x.mean(0), y.mean(0)
  xc, yc = x - x_mean, y - y_mean
  n, d = xc.shape
  if d <= n:
    # x_c^T x_c = P L P^T; W = P (L + p)^-1 P^T x_c^T y_c.
    eigenvalues, vectors = np.linalg.eigh(xc.T @ xc)
    basis, projected, form = vectors, vectors.T @ (xc.T @ yc), "primal"
  else:
    # x_c x_c^T = Q L Q^T; W = x_c^T (x_c x_c^T + p)^-1 y_c = (x_c^T Q) (L + p)^-1 Q^T y_c.
    eigenvalues, vectors = np.linalg.eigh(xc @ xc.T)
    basis, projected, form = xc.T @ vectors, vectors.T @ yc, "dual"
  # The Gram matrix is positive semi-definite: negative eigenvalues are rounding.
  eigenvalues = np.maximum(eigenvalues, 0.0)
  return Fit(x_mean, y_mean, float(penalty), form, basis, eigenvalues, projected)


def select_penalty(
  x_fit: np.ndarray,
  y_fit: np.ndarray,
  x_val: np.ndarray,
  y_val: np.ndarray,
  penalties: Sequence[float],
  clip: tuple[float, float] | None = None,
) -> tuple[float, list[float]]:
  """The penalty of `penalties` whose fit on (x_fit, y_fit) predicts y_val best.

  Best is the lowest mean squared error over every value of y_val (the objective ridge
  minimises, defined for every row), of the predictions clipped to `clip` if given (what
  is then scored). Ties go to the larger penalty (the simpler model). One decomposition
  serves the whole grid.

  Returns:
    (the chosen penalty, the held-out mean squared error of each penalty, in order).
  """
  if not penalties:
    raise ValueError("no penalty to choose from")
  base = fit(x_fit, y_fit, penalties[0])
  y_val = np.asarray(y_val, np.float64)
  errors = [float(np.mean((base.predict(x_val, clip, penalty=p) - y_val) ** 2)) for p in penalties]
  order = sorted(range(len(penalties)), key=lambda i: (errors[i], -penalties[i]))
  return float(penalties[order[0]]), errors


def held_out_count(n: int) -> int:
  """Rows held out of n to choose the penalty: HELD_OUT, or 20% of n when that is fewer.

  At least one row is held out and one is left to fit (n >= 2).
  """
  if n < 2:
    raise ValueError(f"need at least 2 rows to hold some out, got {n}")
  return int(min(HELD_OUT, max(1, round(HELD_OUT_FRACTION * n)), n - 1))


def fit_with_held_out(
  x: np.ndarray,
  y: np.ndarray,
  relative_grid: Sequence[float] = RELATIVE_GRID,
  clip: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[Fit, dict]:
  """Chooses the penalty on the last rows (`held_out_count`), then refits on every row.

  The grid is `relative_grid` times `penalty_scale` of the rows fitted during the
  choice. The chosen penalty is kept as an absolute number for the refit on all N rows:
  in ridge's Bayesian reading the penalty is noise variance over prior variance, which
  does not grow with N.

  Args:
    x: (N, D) rows, in the order whose last rows are to be held out.
    y: (N, K) targets.
    relative_grid: penalties relative to the feature scale.
    clip: what predictions are clipped to when scored, or None.

  Returns:
    (the fit on all rows, a JSON-ready description: counts, grid, held-out errors, the
    chosen penalty and form).
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  n = len(x)
  held = held_out_count(n)
  scale = penalty_scale(x[: n - held])
  penalties = [g * scale for g in relative_grid]
  fit_rows, val_rows = slice(0, n - held), slice(n - held, n)
  chosen, errors = select_penalty(
    x[fit_rows], y[fit_rows], x[val_rows], y[val_rows], penalties, clip
  )
  final = fit(x, y, chosen)
  info = {
    "rows": n,
    "held_out": held,
    "features": int(x.shape[1]),
    "outputs": int(y.shape[1]),
    "form": final.form,
    "scale": scale,
    "relative_grid": [float(g) for g in relative_grid],
    "penalties": penalties,
    "held_out_mse": errors,
    "penalty": chosen,
    "relative_penalty": float(relative_grid[penalties.index(chosen)]),
    "refit_on_all": True,
    "clip": None if clip is None else [float(clip[0]), float(clip[1])],
  }
  return final, info
