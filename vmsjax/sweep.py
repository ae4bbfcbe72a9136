"""Sweeps: one base config and an explicit list of named points, each a list of overrides.

A sweep file is Python, like a config file: `get_sweep(arg)` returns a `Sweep`.

  from vmsjax.sweep import Point, Sweep

  def get_sweep(arg=None):
    return Sweep(
      config="configs/synthetic.py",
      points=[
        Point("m32", ["model.latent=32"]),
        Point("m8", ["model.dense=64", "model.latent=8"]),
      ],
    )

Overrides are written `a.b=value` or `--config.a.b=value`. `run` trains every point
into `workdir/<name>` and evaluates it; points whose configs differ only in
`config.member_keys` (seeds, loss weights, learning rate) are trained together, in one
jitted step per batch (`vmsjax.train.train_group`). Finished points (a checkpoint at the last step
and an evaluation of it) are skipped, so rerunning a stopped sweep picks up where it
was. The report `workdir/report.{json,md}` has the paper's Table 1 layout: rho2D and MSE
for the true, false and combined maps, per point, and the mean and standard deviation
over points sharing a `label` (e.g. the seeds of one model).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vmsjax import config as config_lib
from vmsjax import records
from vmsjax import workdir as workdir_lib
from vmsjax.errors import VMSError

CHANNELS = ("true", "false", "all")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep.

  Attributes:
    name: its folder under the sweep's workdir (letters, digits, `_.+-`).
    overrides: `a.b=value` (or `--config.a.b=value`) assignments on the base config.
    label: points with the same label are also summarised together in the report
      (mean and standard deviation, e.g. over seeds); "" for none.
  """

  name: str
  overrides: Sequence[str] = ()
  label: str = ""


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A base config (`path.py[:arg]`) and the points to run on it."""

  config: str
  points: Sequence[Point]
  description: str = ""


def normalise_override(text: str) -> str:
  """`--config.a.b=v` or `a.b=v` -> `a.b=v`."""
  text = text.strip()
  return text[len("--config.") :] if text.startswith("--config.") else text


def load(spec: str) -> tuple[Sweep, Path]:
  """Loads the sweep named by `path.py[:arg]`; returns it and the file's path.

  Raises:
    VMSError: missing file, a file without `get_sweep`, or a bad sweep (duplicate or
      invalid point names, malformed overrides).
  """
  path = spec.partition(":")[0]
  file = Path(path)
  sweep = config_lib.call_from_file(spec, "get_sweep", "sweep")
  if not isinstance(sweep, Sweep):
    raise VMSError(f"sweep file {path}: get_sweep must return a vmsjax.sweep.Sweep")
  check(sweep, spec)
  return sweep, file


def check(sweep: Sweep, where: str = "the sweep") -> None:
  """Raises VMSError for empty sweeps, bad or repeated point names, overrides without '='."""
  if not sweep.points:
    raise VMSError(f"{where} has no points")
  seen = set()
  for p in sweep.points:
    if not _NAME.match(p.name):
      raise VMSError(
        f"{where}: point name {p.name!r} must be letters, digits and _.+- (it names a folder)"
      )
    if p.name in seen:
      raise VMSError(f"{where}: point name {p.name!r} appears twice")
    seen.add(p.name)
    for o in p.overrides:
      if "=" not in normalise_override(o):
        raise VMSError(f"{where}: point {p.name}: override {o!r} has no '='")


def resolve_config(spec: str, sweep_file: Path | None = None) -> str:
  """The base config spec with its path made findable: as given, else under the repo or
  next to the sweep file (absolute then)."""
  path, sep, arg = spec.partition(":")
  candidates = [Path(path), config_lib.REPO_ROOT / path]
  if sweep_file is not None:
    candidates.append(sweep_file.parent / path)
  for c in candidates:
    if c.is_file():
      return str(c) + sep + arg
  raise VMSError(f"the sweep's base config {path} was not found (tried {candidates})")


def point_overrides(point: Point, extra: Sequence[str] = ()) -> list[str]:
  """The point's overrides followed by the sweep-wide `extra` ones, as `a.b=v`."""
  return [normalise_override(o) for o in (*point.overrides, *extra)]


def point_config(config_spec: str, point: Point, extra: Sequence[str] = ()):
  """The resolved, validated config of one point."""
  config = config_lib.load(config_spec)
  config_lib.override(config, point_overrides(point, extra))
  try:
    config_lib.validate(config)
  except VMSError as e:
    raise VMSError(f"sweep point {point.name}: {e}") from e
  return config


def commands(
  sweep: Sweep, config_spec: str, workdir: str | Path, extra: Sequence[str] = ()
) -> list[str]:
  """One `vmsjax train` command line per point (e.g. for a cluster's array job)."""
  out = []
  for p in sweep.points:
    argv = ["vmsjax", "train", "--config", config_spec, "--workdir", str(Path(workdir) / p.name)]
    argv += [f"--config.{o}" for o in point_overrides(p, extra)]
    out.append(shlex.join(argv))
  return out


def trained(workdir: Path, config) -> bool:
  """Whether `workdir` holds this config's run, finished (a checkpoint at its last step)."""
  return config_lib.total_steps(config) in workdir_lib.checkpoint_steps(workdir)


def plan(configs: Sequence, group: bool = True, max_group: int = 0) -> list[list[int]]:
  """Indices of the points to train together, in order of first appearance.

  Points whose configs differ only in `config.member_keys` share a group (at most
  `max_group` points each, 0 for no limit); `group=False` gives one point per group.
  """
  groups: dict[str, list[list[int]]] = {}
  order: list[list[int]] = []
  for i, c in enumerate(configs):
    key = config_lib.group_key(c) if group else str(i)
    chunks = groups.setdefault(key, [])
    if not chunks or (max_group and len(chunks[-1]) >= max_group):
      chunks.append([])
      order.append(chunks[-1])
    chunks[-1].append(i)
  return order


def run(
  spec: str,
  workdir: str | Path,
  extra: Sequence[str] = (),
  group: bool = True,
  max_group: int = 0,
  log=None,
  baselines=None,
) -> dict:
  """Trains and evaluates every unfinished point of sweep `spec`; writes the report.

  Args:
    spec: the sweep file, `path.py[:arg]`.
    workdir: the sweep's folder; point `p` runs in `workdir/p`.
    extra: `a.b=v` overrides applied to every point after its own.
    group: train points that can share a step together (`train.train_group`).
    max_group: the most points per group (0: no limit), to bound memory.
    log: where progress lines go (default stderr).
    baselines: the evaluation's baselines (`evaluate.parse_baselines`; default centre).
      A point evaluated before is not evaluated again, whatever its baselines.

  Returns:
    The report (also written to workdir/report.json and report.md).

  Raises:
    VMSError: a bad sweep or config, or a point's workdir holding another run (checked
      for every point before anything is trained). A point whose training stops on
      NaN/Inf does not stop the others: it is marked failed in the report.
  """
  from vmsjax import evaluate, train

  log = log or sys.stderr
  sweep, file = load(spec)
  config_spec = resolve_config(sweep.config, file)
  workdir = Path(workdir)
  configs = [point_config(config_spec, p, extra) for p in sweep.points]
  dirs = [workdir / p.name for p in sweep.points]
  for c, d in zip(configs, dirs, strict=True):
    workdir_lib.check_config(d, c)

  errors: dict[int, str] = {}
  timing: list[dict] = []
  groups = plan(configs, group, max_group)
  for g in groups:
    names = [sweep.points[i].name for i in g]
    todo = [i for i in g if not trained(dirs[i], configs[i])]
    if not todo:
      print(f"sweep: {', '.join(names)}: trained already", file=log)
    else:
      print(f"sweep: training {', '.join(sweep.points[i].name for i in todo)}", file=log)
      t0 = time.perf_counter()
      try:
        train.train_group([configs[i] for i in todo], [dirs[i] for i in todo])
      except VMSError as e:
        for i in todo:
          if not trained(dirs[i], configs[i]):
            errors[i] = str(e)
        print(f"sweep: {e}", file=log)
      timing.append(
        {
          "points": [sweep.points[i].name for i in todo],
          "train_seconds": round(time.perf_counter() - t0, 2),
        }
      )
    for i in g:
      if i in errors or evaluate.eval_path(dirs[i], configs[i]).exists():
        continue
      print(f"sweep: evaluating {sweep.points[i].name}", file=log)
      evaluate.evaluate(dirs[i], baselines=baselines)

  # Keep the training times of groups trained by earlier runs of this sweep.
  trained_now = {name for t in timing for name in t["points"]}
  old = workdir / "report.json"
  if old.exists():
    try:
      earlier = json.loads(old.read_text()).get("timing", [])
    except json.JSONDecodeError:  # a damaged report is rewritten
      earlier = []
    timing = [t for t in earlier if not trained_now & set(t["points"])] + timing
  report = _report(spec, config_spec, sweep, configs, dirs, groups, errors, timing, extra)
  workdir.mkdir(parents=True, exist_ok=True)
  records.write_json(workdir / "report.json", report)
  (workdir / "report.md").write_text(markdown(report))
  return report


def _cell(eval_report: dict) -> dict:
  """rho2D and MSE (on [0, 1] and on the paper's 0-255 scale) per channel."""
  model = eval_report["model"]
  return {
    c: {
      "rho2d": model[c]["rho2d"],
      "mse": model[c]["mse"],
      "mse_255": model[c].get("mse_255", model[c]["mse"] * 255.0**2),
    }
    for c in CHANNELS
  }


def _report(spec, config_spec, sweep, configs, dirs, groups, errors, timing, extra) -> dict:
  from vmsjax import evaluate  # as in `run`: loading a sweep file needs no jax

  points = []
  for i, (p, c, d) in enumerate(zip(sweep.points, configs, dirs, strict=True)):
    row = {
      "name": p.name,
      "label": p.label,
      "overrides": point_overrides(p, extra),
      "workdir": str(d),
    }
    path = evaluate.eval_path(d, c)
    if i in errors:
      row.update(status="failed", error=errors[i])
    elif path.exists():
      ev = json.loads(path.read_text())
      row.update(
        status="done",
        eval=str(path),
        step=ev["step"],
        split=ev["split"],
        images=ev.get("images"),
        table=_cell(ev),
      )
    else:
      row.update(status="missing")
    points.append(row)
  return {
    "sweep": spec,
    "config": config_spec,
    "description": sweep.description,
    "overrides": [normalise_override(o) for o in extra],
    "groups": [[sweep.points[i].name for i in g] for g in groups],
    "timing": timing,
    "points": points,
    "labels": _by_label(points),
  }


def _by_label(points: list[dict]) -> dict:
  """Mean and standard deviation (ddof=1) per label, over its finished points."""
  out: dict = {}
  labels = sorted({p["label"] for p in points if p["label"]})
  for label in labels:
    rows = [p for p in points if p["label"] == label and p["status"] == "done"]
    if not rows:
      continue
    cell: dict = {"points": [r["name"] for r in rows]}
    for c in CHANNELS:
      cell[c] = {}
      for m in ("rho2d", "mse", "mse_255"):
        values = [r["table"][c][m] for r in rows]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        cell[c][m] = {"mean": mean, "std": math.sqrt(var)}
    out[label] = cell
  return out


def markdown(report: dict) -> str:
  """The report in the paper's Table 1 layout (one block of three rows per point)."""
  lines = [
    f"Sweep `{report['sweep']}` (base config `{report['config']}`)",
    "",
    "| point | VMS | rho2D | MSE | MSE (0-255) |",
    "| --- | --- | ---: | ---: | ---: |",
  ]
  for p in report["points"]:
    if p["status"] != "done":
      lines.append(f"| {p['name']} | {p['status']} | | | |")
      continue
    for k, c in enumerate(CHANNELS):
      t = p["table"][c]
      name = p["name"] if k == 0 else ""
      lines.append(f"| {name} | {c} | {t['rho2d']:.3f} | {t['mse']:.4f} | {t['mse_255']:.1f} |")
  if report["labels"]:
    lines += [
      "",
      "Mean ± standard deviation over the points of each label:",
      "",
      "| label | points | VMS | rho2D | MSE | MSE (0-255) |",
      "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for label, cell in report["labels"].items():
      for k, c in enumerate(CHANNELS):
        t = cell[c]
        head = f"| {label} | {len(cell['points'])} " if k == 0 else "| | "
        lines.append(
          head + f"| {c} | {t['rho2d']['mean']:.3f} ± {t['rho2d']['std']:.3f} "
          f"| {t['mse']['mean']:.4f} ± {t['mse']['std']:.4f} "
          f"| {t['mse_255']['mean']:.1f} ± {t['mse_255']['std']:.1f} |"
        )
  failed = [p for p in report["points"] if p["status"] == "failed"]
  if failed:
    lines += ["", "Failed points:", ""] + [f"- {p['name']}: {p['error']}" for p in failed]
  return "\n".join(lines) + "\n"
