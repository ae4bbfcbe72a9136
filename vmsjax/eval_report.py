"""An evaluation report as Markdown: the paper's tables, and what `vmsjax evaluate` prints.

Every function reads the report `vmsjax.evaluate.evaluate` returns (or its JSON file read
back: the keys are the same, NaN is None) and computes nothing beyond picking and
ordering its numbers, so a report on disk renders exactly as the one just written.

  table1             rho2D and MSE per VMS channel, model then baselines (Table 1)
  saliency_table     CC, SIM and KLD per channel
  table2             best and worst leaf category by rho2D, and overall (Table 2);
                     `table2_cells` gives the same as numbers
  category_table     rho2D per category at the three levels of the tree
  correlation_table  rho2D of the predicted and ground-truth maps with each baseline's
  fit_table          how each fitted baseline (ridge) was fitted: penalty grid, held-out MSE
  markdown_report    all of them: the `<split>-<step>.md` file
  print_report       the heading and Table 1, on stdout
"""

from __future__ import annotations

import math
import sys

from vmsjax import metrics
from vmsjax.data import schema

# Row and bar labels of the model and the baselines (a baseline not here keeps its name).
LABELS = {"model": "model", "centre": "centre bias", "gbvs": "GBVS", "ridge": "ridge"}
# The levels of the category tree, each in the tree's order (what the tables follow).
LEVELS = {"leaf": schema.LEAVES, "middle": schema.MIDDLE, "top": schema.TOP}


def ordered(report: dict, level: str) -> list[str]:
  """A level's categories in the tree's order (a JSON file round trip sorts the keys)."""
  cells = report["categories"][level]
  return [c for c in LEVELS[level] if c in cells] + sorted(set(cells) - set(LEVELS[level]))


def _num(x, digits: int) -> str:
  undefined = x is None or (isinstance(x, float) and not math.isfinite(x))
  return "n/a" if undefined else f"{x:.{digits}f}"


def _who(report: dict) -> list[tuple[str, str, dict]]:
  """(key, row label, overall summary) for the model and each baseline."""
  rows = [("model", f"model ({report['model_label']})", report["model"])]
  rows += [(n, LABELS.get(n, n), s) for n, s in report["baselines"].items()]
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
  for cat in ordered(report, "leaf"):
    v = leaf[cat]["model"] if who == "model" else leaf[cat]["baselines"][who]
    rho = v[channel]["rho2d"]
    cells[cat] = {channel: {"rho2d": float("nan") if rho is None else rho}}
  return metrics.best_and_worst(cells, channel)


def table2_cells(report: dict) -> dict[str, dict[str, dict]]:
  """Table 2 as numbers: {who: {channel: {"best", "worst", "overall"}}}.

  `who` is "model" and each baseline; "best" and "worst" are {"category", "rho2d"}
  (see `best_worst`), or None when no leaf category has a defined rho2D; "overall" is
  the mean rho2D over every image.
  """
  cells: dict[str, dict[str, dict]] = {}
  for who, _, summary in _who(report):
    cells[who] = {}
    for c in metrics.CHANNELS:
      bw = best_worst(report, who, c)
      cells[who][c] = {
        "best": None if bw is None else {"category": bw[0][0], "rho2d": bw[0][1]},
        "worst": None if bw is None else {"category": bw[1][0], "rho2d": bw[1][1]},
        "overall": summary[c]["rho2d"],
      }
  return cells


def table2(report: dict) -> str:
  """The paper's Table 2: best and worst leaf category by rho2D, and the overall rho2D."""
  lines = [
    "| model | VMS | best category | ρ2D | worst category | ρ2D | overall ρ2D |",
    "| --- | --- | --- | ---: | --- | ---: | ---: |",
  ]
  cells = table2_cells(report)
  for who, label, _ in _who(report):
    for i, c in enumerate(metrics.CHANNELS):
      cell = cells[who][c]
      none = {"category": "n/a", "rho2d": None}
      best, worst = cell["best"] or none, cell["worst"] or none
      lines.append(
        f"| {label if i == 0 else ''} | {c} | {best['category']} | {_num(best['rho2d'], 3)} "
        f"| {worst['category']} | {_num(worst['rho2d'], 3)} | {_num(cell['overall'], 3)} |"
      )
  return "\n".join(lines)


def category_table(report: dict) -> str:
  """rho2D per category at the three levels of the tree, model and baselines."""
  who = [("model", "model")] + [(n, LABELS.get(n, n)) for n in report["baselines"]]
  head = " | ".join(f"{label} {c}" for _, label in who for c in metrics.CHANNELS)
  lines = [
    f"| level | category | images | {head} |",
    "| --- | --- | ---: |" + " ---: |" * (len(who) * len(metrics.CHANNELS)),
  ]
  for level in LEVELS:
    for cat in ordered(report, level):
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
        f"| {LABELS.get(name, name) if i == 0 else ''} | {c} | {_num(p['rho2d'], 3)} "
        f"| {_num(g['rho2d'], 3)} | {p['images']} ({p['constant']} / {g['constant']}) |"
      )
  return "\n".join(lines)


def _shape(dims) -> str:
  return "×".join(str(d) for d in dims)


def fit_text(name: str, fit: dict) -> str:
  """One paragraph on how a fitted baseline (ridge) was fitted, from its description."""
  held, rows = fit["held_out"], fit["rows"]
  refit = f"refitted on all {rows} images" if fit["refit_on_all"] else "kept as fitted"
  clip = fit["clip"]
  clipped = f"clipped to [{clip[0]:g}, {clip[1]:g}]" if clip else "not clipped"
  return (
    f"**{LABELS.get(name, name)}**: a ridge regression from the frozen trunk's "
    f"{fit['features']} features ({_shape(fit['feature_shape'])}) of each image to its "
    f"{fit['outputs']} map values ({_shape(fit['map_shape'])}), fitted on "
    f"{fit['dataset']}/{fit['split']} ({rows} images; {fit['form']} form). Its penalty, "
    f"{fit['penalty']:.4g} ({fit['relative_penalty']:g} × {fit['scale']:.4g}, the mean "
    "squared norm of a centred feature vector), has the lowest held-out MSE in the grid "
    f"below: fitted on the first {rows - held} training images in id order, scored on the "
    f"last {held}. With it the regression was {refit}. Predictions are {clipped}."
  )


def fit_table(name: str, fit: dict) -> str:
  """A fitted baseline's penalty grid with the held-out MSE of each, the chosen one marked."""
  lines = [
    "| penalty (relative) | penalty | held-out MSE ([0, 1]) | |",
    "| ---: | ---: | ---: | --- |",
  ]
  for g, p, e in zip(fit["relative_grid"], fit["penalties"], fit["held_out_mse"], strict=True):
    mark = "chosen" if p == fit["penalty"] else ""
    lines.append(f"| {g:g} | {p:.4g} | {_num(e, 5)} | {mark} |")
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
  # Reports written before fitted baselines existed have no `baseline_fits`.
  for name, fit in report.get("baseline_fits", {}).items():
    parts += [
      f"## How the {LABELS.get(name, name)} baseline was fitted",
      fit_text(name, fit),
      fit_table(name, fit),
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
