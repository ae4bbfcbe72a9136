"""Evaluation of a trained workdir: the paper's tables and figure, beside baselines.

`evaluate(workdir)` predicts the maps of every image of a split (z = mu, batch-norm
running statistics: a checkpoint gives the same numbers every time), compares them
with the ground truth at the model's resolution (`data.image_size`; the stored maps
are resampled with the training resize) and writes, in `workdir/eval/`:

  <split>-<step>.json             every number below (NaN written as null); with
                                  --dataset other than the training one, the files
                                  start with that dataset's name
  <split>-<step>.md               Table 1, the saliency-benchmark metrics, Table 2,
                                  per-category tables, correlation with baselines
  <split>-<step>-categories.png   rho2D per leaf category, true and false VMS, model
                                  and baselines (the paper's Figure 4)

Metrics, channels and the policy for constant maps are those of `vmsjax.metrics`.

Baselines are functions in `BASELINES`: (images uint8 (N, S, S, 3) at the model's
size, ground-truth maps (N, S, S, 2)) -> predicted maps (N, S, S, 2). A saliency
map used as a baseline is one map for both channels, scaled per channel by the
least-squares factor over the evaluated maps (`metrics.fit_scale`): the scale only
moves MSE and flatters the baseline, so beating it is a conservative result.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from vmsjax import inference, metrics, records
from vmsjax import train as train_lib
from vmsjax.data import augment, schema
from vmsjax.errors import VMSError

Baseline = Callable[[np.ndarray, np.ndarray], np.ndarray]


def centre_baseline(images: np.ndarray, target: np.ndarray) -> np.ndarray:
  """A fixed Gaussian at the image centre (sigma = 1/4 of the side), scaled per channel."""
  del images  # the same map for every image
  return metrics.fit_scale(metrics.centre_bias(*target.shape[1:3]), target)


def gbvs_baseline(images: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Graph-Based Visual Saliency of each image, one map for both channels, scaled per channel."""
  try:
    from vmsjax import saliency
  except ImportError as e:
    raise VMSError(
      f"the gbvs baseline needs vmsjax.saliency, which cannot be imported ({e}); "
      "evaluate with --baselines centre"
    ) from e
  return metrics.fit_scale(saliency.gbvs_batch(images), target)


# Name (as given to --baselines) -> baseline. A new baseline is one line here.
BASELINES: dict[str, Baseline] = {
  "centre": centre_baseline,
  "gbvs": gbvs_baseline,
}
# GBVS is left out by default: it is slow (a graph over every image's feature maps).
DEFAULT_BASELINES: tuple[str, ...] = ("centre",)
_LABELS = {"model": "model", "centre": "centre bias", "gbvs": "GBVS"}


def parse_baselines(text: str | Sequence[str] | None) -> tuple[str, ...]:
  """'centre,gbvs' (or a sequence of names) -> ('centre', 'gbvs'); '' or 'none' -> ().

  Raises:
    VMSError: an unknown name (the message lists the known ones).
  """
  if text is None:
    return DEFAULT_BASELINES
  names = text.split(",") if isinstance(text, str) else list(text)
  names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise VMSError(
      f"unknown baseline(s) {', '.join(unknown)} in --baselines; known: {', '.join(BASELINES)}"
    )
  return tuple(dict.fromkeys(names))  # de-duplicated, in the order given


def evaluate(
  workdir: str | Path,
  split: str | None = None,
  checkpoint: int | None = None,
  data_dir: str | None = None,
  baselines: str | Sequence[str] | None = None,
  dataset: str | None = None,
) -> dict:
  """Evaluates a checkpoint of `workdir` on a split and writes the report files.

  Args:
    workdir: a training workdir.
    split: the split to evaluate (default: the config's `data.eval_split`).
    checkpoint: the step to restore (default: the latest).
    data_dir: where the dataset is built (default: the config's `data.data_dir`).
    baselines: names from `BASELINES`, as a list or 'a,b' (default: centre only).
    dataset: another dataset with maps to evaluate on (default: the training one).

  Returns:
    The report written to `eval/<split>-<step>.json` (NaN as None): "step", "split",
    "dataset", "images", "image_size", "model": {channel: summary}, "baselines":
    {name: {channel: summary}}, "categories": {level: {category: {"images",
    "model", "baselines"}}}, "correlation_with_baselines": {name: {"predicted",
    "ground_truth"}: {channel: ...}}, "files". A summary is `metrics.summarise`'s.

  Raises:
    VMSError: not a workdir, no such checkpoint, dataset not built, unknown split or
      baseline, a dataset without VMS maps, an empty split.
  """
  from vmsjax.data import pipeline

  names = parse_baselines(baselines)
  # The data is checked before the model is restored: a wrong dataset fails fast.
  config = inference.load_config(Path(workdir))
  split = split or config.data.eval_split
  dataset = dataset or config.data.name
  data_dir = data_dir or config.data.data_dir
  source = pipeline.open_split(dataset, split, data_dir)
  _check_has_maps(source, dataset, split)
  # Every dataset with maps has VISCHEMA categories so far; one without gets no
  # per-category tables, Table 2 or figure rather than an error.
  has_categories = "category" in source[0]
  trained = inference.load(workdir, checkpoint)
  workdir, config, step = trained.workdir, trained.config, trained.step

  hw = train_lib.image_hw(config)
  preds, targets, images, cats = [], [], [], []
  for batch in pipeline.eval_batches(source, trained.batch_size):
    p, _ = inference.predict(trained, batch["image"])
    preds.append(p)
    # Ground truth and the baselines' images at the model's resolution, with the
    # resize used for training inputs.
    targets.append(np.asarray(_resize(batch["vms"], hw)))
    small = np.asarray(_resize(batch["image"], hw))
    images.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    if has_categories:
      cats.append(np.asarray(batch["category"]))
  pred = np.concatenate(preds)  # (N, S, S, 2)
  target = np.concatenate(targets)  # (N, S, S, 2)
  image = np.concatenate(images)  # (N, S, S, 3) uint8

  per = {"model": metrics.per_image(pred, target)}
  correlation = {}
  for name in names:
    base = np.asarray(BASELINES[name](image, target), np.float32)
    if base.shape != target.shape:
      raise ValueError(f"baseline {name} returned {base.shape}, expected {target.shape}")
    per[name] = metrics.per_image(base, target)
    # Paper §5.3: how closely the predicted and the human maps follow the baseline's.
    # Correlation ignores the baseline's per-channel scale, so this is the correlation
    # with the raw (e.g. GBVS) map; its ground-truth half is the baseline's rho2D.
    vs_pred = metrics.per_image(base, pred)
    correlation[name] = {
      "predicted": _correlation_cells(vs_pred),
      "ground_truth": _correlation_cells(per[name]),
    }

  categories = {}
  per_cat = {}
  if has_categories:
    category = np.concatenate(cats)  # (N,) leaf ids
    per_cat = {who: metrics.by_category(v, category) for who, v in per.items()}
  for level, cells in per_cat.get("model", {}).items():
    categories[level] = {
      cat: {
        "images": cell["true"]["images"],
        "model": cell,
        "baselines": {n: per_cat[n][level][cat] for n in names},
      }
      for cat, cell in cells.items()
    }

  stem = f"{split}-{step}"
  if dataset != config.data.name:  # keep the training dataset's report apart
    stem = f"{dataset.replace('/', '-')}-{stem}"
  report = {
    "workdir": str(workdir),
    "step": int(step),
    "split": split,
    "dataset": dataset,
    "images": int(len(pred)),
    "image_size": int(pred.shape[1]),
    "model_label": f"m={config.model.latent}, {config.loss.reconstruction}",
    "model": metrics.summarise(per["model"]),
    "baselines": {n: metrics.summarise(per[n]) for n in names},
    "categories": categories,
    "correlation_with_baselines": correlation,
    "files": {"json": f"{stem}.json", "markdown": f"{stem}.md"},
  }
  if categories:
    report["files"]["figure"] = f"{stem}-categories.png"
  report = _json_safe(report)
  out_dir = workdir / "eval"
  out_dir.mkdir(exist_ok=True)
  if categories:
    category_figure(report, out_dir / report["files"]["figure"])
  (out_dir / report["files"]["markdown"]).write_text(markdown_report(report))
  records.write_json(out_dir / report["files"]["json"], report)
  return report


def _check_has_maps(source, dataset: str, split: str) -> None:
  if len(source) == 0:
    raise VMSError(f"{dataset}/{split} has no examples; evaluate another --split")
  if "vms" not in source[0]:
    raise VMSError(
      f"{dataset}/{split} has no VMS maps (an image-only dataset, like VISCHEMA2 or LaMem), "
      "so there is nothing to compare predictions with; evaluate on a dataset with maps "
      "(VISCHEMA, synthetic), or draw maps for these images with `vmsjax predict`"
    )


@functools.partial(jax.jit, static_argnums=1)
def _resize(x, hw):
  """(B, 224, 224, C) -> (B, S, S, C) float32, the training inputs' bilinear resize."""
  return augment.warp(x, augment.identity(x.shape[0]), hw)


def _correlation_cells(values: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
  """Mean rho2D per channel with the counts behind it."""
  out = {}
  for c, cell in metrics.summarise(values).items():
    out[c] = {"rho2d": cell["rho2d"], "images": cell["images"], "constant": cell["constant"]}
  return out


def _json_safe(obj):
  """NaN -> None (JSON has no NaN), numpy scalars -> Python numbers, recursively."""
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return None if math.isnan(obj) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


# ---------------------------------------------------------------------------------
# Markdown.

_LEVELS = {"leaf": schema.LEAVES, "middle": schema.MIDDLE, "top": schema.TOP}


def _ordered(report: dict, level: str) -> list[str]:
  """A level's categories in the tree's order (a JSON file round trip sorts the keys)."""
  cells = report["categories"][level]
  return [c for c in _LEVELS[level] if c in cells] + sorted(set(cells) - set(_LEVELS[level]))


def _num(x, digits: int) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _who(report: dict) -> list[tuple[str, str, dict]]:
  """(key, row label, overall summary) for the model and each baseline."""
  rows = [("model", f"model ({report['model_label']})", report["model"])]
  rows += [(n, _LABELS.get(n, n), s) for n, s in report["baselines"].items()]
  return rows


def table1(report: dict) -> str:
  """The paper's Table 1 layout: rho2D and MSE per VMS channel, model then baselines."""
  lines = [
    "| model | VMS | ρ2D | MSE (0-255) | MSE ([0, 1]) | images in ρ2D |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  ]
  for _, label, summary in _who(report):
    for i, c in enumerate(metrics.CHANNELS):
      s = summary[c]
      lines.append(
        f"| {label if i == 0 else ''} | {c} | {_num(s['rho2d'], 3)} | {_num(s['mse_255'], 1)} "
        f"| {_num(s['mse'], 4)} | {s['images'] - s['constant']} / {s['images']} |"
      )
  return "\n".join(lines)


def saliency_table(report: dict) -> str:
  """CC, SIM and KLD per channel, with the images each mean leaves out."""
  lines = [
    "| model | VMS | CC | SIM | KLD | left out (CC / SIM / KLD) |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  ]
  for _, label, summary in _who(report):
    for i, c in enumerate(metrics.CHANNELS):
      s, x = summary[c], summary[c]["excluded"]
      lines.append(
        f"| {label if i == 0 else ''} | {c} | {_num(s['cc'], 3)} | {_num(s['sim'], 3)} "
        f"| {_num(s['kld'], 3)} | {x['cc']} / {x['sim']} / {x['kld']} |"
      )
  return "\n".join(lines)


def best_worst(report: dict, who: str, channel: str):
  """Table 2's cells for the model or a baseline: ((best, rho2D), (worst, rho2D)) or None.

  Over the leaf categories with a defined mean rho2D; ties go to the first in tree order.
  """
  leaf = report["categories"]["leaf"]
  cells = {}
  for cat in _ordered(report, "leaf"):
    v = leaf[cat]["model"] if who == "model" else leaf[cat]["baselines"][who]
    rho = v[channel]["rho2d"]
    cells[cat] = {channel: {"rho2d": float("nan") if rho is None else rho}}
  return metrics.best_and_worst(cells, channel)


def table2(report: dict) -> str:
  """The paper's Table 2: best and worst leaf category by rho2D, and the overall rho2D."""
  lines = [
    "| model | VMS | best category | ρ2D | worst category | ρ2D | overall ρ2D |",
    "| --- | --- | --- | ---: | --- | ---: | ---: |",
  ]
  for who, label, summary in _who(report):
    for i, c in enumerate(metrics.CHANNELS):
      bw = best_worst(report, who, c)
      (best, bv), (worst, wv) = bw if bw else (("n/a", None), ("n/a", None))
      lines.append(
        f"| {label if i == 0 else ''} | {c} | {best} | {_num(bv, 3)} | {worst} "
        f"| {_num(wv, 3)} | {_num(summary[c]['rho2d'], 3)} |"
      )
  return "\n".join(lines)


def category_table(report: dict) -> str:
  """rho2D per category at the three levels of the tree, model and baselines."""
  who = [("model", "model")] + [(n, _LABELS.get(n, n)) for n in report["baselines"]]
  head = " | ".join(f"{label} {c}" for _, label in who for c in metrics.CHANNELS)
  lines = [
    f"| level | category | images | {head} |",
    "| --- | --- | ---: |" + " ---: |" * (len(who) * len(metrics.CHANNELS)),
  ]
  for level in _LEVELS:
    for cat in _ordered(report, level):
      v = report["categories"][level][cat]
      vals = []
      for key, _ in who:
        s = v["model"] if key == "model" else v["baselines"][key]
        vals += [_num(s[c]["rho2d"], 3) for c in metrics.CHANNELS]
      lines.append(f"| {level} | {cat} | {v['images']} | {' | '.join(vals)} |")
  return "\n".join(lines)


def correlation_table(report: dict) -> str:
  """Paper §5.3: rho2D of the predicted and of the ground-truth maps with each baseline's."""
  lines = [
    "| baseline | VMS | predicted maps ρ2D | ground-truth maps ρ2D | images (constant) |",
    "| --- | --- | ---: | ---: | ---: |",
  ]
  for name, v in report["correlation_with_baselines"].items():
    for i, c in enumerate(metrics.CHANNELS):
      p, g = v["predicted"][c], v["ground_truth"][c]
      lines.append(
        f"| {_LABELS.get(name, name) if i == 0 else ''} | {c} | {_num(p['rho2d'], 3)} "
        f"| {_num(g['rho2d'], 3)} | {p['images']} ({p['constant']} / {g['constant']}) |"
      )
  return "\n".join(lines)


def _heading(report: dict) -> str:
  return (
    f"Evaluation of `{report['workdir']}` at step {report['step']} on "
    f"{report['dataset']}/{report['split']} ({report['images']} images, maps compared at "
    f"{report['image_size']}x{report['image_size']})"
  )


def markdown_report(report: dict) -> str:
  """The whole report as Markdown (tables, and a link to the category figure)."""
  parts = [
    f"# {_heading(report)}",
    "## Table 1: reconstruction accuracy",
    "Mean over images, per VMS channel (`all` = true + false map). ρ2D leaves out images "
    "where a map is constant (its correlation is undefined): `images in ρ2D` counts the "
    "rest. MSE on the paper's 0-255 scale and on [0, 1].",
    table1(report),
    "## Saliency-benchmark metrics",
    "MIT saliency benchmark definitions (CC = ρ2D after standardising; SIM after min-max "
    "and sum normalisation; KLD(ground truth || prediction) after sum normalisation, "
    "eps = 2.2204e-16). Left out: CC with a constant map, SIM with a constant ground "
    "truth, KLD with an all-zero ground truth.",
    saliency_table(report),
  ]
  if report["categories"]:
    parts += [
      "## Table 2: best and worst category",
      "By mean ρ2D over the images of each leaf category.",
      table2(report),
      "## Per category",
      f"![ρ2D per category]({report['files']['figure']})",
      category_table(report),
    ]
  if report["correlation_with_baselines"]:
    parts += [
      "## Correlation with the baselines' maps",
      "Mean ρ2D between each baseline's map and the model's predicted maps, and the "
      "ground-truth maps (the latter is the baseline's own ρ2D). Images: the total, "
      "and in brackets those left out for a constant map (predicted / ground truth).",
      correlation_table(report),
    ]
  return "\n\n".join(parts) + "\n"


def markdown_table(report: dict) -> str:
  """The heading line and Table 1 (what `print_report` prints)."""
  return f"{_heading(report)}\n\n{table1(report)}\n"


def print_report(report: dict, file=None) -> None:
  """Prints the Table-1 style table to stdout (or `file`)."""
  print(markdown_table(report), file=file or sys.stdout)


# ---------------------------------------------------------------------------------
# Figure.

FIGURE_INCHES = (10.0, 7.0)
FIGURE_DPI = 100  # with no tight bounding box the PNG is 1000 x 700 pixels


def category_figure(report: dict, path: Path) -> tuple[int, int]:
  """Bars of rho2D per leaf category, one panel per VMS (true, false), model and baselines.

  Categories with no image, or no defined rho2D, have no bar.

  Returns:
    The PNG's (width, height) in pixels.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  leaf = report["categories"]["leaf"]
  cats = _ordered(report, "leaf")
  who = [("model", "model")] + [(n, _LABELS.get(n, n)) for n in report["baselines"]]
  fig = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 1, sharex=True, sharey=True)  # one scale: true and false compare
  x = np.arange(len(cats))
  width = 0.8 / len(who)
  for ax, channel in zip(axes, ("true", "false"), strict=True):
    for i, (key, label) in enumerate(who):
      vals = [
        (leaf[c]["model"] if key == "model" else leaf[c]["baselines"][key])[channel]["rho2d"]
        for c in cats
      ]
      vals = np.array([np.nan if v is None else v for v in vals], np.float64)
      ax.bar(x + (i - (len(who) - 1) / 2) * width, vals, width, label=label)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("mean ρ2D")
    ax.set_title(f"{channel} VMS", fontsize=10)
  labels = [f"{c.replace('_', ' ')}\n(n={leaf[c]['images']})" for c in cats]
  axes[1].set_xticks(x, labels, fontsize=8)
  axes[1].set_xlabel("VISCHEMA category")
  # One legend for both panels, outside them so it hides no bar.
  handles, names = axes[0].get_legend_handles_labels()
  fig.legend(handles, names, loc="outside lower center", ncols=len(who), fontsize=9)
  fig.suptitle(
    f"ρ2D per category: {report['dataset']}/{report['split']}, step {report['step']}",
    fontsize=11,
  )
  fig.set_layout_engine("constrained")
  fig.savefig(path, dpi=FIGURE_DPI)
  return int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI)
