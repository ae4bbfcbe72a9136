"""`vmsjax study {categories,scores,latent}`: memorability studies (see vmsjax/studies/).

vmsjax study categories --workdir W --predict DATASET:SPLIT --truth DATASET:SPLIT --out DIR
vmsjax study scores --workdir W --data DATASET:SPLIT [--scores CSV] [--subset N] --out DIR
vmsjax study latent --workdir W --data DATASET:SPLIT [--method pca|tsne|umap] --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "study"
HELP = "memorability studies: per-category ranks, score correlations, latent embeddings"


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", default="runs/synthetic", help="a trained workdir")
  p.add_argument("--checkpoint", type=int, default=None, help="step (default: the latest)")
  p.add_argument(
    "--data_dir", default=None, help="where the datasets are built (default: the workdir's config)"
  )
  p.add_argument("--out", default=None, help="output folder (default: WORKDIR/studies/STUDY)")


def _sampling(p: argparse.ArgumentParser) -> None:
  p.add_argument("--subset", type=int, default=None, help="a seeded subset of N images")
  p.add_argument("--seed", type=int, default=0, help="seed of the subset (and of t-SNE/UMAP)")
  p.add_argument(
    "--maps",
    choices=("predicted", "truth"),
    default="predicted",
    help="score the model's maps or the dataset's ground-truth maps",
  )


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="study", required=True)
  c = sub.add_parser(
    "categories",
    help="per-category scores of predicted maps vs ground-truth maps, Spearman across categories",
  )
  _common(c)
  c.add_argument("--predict", required=True, metavar="DATASET:SPLIT", help="images to predict")
  c.add_argument(
    "--truth", required=True, metavar="DATASET:SPLIT", help="images with ground-truth maps"
  )
  s = sub.add_parser("scores", help="Spearman of map scores vs ground-truth or external scores")
  _common(s)
  s.add_argument("--data", required=True, metavar="DATASET:SPLIT")
  s.add_argument(
    "--scores",
    default=None,
    metavar="CSV",
    help="reference scores as `id,score` lines (e.g. AMNet's); default: the dataset's `score`",
  )
  s.add_argument("--score_column", default=None, help="the CSV's score column, if it has a header")
  _sampling(s)
  lat = sub.add_parser("latent", help="2-D embedding of the latent means, coloured by scores")
  _common(lat)
  lat.add_argument("--data", required=True, metavar="DATASET:SPLIT")
  lat.add_argument("--method", choices=("pca", "tsne", "umap"), default="pca")
  _sampling(lat)


def run(args: argparse.Namespace) -> int:
  from vmsjax import inference
  from vmsjax.studies import runners, sources

  workdir = Path(args.workdir)
  # Ground-truth-only studies (`scores --maps truth`) need no model: with --data_dir
  # the workdir is not read at all.
  data_dir = args.data_dir or inference.load_config(workdir).data.data_dir
  out = Path(args.out) if args.out else workdir / "studies" / args.study

  def open_spec(text: str, flag: str):
    # "train+test" reads several splits as one source.
    return sources.open_spec(text, data_dir, flag)

  def warn(line: str) -> None:
    print(f"vmsjax: {line}", file=sys.stderr)

  if args.study == "categories":
    predict_source = open_spec(args.predict, "--predict")
    truth_source = open_spec(args.truth, "--truth")
    trained = inference.load(workdir, args.checkpoint)
    report = runners.run_categories(trained, predict_source, truth_source, out)
  elif args.study == "scores":
    source = open_spec(args.data, "--data")
    trained = inference.load(workdir, args.checkpoint) if args.maps == "predicted" else None
    report = runners.run_scores(
      trained,
      source,
      out,
      maps=args.maps,
      subset=args.subset,
      seed=args.seed,
      scores_csv=args.scores,
      score_column=args.score_column,
      warn=warn,
    )
  else:
    source = open_spec(args.data, "--data")
    trained = inference.load(workdir, args.checkpoint)
    report = runners.run_latent(
      trained, source, out, method=args.method, maps=args.maps, subset=args.subset, seed=args.seed
    )
  print((out / f"{report['study']}.md").read_text(), end="")
  written = sorted(p.name for p in out.iterdir() if p.stem.startswith(report["study"]))
  print(f"written to {out}: {', '.join(written)}")
  return 0
