"""Two training runs side by side: configs, lineage, evaluation tables, metric curves.

`compare(W1, W2, out)` reads only what the runs left in their workdirs (config.json,
lineage.json, eval/*.json, metrics.jsonl) and writes into `out`:

  compare.md    the keys whose values differ, whether one run is a branch of the other,
                the evaluation tables of each dataset split both evaluated (each run's
                latest evaluated step), the last value of every logged metric
  compare.json  the same as numbers
  curves.png    every train metric (loss, reconstruction, kl, l2, weight_* ...) over the
                steps, both runs on each panel, a branch point marked

The default `out` is ./compare-<name1>-<name2> (the workdirs' folder names).
Nothing is computed again: evaluate a run first (`vmsjax evaluate`) to see its table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vmsjax import records
from vmsjax.errors import VMSError

REPORT_JSON = "compare.json"
REPORT_MD = "compare.md"
CURVES = "curves.png"
# The numbers of an evaluation summary shown side by side, in this order.
EVAL_METRICS = ("rho2d", "mse", "cc", "sim", "kld")
CURVE_INCHES = (4.0, 3.0)  # one metric's panel
CURVE_COLUMNS = 3
DPI = 100
# Keys of a metrics.jsonl line that are not results.
METRIC_BOOKKEEPING = ("step", "split", "time")


def default_out(w1: str | Path, w2: str | Path) -> Path:
  """./compare-<name1>-<name2>, with the names' parent folders where the names agree."""
  a, b = Path(w1).absolute(), Path(w2).absolute()
  n1, n2 = a.name, b.name
  if n1 == n2:
    n1, n2 = f"{a.parent.name}_{n1}", f"{b.parent.name}_{n2}"
  return Path(f"compare-{n1}-{n2}")


def _check_workdir(w: Path) -> dict:
  from vmsjax import config as config_lib

  saved = config_lib.read_saved(w)
  if saved is None:
    raise VMSError(f"{w / 'config.json'} not found: {w} is not a vmsjax training workdir")
  return saved


def _same(a: str | Path, b: str | Path) -> bool:
  try:
    return Path(a).resolve() == Path(b).resolve()
  except OSError:
    return False


def relation(w1: Path, w2: Path) -> dict | None:
  """How the two runs are related through lineage.json, or None if they are not.

  Returns:
    {"kind": "branch", "child": 2 or 1, "step", "changed_keys", "params_only",
    "direct"} when one descends from the other, {"kind": "siblings", "parent",
    "steps"} when both branch from the same run, else None.
  """
  from vmsjax import lineage

  for child, parent, index in ((w2, w1, 2), (w1, w2, 1)):
    parents = lineage.read(child)
    for depth, p in enumerate(reversed(parents)):
      if _same(p.get("workdir", ""), parent):
        return {
          "kind": "branch",
          "child": index,
          "step": p.get("step"),
          "changed_keys": list(p.get("changed_keys") or []),
          "params_only": bool(p.get("params_only", False)),
          "direct": depth == 0,
        }
  p1, p2 = lineage.read(w1), lineage.read(w2)
  if p1 and p2 and _same(p1[-1].get("workdir", ""), p2[-1].get("workdir", "")):
    return {
      "kind": "siblings",
      "parent": str(p1[-1].get("workdir")),
      "steps": [p1[-1].get("step"), p2[-1].get("step")],
    }
  return None


def _relation_line(rel: dict | None, names: tuple[str, str]) -> str:
  if rel is None:
    return "Neither run is a branch of the other (no lineage.json links them)."
  if rel["kind"] == "siblings":
    return (
      f"Both runs branch from {rel['parent']} (at steps {rel['steps'][0]} and {rel['steps'][1]})."
    )
  child, parent = (names[1], names[0]) if rel["child"] == 2 else (names[0], names[1])
  how = "" if rel["direct"] else " (through intermediate branches)"
  what = "parameters only" if rel["params_only"] else "full state"
  changed = ", ".join(rel["changed_keys"]) or "none"
  return (
    f"{child} is a branch of {parent}{how} at step {rel['step']} ({what}; changed keys: {changed})."
  )


def config_differences(a: dict, b: dict) -> list[dict]:
  """[{"key", "a", "b"}] for every config key whose values differ (resumable ones too)."""
  from vmsjax import config as config_lib

  fa, fb = config_lib.flat(a), config_lib.flat(b)
  out = []
  for key in sorted(set(fa) | set(fb)):
    va, vb = fa.get(key, "<absent>"), fb.get(key, "<absent>")
    if va != vb:
      out.append({"key": key, "a": va, "b": vb})
  return out


def eval_reports(workdir: Path) -> dict[tuple[str, str], dict]:
  """{(dataset, split): report} of WORKDIR/eval/*.json, the latest step of each."""
  out: dict[tuple[str, str], dict] = {}
  for path in sorted((Path(workdir) / "eval").glob("*.json")):
    try:
      report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
      continue  # not a report, or cut: the tables show what is readable
    if not isinstance(report, dict) or not {"dataset", "split", "step", "model"} <= set(report):
      continue
    key = (str(report["dataset"]), str(report["split"]))
    if key not in out or int(report["step"]) > int(out[key]["step"]):
      report = dict(report, file=path.name)
      out[key] = report
  return out


def eval_rows(a: dict, b: dict) -> list[dict]:
  """[{"who", "channel", "metric", "a", "b", "difference"}]: the model, then the
  baselines both reports have, per channel and metric."""
  from vmsjax import metrics

  whos = [("model", a["model"], b["model"])]
  for name in a.get("baselines", {}):
    if name in b.get("baselines", {}):
      whos.append((name, a["baselines"][name], b["baselines"][name]))
  rows = []
  for who, sa, sb in whos:
    for channel in metrics.CHANNELS:
      for metric in EVAL_METRICS:
        x = (sa.get(channel) or {}).get(metric)
        y = (sb.get(channel) or {}).get(metric)
        diff = y - x if isinstance(x, int | float) and isinstance(y, int | float) else None
        rows.append(
          {"who": who, "channel": channel, "metric": metric, "a": x, "b": y, "difference": diff}
        )
  return rows


def read_metrics(workdir: Path) -> dict[tuple[str, int], dict[str, float]]:
  """{(split, step): {key: value}} of WORKDIR/metrics.jsonl; the last line of a step wins
  (a resumed run logs again what a killed one logged), cut lines are skipped."""
  out: dict[tuple[str, int], dict[str, float]] = {}
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return out
  for line in path.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    if not isinstance(rec, dict) or "step" not in rec:
      continue
    values = {
      k: v
      for k, v in rec.items()
      if k not in METRIC_BOOKKEEPING and isinstance(v, int | float) and not isinstance(v, bool)
    }
    out[(str(rec.get("split", "train")), int(rec["step"]))] = values
  return out


def read_curves(workdir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{split: {metric: [(step, value), ...]}} from WORKDIR/metrics.jsonl, steps ascending."""
  out: dict[str, dict[str, list[tuple[int, float]]]] = {}
  for (split, step), values in sorted(read_metrics(workdir).items()):
    for key, v in values.items():
      out.setdefault(split, {}).setdefault(key, []).append((step, float(v)))
  return out


def curves_figure(
  curves: tuple[dict, dict], names: tuple[str, str], path: Path, branch_step: int | None
) -> tuple[int, int]:
  """curves.png: one panel per train metric, both runs on it; its (width, height)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  a, b = (c.get("train", {}) for c in curves)
  # The loss and its terms first, the weights last.
  first = ("loss", "reconstruction", "kl", "l2")
  keys = sorted(
    set(a) | set(b),
    key=lambda k: (first.index(k) if k in first else len(first), k.startswith("weight_"), k),
  )
  if not keys:
    raise VMSError(
      f"neither run has train metrics in metrics.jsonl; nothing to draw in {path.name}"
    )
  cols = min(CURVE_COLUMNS, len(keys))
  rows = math.ceil(len(keys) / cols)
  fig = Figure(
    figsize=(CURVE_INCHES[0] * cols, CURVE_INCHES[1] * rows), dpi=DPI, layout="constrained"
  )
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, cols, squeeze=False)
  for i, key in enumerate(keys):
    ax = axes[i // cols][i % cols]
    for series, name, style in ((a, names[0], "-"), (b, names[1], "--")):
      if key in series:
        steps, values = zip(*series[key], strict=True)
        ax.plot(steps, values, style, label=name, linewidth=1.2)
    if branch_step is not None:
      ax.axvline(branch_step, color="grey", linewidth=0.8, linestyle=":", label="branch")
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    if i == 0:
      ax.legend(fontsize="small")
  for j in range(len(keys), rows * cols):
    axes[j // cols][j % cols].set_visible(False)
  fig.savefig(path, dpi=DPI)
  w, h = fig.canvas.get_width_height()
  return int(w), int(h)


def _last(series: list[tuple[int, float]] | None) -> tuple[int | None, float | None]:
  return series[-1] if series else (None, None)


def compare(w1: str | Path, w2: str | Path, out: str | Path | None = None) -> dict:
  """Compares two training workdirs and writes compare.md, compare.json and curves.png.

  Args:
    w1: the first run (column "a").
    w2: the second run (column "b").
    out: the folder to write (default: `default_out(w1, w2)`, under the current one).

  Returns:
    The report written to compare.json: "runs" ([{"workdir", "name", "last_step"}]),
    "config" (`config_differences`), "relation" (`relation`), "evaluation" ([{"dataset",
    "split", "steps", "rows"}]), "evaluation_only" (splits one run evaluated),
    "metrics" ([{"split", "key", "a", "a_step", "b", "b_step"}]: last values), "files".

  Raises:
    VMSError: either folder is not a training workdir, or it has no metrics.
  """
  a, b = Path(w1), Path(w2)
  saved = (_check_workdir(a), _check_workdir(b))
  out_dir = Path(out) if out is not None else default_out(a, b)
  out_dir.mkdir(parents=True, exist_ok=True)
  names = (a.name, b.name) if a.name != b.name else (str(a), str(b))

  rel = relation(a, b)
  reports = (eval_reports(a), eval_reports(b))
  evaluation = [
    {
      "dataset": key[0],
      "split": key[1],
      "steps": [reports[0][key]["step"], reports[1][key]["step"]],
      "files": [reports[0][key]["file"], reports[1][key]["file"]],
      "rows": eval_rows(reports[0][key], reports[1][key]),
    }
    for key in sorted(set(reports[0]) & set(reports[1]))
  ]
  only = [
    {"run": i + 1, "dataset": k[0], "split": k[1]}
    for i in range(2)
    for k in sorted(set(reports[i]) - set(reports[1 - i]))
  ]
  curves = (read_curves(a), read_curves(b))
  metric_rows = []
  for split in sorted(set(curves[0]) | set(curves[1])):
    ka, kb = curves[0].get(split, {}), curves[1].get(split, {})
    for key in sorted(set(ka) | set(kb)):
      sa, va = _last(ka.get(key))
      sb, vb = _last(kb.get(key))
      metric_rows.append({"split": split, "key": key, "a": va, "a_step": sa, "b": vb, "b_step": sb})
  branch_step = rel["step"] if rel and rel["kind"] == "branch" else None
  size = curves_figure(curves, names, out_dir / CURVES, branch_step)

  def last_step(c: dict) -> int | None:
    steps = [s for series in c.get("train", {}).values() for s, _ in series]
    return max(steps) if steps else None

  report = {
    "runs": [
      {"workdir": str(w), "name": n, "last_step": last_step(c)}
      for w, n, c in zip((a, b), names, curves, strict=True)
    ],
    "config": config_differences(*saved),
    "relation": rel,
    "relation_text": _relation_line(rel, names),
    "evaluation": evaluation,
    "evaluation_only": only,
    "metrics": metric_rows,
    "files": {"json": REPORT_JSON, "markdown": REPORT_MD, "curves": CURVES},
    "curves_size": list(size),
  }
  report = records.json_safe(report)
  (out_dir / REPORT_MD).write_text(markdown(report))
  records.write_json(out_dir / REPORT_JSON, report)
  report["out"] = str(out_dir)
  return report


def _cell(x: Any, digits: int = 6) -> str:
  if x is None:
    return "n/a"
  if isinstance(x, float):
    return f"{x:.{digits}g}"
  text = json.dumps(x) if isinstance(x, list | dict) else str(x)
  return text.replace("|", "\\|")


def markdown(report: dict) -> str:
  """compare.md: configs, relation, evaluation tables, last metric values, the figure."""
  (ra, rb) = report["runs"]
  na, nb = ra["name"], rb["name"]
  lines = [
    f"# {na} vs {nb}",
    "",
    f"- a: {ra['workdir']} (last logged step {ra['last_step']})",
    f"- b: {rb['workdir']} (last logged step {rb['last_step']})",
    "",
    report["relation_text"],
    "",
    "## Config",
    "",
  ]
  if report["config"]:
    lines += [f"| key | {na} | {nb} |", "| --- | --- | --- |"]
    lines += [f"| {d['key']} | {_cell(d['a'])} | {_cell(d['b'])} |" for d in report["config"]]
  else:
    lines.append("The configs are the same.")
  lines += ["", "## Evaluation", ""]
  if not report["evaluation"]:
    lines.append("No dataset split was evaluated in both runs (vmsjax evaluate --workdir W).")
  for e in report["evaluation"]:
    lines += [
      f"{e['dataset']}:{e['split']}, {na} at step {e['steps'][0]}, {nb} at step {e['steps'][1]}:",
      "",
      f"| who | VMS | metric | {na} | {nb} | {nb} - {na} |",
      "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
      f"| {r['who']} | {r['channel']} | {r['metric']} | {_cell(r['a'])} | {_cell(r['b'])} "
      f"| {_cell(r['difference'], 3)} |"
      for r in e["rows"]
    ]
    lines.append("")
  for o in report["evaluation_only"]:
    lines.append(f"- {o['dataset']}:{o['split']} was evaluated in {(na, nb)[o['run'] - 1]} only")
  lines += ["", "## Metrics (last logged value)", ""]
  lines += [
    f"| split | metric | {na} | step | {nb} | step |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  ]
  lines += [
    f"| {m['split']} | {m['key']} | {_cell(m['a'])} | {_cell(m['a_step'])} | {_cell(m['b'])} "
    f"| {_cell(m['b_step'])} |"
    for m in report["metrics"]
  ]
  lines += ["", f"![metric curves]({report['files']['curves']})", ""]
  return "\n".join(lines)
