"""Memorability studies on VMS maps (paper §5.4-5.5) and 2-D embeddings of the latent space.

Definitions (docs/studies.md gives them with the commands):

- **Memorability score** of an image: the mean over pixels of its true VMS map (channel
  0), in [0, 1]; **false-memorability score**: the mean of its false VMS map (channel 1).
  The mean is the share of the image covered by the schema, weighted by intensity, so
  it is comparable between maps of different sizes (a predicted 64x64 map and a stored
  224x224 one) and between images.
- **Per-category score**: the mean of the per-image scores of a category's images.
- **Rank correlation**: Spearman's rho with its two-sided p-value
  (`scipy.stats.spearmanr`), NaN (null in JSON) when fewer than 3 pairs or a constant
  vector make it undefined.
- **Seeded subset**: the split's records sorted by id, then `size` of them drawn
  without replacement by `numpy.random.default_rng(seed)`; a pure function of
  (ids, size, seed).
- **PCA**: the centred latent means projected on their first principal axes (numpy
  SVD); each axis' sign is fixed so that its largest-magnitude loading is positive.

Everything here takes random-access sources (a `pipeline.SplitSource`, or any
sequence of record dicts with an `id`), so tests and notebooks can pass records built
in memory.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmsjax.data import schema
from vmsjax.errors import VMSError

SCORES: tuple[str, ...] = ("memorability", "false_memorability")  # channel 0, channel 1
METHODS: tuple[str, ...] = ("pca", "tsne", "umap")


# ---------------------------------------------------------------------------------------
# Scores and statistics


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


# ---------------------------------------------------------------------------------------
# Sources: ids, seeded subsets, collected values


def source_ids(source: Sequence) -> Sequence[str]:
  """The ids of a source's records, in record order (cheap for a `SplitSource`)."""
  ids = getattr(source, "ids", None)
  if ids is not None:
    return ids()
  return [source[i]["id"] for i in range(len(source))]


class SourceView(Sequence):
  """Records `indices` of a source, as a source of their own (with `ids()`)."""

  def __init__(self, source: Sequence, indices: Sequence[int]):
    self._source = source
    self._indices = [int(i) for i in indices]
    self.name = getattr(source, "name", "records")
    self.split = getattr(source, "split", "")

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    return self._source[self._indices[index]]

  def ids(self) -> tuple[str, ...]:
    all_ids = source_ids(self._source)
    return tuple(all_ids[i] for i in self._indices)


class ConcatSource(Sequence):
  """Several sources read as one (e.g. a dataset's train and test splits)."""

  def __init__(self, sources: Sequence[Sequence]):
    self._sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in self._sources])  # (k + 1,)
    self.name = getattr(self._sources[0], "name", "records")
    self.split = "+".join(getattr(s, "split", "") for s in self._sources)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    if not 0 <= index < len(self):
      raise IndexError(index)
    k = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self._sources[k][index - int(self._starts[k])]

  def ids(self) -> tuple[str, ...]:
    return tuple(i for s in self._sources for i in source_ids(s))


def subset_indices(ids: Sequence[str], size: int | None, seed: int) -> np.ndarray:
  """A seeded subset of record indices (see the module docstring).

  Args:
    ids: the records' ids, in record order.
    size: how many to draw; None, or at least len(ids), keeps every record.
    seed: the numpy seed.

  Returns:
    int64 record indices, sorted by id.
  """
  if size is not None and size < 1:
    raise VMSError(f"--subset must be a positive integer, got {size}")
  order = np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
  if size is None or size >= len(ids):
    return order
  pick = np.random.default_rng(seed).choice(len(ids), size=size, replace=False)
  return order[np.sort(pick)]


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


def source_name(source: Sequence) -> str:
  name, split = getattr(source, "name", "records"), getattr(source, "split", "")
  return f"{name}/{split}" if split else str(name)


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

  if len(source) == 0:
    raise VMSError(f"{source_name(source)} has no records")
  ids: list[str] = []
  cats, gt, pred, mus, score = [], [], [], [], []
  bs = trained.batch_size if trained is not None else batch_size
  for batch in pipeline.eval_batches(source, bs):
    ids.extend(batch["id"])
    if "category" in batch:
      cats.append(np.asarray(batch["category"]))
    if truth and "vms" in batch:
      gt.append(map_scores(batch["vms"]))
    if "score" in batch:
      score.append(np.asarray(batch["score"], np.float64))
    if trained is not None:
      maps, mu = inference.predict(trained, batch["image"])
      pred.append(map_scores(maps))
      mus.append(mu)
    if progress is not None:
      progress(len(ids), len(source))

  def cat(parts):
    return np.concatenate(parts) if parts else None

  return Collected(source_name(source), ids, cat(cats), cat(gt), cat(pred), cat(mus), cat(score))


# ---------------------------------------------------------------------------------------
# External scores


def read_scores_csv(path: str | Path, column: str | None = None) -> dict[str, float]:
  """Reads per-image scores from a CSV: `id,score` rows, an optional header line.

  With a header, the id is the column named `id` (else the first) and the score the
  column `column` (default `score`, else the second of a two-column file). Blank lines
  and lines starting with `#` are skipped.

  Raises:
    VMSError: missing file, malformed line (named by its number), non-finite or
      non-numeric score, duplicate id, unknown column, or no rows.
  """
  path = Path(path)
  if not path.is_file():
    raise VMSError(f"scores file {path} not found; give a CSV of `id,score` lines")
  try:
    text = path.read_text(encoding="utf-8-sig")
  except (OSError, UnicodeDecodeError) as e:
    raise VMSError(f"cannot read scores file {path} ({e}); give a UTF-8 CSV of `id,score`") from e
  id_col, score_col = 0, 1
  header_done = False
  scores: dict[str, float] = {}
  first_line: dict[str, int] = {}
  for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
    if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
      continue
    row = [cell.strip() for cell in row]
    if not header_done:
      header_done = True
      if len(row) < 2 or not _is_number(row[1]) or column is not None:
        id_col, score_col = _header_columns(path, line_no, row, column)
        continue
    if len(row) <= max(id_col, score_col) or not row[id_col]:
      raise VMSError(
        f"{path} line {line_no}: expected {max(id_col, score_col) + 1} comma-separated "
        f"fields with an id in field {id_col + 1}, got {','.join(row)!r}"
      )
    value = row[score_col]
    if not _is_number(value) or not math.isfinite(float(value)):
      raise VMSError(
        f"{path} line {line_no}: score {value!r} of {row[id_col]!r} is not a finite number"
      )
    key = row[id_col]
    if key in scores:
      raise VMSError(
        f"{path} line {line_no}: id {key!r} already given on line {first_line[key]}; "
        "keep one score per image"
      )
    scores[key] = float(value)
    first_line[key] = line_no
  if not scores:
    raise VMSError(f"{path} holds no `id,score` rows")
  return scores


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _header_columns(
  path: Path, line_no: int, header: list[str], column: str | None
) -> tuple[int, int]:
  names = [h.lower() for h in header]
  if len(names) < 2:
    raise VMSError(
      f"{path} line {line_no}: expected `id,score` (or a header naming the columns), "
      f"got {','.join(header)!r}"
    )
  id_col = names.index("id") if "id" in names else 0
  wanted = (column or "score").lower()
  if wanted in names:
    return id_col, names.index(wanted)
  if column is None and len(names) == 2:
    return id_col, 1 - id_col
  raise VMSError(
    f"{path} line {line_no}: no column {wanted!r} in the header {header}; "
    "choose one with --score_column"
  )


# ---------------------------------------------------------------------------------------
# Studies


def category_study(predicted: Collected, truth: Collected) -> dict[str, Any]:
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
    r["category"]: r for r in category_means(predicted.scores("predicted"), predicted.category)
  }
  true_rows = {r["category"]: r for r in category_means(truth.scores("truth"), truth.category)}
  rows = []
  for name in schema.LEAVES:
    p, t = pred_rows.get(name), true_rows.get(name)
    row: dict[str, Any] = {
      "category": name,
      "predict_count": p["count"] if p else 0,
      "truth_count": t["count"] if t else 0,
    }
    for key in SCORES:
      row[f"predict_{key}"] = p[key] if p else math.nan
      row[f"truth_{key}"] = t[key] if t else math.nan
    rows.append(row)
  both = [r for r in rows if r["predict_count"] and r["truth_count"]]
  corr = {
    key: spearman([r[f"predict_{key}"] for r in both], [r[f"truth_{key}"] for r in both])
    for key in SCORES
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
  collected: Collected, maps: str, reference: np.ndarray, reference_name: str
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
    "spearman": {key: spearman(values[:, c], reference) for c, key in enumerate(SCORES)},
    "per_category": [],
  }
  if collected.category is not None:
    for index, name in enumerate(schema.LEAVES):
      sel = collected.category == index
      if not sel.any():
        continue
      row: dict[str, Any] = {"category": name, "count": int(sel.sum())}
      for c, key in enumerate(SCORES):
        row[key] = spearman(values[sel, c], reference[sel])
      report["per_category"].append(row)
  return report


def pca(x: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Principal-component projection with numpy's SVD.

  Args:
    x: (N, m) points.
    dims: output dimensions (<= min(N, m)).

  Returns:
    coords (N, dims) and the explained-variance ratio of each axis (dims,). Each
    axis' sign makes its largest-magnitude loading positive, so the result does not
    depend on the SVD routine's sign choice.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or dims > min(x.shape):
    raise VMSError(f"PCA to {dims} dimensions needs at least {dims} points of {dims}+ values")
  centred = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (k, m)
  axes = vt[:dims]
  signs = np.sign(axes[np.arange(dims), np.argmax(np.abs(axes), axis=1)])
  axes = axes * signs[:, None]
  total = float(np.sum(s**2))
  ratio = (s[:dims] ** 2) / total if total > 0 else np.zeros(dims)
  return centred @ axes.T, ratio  # (N, dims)


def embed(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, dict]:
  """Projects latent means to 2-D.

  Args:
    x: (N, m) latent means.
    method: "pca" (built in), "tsne" (needs scikit-learn) or "umap" (needs umap-learn).
    seed: the random state of t-SNE and UMAP.

  Returns:
    coords (N, 2) and a dict describing the projection.
  """
  x = np.asarray(x, np.float64)
  if method == "pca":
    coords, ratio = pca(x, 2)
    return coords, {"method": "pca", "explained_variance_ratio": ratio.tolist()}
  if method == "tsne":
    try:
      from sklearn.manifold import TSNE
    except ImportError as e:
      raise VMSError(
        "--method tsne needs scikit-learn: `pip install scikit-learn` (or use --method pca)"
      ) from e
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return np.asarray(coords, np.float64), {"method": "tsne", "perplexity": perplexity}
  if method == "umap":
    try:
      import umap
    except ImportError as e:
      raise VMSError(
        "--method umap needs umap-learn: `pip install umap-learn` (or use --method pca)"
      ) from e
    neighbours = int(min(15, max(2, len(x) - 1)))
    coords = umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed).fit_transform(x)
    return np.asarray(coords, np.float64), {"method": "umap", "n_neighbors": neighbours}
  raise VMSError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")


def normalise(values: np.ndarray) -> np.ndarray:
  """Min-max scaling to [0, 1] (all zeros for a constant vector), as in the paper's Fig. 6."""
  values = np.asarray(values, np.float64)
  span = float(np.ptp(values)) if len(values) else 0.0
  return (values - values.min()) / span if span > 0 else np.zeros_like(values)


# ---------------------------------------------------------------------------------------
# Writing


def jsonable(obj: Any) -> Any:
  """NaN and infinities -> None, numpy scalars -> Python, recursively (strict JSON)."""
  if isinstance(obj, dict):
    return {k: jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  """Writes a CSV; floats with full precision (repr), NaN as an empty field."""

  def cell(v):
    if isinstance(v, (float, np.floating)):
      return repr(float(v)) if math.isfinite(v) else ""
    return v

  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for row in rows:
      w.writerow([cell(v) for v in row])


def fmt(value: Any, digits: int = 3) -> str:
  """A number for a Markdown table ('n/a' when undefined)."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def fmt_p(p: Any) -> str:
  if p is None or (isinstance(p, float) and not math.isfinite(p)):
    return "n/a"
  return f"{p:.2g}"


# ---------------------------------------------------------------------------------------
# Running a study end to end: collect, compute, write JSON + Markdown + CSV


def _log_progress(log: Callable[[str], None], what: str) -> Callable[[int, int], None]:
  state = {"last": -1}

  def progress(done: int, total: int) -> None:
    tenth = done * 10 // max(total, 1)
    if tenth != state["last"] or done == total:
      state["last"] = tenth
      log(f"{what}: {done}/{total} images")

  return progress


def _provenance(trained) -> dict[str, Any]:
  if trained is None:
    return {}
  return {"workdir": str(trained.workdir), "checkpoint": int(trained.step)}


def run_categories(
  trained,
  predict_source: Sequence,
  truth_source: Sequence,
  out: str | Path,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Category study: writes categories.{json,md,csv,png} and categories_images.csv.

  Returns:
    The report written to categories.json (see `category_study`).
  """
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  pred = collect(
    predict_source, trained, truth=False, progress=_log_progress(log, source_name(predict_source))
  )
  truth = collect(truth_source, None, progress=_log_progress(log, source_name(truth_source)))
  report = category_study(pred, truth) | _provenance(trained)
  _write_report(out, "categories", report, _categories_markdown(report))
  header = ["category", "predict_count", "truth_count"]
  header += [f"{side}_{key}" for key in SCORES for side in ("predict", "truth")]
  write_csv(out / "categories.csv", header, [[r[k] for k in header] for r in report["categories"]])
  images = [("predict", pred, pred.scores("predicted")), ("truth", truth, truth.scores("truth"))]
  write_csv(
    out / "categories_images.csv",
    ["set", "data", "id", "category", *SCORES],
    [
      [side, c.name, i, schema.LEAVES[int(k)], float(s[0]), float(s[1])]
      for side, c, values in images
      for i, k, s in zip(c.ids, c.category, values, strict=True)
    ],
  )
  from vmsjax import figures

  # Each set relative to its own mean over categories: predicted and ground-truth maps
  # need not share a scale, and the study compares ranks.
  def relative(values: list[float]) -> np.ndarray:
    v = np.asarray(values, np.float64)
    m = np.nanmean(v) if np.isfinite(v).any() else np.nan
    return v / m if m else v

  rows = report["categories"]
  legend = f"predicted {pred.name} vs truth {truth.name}"
  figures.category_bars(
    out / "categories.png",
    [r["category"] for r in rows],
    [
      (
        f"{key.replace('_', ' ')} | {legend}",
        relative([r[f"predict_{key}"] for r in rows]),
        relative([r[f"truth_{key}"] for r in rows]),
      )
      for key in SCORES
    ],
    "category mean / mean over categories",
    title="per-category scores, each set relative to its own mean",
  )
  return report


def _categories_markdown(report: dict[str, Any]) -> str:
  lines = [
    f"Per-category scores: predicted maps of {report['predict']} against ground-truth maps "
    f"of {report['truth']}"
    + (
      f" (`{report['workdir']}`, checkpoint {report['checkpoint']})" if "workdir" in report else ""
    ),
    "",
    "| category | images (pred) | images (truth) | memorability (pred) | memorability (truth) "
    "| false mem. (pred) | false mem. (truth) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in report["categories"]:
    lines.append(
      f"| {r['category']} | {r['predict_count']} | {r['truth_count']} "
      f"| {fmt(r['predict_memorability'], 4)} | {fmt(r['truth_memorability'], 4)} "
      f"| {fmt(r['predict_false_memorability'], 4)} | {fmt(r['truth_false_memorability'], 4)} |"
    )
  lines += ["", "| score | Spearman rho | p | categories |", "| --- | ---: | ---: | ---: |"]
  for key in SCORES:
    s = report["spearman"][key]
    lines.append(f"| {key} | {fmt(s['rho'])} | {fmt_p(s['p'])} | {s['n']} |")
  return "\n".join(lines) + "\n"


def run_scores(
  trained,
  source: Sequence,
  out: str | Path,
  maps: str = "predicted",
  subset: int | None = None,
  seed: int = 0,
  scores_csv: str | Path | None = None,
  score_column: str | None = None,
  log: Callable[[str], None] = print,
  warn: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Score study: map scores against reference scores; writes scores.{json,md,csv}.

  The reference is the records' `score` feature, or the CSV `scores_csv` (an external
  predictor such as AMNet). With a CSV, the split's images without a score in it, and
  the CSV's ids not in the split, are counted and reported (the first 20 named in
  the JSON); the study runs on the images that have one. The seeded subset of `subset`
  images is drawn from those.

  Args:
    trained: from `inference.load`; may be None when `maps` is "truth".
    source: the split's records.
    out: the output folder.
    maps: "predicted" (the model's maps) or "truth" (the records' `vms`).
    subset, seed: see `subset_indices`.
    scores_csv, score_column: see `read_scores_csv`.

  Returns:
    The report written to scores.json (see `score_study`).
  """
  if maps not in ("predicted", "truth"):
    raise VMSError(f"--maps must be 'predicted' or 'truth', got {maps!r}")
  if maps == "predicted" and trained is None:
    raise ValueError("predicted maps need a trained model")
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  ids = source_ids(source)
  candidates = list(range(len(ids)))
  matching: dict[str, Any] = {}
  external: dict[str, float] | None = None
  if scores_csv is not None:
    external = read_scores_csv(scores_csv, score_column)
    in_split = set(ids)
    without = [ids[i] for i in candidates if ids[i] not in external]
    unknown = sorted(k for k in external if k not in in_split)
    candidates = [i for i in candidates if ids[i] in external]
    matching = {
      "images_without_score": len(without),
      "images_without_score_first": sorted(without)[:20],
      "csv_ids_not_in_data": len(unknown),
      "csv_ids_not_in_data_first": unknown[:20],
    }
    if without:
      warn(
        f"{len(without)} of {len(ids)} images of {source_name(source)} have no score in "
        f"{scores_csv} (e.g. {', '.join(sorted(without)[:3])}); they are left out"
      )
    if unknown:
      warn(f"{len(unknown)} ids of {scores_csv} are not in {source_name(source)}")
    if not candidates:
      raise VMSError(
        f"no id of {scores_csv} matches an image of {source_name(source)} (ids look like "
        f"{ids[0]!r} there, {next(iter(external))!r} in the CSV); check the id column"
      )
  elif len(source) and "score" not in source[0]:
    raise VMSError(
      f"{source_name(source)} has no `score` feature; give reference scores as a CSV "
      "with --scores FILE (`id,score` lines)"
    )
  picked = [candidates[k] for k in subset_indices([ids[i] for i in candidates], subset, seed)]
  view = SourceView(source, picked)
  collected = collect(
    view,
    trained if maps == "predicted" else None,
    truth=maps == "truth",
    progress=_log_progress(log, source_name(source)),
  )
  if external is not None:
    reference = np.array([external[i] for i in collected.ids])
    reference_name = f"csv:{scores_csv}" + (f" column {score_column}" if score_column else "")
  else:
    reference = collected.score
    reference_name = "dataset feature `score`"
  report = score_study(collected, maps, reference, reference_name)
  report |= {"subset": subset, "seed": seed, "split_images": len(ids)} | matching
  report |= _provenance(trained if maps == "predicted" else None)
  _write_report(out, "scores", report, _scores_markdown(report))
  values = collected.scores(maps)
  cats = collected.category
  write_csv(
    out / "scores.csv",
    ["id", "category", *SCORES, "reference"],
    [
      [i, schema.LEAVES[int(cats[k])] if cats is not None else "", *values[k], reference[k]]
      for k, i in enumerate(collected.ids)
    ],
  )
  return report


def _scores_markdown(report: dict[str, Any]) -> str:
  lines = [
    f"Spearman rank correlation of {report['maps']}-map scores of {report['data']} "
    f"({report['images']} images) with {report['reference']}",
    "",
    "| score | Spearman rho | p | images |",
    "| --- | ---: | ---: | ---: |",
  ]
  for key in SCORES:
    s = report["spearman"][key]
    lines.append(f"| {key} | {fmt(s['rho'])} | {fmt_p(s['p'])} | {s['n']} |")
  if report["per_category"]:
    lines += [
      "",
      "| category | images | memorability rho | p | false mem. rho | p |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["per_category"]:
      m, f = r["memorability"], r["false_memorability"]
      lines.append(
        f"| {r['category']} | {r['count']} | {fmt(m['rho'])} | {fmt_p(m['p'])} "
        f"| {fmt(f['rho'])} | {fmt_p(f['p'])} |"
      )
  return "\n".join(lines) + "\n"


def run_latent(
  trained,
  source: Sequence,
  out: str | Path,
  method: str = "pca",
  maps: str = "predicted",
  subset: int | None = None,
  seed: int = 0,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Latent study: mu of each image projected to 2-D, coloured by its scores.

  Writes latent.csv (id, category, x, y, memorability, false_memorability), latent.png
  (two panels, the paper's Fig. 6), latent.json and latent.md.

  Returns:
    The report written to latent.json.
  """
  if method not in METHODS:
    raise VMSError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
  if maps not in ("predicted", "truth"):
    raise VMSError(f"--maps must be 'predicted' or 'truth', got {maps!r}")
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  ids = source_ids(source)
  view = SourceView(source, subset_indices(ids, subset, seed))
  collected = collect(view, trained, truth=maps == "truth", progress=_log_progress(log, "encode"))
  coords, info = embed(collected.mu, method, seed)
  values = collected.scores(maps)
  report = {
    "study": "latent",
    "data": collected.name,
    "images": len(collected.ids),
    "latent": int(collected.mu.shape[1]),
    "maps": maps,
    "subset": subset,
    "seed": seed,
    "projection": info,
    # The paper notes memorable images tend to be falsely memorable too (Fig. 6).
    "spearman_memorability_false_memorability": spearman(values[:, 0], values[:, 1]),
  } | _provenance(trained)
  cats = collected.category
  write_csv(
    out / "latent.csv",
    ["id", "category", "x", "y", *SCORES],
    [
      [i, schema.LEAVES[int(cats[k])] if cats is not None else "", *coords[k], *values[k]]
      for k, i in enumerate(collected.ids)
    ],
  )
  from vmsjax import figures

  axis = {"pca": "PC", "tsne": "t-SNE ", "umap": "UMAP "}[method]
  figures.scatter_figure(
    out / "latent.png",
    coords,
    [
      ("memorability", normalise(values[:, 0]), "Greens"),
      ("false memorability", normalise(values[:, 1]), "Reds"),
    ],
    xlabel=f"{axis}1",
    ylabel=f"{axis}2",
    title=f"latent means of {collected.name}, {method}",
  )
  s = report["spearman_memorability_false_memorability"]
  md = [
    f"Latent space of {collected.name} ({report['images']} images, m = {report['latent']}), "
    f"projected with {method}; points coloured by {maps}-map scores",
    "",
    f"- projection: {json.dumps(jsonable(info))}",
    f"- Spearman(memorability, false memorability) over images: rho = {fmt(s['rho'])}, "
    f"p = {fmt_p(s['p'])}",
  ]
  _write_report(out, "latent", report, "\n".join(md) + "\n")
  return report


def _write_report(out: Path, name: str, report: dict[str, Any], markdown: str) -> None:
  from vmsjax import records

  records.write_json(out / f"{name}.json", jsonable(report))
  (out / f"{name}.md").write_text(markdown)
