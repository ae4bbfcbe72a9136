"""A study end to end: collect the images' values, compute, write JSON + Markdown + CSV.

`run_categories`, `run_scores` and `run_latent` are what `vmsjax study` runs; `cached`
reads a study's report back instead of running it again when nothing it depends on
changed (experiments/paper.py reruns that way).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmsjax import figures, records
from vmsjax.data import schema
from vmsjax.errors import VMSError
from vmsjax.studies import collection, embedding, ranks, reference, report, sources, stats

KEY_FILE = "study_key.json"  # beside a cached study's files: what made them


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


def _check_maps(maps: str) -> None:
  if maps not in ("predicted", "truth"):
    raise VMSError(f"--maps must be 'predicted' or 'truth', got {maps!r}")


def run_categories(
  trained,
  predict_source: Sequence,
  truth_source: Sequence,
  out: str | Path,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Category study: writes categories.{json,md,csv,png} and categories_images.csv.

  Returns:
    The report written to categories.json (see `ranks.category_study`).
  """
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  pred = collection.collect(
    predict_source,
    trained,
    truth=False,
    progress=_log_progress(log, sources.source_name(predict_source)),
  )
  truth = collection.collect(
    truth_source, None, progress=_log_progress(log, sources.source_name(truth_source))
  )
  result = ranks.category_study(pred, truth) | _provenance(trained)
  report.write(out, "categories", result, report.categories_markdown(result))
  header = ["category", "predict_count", "truth_count"]
  header += [f"{side}_{key}" for key in stats.SCORES for side in ("predict", "truth")]
  rows = result["categories"]
  report.write_csv(out / "categories.csv", header, [[r[k] for k in header] for r in rows])
  images = [("predict", pred, pred.scores("predicted")), ("truth", truth, truth.scores("truth"))]
  report.write_csv(
    out / "categories_images.csv",
    ["set", "data", "id", "category", *stats.SCORES],
    [
      [side, c.name, i, schema.LEAVES[int(k)], float(s[0]), float(s[1])]
      for side, c, values in images
      for i, k, s in zip(c.ids, c.category, values, strict=True)
    ],
  )

  # Each set relative to its own mean over categories: predicted and ground-truth maps
  # need not share a scale, and the study compares ranks.
  def relative(values: list[float]) -> np.ndarray:
    v = np.asarray(values, np.float64)
    m = np.nanmean(v) if np.isfinite(v).any() else np.nan
    return v / m if m else v

  figures.category_bars(
    out / "categories.png",
    [r["category"] for r in rows],
    [
      (
        key.replace("_", " "),
        [
          (f"predicted {pred.name}", relative([r[f"predict_{key}"] for r in rows])),
          (f"truth {truth.name}", relative([r[f"truth_{key}"] for r in rows])),
        ],
      )
      for key in stats.SCORES
    ],
    "category mean / mean over categories",
    title="per-category scores, each set relative to its own mean",
  )
  return result


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
  predictor such as AMNet). The CSV's ids join the split's through
  `reference.join_scores`: exactly, else by base name, else by stem (so a predictor's
  `sun_1.png` over a `vmsjax data export` folder is the image `sun_1.jpg`); an
  ambiguous id, or none matching, is an error. The split's images without a score,
  and the CSV's ids not in the split, are counted and reported (one line to `warn`,
  the first 20 named in the JSON); the study runs on the images that have one. The
  seeded subset of `subset` images is drawn from those.

  Args:
    trained: from `inference.load`; may be None when `maps` is "truth".
    source: the split's records.
    out: the output folder.
    maps: "predicted" (the model's maps) or "truth" (the records' `vms`).
    subset, seed: see `sources.subset_indices`.
    scores_csv, score_column: see `reference.read_scores_csv`.

  Returns:
    The report written to scores.json (see `ranks.score_study`).
  """
  _check_maps(maps)
  if maps == "predicted" and trained is None:
    raise ValueError("predicted maps need a trained model")
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  name = sources.source_name(source)
  ids = sources.source_ids(source)
  candidates = list(range(len(ids)))
  matching: dict[str, Any] = {}
  external: dict[str, float] | None = None
  if scores_csv is not None:
    external, joined = reference.join_scores(
      ids, reference.read_scores_csv(scores_csv, score_column), name, str(scores_csv), warn
    )
    candidates = [i for i in candidates if ids[i] in external]
    matching = {
      "images_without_score": len(joined.unmatched_data),
      "images_without_score_first": joined.unmatched_data[:20],
      "csv_ids_not_in_data": len(joined.unmatched_external),
      "csv_ids_not_in_data_first": joined.unmatched_external[:20],
      "csv_ids_matched": joined.levels,
    }
  elif len(source) and "score" not in source[0]:
    raise VMSError(
      f"{name} has no `score` feature; give reference scores as a CSV "
      "with --scores FILE (`id,score` lines)"
    )
  picked = [
    candidates[k] for k in sources.subset_indices([ids[i] for i in candidates], subset, seed)
  ]
  collected = collection.collect(
    sources.SourceView(source, picked),
    trained if maps == "predicted" else None,
    truth=maps == "truth",
    progress=_log_progress(log, name),
  )
  if external is not None:
    ref = np.array([external[i] for i in collected.ids])
    ref_name = f"csv:{scores_csv}" + (f" column {score_column}" if score_column else "")
  else:
    ref = collected.score
    ref_name = "dataset feature `score`"
  result = ranks.score_study(collected, maps, ref, ref_name)
  result |= {"subset": subset, "seed": seed, "split_images": len(ids)} | matching
  result |= _provenance(trained if maps == "predicted" else None)
  report.write(out, "scores", result, report.scores_markdown(result))
  values = collected.scores(maps)
  cats = collected.category
  report.write_csv(
    out / "scores.csv",
    ["id", "category", *stats.SCORES, "reference"],
    [
      [i, schema.LEAVES[int(cats[k])] if cats is not None else "", *values[k], ref[k]]
      for k, i in enumerate(collected.ids)
    ],
  )
  return result


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
  embedding.check_method(method)
  _check_maps(maps)
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  ids = sources.source_ids(source)
  view = sources.SourceView(source, sources.subset_indices(ids, subset, seed))
  collected = collection.collect(
    view, trained, truth=maps == "truth", progress=_log_progress(log, "encode")
  )
  coords, info = embedding.embed(collected.mu, method, seed)
  values = collected.scores(maps)
  result = {
    "study": "latent",
    "data": collected.name,
    "images": len(collected.ids),
    "latent": int(collected.mu.shape[1]),
    "maps": maps,
    "subset": subset,
    "seed": seed,
    "projection": info,
    # The paper notes memorable images tend to be falsely memorable too (Fig. 6).
    "spearman_memorability_false_memorability": stats.spearman(values[:, 0], values[:, 1]),
  } | _provenance(trained)
  cats = collected.category
  report.write_csv(
    out / "latent.csv",
    ["id", "category", "x", "y", *stats.SCORES],
    [
      [i, schema.LEAVES[int(cats[k])] if cats is not None else "", *coords[k], *values[k]]
      for k, i in enumerate(collected.ids)
    ],
  )
  axis = {"pca": "PC", "tsne": "t-SNE ", "umap": "UMAP "}[method]
  figures.scatter_figure(
    out / "latent.png",
    coords,
    [
      ("memorability", stats.normalise(values[:, 0]), "Greens"),
      ("false memorability", stats.normalise(values[:, 1]), "Reds"),
    ],
    xlabel=f"{axis}1",
    ylabel=f"{axis}2",
    title=f"latent means of {collected.name}, {method}",
  )
  report.write(out, "latent", result, report.latent_markdown(result))
  return result


def cached(
  study: str,
  out: str | Path,
  key: dict[str, Any],
  run: Callable[[], dict[str, Any]],
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """A study's report: read back from `out` when the same `key` made it, else `run()`.

  `out/study_key.json` records the key of the study written there; it is removed
  before the study runs and written after it has finished, so a study stopped half-way
  is never taken as done. A damaged key file counts as no key.

  Args:
    study: the study's name, e.g. "categories": its report is `out/<study>.json`.
    out: the study's folder (the one `run` writes).
    key: everything the report depends on (model, checkpoint, config, data, options),
      JSON-serialisable.
    run: runs the study into `out` and returns its report.
    log: told when the report is read back.

  Returns:
    The report, as `run` returned it or as stored (NaN as None).
  """
  out = Path(out)
  key = {"study": study, **key}
  key_file, report_file = out / KEY_FILE, out / f"{study}.json"
  if key_file.exists() and report_file.exists():
    try:
      if json.loads(key_file.read_text()) == json.loads(json.dumps(key)):
        log(f"{out}: done already")
        return json.loads(report_file.read_text())
    except json.JSONDecodeError:
      pass  # a damaged key: run again
  key_file.unlink(missing_ok=True)
  result = run()
  records.write_json(key_file, key)
  return result
