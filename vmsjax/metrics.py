"""Map metrics, per image and per channel, and their aggregation over images and categories.

Channels: `true` (VMS channel 0), `false` (channel 1) and `all`, the sum of the two
maps. Every metric takes (B, H, W) predicted and ground-truth maps and returns (B,):

- `mse`: mean squared error over pixels, maps on [0, 1]; `mse_255` is the same on
  the paper's 0-255 scale (x 255^2).
- `rho2d`: 2-D Pearson correlation, MATLAB `corr2` (the paper's rho2D).
- `cc`: MIT saliency benchmark `CC.m`: standardise each map (minus its mean, over its
  standard deviation; no min-max step), then `corr2` -- the same number as rho2D.
- `sim`: benchmark `similarity.m`: min-max each map to [0, 1], divide it by its sum,
  sum the pixelwise minimum; 1 = identical distributions, 0 = disjoint.
- `kld`: benchmark `KLdiv.m`: divide each map by its sum (no min-max), then
  sum(t * log(eps + t / (p + eps))), eps = 2.2204e-16 (MATLAB `eps`); 0 = equal.

Maps without a defined value (policy; NaN per image, left out of every mean and
counted under `excluded` in `summarise`):

- `rho2d`, `cc`: either map constant (`is_constant`: per-pixel std below 1e-9 times the
  map's own peak |value|, all-zero included) -- a correlation with a flat map is 0/0.
  Common for false VMS maps nobody marked. The test is relative, so a map and the same
  map times 1e-10 are both scored (CC 1, SIM 1, KLD 0).
- `sim`: the ground-truth map constant (its min-max step is 0/0; the benchmark gives
  NaN too, or 0 for an all-zero map). A constant prediction is scored, not excluded:
  SIM = 0, as the benchmark scores an all-zero map (it would give NaN for a constant
  non-zero one, which would drop exactly the flat predictions from the mean).
- `kld`: the ground-truth map all-zero (it is no distribution; the benchmark would
  return 0, the best score, whatever was predicted). A constant non-zero ground truth
  is the uniform distribution and is scored. An all-zero prediction is scored as the
  benchmark does (its eps terms give a large divergence, about 36 nats for a
  one-pixel target).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vmsjax.data import schema

CHANNELS: tuple[str, ...] = ("true", "false", "all")
# Per-image metrics, in report order; `mse_255` is derived from `mse` in `summarise`.
METRICS: tuple[str, ...] = ("rho2d", "mse", "cc", "sim", "kld")
# MATLAB's `eps` (2^-52), used by the saliency benchmark inside KLdiv's log and division.
EPS = float(np.finfo(np.float64).eps)
# A map whose per-pixel standard deviation is below this fraction of its own peak
# |value| counts as constant: what variation it has is rounding noise (a float32 map
# differing by one ulp in one of 224^2 pixels is ~3e-10 of its peak), so a correlation
# or a min-max step with it would amplify noise. Relative, not absolute: maps on any
# scale (a prediction times 1e-10, maps on 0-255) get the same verdict.
CONSTANT_RTOL = 1e-9


def split_channels(maps: np.ndarray) -> dict[str, np.ndarray]:
  """(B, H, W, 2) -> {"true": (B, H, W), "false": (B, H, W), "all": (B, H, W)}."""
  maps = np.asarray(maps, np.float64)
  return {"true": maps[..., 0], "false": maps[..., 1], "all": maps[..., 0] + maps[..., 1]}


def _flat(x: np.ndarray) -> np.ndarray:
  """(B, H, W) -> (B, H*W) float64."""
  x = np.asarray(x, np.float64)
  return x.reshape(len(x), -1)


def _constant_rows(x: np.ndarray) -> np.ndarray:
  """(B, P) -> (B,) bool: std <= CONSTANT_RTOL * max |x|; an all-zero row is constant."""
  peak = np.max(np.abs(x), axis=1, keepdims=True)
  # Over the peak first: the squares inside std would underflow for maps near 1e-200.
  unit = np.divide(x, peak, out=np.zeros_like(x), where=peak > 0)
  return np.std(unit, axis=1) <= CONSTANT_RTOL


def is_constant(maps: np.ndarray) -> np.ndarray:
  """(B, H, W) -> (B,) bool: the map has (numerically) no variation.

  Relative to the map's own scale: its per-pixel standard deviation is at most
  `CONSTANT_RTOL` times its peak |value|. All-zero maps are constant. Every metric
  that needs a non-constant map (rho2d, cc, sim) uses this test.
  """
  return _constant_rows(_flat(maps))


def mse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-image mean squared error: (B, H, W) x2 -> (B,)."""
  diff = _flat(pred) - _flat(target)
  return np.mean(np.square(diff), axis=1)


def rho2d(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-image 2-D Pearson correlation (MATLAB `corr2`): (B, H, W) x2 -> (B,).

  NaN where either map is constant.
  """
  a, b = _flat(pred), _flat(target)
  constant = _constant_rows(a) | _constant_rows(b)
  # Centred, then each row over its own peak: the correlation does not change, and
  # the squares below can neither underflow (maps times 1e-200) nor overflow.
  a = _centred_unit(a)
  b = _centred_unit(b)
  den = np.sqrt(np.sum(a * a, axis=1)) * np.sqrt(np.sum(b * b, axis=1))
  out = np.full(len(a), np.nan)
  out[~constant] = np.sum(a * b, axis=1)[~constant] / den[~constant]
  return out


def _centred_unit(x: np.ndarray) -> np.ndarray:
  """(B, P) rows minus their mean, over their peak |deviation| (all-zero rows stay 0)."""
  x = x - x.mean(axis=1, keepdims=True)
  peak = np.max(np.abs(x), axis=1, keepdims=True)
  return np.divide(x, peak, out=np.zeros_like(x), where=peak > 0)


def cc(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Saliency-benchmark CC: Pearson correlation of the standardised maps; (B,).

  The benchmark z-scores both maps (no min-max step) before MATLAB's `corr2`; the
  correlation is invariant to that affine change, so CC equals rho2D up to rounding.
  It is computed the benchmark's way here so that the identity is checked, not
  assumed. NaN where either map is constant.
  """
  a, b = _flat(pred), _flat(target)
  constant = _constant_rows(a) | _constant_rows(b)
  with np.errstate(divide="ignore", invalid="ignore"):
    za, zb = _zscore(a), _zscore(b)
    out = rho2d(za.reshape(np.shape(pred)), zb.reshape(np.shape(target)))
  out[constant] = np.nan
  return out


def _zscore(x: np.ndarray) -> np.ndarray:
  """(B, P) rows standardised as the benchmark does (ddof=1, as MATLAB's std).

  Each row is divided by its peak |value| first, which the z-score undoes exactly,
  so that the std of a map near 1e-200 does not underflow to 0.
  """
  peak = np.max(np.abs(x), axis=1, keepdims=True)
  u = np.divide(x, peak, out=np.zeros_like(x), where=peak > 0)
  return (u - u.mean(axis=1, keepdims=True)) / u.std(axis=1, ddof=1, keepdims=True)


def _minmax_sum(x: np.ndarray) -> np.ndarray:
  """(B, P) -> (B, P): min-max to [0, 1] then divide by the sum; constant rows -> 0."""
  lo = x.min(axis=1, keepdims=True)
  span = x.max(axis=1, keepdims=True) - lo
  constant = _constant_rows(x)
  out = np.zeros_like(x)
  out[~constant] = (x[~constant] - lo[~constant]) / span[~constant]
  total = out.sum(axis=1, keepdims=True)
  np.divide(out, total, out=out, where=total > 0)
  return out


def sim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Saliency-benchmark SIM (histogram intersection): (B, H, W) x2 -> (B,) in [0, 1].

  NaN where the ground truth is constant; 0 where only the prediction is.
  """
  p, t = _minmax_sum(_flat(pred)), _minmax_sum(_flat(target))
  out = np.sum(np.minimum(p, t), axis=1)
  out[is_constant(target)] = np.nan
  return out


def _sum_normalise(x: np.ndarray) -> np.ndarray:
  """(B, P) -> (B, P) divided by the row sum; all-zero rows stay zero (as the benchmark)."""
  total = x.sum(axis=1, keepdims=True)
  return np.divide(x, total, out=np.zeros_like(x), where=total != 0)


def kld(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Saliency-benchmark KL divergence KL(target || pred) in nats: (B, H, W) x2 -> (B,).

  Both maps are divided by their sum; eps (MATLAB's) sits inside the log and the
  division, so an all-zero prediction gives a large finite value. NaN where the
  ground truth is all-zero.
  """
  p, t = _sum_normalise(_flat(pred)), _sum_normalise(_flat(target))
  out = np.sum(t * np.log(EPS + t / (p + EPS)), axis=1)
  out[~np.any(_flat(target) != 0, axis=1)] = np.nan
  return out


_FUNCTIONS = {"rho2d": rho2d, "mse": mse, "cc": cc, "sim": sim, "kld": kld}


def per_image(pred: np.ndarray, target: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
  """Every metric per image and channel; maps are (B, H, W, 2) in [0, 1].

  Returns:
    {channel: {metric: (B,) float64}} for the channels in CHANNELS and the metrics
    in METRICS; NaN where a metric is undefined (see the module docstring).
  """
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape or pred.ndim != 4 or pred.shape[-1] != 2:
    raise ValueError(f"expected two (B, H, W, 2) arrays, got {pred.shape} and {target.shape}")
  p, t = split_channels(pred), split_channels(target)
  return {c: {m: f(p[c], t[c]) for m, f in _FUNCTIONS.items()} for c in CHANNELS}


def _mean(x: np.ndarray) -> float:
  valid = np.isfinite(x)
  return float(np.mean(x[valid])) if valid.any() else float("nan")


def summarise(
  values: dict[str, dict[str, np.ndarray]], mask: np.ndarray | None = None
) -> dict[str, dict]:
  """Means over images, per channel, leaving out each metric's undefined (NaN) images.

  Args:
    values: from `per_image`.
    mask: optional (B,) bool; summarise only these images.

  Returns:
    {channel: {"rho2d", "mse", "mse_255", "cc", "sim", "kld": mean (NaN if no image
    has a value), "images": images summarised, "constant": images without a rho2D
    (a constant map), "excluded": {metric: images left out of its mean}}}.
  """
  out = {}
  for c, m in values.items():
    sel = {k: (v if mask is None else v[mask]) for k, v in m.items()}
    cell: dict = {k: _mean(v) for k, v in sel.items()}
    cell["mse_255"] = cell["mse"] * 255.0**2
    cell["images"] = int(len(sel["mse"]))
    cell["excluded"] = {k: int(np.sum(~np.isfinite(v))) for k, v in sel.items()}
    cell["constant"] = cell["excluded"]["rho2d"]
    out[c] = cell
  return out


def category_levels(categories: np.ndarray) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
  """The three levels of the VISCHEMA tree for leaf indices: (N,) -> names and (N,) ids.

  Returns:
    {"leaf": (LEAVES, (N,)), "middle": (MIDDLE, (N,)), "top": (TOP, (N,))}: each
    level's names and every image's index into them.
  """
  leaf = np.asarray(categories, np.int64).reshape(-1)
  if leaf.size and (leaf.min() < 0 or leaf.max() >= len(schema.LEAVES)):
    raise ValueError(f"category ids must be in [0, {len(schema.LEAVES)}), got {np.unique(leaf)}")
  upper = np.array([schema.upper_levels(int(k)) for k in leaf], np.int64).reshape(-1, 2)
  return {
    "leaf": (schema.LEAVES, leaf),
    "middle": (schema.MIDDLE, upper[:, 0]),
    "top": (schema.TOP, upper[:, 1]),
  }


def by_category(
  values: dict[str, dict[str, np.ndarray]], categories: np.ndarray
) -> dict[str, dict[str, dict]]:
  """`summarise` per category at each level of the VISCHEMA tree.

  Args:
    values: from `per_image`, over N images.
    categories: (N,) leaf indices into `schema.LEAVES`.

  Returns:
    {"leaf" | "middle" | "top": {category name: summarise(...) of its images}}; every
    category of the level is present, with "images": 0 and NaN means if it has none.
  """
  out = {}
  for level, (names, ids) in category_levels(categories).items():
    out[level] = {name: summarise(values, ids == k) for k, name in enumerate(names)}
  return out


def best_and_worst(
  cells: dict[str, dict], channel: str, metric: str = "rho2d"
) -> tuple[tuple[str, float], tuple[str, float]] | None:
  """The categories with the highest and lowest mean `metric` of a channel.

  Args:
    cells: {category: summarise(...)}, e.g. `by_category(...)["leaf"]`.
    channel: one of CHANNELS.
    metric: a key of the summaries.

  Returns:
    ((best name, value), (worst name, value)), or None if no category has a value.
    Ties go to the first category in `cells` order.
  """
  names: Sequence[str] = [k for k, v in cells.items() if np.isfinite(v[channel][metric])]
  if not names:
    return None
  vals = np.array([cells[k][channel][metric] for k in names])
  best, worst = int(np.argmax(vals)), int(np.argmin(vals))
  return (names[best], float(vals[best])), (names[worst], float(vals[worst]))


def centre_bias(height: int, width: int, sigma: float = 0.25) -> np.ndarray:
  """A fixed isotropic Gaussian at the image centre, peak 1; sigma as a fraction of the side."""
  y = (np.arange(height) + 0.5) / height - 0.5
  x = (np.arange(width) + 0.5) / width - 0.5
  d2 = (y[:, None] ** 2 + x[None, :] ** 2) / sigma**2
  return np.exp(-0.5 * d2)


def fit_scale(saliency: np.ndarray, target: np.ndarray) -> np.ndarray:
  """One saliency map per image as a 2-channel prediction, least-squares scaled per channel.

  Channel c is a_c * saliency, with the single a_c >= 0 over the whole set that
  minimises sum((a_c * saliency - target_c)^2) = sum(s t_c) / sum(s^2). The scale
  only moves MSE (correlations ignore it); fitting it on the evaluated maps flatters
  the baseline, so beating it is a conservative result.

  Args:
    saliency: (N, H, W) or (H, W) (one map for every image), non-negative.
    target: (N, H, W, 2) ground-truth maps.

  Returns:
    (N, H, W, 2) float32.
  """
  t = np.asarray(target, np.float64)
  s = np.broadcast_to(np.asarray(saliency, np.float64), t.shape[:-1])  # (N, H, W)
  ss = float(np.sum(s * s))
  out = np.empty(t.shape, np.float32)
  for c in range(t.shape[-1]):
    scale = float(np.sum(s * t[..., c])) / ss if ss > 0 else 0.0
    out[..., c] = max(scale, 0.0) * s
  return out
