"""`vmsjax reproduce`: re-run a recorded run and compare (see vmsjax/reproduce.py)."""

from __future__ import annotations

import argparse

NAME = "reproduce"
HELP = "re-run a workdir's recorded config and say whether it comes out bit-identical"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("source", metavar="W", help="the trained workdir to reproduce (read only)")
  parser.add_argument("--workdir", required=True, help="a new folder for the reproduction")
  parser.add_argument(
    "--to", type=int, default=None, dest="to_step", help="last step (default: W's last checkpoint)"
  )
  parser.add_argument(
    "--from",
    type=int,
    default=None,
    dest="from_step",
    help="start from W's checkpoint at this step (default: from scratch)",
  )
  parser.add_argument(
    "--rtol",
    type=float,
    default=None,
    help="largest relative difference still 'within tolerance' (default: 1e-5, "
    "vmsjax.reproduce.DEFAULT_RTOL)",
  )
  parser.add_argument(
    "--data_dir", default=None, help="where W's dataset is built here (default: W's config)"
  )
  parser.add_argument(
    "--no_eval", action="store_true", help="do not evaluate the reproduction as W was evaluated"
  )


def run(args: argparse.Namespace) -> int:
  """Exit code 0 for bit-identical or within tolerance, 1 for drifted."""
  from pathlib import Path

  from vmsjax import environment
  from vmsjax import reproduce as reproduce_lib

  rtol = reproduce_lib.DEFAULT_RTOL if args.rtol is None else args.rtol
  report = reproduce_lib.reproduce(
    args.source,
    args.workdir,
    to_step=args.to_step,
    from_step=args.from_step,
    rtol=rtol,
    data_dir=args.data_dir,
    evaluate=not args.no_eval,
  )
  print(f"{args.source} reproduced in {args.workdir}: {report['verdict']} (rtol {rtol:g})")
  moved = [d for d in report["differences"] if not d["identical"]]
  for d in moved[:5]:
    print("  " + reproduce_lib.Difference(**d).line())
  if len(moved) > 5:
    print(f"  and {len(moved) - 5} more")
  env = report["environment"]["differences"]
  if env:
    print(f"environment changed: {environment.summary(env)}")
  print(f"written to {Path(args.workdir) / reproduce_lib.REPORT_MD}")
  return 1 if report["verdict"] == "drifted" else 0
