"""One pass over a source, in id order: the per-image values every study needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from vmsjax.errors import VMSError
from vmsjax.studies import sources, stats


@dataclasses.dataclass
class Collected:
  """Per-image values of a source, in id order. Absent values are None."""

  name: str
  ids: list[str]
  category: np.ndarray | None  # (N,) int, indices into schema.LEAVES
  truth: np.ndarray | None  # (N, 2) scores of the ground-truth maps
  predicted: np.ndarray | None  # (N, 2) scores of the predicted maps (z = mu)
  mu: np.ndarray | None  # (N, m) latent means
  score: np.ndarray | None  # (N,) the records' `score` feature (e.g. LaMem)

  def scores(self, which: str) -> np.ndarray:
    """The (N, 2) scores of the `predicted` or the `truth` maps."""
    values = getattr(self, which)
    if values is None:
      raise VMSError(
        f"{self.name} has no {which} maps"
        + (" (the dataset has no `vms` feature; use predicted maps)" if which == "truth" else "")
      )
    return values


def collect(
  source: Sequence,
  trained=None,
  truth: bool = True,
  batch_size: int = 32,
  progress: Callable[[int, int], None] | None = None,
) -> Collected:
  """Reads a source once, in id order, and gathers what the studies need.

  Args:
    source: records with `image`, `id`, and optionally `vms`, `category`, `score`.
    trained: an `inference.Trained`; when given, predicted-map scores and latent
      means are computed (z = mu).
    truth: compute the scores of the ground-truth maps where the records have them.
    batch_size: rows read at a time when no model is given (else the model's batch).
    progress: called with (done, total) after each batch.

  Returns:
    A `Collected`; maps themselves are not kept (only their scores).
  """
  from vmsjax import inference
  from vmsjax.data import pipeline

  name = sources.source_name(source)
  if len(source) == 0:
    raise VMSError(f"{name} has no records")
  ids: list[str] = []
  cats, gt, pred, mus, score = [], [], [], [], []
  bs = trained.batch_size if trained is not None else batch_size
  for batch in pipeline.eval_batches(source, bs):
    ids.extend(batch["id"])
    if "category" in batch:
      cats.append(np.asarray(batch["category"]))
    if truth and "vms" in batch:
      gt.append(stats.map_scores(batch["vms"]))
    if "score" in batch:
      score.append(np.asarray(batch["score"], np.float64))
    if trained is not None:
      maps, mu = inference.predict(trained, batch["image"])
      pred.append(stats.map_scores(maps))
      mus.append(mu)
    if progress is not None:
      progress(len(ids), len(source))

  def cat(parts):
    return np.concatenate(parts) if parts else None

  return Collected(name, ids, cat(cats), cat(gt), cat(pred), cat(mus), cat(score))
