"""`vmsjax sweep SWEEP.py[:ARG] --workdir DIR`: train, evaluate and tabulate a sweep's points.

  vmsjax sweep experiments/table1.py:synthetic --workdir runs/table1
  vmsjax sweep experiments/table1.py --workdir runs/table1 --print-commands \
      --set model.encoder.weights=/path/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5

Each point trains into DIR/<name> and is evaluated; points that differ only in seed,
loss weights or learning rate train together (one jitted step for the group). A rerun
skips finished points. DIR/report.{json,md} holds rho2D and MSE per point (Table 1).
"""

from __future__ import annotations

import argparse

NAME = "sweep"
ACCEPTS_CONFIG_OVERRIDES = True  # --config.KEY=VALUE counts like --set KEY=VALUE
HELP = "train and evaluate a sweep file's points (grouping those that can share a step)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("sweep", help="sweep file[:arg], e.g. experiments/table1.py:synthetic")
  parser.add_argument("--workdir", required=True, help="the sweep's folder; points go in DIR/NAME")
  parser.add_argument(
    "--print-commands",
    action="store_true",
    help="print one `vmsjax train` command per point (for a cluster array job), run nothing",
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="a config override for every point, after the point's own (repeatable), e.g. "
    "--set data.data_dir=/data",
  )
  parser.add_argument(
    "--no-group",
    dest="group",
    action="store_false",
    help="train every point alone, even those that could share a step",
  )
  parser.add_argument(
    "--max-group",
    type=int,
    default=0,
    help="at most this many points per group (0: no limit); bounds device memory",
  )


def run(args: argparse.Namespace) -> int:
  from vmsjax import sweep
  from vmsjax.errors import VMSError

  extra = [*(getattr(args, "config_overrides", None) or ()), *args.set]
  if args.max_group < 0:
    raise VMSError(f"--max-group must be >= 0, got {args.max_group}")
  if args.print_commands:
    loaded, file = sweep.load(args.sweep)
    spec = sweep.resolve_config(loaded.config, file)
    # Fail here, not on the cluster, if a point's config is bad.
    for p in loaded.points:
      sweep.point_config(spec, p, extra)
    for line in sweep.commands(loaded, spec, args.workdir, extra):
      print(line)
    return 0
  report = sweep.run(args.sweep, args.workdir, extra, args.group, args.max_group)
  print(sweep.markdown(report), end="")
  print(f"written to {args.workdir}/report.{{json,md}}")
  failed = [p["name"] for p in report["points"] if p["status"] != "done"]
  if failed:
    print(f"vmsjax: {len(failed)} point(s) did not finish: {', '.join(failed)}")
    return 1
  return 0
