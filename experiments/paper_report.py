"""The report of experiments/paper.py: its sections, from the results, and paper.{json,md}.

experiments/paper.py decides what to run, on which data, and runs it; what comes back
(each model's evaluation, each study's report) becomes the report here. A section is a
dict: "status" ("done", "skipped" or "failed"), a "reason" unless done, the `vmsjax`
"commands" that reproduce it, "paper" (the paper's own figures, quoted beside ours) and
its numbers. The sections (the paper's section in brackets):

  table1     [§5.3, Table 1] rho2D and MSE per VMS channel (true, false, all), and
             CC / SIM / KLD, of each Table 1 model and of the baselines
  table2     [Table 2, Fig. 4] best and worst category of the best model (highest
             rho2D(all), or --best), and its rho2D per category as a bar chart
  saliency   [§5.3] rho2D of the predicted and of the ground-truth maps with GBVS
             saliency maps, per channel and model
  vischema2  [§5.4, Fig. 5] Spearman over the categories of the predicted VISCHEMA2
             scores against the ground-truth VISCHEMA scores
  lamem      [§5.5] Spearman of the predicted maps' scores against LaMem's memorability
             scores on a seeded subset
  external   [§5.5] the same against an external predictor's scores (e.g. AMNet's)
  latent     [Fig. 6] the latent means in 2-D, coloured by memorability and by false
             memorability

`write` puts the report in WORKDIR/paper.json (NaN and infinities as null) and renders
it, from the JSON alone, in WORKDIR/paper.md.
"""

from __future__ import annotations

import datetime
import math
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmsjax import eval_report, metrics, records
from vmsjax.studies import report as study_report
from vmsjax.sweep import Point

SECTIONS = ("table1", "table2", "saliency", "vischema2", "lamem", "external", "latent")
TITLES = {
  "table1": "1. Table 1: reconstruction accuracy (§5.3)",
  "table2": "2. Table 2 and Figure 4: categories of the best model",
  "saliency": "3. Correlation with GBVS saliency (§5.3)",
  "vischema2": "4. VISCHEMA2: per-category memorability ranks (§5.4, Fig. 5)",
  "lamem": "5. LaMem: map scores against memorability scores (§5.5)",
  "external": "6. External memorability scores, e.g. AMNet (§5.5)",
  "latent": "7. Latent space (Fig. 6)",
}
# The paper's figures, quoted in the report beside ours.
PAPER = {
  "table1": "rho2D true/false/all: m32 0.545/0.369/0.570, m8 0.513/0.333/0.530, m8_l1 "
  "0.543/0.168/0.559; MSE (0-255) all: 85.4, 83.5, 72.1 (VISCHEMA test, 160 images)",
  "table2": "m32: best Public Entertainment 0.766, worst Big (public) 0.449, overall 0.57",
  "saliency": "predicted maps vs GBVS: 0.69 overall; true 0.704, false 0.625",
  "vischema2": "Spearman 0.929 (memorability) and 1.0 (false memorability), p < 0.01",
  "lamem": "Spearman 0.147 (memorability), p < 0.01, on 10,000 LaMem images",
  "external": "AMNet: no significant relation, except VISCHEMA2 'populated' (0.203, p < 0.01)",
  "latent": "memorable images tend to be falsely memorable too (VISCHEMA2, Fig. 6)",
}
CHANNELS = metrics.CHANNELS
fmt = study_report.fmt


# ---------------------------------------------------------------------------------------
# Sections, from the results


def _summary(s: dict) -> dict:
  keys = ("rho2d", "mse", "mse_255", "cc", "sim", "kld", "images", "constant")
  return {k: s.get(k) for k in keys}


def model(point: Point, workdir: Path, overrides: list[str], steps: int) -> dict[str, Any]:
  """A Table 1 model's row before its status: the sweep's `point`, trained in `workdir`."""
  return {
    "name": point.name,
    "label": point.label,
    "workdir": str(workdir),
    "config": str(workdir / "config.json"),
    "overrides": overrides,
    "steps": steps,
  }


def evaluated(ev: dict, eval_json: Path) -> dict:
  """A Table 1 model's fields once evaluated: `ev` is its report, stored at `eval_json`."""
  return {
    "status": "done",
    "step": ev["step"],
    "split": ev["split"],
    "images": ev["images"],
    "image_size": ev["image_size"],
    "eval_json": str(eval_json),
    "model": {ch: _summary(ev["model"][ch]) for ch in CHANNELS},
  }


def rho_all(row: dict) -> float:
  """A Table 1 row's rho2D(all); -inf without one (the best model has the highest)."""
  v = row.get("model", {}).get("all", {}).get("rho2d")
  return -math.inf if v is None else v


def table1(
  rows: list[dict],
  evals: dict[str, dict],
  best: str | None,
  best_rule: str,
  *,
  sweep: str,
  base_config: str,
  runs: Path,
  extra: Sequence[str],
  baselines: Sequence[str],
  train_commands: list[str],
) -> dict:
  """Table 1: a row per model (`evaluated`, or a status and a reason), and the baselines.

  Args:
    rows: the models, in the sweep's order.
    evals: the evaluation report of each done model, by name.
    best: the model the other sections use; None when no model is done.
    best_rule: how `best` was chosen.
    sweep: the sweep file and its args; `base_config` its config.
    runs: the sweep's folder.
    extra: the overrides given to every model.
    baselines: the baselines asked for.
    train_commands: a `vmsjax train` line per model.
  """
  sweep_argv = ["vmsjax", "sweep", sweep, "--workdir", str(runs)]
  sweep_argv += [a for o in extra for a in ("--set", o)]
  evaluate_argv = ["--baselines", ",".join(baselines)]
  section: dict[str, Any] = {
    "status": "failed" if best is None else "done",
    "sweep": sweep,
    "base_config": base_config,
    "baselines_requested": list(baselines),
    "models": rows,
    "commands": [shlex.join(sweep_argv)]
    + [shlex.join(["vmsjax", "evaluate", "--workdir", r["workdir"], *evaluate_argv]) for r in rows],
    "train_commands": train_commands,
  }
  if best is None:
    reasons: dict[str, list[str]] = {}  # reason -> models: a cause shared by all, said once
    for r in rows:
      reasons.setdefault(r["reason"], []).append(r["name"])
    section["reason"] = "no model finished training: " + "; ".join(
      f"{', '.join(names)}: {why}" for why, names in reasons.items()
    )
    return section
  # The baselines depend on the images only, not on the model: one copy.
  baseline_cells = {
    n: {ch: _summary(s[ch]) for ch in CHANNELS} for n, s in evals[best]["baselines"].items()
  }
  return section | {"best": best, "best_rule": best_rule, "baselines": baseline_cells}


def table2(ev: dict, row: dict, baselines: Sequence[str], workdir: Path) -> dict:
  """Table 2 and Figure 4 of the best model: `ev` is its evaluation, `row` its Table 1 row.

  Its category figure is copied into WORKDIR/figures (`workdir` is the report's).
  """
  section: dict[str, Any] = {
    "model": row["name"],
    "commands": [
      f"vmsjax evaluate --workdir {shlex.quote(row['workdir'])} --baselines {','.join(baselines)}"
    ],
    "eval_json": row["eval_json"],
  }
  if not ev["categories"]:
    return section | {"status": "skipped", "reason": f"{ev['dataset']} has no categories"}
  per_category = {
    cat: {"images": v["images"], **{ch: v["model"][ch]["rho2d"] for ch in CHANNELS}}
    for cat, v in ev["categories"]["leaf"].items()
  }
  src = Path(row["workdir"]) / "eval" / ev["files"]["figure"]
  figure = copy_figure(src, workdir, "figure4_categories.png")
  return section | {
    "status": "done",
    "table2": eval_report.table2_cells(ev),
    "per_category": per_category,
    "figure": figure,
    "markdown": eval_report.table2(ev) + "\n\n" + eval_report.category_table(ev),
  }


def saliency(evals: dict[str, dict], rows: list[dict], baselines: Sequence[str]) -> dict:
  """Each model's correlation with GBVS, from its evaluation (`evals`, by name)."""
  if "gbvs" not in baselines:
    return {
      "status": "skipped",
      "reason": "gbvs is not among --baselines; add it (--baselines centre,gbvs)",
    }
  per_model = {}
  for name, ev in evals.items():
    corr = ev["correlation_with_baselines"]["gbvs"]
    per_model[name] = {
      side: {ch: corr[side][ch] for ch in CHANNELS} for side in ("predicted", "ground_truth")
    }
  return {
    "status": "done",
    "what": "mean rho2D between each image's GBVS map and its predicted / ground-truth maps",
    "models": per_model,
    "commands": [
      f"vmsjax evaluate --workdir {shlex.quote(r['workdir'])} --baselines gbvs"
      for r in rows
      if r["name"] in per_model
    ],
  }


def study(
  name: str, report: dict, out: Path, argv: Sequence[str], keys: Sequence[str], **fields: Any
) -> dict:
  """A done study's section: `fields`, the `keys` of its report, its files and Markdown.

  Args:
    name: the study, which wrote `out/NAME.md`.
    report: what it returned.
    out: its folder.
    argv: its options: `vmsjax study NAME ARGV` reproduces it.
    keys: the report's numbers the section keeps.
    **fields: what the section says first (its data and options, its figure).
  """
  return {
    "status": "done",
    **fields,
    **{k: report[k] for k in keys},
    "files": str(out),
    "commands": [shlex.join(["vmsjax", "study", name, *argv])],
    "markdown": (out / f"{name}.md").read_text(),
  }


def external(csv_path: str | Path, studies: list[dict]) -> dict:
  """The external scores' section: done when the study of one dataset at least is."""
  done = [s for s in studies if s["status"] == "done"]
  section: dict[str, Any] = {"scores": str(csv_path), "studies": studies}
  if not done:
    return section | {
      "status": "skipped",
      "reason": "; ".join(f"{s['data']}: {s['reason']}" for s in studies),
    }
  return section | {"status": "done", "commands": [c for s in done for c in s["commands"]]}


# ---------------------------------------------------------------------------------------
# The report and its files


def new(
  argv: Sequence[str], dataset: str, data_dir: str | Path, workdir: Path, sections: dict
) -> dict:
  """The report of `python experiments/paper.py ARGV`: what ran, where, when, with what.

  `sections` is the dict the sections are put in, as they run (in `SECTIONS` order).
  """
  return {
    "command": shlex.join(["python", "experiments/paper.py", *argv]),
    "argv": list(argv),
    "dataset": dataset,
    "data_dir": str(data_dir),
    "workdir": str(workdir),
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "versions": records.package_versions(),
    "sections": sections,
  }


def copy_figure(src: Path, workdir: Path, name: str) -> str:
  """Copies a figure into WORKDIR/figures as `name`; returns its path in the report."""
  (workdir / "figures").mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src, workdir / "figures" / name)
  return f"figures/{name}"


def failed(report: dict) -> list[str]:
  """What failed: the sections, then the Table 1 models (`table1 model NAME`)."""
  out = [n for n, s in report["sections"].items() if s["status"] == "failed"]
  return out + [
    f"table1 model {m['name']}"
    for m in report["sections"]["table1"].get("models", [])
    if m["status"] == "failed"
  ]


def written(workdir: Path) -> str:
  """What `write` wrote in `workdir`, and the figures folder if there is one."""
  figures = f" and {workdir / 'figures'}/" if (workdir / "figures").is_dir() else ""
  return f"{workdir / 'paper.md'}, {workdir / 'paper.json'}{figures}"


def write(report: dict, workdir: Path) -> dict:
  """Writes WORKDIR/paper.json and paper.md; returns the report as written (`json_safe`)."""
  report = records.json_safe(report)
  records.write_json(workdir / "paper.json", report)
  (workdir / "paper.md").write_text(markdown(report))
  return report


# ---------------------------------------------------------------------------------------
# Markdown


def _commands(section: dict) -> list[str]:
  if not section.get("commands"):
    return []
  return ["Commands:", "", "```bash", *section["commands"], "```"]


def _table1_md(s: dict) -> list[str]:
  lines = [
    f"Models of `{s['sweep']}` (base config `{s['base_config']}`); best by "
    f"{s.get('best_rule', '')}: **{s.get('best', 'none')}**. Mean over the evaluated "
    "images, per VMS channel (`all` = true + false map).",
    "",
    "| model | VMS | ρ2D | MSE (0-255) | MSE ([0, 1]) | CC | SIM | KLD | images in ρ2D |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  who = [(r["name"], r) for r in s["models"]]
  who += [
    (f"baseline: {n}", {"status": "done", "model": v}) for n, v in s.get("baselines", {}).items()
  ]
  for label, r in who:
    if r["status"] != "done":
      lines.append(f"| {label} | {r['status']}: {r['reason']} | | | | | | | |")
      continue
    for i, ch in enumerate(CHANNELS):
      m = r["model"][ch]
      used = None if m["images"] is None else m["images"] - (m["constant"] or 0)
      lines.append(
        f"| {label if i == 0 else ''} | {ch} | {fmt(m['rho2d'])} | {fmt(m['mse_255'], 1)} "
        f"| {fmt(m['mse'], 4)} | {fmt(m['cc'])} | {fmt(m['sim'])} | {fmt(m['kld'])} "
        f"| {used} / {m['images']} |"
      )
  done = [r for r in s["models"] if r["status"] == "done"]
  if done:
    r = done[0]
    lines += [
      "",
      f"Split {r['split']} ({r['images']} images), maps compared at {r['image_size']}x"
      f"{r['image_size']}, step {r['step']}. Each model's full evaluation: `eval_json` in "
      "paper.json. Configs: each run's `config.json`; the per-model training commands:",
      "",
      "```bash",
      *s["train_commands"],
      "```",
    ]
  return lines


def _saliency_md(s: dict) -> list[str]:
  lines = [
    s["what"] + ".",
    "",
    "| model | VMS | predicted vs GBVS ρ2D | ground truth vs GBVS ρ2D | images |",
    "| --- | --- | ---: | ---: | ---: |",
  ]
  for name, v in s["models"].items():
    for i, ch in enumerate(CHANNELS):
      p, g = v["predicted"][ch], v["ground_truth"][ch]
      lines.append(
        f"| {name if i == 0 else ''} | {ch} | {fmt(p['rho2d'])} | {fmt(g['rho2d'])} "
        f"| {p['images']} |"
      )
  return lines


def _section_md(name: str, s: dict) -> list[str]:
  lines = [f"## {TITLES[name]}", ""]
  status = s["status"]
  if status != "done":
    lines += [f"**{status}**: {s.get('reason', '')}", ""]
  if s.get("note"):
    lines += [f"Note: {s['note']}.", ""]
  if status == "done" or name == "table1":
    if name == "table1":
      lines += _table1_md(s)
    elif name == "table2":
      lines += [
        f"Model **{s['model']}**. ρ2D per leaf category: ![ρ2D per category]({s['figure']})",
        "",
        s["markdown"],
      ]
    elif name == "saliency":
      lines += _saliency_md(s)
    elif name == "external":
      for st in s["studies"]:
        lines += [f"### {st['data']}", ""]
        lines += [st["markdown"]] if st["status"] == "done" else [f"**skipped**: {st['reason']}"]
        lines.append("")
    else:
      if s.get("figure"):
        lines += [f"![{name}]({s['figure']})", ""]
      lines += [s["markdown"]]
    lines.append("")
  lines += [f"Paper: {s['paper']}.", ""] if s.get("paper") else []
  return lines + _commands(s) + [""]


def markdown(report: dict) -> str:
  lines = [
    f"# The paper, reproduced on {report['dataset']}",
    "",
    f"Command: `{report['command']}`",
    "",
    f"Written {report['created']}; data dir `{report['data_dir']}`; "
    f"jax {report['versions'].get('jax', '?')}. Every number is also in paper.json.",
    "",
    "| section | status | |",
    "| --- | --- | --- |",
  ]
  for name in SECTIONS:
    s = report["sections"][name]
    lines.append(f"| {TITLES[name]} | {s['status']} | {s.get('reason', '')} |")
  lines.append("")
  for name in SECTIONS:
    lines += _section_md(name, report["sections"][name])
  return "\n".join(lines).rstrip() + "\n"
