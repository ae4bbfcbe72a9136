"""`vmsjax predict`: VMS maps, overlays and scores for any images (see vmsjax/predict.py).

  vmsjax predict IMAGES... --out DIR [--workdir W [--checkpoint N]]
  vmsjax predict IMAGES... --out DIR --model model.vmsmodel [--encoder_weights FILE|random]

The model is a trained workdir (default runs/synthetic) or a model file written by
`vmsjax export-model` (no workdir or dataset needed).
"""

from __future__ import annotations

import argparse
import sys

NAME = "predict"
HELP = "VMS maps, overlays and memorability scores for image files or folders"
DEFAULT_WORKDIR = "runs/synthetic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The arguments of `vmsjax predict`."""
  parser.add_argument("images", nargs="+", help="image files and/or folders of images")
  parser.add_argument(
    "--workdir", default=None, help=f"a trained workdir (default: {DEFAULT_WORKDIR})"
  )
  parser.add_argument(
    "--model", default=None, help="a .vmsmodel file from vmsjax export-model, instead of a workdir"
  )
  parser.add_argument(
    "--encoder_weights",
    default=None,
    help="with --model exported with --no-encoder: the trunk it was trained with, a VGG-16 "
    ".h5/.pth/.npz, or 'random' for a run on a random trunk",
  )
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--checkpoint", type=int, default=None, help="step (default: the latest)")
  parser.add_argument(
    "--samples",
    type=int,
    default=0,
    help="also draw K latents and write the per-pixel mean and standard deviation",
  )
  parser.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
  parser.add_argument(
    "--overlay_peak",
    action="store_true",
    help="scale each image's maps to a joint peak of 1 in its overlay (shows faint maps)",
  )
  parser.add_argument(
    "--normalise",
    choices=("none", "per-image"),
    default="none",
    help="per-image: rescale each map to its own [min, max] in the overlays (display only; "
    "the .npy maps and scores stay raw). Default none",
  )
  parser.add_argument(
    "--no_figures", action="store_true", help="skip the PNG figures (arrays, overlays, CSV only)"
  )


def run(args: argparse.Namespace) -> int:
  """Predicts; exit code 2 when a file was skipped (the others are still written)."""
  from vmsjax import predict as predict_lib
  from vmsjax.errors import VMSError

  if args.samples < 0:
    raise VMSError(f"--samples must be >= 0, got {args.samples}")
  if args.model is not None and args.workdir is not None:
    raise VMSError("give --workdir or --model, not both")
  if args.model is not None and args.checkpoint is not None:
    raise VMSError("--checkpoint is for --workdir; a model file holds one checkpoint")
  if args.model is None and args.encoder_weights is not None:
    raise VMSError("--encoder_weights is for --model (a model file exported with --no-encoder)")
  found = predict_lib.find_images(args.images)
  if not found.files:
    raise VMSError(
      f"no image files ({', '.join(predict_lib.IMAGE_SUFFIXES)}) in {' '.join(args.images)}"
    )
  if args.model is not None:
    from vmsjax import model_file

    trained = model_file.load(args.model, args.encoder_weights).trained
  else:
    from vmsjax import inference

    trained = inference.load(args.workdir or DEFAULT_WORKDIR, args.checkpoint)
  result = predict_lib.predict_files(
    trained,
    found,
    args.out,
    samples=args.samples,
    seed=args.seed,
    figures_too=not args.no_figures,
    overlay_peak=args.overlay_peak,
    warn=lambda line: print(f"vmsjax: {line}", file=sys.stderr),
    normalise=args.normalise,
  )
  line = predict_lib.summary(result)
  if result.skipped:
    print(f"vmsjax: {line}", file=sys.stderr)
    return 2
  print(line)
  return 0
