"""`vmsjax predict`: VMS maps, overlays and scores for any images (see vmsjax/predict.py)."""

from __future__ import annotations

import argparse
import sys

NAME = "predict"
HELP = "VMS maps, overlays and memorability scores for image files or folders"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("images", nargs="+", help="image files and/or folders of images")
  parser.add_argument("--workdir", default="runs/synthetic", help="a trained workdir")
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
    "--no_figures", action="store_true", help="skip the PNG figures (arrays, overlays, CSV only)"
  )


def run(args: argparse.Namespace) -> int:
  from vmsjax import inference
  from vmsjax import predict as predict_lib
  from vmsjax.errors import VMSError

  if args.samples < 0:
    raise VMSError(f"--samples must be >= 0, got {args.samples}")
  found = predict_lib.find_images(args.images)
  if not found.files:
    raise VMSError(
      f"no image files ({', '.join(predict_lib.IMAGE_SUFFIXES)}) in {' '.join(args.images)}"
    )
  trained = inference.load(args.workdir, args.checkpoint)
  result = predict_lib.predict_files(
    trained,
    found,
    args.out,
    samples=args.samples,
    seed=args.seed,
    figures_too=not args.no_figures,
    overlay_peak=args.overlay_peak,
    warn=lambda line: print(f"vmsjax: {line}", file=sys.stderr),
  )
  line = predict_lib.summary(result)
  if result.skipped:
    print(f"vmsjax: {line}", file=sys.stderr)
    return 2
  print(line)
  return 0
