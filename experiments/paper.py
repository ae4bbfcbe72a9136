"""The whole paper in one place: train the Table 1 models, evaluate them, run every study,
and write one report (Markdown + JSON, with its figures beside it).

Sections of the report (the paper's section in brackets):

  table1     [§5.3, Table 1] the models of experiments/table1.py, trained as a sweep
             (vmsjax.sweep: grouping, feature cache, resume) and evaluated
             (vmsjax.evaluate) beside the centre-bias and GBVS baselines: rho2D and MSE
             per VMS channel (true, false, all), and CC / SIM / KLD
  table2     [Table 2, Fig. 4] best and worst category of the best model (highest
             rho2D(all), or --best), and its rho2D per category as a bar chart
  saliency   [§5.3] rho2D of the predicted and of the ground-truth maps with GBVS
             saliency maps, per channel and model
  vischema2  [§5.4, Fig. 5] Spearman over the categories of the predicted VISCHEMA2
             scores against the ground-truth VISCHEMA scores (skipped, with the reason,
             when vischema2 is not built in the data dir)
  lamem      [§5.5] Spearman of the predicted maps' scores against LaMem's memorability
             scores on a seeded subset (10,000 images by default; skipped when LaMem is
             not built)
  external   [§5.5] the same against an external predictor's scores (--external_scores
             CSV of `id,score`, e.g. AMNet's)
  latent     [Fig. 6] the latent means in 2-D (PCA), coloured by memorability and by
             false memorability

Every number comes from the library (vmsjax.sweep, vmsjax.evaluate, vmsjax.analysis);
this script only chooses what to run and writes the report. Each section records the
equivalent `vmsjax` command lines. Rerunning the same command trains nothing that is
trained, evaluates nothing that is evaluated with the asked baselines, and reruns a study
only when its model, data or options changed.

Run (docs/paper.md):

  python experiments/paper.py --workdir runs/paper --data_dir data \
      --weights /path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
  python experiments/paper.py --dataset synthetic --tiny --workdir runs/paper_tiny \
      --data_dir data

Writes WORKDIR/paper.md, WORKDIR/paper.json, WORKDIR/figures/*.png; the runs go in
WORKDIR/runs/<model>/ and each study's own files in WORKDIR/studies/<section>/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmsjax import analysis, evaluate, hostmem, inference, metrics, records, sweep
from vmsjax import config as config_lib
from vmsjax import train as train_lib
from vmsjax.data import pipeline
from vmsjax.errors import VMSError

TABLE1 = config_lib.REPO_ROOT / "experiments" / "table1.py"
SECTIONS = ("table1", "table2", "saliency", "vischema2", "lamem", "external", "latent")
CHANNELS = metrics.CHANNELS
# `--tiny`: 32x32 inputs, a small decoder and 4 steps of 8 images, for a smoke run or the
# end-to-end test. The models keep their own dense and latent sizes (Table 1's points).
TINY = (
  "data.image_size=32",
  "model.decoder_channels=(16, 8, 8, 8)",
  "train.batch_size=8",
  "train.epochs=1",
  "train.steps_per_epoch=4",
  "checkpoint.every_steps=4",
  "log.every_steps=2",
  "eval.batch_size=32",
)
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="experiments/paper.py",
    description="Train the Table 1 models, evaluate them, run the paper's studies, and "
    "write WORKDIR/paper.{md,json} with figures.",
  )
  p.add_argument("--workdir", default="runs/paper", help="where runs, studies and report go")
  p.add_argument(
    "--dataset",
    choices=("vischema", "synthetic"),
    default="vischema",
    help="VISCHEMA at 224x224 (ImageNet weights needed) or the embedded synthetic set",
  )
  p.add_argument("--data_dir", default=None, help="where the datasets are built (default: data)")
  p.add_argument(
    "--weights",
    default=None,
    help="VGG-16 weights (.h5, .pth or .npz), i.e. model.encoder.weights; a .pth/.pt file "
    "also sets model.encoder.preprocessing=torch",
  )
  p.add_argument("--tiny", action="store_true", help="32x32, 4 steps: a smoke run, not results")
  p.add_argument("--steps", type=int, default=None, help="train N steps (1 epoch of N steps)")
  p.add_argument("--epochs", type=int, default=None, help="table1.py's epochs=N")
  p.add_argument("--seeds", type=int, default=0, help="table1.py's seeds=N (N runs per model)")
  p.add_argument("--runlocal", action="store_true", help="table1.py's runlocal (VISCHEMA only)")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="a config override for every model, applied last (repeatable)",
  )
  p.add_argument(
    "--skip_train", action="store_true", help="train nothing: report the runs already trained"
  )
  p.add_argument("--baselines", default="centre,gbvs", help="evaluation baselines")
  p.add_argument("--best", default=None, help="the model the studies use (default: best rho2D)")
  p.add_argument(
    "--lamem",
    default=None,
    metavar="DATASET:SPLIT",
    help="LaMem images (default: lamem:train+val+test if built, else lamem/subset10k:test)",
  )
  p.add_argument("--lamem_subset", type=int, default=10000, help="seeded LaMem subset size")
  p.add_argument("--seed", type=int, default=0, help="seed of the subsets (and t-SNE/UMAP)")
  p.add_argument("--external_scores", default=None, metavar="CSV", help="`id,score` lines")
  p.add_argument("--external_column", default=None, help="the CSV's score column (header)")
  p.add_argument(
    "--external_data",
    action="append",
    default=None,
    metavar="DATASET:SPLIT",
    help="images the external scores are for (repeatable; default: VISCHEMA train+test "
    "and VISCHEMA2, or the synthetic eval split)",
  )
  p.add_argument("--latent_method", choices=analysis.METHODS, default="pca")
  args = p.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    p.error("--steps must be >= 1")
  if args.lamem_subset < 1:
    p.error("--lamem_subset must be >= 1")
  return args


# ---------------------------------------------------------------------------------------
# The sweep: which models, with which overrides


def sweep_spec(args: argparse.Namespace) -> str:
  """experiments/table1.py with its args for this run."""
  targs = ["synthetic"] if args.dataset == "synthetic" else []
  if args.runlocal:
    targs.append("runlocal")
  if args.seeds:
    targs.append(f"seeds={args.seeds}")
  if args.epochs:
    targs.append(f"epochs={args.epochs}")
  return str(TABLE1) + (":" + ",".join(targs) if targs else "")


def overrides(args: argparse.Namespace) -> list[str]:
  """The overrides given to every model: data dir, weights, tiny/steps, then --set."""
  out = []
  if args.data_dir:
    out.append(f"data.data_dir={args.data_dir}")
  if args.weights:
    out.append(f"model.encoder.weights={args.weights}")
    if Path(args.weights).suffix.lower() in (".pth", ".pt"):
      out.append("model.encoder.preprocessing=torch")  # torchvision's weights need it
  if args.tiny:
    out += TINY
  if args.steps:
    out += ["train.epochs=1", f"train.steps_per_epoch={args.steps}"]
  return out + [sweep.normalise_override(s) for s in args.set]


@contextlib.contextmanager
def gbvs_once():
  """Within the block the GBVS baseline is computed once per (images, maps) pair.

  Every model of Table 1 is evaluated on the same images at the same size, and the
  baseline does not depend on the model, so the second and third evaluations reuse the
  first one's maps (GBVS costs ~0.1 s of CPU per image). The baseline itself is
  `evaluate.BASELINES["gbvs"]`, unchanged.
  """
  plain = evaluate.BASELINES["gbvs"]
  done: dict[str, np.ndarray] = {}

  def gbvs(images: np.ndarray, target: np.ndarray) -> np.ndarray:
    h = hashlib.sha256()
    for a in (images, target):
      h.update(str((a.shape, a.dtype)).encode())
      h.update(np.ascontiguousarray(a).tobytes())
    key = h.hexdigest()
    if key not in done:
      done[key] = plain(images, target)
    return done[key]

  evaluate.BASELINES["gbvs"] = gbvs
  try:
    yield
  finally:
    evaluate.BASELINES["gbvs"] = plain


def eval_path(workdir: Path, config) -> Path:
  """Where `evaluate.evaluate` writes the evaluation of the run's last checkpoint."""
  return workdir / "eval" / f"{config.data.eval_split}-{config_lib.total_steps(config)}.json"


def ensure_evaluated(workdir: Path, config, baselines: Sequence[str], log) -> dict:
  """The evaluation of the last checkpoint with (at least) `baselines`; evaluates if needed."""
  path = eval_path(workdir, config)
  if path.exists():
    report = json.loads(path.read_text())
    if set(baselines) <= set(report.get("baselines", {})):
      return report
  log(f"evaluating {workdir.name} (baselines {', '.join(baselines) or 'none'})")
  evaluate.evaluate(workdir, checkpoint=config_lib.total_steps(config), baselines=baselines)
  return json.loads(path.read_text())  # as stored (NaN as null), like a rerun reads it


# ---------------------------------------------------------------------------------------
# Sections


def _summary(s: dict) -> dict:
  keys = ("rho2d", "mse", "mse_255", "cc", "sim", "kld", "images", "constant")
  return {k: s.get(k) for k in keys}


def _rho_all(row: dict) -> float:
  v = row.get("model", {}).get("all", {}).get("rho2d")
  return -math.inf if v is None else v


def preflight(ctx: Context) -> None:
  """Refuses, before anything trains, a run that cannot start: data or weights missing."""
  c = ctx.configs[0]
  if not c.data.auto_build and not pipeline.is_built(c.data.name, c.data.data_dir):
    raise VMSError(
      f"dataset {c.data.name} is not built in {c.data.data_dir}: build it with `vmsjax data "
      f"build {c.data.name} --manual_dir DIR --data_dir {c.data.data_dir}` (docs/data.md), "
      "or give --data_dir where it is, or use --dataset synthetic"
    )
  if not c.model.encoder.weights and not c.model.encoder.allow_random:
    raise VMSError(
      f"the {ctx.args.dataset} models need ImageNet VGG-16 weights: pass --weights "
      "/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (README: VGG-16 weights)"
    )
  if c.model.encoder.weights and not Path(c.model.encoder.weights).is_file():
    raise VMSError(f"--weights {c.model.encoder.weights}: no such file")


def table1_section(ctx: Context) -> dict:
  sw, extra = ctx.sweep, ctx.extra
  sweep_report = None
  if ctx.args.skip_train:
    for c, d in zip(ctx.configs, ctx.dirs, strict=True):
      train_lib.check_workdir_config(d, c)  # a foreign run there is an error, as in training
  else:
    preflight(ctx)
    ctx.log(f"sweep {ctx.spec} in {ctx.runs} (trains and evaluates what is not done)")
    sweep_report = sweep.run(ctx.spec, ctx.runs, extra, baselines=ctx.baselines)
  failed = {
    p["name"]: p.get("error", "")
    for p in (sweep_report or {}).get("points", [])
    if p["status"] == "failed"
  }
  rows, evals = [], {}
  for p, c, d in zip(sw.points, ctx.configs, ctx.dirs, strict=True):
    row: dict[str, Any] = {
      "name": p.name,
      "label": p.label,
      "workdir": str(d),
      "config": str(d / "config.json"),
      "overrides": sweep.point_overrides(p, extra),
      "steps": config_lib.total_steps(c),
    }
    if p.name in failed:
      row.update(status="failed", reason=f"training failed: {failed[p.name]}")
    elif not sweep.trained(d, c):
      row.update(
        status="missing",
        reason="not trained (--skip_train); run without it to train"
        if ctx.args.skip_train
        else "not trained",
      )
    else:
      ev = ensure_evaluated(d, c, ctx.baselines, ctx.log)
      evals[p.name] = ev
      row.update(
        status="done",
        step=ev["step"],
        split=ev["split"],
        images=ev["images"],
        image_size=ev["image_size"],
        eval_json=str(eval_path(d, c)),
        model={ch: _summary(ev["model"][ch]) for ch in CHANNELS},
      )
    rows.append(row)
  done = [r for r in rows if r["status"] == "done"]
  section: dict[str, Any] = {
    "status": "done" if done else "failed",
    "sweep": ctx.spec,
    "base_config": ctx.config_spec,
    "baselines_requested": list(ctx.baselines),
    "models": rows,
    "commands": [
      shlex.join(
        ["vmsjax", "sweep", ctx.spec, "--workdir", str(ctx.runs)]
        + [a for o in extra for a in ("--set", o)]
      )
    ]
    + [
      shlex.join(
        ["vmsjax", "evaluate", "--workdir", r["workdir"], "--baselines", ",".join(ctx.baselines)]
      )
      for r in rows
    ],
    "train_commands": sweep.commands(sw, ctx.config_spec, ctx.runs, extra),
    "paper": PAPER["table1"],
  }
  if not done:
    reasons = {}  # reason -> models, so that one cause shared by all is said once
    for r in rows:
      reasons.setdefault(r["reason"], []).append(r["name"])
    section["reason"] = "no model finished training: " + "; ".join(
      f"{', '.join(names)}: {why}" for why, names in reasons.items()
    )
    return section
  if ctx.args.best:
    if ctx.args.best not in evals:
      raise VMSError(
        f"--best {ctx.args.best}: no finished model of that name; finished: {', '.join(evals)}"
      )
    best = ctx.args.best
  else:
    best = max(done, key=_rho_all)["name"]
  section["best"] = best
  section["best_rule"] = "--best" if ctx.args.best else "highest rho2D(all)"
  # The baselines depend on the images only, not on the model: one copy.
  section["baselines"] = {
    n: {ch: _summary(s[ch]) for ch in CHANNELS} for n, s in evals[best]["baselines"].items()
  }
  ctx.evals, ctx.best = evals, best
  return section


def table2_section(ctx: Context) -> dict:
  ev = ctx.evals[ctx.best]
  row = next(r for r in ctx.sections["table1"]["models"] if r["name"] == ctx.best)
  section: dict[str, Any] = {
    "model": ctx.best,
    "commands": [
      f"vmsjax evaluate --workdir {shlex.quote(row['workdir'])} --baselines "
      f"{','.join(ctx.baselines)}"
    ],
    "eval_json": row["eval_json"],
    "paper": PAPER["table2"],
  }
  if not ev["categories"]:
    return section | {"status": "skipped", "reason": f"{ev['dataset']} has no categories"}
  who = ["model", *ev["baselines"]]
  cells: dict[str, Any] = {}
  for w in who:
    cells[w] = {}
    for ch in CHANNELS:
      bw = evaluate.best_worst(ev, w, ch)
      summary = ev["model"] if w == "model" else ev["baselines"][w]
      cells[w][ch] = {
        "best": None if bw is None else {"category": bw[0][0], "rho2d": bw[0][1]},
        "worst": None if bw is None else {"category": bw[1][0], "rho2d": bw[1][1]},
        "overall": summary[ch]["rho2d"],
      }
  leaf = ev["categories"]["leaf"]
  per_category = {
    cat: {"images": v["images"], **{ch: v["model"][ch]["rho2d"] for ch in CHANNELS}}
    for cat, v in leaf.items()
  }
  figure = ctx.copy_figure(
    Path(row["workdir"]) / "eval" / ev["files"]["figure"], "figure4_categories.png"
  )
  return section | {
    "status": "done",
    "table2": cells,
    "per_category": per_category,
    "figure": figure,
    "markdown": evaluate.table2(ev) + "\n\n" + evaluate.category_table(ev),
  }


def saliency_section(ctx: Context) -> dict:
  section: dict[str, Any] = {"paper": PAPER["saliency"]}
  if "gbvs" not in ctx.baselines:
    return section | {
      "status": "skipped",
      "reason": "gbvs is not among --baselines; add it (--baselines centre,gbvs)",
    }
  per_model = {}
  for name, ev in ctx.evals.items():
    corr = ev["correlation_with_baselines"]["gbvs"]
    per_model[name] = {
      side: {ch: corr[side][ch] for ch in CHANNELS} for side in ("predicted", "ground_truth")
    }
  rows = ctx.sections["table1"]["models"]
  return section | {
    "status": "done",
    "what": "mean rho2D between each image's GBVS map and its predicted / ground-truth maps",
    "models": per_model,
    "commands": [
      f"vmsjax evaluate --workdir {shlex.quote(r['workdir'])} --baselines gbvs"
      for r in rows
      if r["name"] in per_model
    ],
  }


def vischema2_section(ctx: Context) -> dict:
  name, data_dir = ctx.data_name, ctx.data_dir
  section: dict[str, Any] = {"paper": PAPER["vischema2"]}
  if name.partition("/")[0] == "synthetic":
    predict, truth = f"{name}:{ctx.eval_split}", f"{name}:train"
    section["note"] = (
      "the synthetic set has no VISCHEMA2: its stand-in is the predicted maps of the "
      "synthetic evaluation split against the ground-truth maps of its training split"
    )
  else:
    if not pipeline.is_built("vischema2", data_dir):
      return section | {
        "status": "skipped",
        "reason": f"vischema2 is not built in {data_dir}; build it with `vmsjax data build "
        f"vischema2 --manual_dir DIR --data_dir {data_dir}` (docs/data.md)",
      }
    predict, truth = "vischema2:test", f"{name}:train+test"
  out = ctx.studies / "vischema2"
  command = ctx.study_command("categories", ["--predict", predict, "--truth", truth], out)

  def run() -> dict:
    return analysis.run_categories(
      ctx.trained(), ctx.open(predict), ctx.open(truth), out, log=ctx.log
    )

  report = ctx.cached("categories", out, {"predict": predict, "truth": truth}, run)
  figure = ctx.copy_figure(out / "categories.png", "figure5_categories.png")
  return section | {
    "status": "done",
    "predict": predict,
    "truth": truth,
    "spearman": report["spearman"],
    "categories": report["categories"],
    "files": str(out),
    "figure": figure,
    "commands": [command],
    "markdown": (out / "categories.md").read_text(),
  }


def lamem_section(ctx: Context) -> dict:
  section: dict[str, Any] = {"paper": PAPER["lamem"]}
  spec = ctx.args.lamem
  if spec is None:
    if pipeline.is_built("lamem", ctx.data_dir):
      # Sorted by id and drawn with default_rng(seed): with 10,000 and seed 0 these are
      # the images of the lamem/subset10k build.
      spec = "lamem:train+val+test"
    elif pipeline.is_built("lamem/subset10k", ctx.data_dir):
      spec = "lamem/subset10k:test"
    else:
      return section | {
        "status": "skipped",
        "reason": f"LaMem is not built in {ctx.data_dir} (looked for lamem and "
        f"lamem/subset10k); build it with `vmsjax data build lamem --manual_dir DIR "
        f"--data_dir {ctx.data_dir}` (docs/data.md)",
      }
  out = ctx.studies / "lamem"
  subset, seed = ctx.args.lamem_subset, ctx.args.seed
  options = ["--data", spec, "--subset", str(subset), "--seed", str(seed)]

  def run() -> dict:
    return analysis.run_scores(
      ctx.trained(), ctx.open(spec), out, subset=subset, seed=seed, log=ctx.log, warn=ctx.log
    )

  report = ctx.cached("scores", out, {"data": spec, "subset": subset, "seed": seed}, run)
  return section | {
    "status": "done",
    "data": spec,
    "subset": subset,
    "seed": seed,
    "images": report["images"],
    "spearman": report["spearman"],
    "files": str(out),
    "commands": [ctx.study_command("scores", options, out)],
    "markdown": (out / "scores.md").read_text(),
  }


def external_section(ctx: Context) -> dict:
  section: dict[str, Any] = {"paper": PAPER["external"]}
  csv_path = ctx.args.external_scores
  if not csv_path:
    return section | {
      "status": "skipped",
      "reason": "no --external_scores CSV given (an external predictor's per-image scores, "
      "e.g. AMNet's, as `id,score` lines)",
    }
  column = ctx.args.external_column
  ids = set(analysis.read_scores_csv(csv_path, column))  # a bad CSV fails here, once
  digest = hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()
  specs = ctx.args.external_data
  if not specs:
    if ctx.data_name.partition("/")[0] == "synthetic":
      specs = [f"{ctx.data_name}:{ctx.eval_split}"]
    else:
      specs = [f"{ctx.data_name}:train+test"]
      if pipeline.is_built("vischema2", ctx.data_dir):
        specs.append("vischema2:test")
  studies = []
  for spec in specs:
    out = ctx.studies / "external" / re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec).strip("_")
    entry: dict[str, Any] = {"data": spec, "files": str(out)}
    try:
      source = ctx.open(spec)
    except VMSError as e:  # e.g. a dataset that is not built: that one is skipped
      studies.append(entry | {"status": "skipped", "reason": str(e)})
      continue
    if not ids & set(analysis.source_ids(source)):
      studies.append(
        entry | {"status": "skipped", "reason": f"no id of {csv_path} is an image of {spec}"}
      )
      continue
    options = ["--data", spec, "--scores", csv_path]
    options += ["--score_column", column] if column else []

    def run(source=source, out=out) -> dict:
      return analysis.run_scores(
        ctx.trained(),
        source,
        out,
        scores_csv=csv_path,
        score_column=column,
        log=ctx.log,
        warn=ctx.log,
      )

    key = {"data": spec, "csv": str(csv_path), "sha256": digest, "column": column}
    report = ctx.cached("scores", out, key, run)
    studies.append(
      entry
      | {
        "status": "done",
        "images": report["images"],
        "spearman": report["spearman"],
        "per_category": report["per_category"],
        "images_without_score": report.get("images_without_score", 0),
        "commands": [ctx.study_command("scores", options, out)],
        "markdown": (out / "scores.md").read_text(),
      }
    )
  done = [s for s in studies if s["status"] == "done"]
  section |= {"scores": str(csv_path), "studies": studies}
  if not done:
    return section | {
      "status": "skipped",
      "reason": "; ".join(f"{s['data']}: {s['reason']}" for s in studies),
    }
  return section | {"status": "done", "commands": [c for s in done for c in s["commands"]]}


def latent_section(ctx: Context) -> dict:
  section: dict[str, Any] = {"paper": PAPER["latent"]}
  if ctx.data_name.partition("/")[0] != "synthetic" and pipeline.is_built(
    "vischema2", ctx.data_dir
  ):
    spec = "vischema2:test"  # the paper's Fig. 6
  else:
    spec = f"{ctx.data_name}:{ctx.eval_split}"
    if ctx.data_name.partition("/")[0] != "synthetic":
      section["note"] = f"vischema2 is not built in {ctx.data_dir}: the latent space of {spec}"
  out = ctx.studies / "latent"
  method, seed = ctx.args.latent_method, ctx.args.seed
  options = ["--data", spec, "--method", method, "--seed", str(seed)]

  def run() -> dict:
    return analysis.run_latent(
      ctx.trained(), ctx.open(spec), out, method=method, seed=seed, log=ctx.log
    )

  report = ctx.cached("latent", out, {"data": spec, "method": method, "seed": seed}, run)
  figure = ctx.copy_figure(out / "latent.png", "figure6_latent.png")
  return section | {
    "status": "done",
    "data": spec,
    "images": report["images"],
    "latent": report["latent"],
    "projection": report["projection"],
    "spearman_memorability_false_memorability": report["spearman_memorability_false_memorability"],
    "figure": figure,
    "files": str(out),
    "commands": [ctx.study_command("latent", options, out)],
    "markdown": (out / "latent.md").read_text(),
  }


# ---------------------------------------------------------------------------------------
# Running


class Context:
  """What the sections share: the arguments, the sweep, the evaluations, the best model."""

  def __init__(self, args: argparse.Namespace, log: Callable[[str], None]):
    self.args, self.log = args, log
    self.workdir = Path(args.workdir)
    self.runs = self.workdir / "runs"
    self.studies = self.workdir / "studies"
    self.figures = self.workdir / "figures"
    self.spec = sweep_spec(args)
    self.extra = overrides(args)
    self.sweep, file = sweep.load(self.spec)
    self.config_spec = sweep.resolve_config(self.sweep.config, file)
    # Every point's config is built and checked before anything runs.
    self.configs = [sweep.point_config(self.config_spec, p, self.extra) for p in self.sweep.points]
    self.dirs = [self.runs / p.name for p in self.sweep.points]
    self.baselines = evaluate.parse_baselines(args.baselines)
    first = self.configs[0]
    self.data_name = first.data.name
    self.data_dir = first.data.data_dir
    self.eval_split = first.data.eval_split
    self.sections: dict[str, dict] = {}
    self.evals: dict[str, dict] = {}
    self.best: str | None = None
    self._trained = None

  def _best_index(self) -> int:
    return [p.name for p in self.sweep.points].index(self.best)

  def best_dir(self) -> Path:
    return self.dirs[self._best_index()]

  def best_step(self) -> int:
    return config_lib.total_steps(self.configs[self._best_index()])

  def trained(self):
    """The best model's last checkpoint, restored once for all the studies."""
    if self._trained is None:
      self._trained = inference.load(self.best_dir(), self.best_step())
    return self._trained

  def open(self, spec: str):
    """`DATASET:SPLIT[+SPLIT...]` as one source, as `vmsjax study` reads it."""
    name, sep, splits = spec.partition(":")
    if not sep or not name or not splits:
      raise VMSError(f"{spec!r}: expected DATASET:SPLIT, e.g. vischema2:test")
    sources = [pipeline.open_split(name, s, self.data_dir) for s in splits.split("+")]
    return sources[0] if len(sources) == 1 else analysis.ConcatSource(sources)

  def study_command(self, study: str, options: list[str], out: Path) -> str:
    argv = ["vmsjax", "study", study, "--workdir", str(self.best_dir())]
    argv += ["--checkpoint", str(self.best_step()), *options]
    argv += ["--data_dir", str(self.data_dir), "--out", str(out)]
    return shlex.join(argv)

  def cached(self, study: str, out: Path, options: dict, run: Callable[[], dict]) -> dict:
    """The study's report: read back when this model, data dir and options made it, else run."""
    key = {
      "study": study,
      "workdir": str(self.best_dir().resolve()),
      "checkpoint": self.best_step(),
      "config": config_lib.fingerprint(self.configs[self._best_index()]),
      "data_dir": str(self.data_dir),
      **options,
    }
    key_file, report_file = out / "paper_key.json", out / f"{study}.json"
    if key_file.exists() and report_file.exists():
      try:
        if json.loads(key_file.read_text()) == json.loads(json.dumps(key)):
          self.log(f"{out}: done already")
          return json.loads(report_file.read_text())
      except json.JSONDecodeError:
        pass  # a damaged key: run again
    key_file.unlink(missing_ok=True)  # a study stopped half-way is never taken as done
    report = run()
    records.write_json(key_file, key)
    return report

  def copy_figure(self, src: Path, name: str) -> str:
    """Copies a study's figure into WORKDIR/figures; returns its path relative to WORKDIR."""
    self.figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, self.figures / name)
    return f"figures/{name}"


RUNNERS: dict[str, Callable[[Context], dict]] = {
  "table1": table1_section,
  "table2": table2_section,
  "saliency": saliency_section,
  "vischema2": vischema2_section,
  "lamem": lamem_section,
  "external": external_section,
  "latent": latent_section,
}


def run(args: argparse.Namespace, argv: Sequence[str], log=None) -> dict:
  """Runs every section and writes WORKDIR/paper.{json,md}; returns the report."""

  def say(line: str) -> None:
    print(f"paper: {line}", file=log or sys.stderr, flush=True)

  ctx = Context(args, say)
  ctx.workdir.mkdir(parents=True, exist_ok=True)
  report: dict[str, Any] = {
    "command": shlex.join(["python", "experiments/paper.py", *argv]),
    "argv": list(argv),
    "dataset": ctx.data_name,
    "data_dir": str(ctx.data_dir),
    "workdir": str(ctx.workdir),
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "versions": records.package_versions(),
    "sections": ctx.sections,
  }
  with gbvs_once():
    for name in SECTIONS:
      if name != "table1" and ctx.best is None:
        ctx.sections[name] = {"status": "skipped", "reason": "no trained model (see table1)"}
        continue
      say(f"section {name}")
      t0 = time.perf_counter()
      try:
        ctx.sections[name] = RUNNERS[name](ctx)
      except VMSError as e:
        if name == "table1":
          raise  # a bad config or a foreign run: nothing else can run
        say(f"section {name} failed: {e}")
        ctx.sections[name] = {"status": "failed", "reason": str(e)}
      ctx.sections[name]["seconds"] = round(time.perf_counter() - t0, 1)
  report = analysis.jsonable(report)
  records.write_json(ctx.workdir / "paper.json", report)
  (ctx.workdir / "paper.md").write_text(markdown(report))
  return report


# ---------------------------------------------------------------------------------------
# Markdown

TITLES = {
  "table1": "1. Table 1: reconstruction accuracy (§5.3)",
  "table2": "2. Table 2 and Figure 4: categories of the best model",
  "saliency": "3. Correlation with GBVS saliency (§5.3)",
  "vischema2": "4. VISCHEMA2: per-category memorability ranks (§5.4, Fig. 5)",
  "lamem": "5. LaMem: map scores against memorability scores (§5.5)",
  "external": "6. External memorability scores, e.g. AMNet (§5.5)",
  "latent": "7. Latent space (Fig. 6)",
}
fmt = analysis.fmt


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


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the paper; 0 when every section is done or skipped, 1 if a section or a model
  failed (the report says which and why), 2 on a user error (printed in one line)."""
  entry_point = argv is None
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  try:
    if entry_point:  # may restart the program with huge pages (vmsjax/hostmem.py)
      hostmem.reexec_with_huge_pages()
    report = run(args, argv)
  except VMSError as e:
    print(f"paper: {e}", file=sys.stderr)
    return 2
  out = Path(args.workdir)
  figures = f" and {out / 'figures'}/" if (out / "figures").is_dir() else ""
  print(f"written {out / 'paper.md'}, {out / 'paper.json'}{figures}")
  failed = [n for n, s in report["sections"].items() if s["status"] == "failed"]
  failed += [
    f"table1 model {m['name']}"
    for m in report["sections"]["table1"].get("models", [])
    if m["status"] == "failed"
  ]
  if failed:
    print(f"paper: failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
