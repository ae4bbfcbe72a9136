"""`vmsjax export-model`: a trained workdir's checkpoint as one shareable file.

  vmsjax export-model --workdir W [--step N] --out model.vmsmodel [--no-encoder]

The file (format: vmsjax/model_file.py) holds the config, the head and decoder, their
batch statistics, the preprocessing, the dataset record and, unless `--no-encoder`, the
frozen trunk; `vmsjax predict --model model.vmsmodel` and `vmsjax.load_model` read it
without the workdir or the dataset.
"""

from __future__ import annotations

import argparse

NAME = "export-model"
HELP = "write a trained workdir's checkpoint as one .vmsmodel file (for predict --model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The arguments of `vmsjax export-model`."""
  parser.add_argument("--workdir", required=True, help="a trained workdir")
  parser.add_argument("--step", type=int, default=None, help="checkpoint (default: the latest)")
  parser.add_argument("--out", required=True, help="the model file to write, e.g. model.vmsmodel")
  parser.add_argument(
    "--no-encoder",
    dest="no_encoder",
    action="store_true",
    help="leave the frozen VGG-16 trunk out (its checksum is kept); whoever loads the file "
    "names the trunk with --encoder_weights",
  )


def run(args: argparse.Namespace) -> int:
  """Exports and prints one line on what was written."""
  import os

  from vmsjax import model_file

  manifest = model_file.export(
    args.workdir, args.out, step=args.step, include_encoder=not args.no_encoder
  )
  enc = manifest["encoder"]
  trunk = "with its trunk" if enc["included"] else "without its trunk"
  size = os.path.getsize(args.out) / 1e6
  print(
    f"wrote {args.out} ({size:.1f} MB): step {manifest['source']['step']} of {args.workdir}, "
    f"{trunk} (checksum {enc['checksum'][:12]}...)"
  )
  return 0
