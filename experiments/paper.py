"""The whole paper in one place: train the Table 1 models, evaluate them, run every study,
and write one report (Markdown + JSON, with its figures beside it).

This script decides what each section runs, on which data, and runs it: the sweep, the
evaluations and the best model's studies, through the library (vmsjax.sweep,
vmsjax.evaluate, vmsjax.studies); experiments/paper_report.py turns the results into
the report's sections and writes it. Rerunning the same command trains, evaluates and
studies only what is not done, with these options, already (docs/paper.md).

  python experiments/paper.py --workdir runs/paper --data_dir data \
      --weights /path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
  python experiments/paper.py --dataset synthetic --tiny --workdir runs/paper_tiny \
      --data_dir data

Writes WORKDIR/paper.{md,json} and WORKDIR/figures/*.png; the runs go in
WORKDIR/runs/<model>/ and each study's own files in WORKDIR/studies/<section>/.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmsjax import config as config_lib
from vmsjax import evaluate, hostmem, inference, sweep
from vmsjax import workdir as workdir_lib
from vmsjax.data import catalogue
from vmsjax.errors import VMSError
from vmsjax.studies import embedding, reference, runners, sources

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paper_report  # noqa: E402  (sibling script: the report's sections and files)

# ---------------------------------------------------------------------------------------
# The models: experiments/table1.py's, with which overrides

TABLE1 = config_lib.REPO_ROOT / "experiments" / "table1.py"
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
  p.add_argument("--skip_train", action="store_true", help="train nothing: report the runs there")
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
  p.add_argument("--latent_method", choices=embedding.METHODS, default="pca")
  args = p.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    p.error("--steps must be >= 1")
  if args.lamem_subset < 1:
    p.error("--lamem_subset must be >= 1")
  return args


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


# ---------------------------------------------------------------------------------------
# Sections: what to run, on which data


def preflight(ctx: Context) -> None:
  """Refuses, before anything trains, a run that cannot start: data or weights missing."""
  c = ctx.configs[0]
  if not c.data.auto_build and not catalogue.is_built(c.data.name, c.data.data_dir):
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
  """Trains and evaluates what is not done of the Table 1 models; picks the best one."""
  sweep_report = None
  if ctx.args.skip_train:
    for c, d in zip(ctx.configs, ctx.dirs, strict=True):
      workdir_lib.check_config(d, c)  # a foreign run there is an error, as in training
  else:
    preflight(ctx)
    ctx.log(f"sweep {ctx.spec} in {ctx.runs} (trains and evaluates what is not done)")
    sweep_report = sweep.run(ctx.spec, ctx.runs, ctx.extra, baselines=ctx.baseline_functions)
  points = (sweep_report or {}).get("points", [])
  failed = {p["name"]: p.get("error", "") for p in points if p["status"] == "failed"}
  rows, evals = [], {}
  for p, c, d in zip(ctx.sweep.points, ctx.configs, ctx.dirs, strict=True):
    row = paper_report.model(p, d, sweep.point_overrides(p, ctx.extra), config_lib.total_steps(c))
    if p.name in failed:
      row.update(status="failed", reason=f"training failed: {failed[p.name]}")
    elif not sweep.trained(d, c):
      skipped = ctx.args.skip_train
      why = "not trained (--skip_train); run without it to train" if skipped else "not trained"
      row.update(status="missing", reason=why)
    else:
      evals[p.name] = evaluate.evaluate_once(d, c, ctx.baseline_functions, ctx.log)
      row.update(paper_report.evaluated(evals[p.name], evaluate.eval_path(d, c)))
    rows.append(row)
  if ctx.args.best and evals and ctx.args.best not in evals:
    raise VMSError(
      f"--best {ctx.args.best}: no finished model of that name; finished: {', '.join(evals)}"
    )
  done = [r for r in rows if r["status"] == "done"]
  best = (ctx.args.best or max(done, key=paper_report.rho_all)["name"]) if done else None
  ctx.evals, ctx.best = evals, best
  return paper_report.table1(
    rows,
    evals,
    best,
    "--best" if ctx.args.best else "highest rho2D(all)",
    sweep=ctx.spec,
    base_config=ctx.config_spec,
    runs=ctx.runs,
    extra=ctx.extra,
    baselines=ctx.baselines,
    train_commands=sweep.commands(ctx.sweep, ctx.config_spec, ctx.runs, ctx.extra),
  )


def table2_section(ctx: Context) -> dict:
  row = next(r for r in ctx.sections["table1"]["models"] if r["name"] == ctx.best)
  return paper_report.table2(ctx.evals[ctx.best], row, ctx.baselines, ctx.workdir)


def saliency_section(ctx: Context) -> dict:
  return paper_report.saliency(ctx.evals, ctx.sections["table1"]["models"], ctx.baselines)


def vischema2_section(ctx: Context) -> dict:
  """Predicted VISCHEMA2 category scores against the ground-truth VISCHEMA ones."""
  name, data_dir = ctx.data.name, ctx.data.data_dir
  note = {}
  if ctx.synthetic:
    predict, truth = f"{name}:{ctx.data.eval_split}", f"{name}:train"
    note["note"] = (
      "the synthetic set has no VISCHEMA2: its stand-in is the predicted maps of the "
      "synthetic evaluation split against the ground-truth maps of its training split"
    )
  elif not catalogue.is_built("vischema2", data_dir):
    return {
      "status": "skipped",
      "reason": f"vischema2 is not built in {data_dir}; build it with `vmsjax data build "
      f"vischema2 --manual_dir DIR --data_dir {data_dir}` (docs/data.md)",
    }
  else:
    predict, truth = "vischema2:test", f"{name}:train+test"
  out = ctx.studies / "vischema2"

  def run() -> dict:
    return runners.run_categories(ctx.trained, ctx.open(predict), ctx.open(truth), out, log=ctx.log)

  chosen = {"predict": predict, "truth": truth}
  argv = ["--predict", predict, "--truth", truth]
  keep = ("spearman", "categories")
  figure = "figure5_categories.png"
  return ctx.study("categories", out, argv, chosen, run, keep, figure, **note, **chosen)


def lamem_section(ctx: Context) -> dict:
  """Map scores of a seeded LaMem subset against LaMem's memorability scores."""
  spec = ctx.args.lamem
  if spec is None:
    if catalogue.is_built("lamem", ctx.data.data_dir):
      # Sorted by id and drawn with default_rng(seed): with 10,000 and seed 0 these are
      # the images of the lamem/subset10k build.
      spec = "lamem:train+val+test"
    elif catalogue.is_built("lamem/subset10k", ctx.data.data_dir):
      spec = "lamem/subset10k:test"
    else:
      return {
        "status": "skipped",
        "reason": f"LaMem is not built in {ctx.data.data_dir} (looked for lamem and "
        f"lamem/subset10k); build it with `vmsjax data build lamem --manual_dir DIR "
        f"--data_dir {ctx.data.data_dir}` (docs/data.md)",
      }
  out = ctx.studies / "lamem"
  subset, seed = ctx.args.lamem_subset, ctx.args.seed

  def run() -> dict:
    return runners.run_scores(
      ctx.trained, ctx.open(spec), out, subset=subset, seed=seed, log=ctx.log, warn=ctx.log
    )

  chosen = {"data": spec, "subset": subset, "seed": seed}
  argv = ["--data", spec, "--subset", str(subset), "--seed", str(seed)]
  return ctx.study("scores", out, argv, chosen, run, ("images", "spearman"), **chosen)


def external_section(ctx: Context) -> dict:
  """Map scores against an external predictor's, per dataset its CSV has images of."""
  csv = ctx.args.external_scores
  if not csv:
    return {
      "status": "skipped",
      "reason": "no --external_scores CSV given (an external predictor's per-image scores, "
      "e.g. AMNet's, as `id,score` lines)",
    }
  column = ctx.args.external_column
  ids = set(reference.read_scores_csv(csv, column))  # a bad CSV fails here, once
  digest = hashlib.sha256(Path(csv).read_bytes()).hexdigest()
  specs = ctx.args.external_data
  if not specs:
    if ctx.synthetic:
      specs = [f"{ctx.data.name}:{ctx.data.eval_split}"]
    else:
      specs = [f"{ctx.data.name}:train+test"]
      if catalogue.is_built("vischema2", ctx.data.data_dir):
        specs.append("vischema2:test")
  studies = []
  for spec in specs:
    out = ctx.studies / "external" / re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec).strip("_")
    why = ""
    try:
      source = ctx.open(spec)
      if not ids & set(sources.source_ids(source)):
        why = f"no id of {csv} is an image of {spec}"
    except VMSError as e:  # e.g. a dataset that is not built: that one is skipped
      why = str(e)
    if why:
      studies.append({"data": spec, "files": str(out), "status": "skipped", "reason": why})
      continue

    def run(source=source, out=out) -> dict:
      return runners.run_scores(
        ctx.trained, source, out, scores_csv=csv, score_column=column, log=ctx.log, warn=ctx.log
      )

    chosen = {"data": spec, "csv": str(csv), "sha256": digest, "column": column}
    argv = ["--data", spec, "--scores", csv, *(["--score_column", column] if column else [])]
    keep = ("images", "spearman", "per_category", "images_without_score")
    studies.append(ctx.study("scores", out, argv, chosen, run, keep, data=spec))
  return paper_report.external(csv, studies)


def latent_section(ctx: Context) -> dict:
  """The best model's latent means in 2-D, on VISCHEMA2 (the paper's Fig. 6) if built."""
  note = {}
  if not ctx.synthetic and catalogue.is_built("vischema2", ctx.data.data_dir):
    spec = "vischema2:test"  # the paper's Fig. 6
  else:
    spec = f"{ctx.data.name}:{ctx.data.eval_split}"
    if not ctx.synthetic:
      note["note"] = f"vischema2 is not built in {ctx.data.data_dir}: the latent space of {spec}"
  out = ctx.studies / "latent"
  method, seed = ctx.args.latent_method, ctx.args.seed

  def run() -> dict:
    return runners.run_latent(
      ctx.trained, ctx.open(spec), out, method=method, seed=seed, log=ctx.log
    )

  chosen = {"data": spec, "method": method, "seed": seed}
  argv = ["--data", spec, "--method", method, "--seed", str(seed)]
  keep = ("images", "latent", "projection", "spearman_memorability_false_memorability")
  return ctx.study("latent", out, argv, chosen, run, keep, "figure6_latent.png", **note, data=spec)


# ---------------------------------------------------------------------------------------
# Running


class Context:
  """What the sections share: the arguments, the sweep, the evaluations, the best model."""

  def __init__(self, args: argparse.Namespace, log: Callable[[str], None]):
    self.args, self.log = args, log
    self.workdir = Path(args.workdir)
    self.runs = self.workdir / "runs"
    self.studies = self.workdir / "studies"
    self.spec = sweep_spec(args)
    self.extra = overrides(args)
    self.sweep, file = sweep.load(self.spec)
    self.config_spec = sweep.resolve_config(self.sweep.config, file)
    # Every point's config is built and checked before anything runs.
    self.configs = [sweep.point_config(self.config_spec, p, self.extra) for p in self.sweep.points]
    self.dirs = [self.runs / p.name for p in self.sweep.points]
    self.baselines = evaluate.parse_baselines(args.baselines)
    # Every model is evaluated on the same images: each baseline is computed once.
    self.baseline_functions = evaluate.baseline_functions(self.baselines, memoise=True)
    # The data of the first model: Table 1's models differ in model and loss only.
    self.data = self.configs[0].data
    self.synthetic = self.data.name.partition("/")[0] == "synthetic"
    self.sections: dict[str, dict] = {}
    self.evals: dict[str, dict] = {}
    self.best: str | None = None

  def best_run(self) -> tuple[Path, Any, int]:
    """The best model's workdir, config and last step."""
    i = [p.name for p in self.sweep.points].index(self.best)
    return self.dirs[i], self.configs[i], config_lib.total_steps(self.configs[i])

  @functools.cached_property
  def trained(self):
    """The best model's last checkpoint, restored once for all the studies (if any runs)."""
    workdir, _, step = self.best_run()
    return inference.load(workdir, step)

  def open(self, spec: str):
    """`DATASET:SPLIT[+SPLIT...]` as one source, as `vmsjax study` reads it."""
    return sources.open_spec(spec, self.data.data_dir)

  def study(
    self,
    name: str,
    out: Path,
    argv: list[str],
    chosen: dict,
    run: Callable[[], dict],
    keep: Sequence[str],
    figure: str | None = None,
    **fields: Any,
  ) -> dict:
    """Study `name` (`vmsjax study NAME ARGV`) of the best model into `out`, as a section.

    `run` runs it with the data and options `chosen`, unless they, this model and data dir
    made the report in `out` (`runners.cached`). The section: `fields`, the report's `keep`
    (`paper_report.study`), and out/NAME.png as WORKDIR/figures/`figure` if given.
    """
    workdir, config, step = self.best_run()
    key = {
      "workdir": str(workdir.resolve()),
      "checkpoint": step,
      "config": config_lib.fingerprint(config),
      "data_dir": str(self.data.data_dir),
      **chosen,
    }
    report = runners.cached(name, out, key, run, self.log)
    if figure:
      fields["figure"] = paper_report.copy_figure(out / f"{name}.png", self.workdir, figure)
    argv = ["--workdir", str(workdir), "--checkpoint", str(step), *argv]
    argv += ["--data_dir", str(self.data.data_dir), "--out", str(out)]
    return paper_report.study(name, report, out, argv, keep, **fields)


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
  report = paper_report.new(argv, ctx.data.name, ctx.data.data_dir, ctx.workdir, ctx.sections)
  for name in paper_report.SECTIONS:
    if name != "table1" and ctx.best is None:
      ctx.sections[name] = {"status": "skipped", "reason": "no trained model (see table1)"}
      continue
    say(f"section {name}")
    t0 = time.perf_counter()
    try:
      ctx.sections[name] = RUNNERS[name](ctx) | {"paper": paper_report.PAPER[name]}
    except VMSError as e:
      if name == "table1":
        raise  # a bad config or a foreign run: nothing else can run
      say(f"section {name} failed: {e}")
      ctx.sections[name] = {"status": "failed", "reason": str(e)}
    ctx.sections[name]["seconds"] = round(time.perf_counter() - t0, 1)
  return paper_report.write(report, ctx.workdir)


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
  print(f"written {paper_report.written(Path(args.workdir))}")
  failed = paper_report.failed(report)
  if failed:
    print(f"paper: failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
