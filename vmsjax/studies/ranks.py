"""The studies' numbers, from collected per-image values: rank correlations (paper §5.4-5.5)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vmsjax.data import schema
from vmsjax.errors import VMSError
from vmsjax.studies import collection, stats


def category_study(predicted: collection.Collected, truth: collection.Collected) -> dict[str, Any]:
  """Per-category memorability of predicted maps against ground-truth maps (paper §5.4).

  Args:
    predicted: a source collected with a model (its predicted-map scores are used).
    truth: a source with ground-truth maps (their scores are used).

  Returns:
    {"predict", "truth", "categories": [per-category rows], "spearman": {score:
    {"rho", "p", "n"}}}; Spearman over the categories present in both.
  """
  for c in (predicted, truth):
    if c.category is None:
      raise VMSError(f"{c.name} has no `category` feature; the category study needs one")
  pred_rows = {
    r["category"]: r
    for r in stats.category_means(predicted.scores("predicted"), predicted.category)
  }
  true_rows = {
    r["category"]: r for r in stats.category_means(truth.scores("truth"), truth.category)
  }
  rows = []
  for name in schema.LEAVES:
    p, t = pred_rows.get(name), true_rows.get(name)
    row: dict[str, Any] = {
      "category": name,
      "predict_count": p["count"] if p else 0,
      "truth_count": t["count"] if t else 0,
    }
    for key in stats.SCORES:
      row[f"predict_{key}"] = p[key] if p else math.nan
      row[f"truth_{key}"] = t[key] if t else math.nan
    rows.append(row)
  both = [r for r in rows if r["predict_count"] and r["truth_count"]]
  corr = {
    key: stats.spearman([r[f"predict_{key}"] for r in both], [r[f"truth_{key}"] for r in both])
    for key in stats.SCORES
  }
  return {
    "study": "categories",
    "predict": predicted.name,
    "predict_maps": "predicted",
    "truth": truth.name,
    "truth_maps": "truth",
    "categories": rows,
    "spearman": corr,
  }


def score_study(
  collected: collection.Collected, maps: str, reference: np.ndarray, reference_name: str
) -> dict[str, Any]:
  """Rank correlation of map-derived scores with reference scores (paper §5.5).

  Args:
    collected: the images, in id order.
    maps: "predicted" or "truth": whose map scores to correlate.
    reference: (N,) the reference score of each image (LaMem ground truth, AMNet ...).
    reference_name: where the reference comes from, for the report.

  Returns:
    {"spearman": {score: {...}}, "per_category": [{"category", "count", score:
    {...}}], "images": N, ...}.
  """
  values = collected.scores(maps)
  reference = np.asarray(reference, np.float64)
  report: dict[str, Any] = {
    "study": "scores",
    "data": collected.name,
    "maps": maps,
    "reference": reference_name,
    "images": len(collected.ids),
    "spearman": {
      key: stats.spearman(values[:, c], reference) for c, key in enumerate(stats.SCORES)
    },
    "per_category": [],
  }
  if collected.category is not None:
    for index, name in enumerate(schema.LEAVES):
      sel = collected.category == index
      if not sel.any():
        continue
      row: dict[str, Any] = {"category": name, "count": int(sel.sum())}
      for c, key in enumerate(stats.SCORES):
        row[key] = stats.spearman(values[sel, c], reference[sel])
      report["per_category"].append(row)
  return report
