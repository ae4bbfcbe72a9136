"""Scores of VMS maps and the statistics the studies use (definitions: vmsjax/studies)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from vmsjax.data import schema

SCORES: tuple[str, ...] = ("memorability", "false_memorability")  # channel 0, channel 1


def map_scores(maps: np.ndarray) -> np.ndarray:
  """Memorability and false-memorability scores of VMS maps.

  Args:
    maps: (N, H, W, 2) in [0, 1], channel 0 true VMS, channel 1 false VMS.

  Returns:
    float64 (N, 2): the mean of each channel over the pixels.
  """
  maps = np.asarray(maps)
  if maps.ndim != 4 or maps.shape[-1] != 2:
    raise ValueError(f"expected maps of shape (N, H, W, 2), got {maps.shape}")
  return maps.astype(np.float64).mean(axis=(1, 2))  # (N, 2)


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
  """Spearman's rank correlation of two paired vectors.

  Returns:
    {"rho", "p", "n"}; rho and p are NaN when undefined (n < 3, or a constant vector).
  """
  from scipy import stats

  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"spearman needs two vectors of the same length, got {x.shape}, {y.shape}")
  n = int(len(x))
  if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return {"rho": math.nan, "p": math.nan, "n": n}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = stats.spearmanr(x, y)
  return {"rho": float(result.statistic), "p": float(result.pvalue), "n": n}


def category_means(
  scores: np.ndarray, categories: np.ndarray, names: Sequence[str] = schema.LEAVES
) -> list[dict[str, Any]]:
  """Per-category means of per-image scores.

  Args:
    scores: (N, 2) from `map_scores`.
    categories: (N,) indices into `names`.
    names: the category names.

  Returns:
    One row per category that has images, in `names` order: {"category", "count",
    "memorability", "false_memorability"}.
  """
  scores = np.asarray(scores, np.float64)
  categories = np.asarray(categories)
  rows = []
  for index, name in enumerate(names):
    sel = categories == index
    if not sel.any():
      continue
    row: dict[str, Any] = {"category": name, "count": int(sel.sum())}
    for c, key in enumerate(SCORES):
      row[key] = float(scores[sel, c].mean())
    rows.append(row)
  return rows


def normalise(values: np.ndarray) -> np.ndarray:
  """Min-max scaling to [0, 1] (all zeros for a constant vector), as in the paper's Fig. 6."""
  values = np.asarray(values, np.float64)
  span = float(np.ptp(values)) if len(values) else 0.0
  return (values - values.min()) / span if span > 0 else np.zeros_like(values)
