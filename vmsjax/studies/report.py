"""Writing a study: its report as JSON and Markdown, its per-image values as CSV.

JSON through `records.json_safe` (NaN and infinities as null); CSV floats with full
precision, NaN as an empty field; Markdown numbers `n/a` when undefined.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmsjax import records
from vmsjax.studies import stats


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
  """A p-value for a Markdown table: two significant digits ('n/a' when undefined)."""
  if p is None or (isinstance(p, float) and not math.isfinite(p)):
    return "n/a"
  return f"{p:.2g}"


def write(out: Path, name: str, report: dict[str, Any], markdown: str) -> None:
  """Writes `out/name.json` (the report, JSON-safe) and `out/name.md`."""
  records.write_json(out / f"{name}.json", records.json_safe(report))
  (out / f"{name}.md").write_text(markdown)


def categories_markdown(report: dict[str, Any]) -> str:
  """The category study's tables: per-category scores of both sets, Spearman per score."""
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
  for key in stats.SCORES:
    s = report["spearman"][key]
    lines.append(f"| {key} | {fmt(s['rho'])} | {fmt_p(s['p'])} | {s['n']} |")
  return "\n".join(lines) + "\n"


def scores_markdown(report: dict[str, Any]) -> str:
  """The score study's tables: Spearman per score, overall and per category."""
  lines = [
    f"Spearman rank correlation of {report['maps']}-map scores of {report['data']} "
    f"({report['images']} images) with {report['reference']}",
    "",
    "| score | Spearman rho | p | images |",
    "| --- | ---: | ---: | ---: |",
  ]
  for key in stats.SCORES:
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


def latent_markdown(report: dict[str, Any]) -> str:
  """The latent study's summary: the projection and Spearman(memorability, false mem.)."""
  s = report["spearman_memorability_false_memorability"]
  method = report["projection"]["method"]
  lines = [
    f"Latent space of {report['data']} ({report['images']} images, m = {report['latent']}), "
    f"projected with {method}; points coloured by {report['maps']}-map scores",
    "",
    f"- projection: {json.dumps(records.json_safe(report['projection']))}",
    f"- Spearman(memorability, false memorability) over images: rho = {fmt(s['rho'])}, "
    f"p = {fmt_p(s['p'])}",
  ]
  return "\n".join(lines) + "\n"
