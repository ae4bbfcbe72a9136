"""`vmsjax compare`: two runs side by side (see vmsjax/compare.py)."""

from __future__ import annotations

import argparse

NAME = "compare"
HELP = "two runs side by side: config differences, lineage, evaluation tables, metric curves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("w1", metavar="W1", help="a training workdir")
  parser.add_argument("w2", metavar="W2", help="another training workdir")
  parser.add_argument(
    "--out",
    default=None,
    help="folder for compare.md, compare.json and curves.png "
    "(default: ./compare-<name of W1>-<name of W2>)",
  )


def run(args: argparse.Namespace) -> int:
  from pathlib import Path

  from vmsjax import compare

  report = compare.compare(args.w1, args.w2, args.out)
  out = Path(report["out"])
  print((out / compare.REPORT_MD).read_text(), end="")
  files = ", ".join(str(out / f) for f in report["files"].values())
  print(f"written to {files}")
  return 0
