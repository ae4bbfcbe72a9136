"""The `vmsjax` command: argument parsing only.

  vmsjax train [--config FILE[:ARG]] [--workdir DIR] [--init_from W[:STEP]] [--config.a.b=VALUE ...]
  vmsjax evaluate --workdir DIR [--split test] [--step STEP] [--baselines centre,gbvs,ridge]
  vmsjax data build NAME[/CONFIG] [--manual_dir DIR] [--data_dir DIR] [--skip_bad_files]
  vmsjax data info NAME[/CONFIG] [--data_dir DIR]
  vmsjax data export NAME:SPLIT --out DIR [--limit N] [--data_dir DIR]
  vmsjax convert-vgg16 SRC OUT.npz
  vmsjax <command> ...   each module of vmsjax/commands/ (compare, export-model, predict,
                         reproduce, saliency, study, sweep)

A VMSError (something the user can fix) is printed on one line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

from vmsjax import commands, distributed, hostmem
from vmsjax.errors import VMSError

DEFAULT_WORKDIR = "runs/synthetic"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="vmsjax", description="Visual Memory Schema VAE in JAX.", allow_abbrev=False
  )
  sub = p.add_subparsers(dest="command", required=True)

  t = sub.add_parser(
    "train",
    help="train (resumes from the workdir's latest checkpoint)",
    epilog="Override any config value with --config.KEY=VALUE, e.g. --config.model.latent=16.",
  )
  t.add_argument("--config", default=None, help="config file[:arg] (default configs/synthetic.py)")
  t.add_argument("--workdir", default=DEFAULT_WORKDIR)
  t.add_argument(
    "--init_from",
    default=None,
    metavar="W[:STEP]",
    help="start a new run from workdir W's checkpoint STEP (default: its latest): "
    "parameters, optimiser state, step and data position (docs/reproducibility.md)",
  )
  t.add_argument(
    "--init_from_params_only",
    action="store_true",
    help="with --init_from: take the parameters and batch statistics only; fresh optimiser, step 0",
  )
  t.add_argument(
    "--distributed",
    choices=("auto", "on", "off"),
    default="auto",
    help="join a multi-process job (auto: when the options below are given or SLURM/MPI "
    "runs more than one task)",
  )
  t.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
  t.add_argument("--num_processes", type=int, default=None)
  t.add_argument("--process_id", type=int, default=None)

  e = sub.add_parser("evaluate", help="evaluate a trained workdir")
  e.add_argument("--workdir", default=DEFAULT_WORKDIR)
  e.add_argument("--split", default=None, help="dataset split (default: the config's eval split)")
  e.add_argument(
    "--step",
    "--checkpoint",
    dest="checkpoint",
    type=int,
    default=None,
    help="the checkpoint step to evaluate (default: the newest that restores)",
  )
  e.add_argument("--data_dir", default=None, help="where the dataset is built (default: config)")
  e.add_argument(
    "--baselines",
    default="centre",
    help="comma-separated baselines scored beside the model: centre, gbvs (slow), ridge "
    "(a linear probe fitted on the training split's trunk features); 'none' for none "
    "(default: centre)",
  )
  e.add_argument(
    "--dataset", default=None, help="a dataset with VMS maps (default: the training one)"
  )

  d = sub.add_parser("data", help="build or describe datasets")
  dsub = d.add_subparsers(dest="data_command", required=True)
  names = "synthetic, vischema, vischema2, lamem; a config after a slash, e.g. lamem/split2"
  b = dsub.add_parser(
    "build",
    help="build a dataset as array_record",
    epilog="Folder layouts of the downloaded datasets: docs/data.md.",
  )
  b.add_argument("name", help=names)
  b.add_argument("--data_dir", default="data", help="where the built dataset goes")
  b.add_argument(
    "--manual_dir",
    default=None,
    help="the downloaded files (vischema, vischema2, lamem): DIR/images/... or "
    "DIR/<name>/images/... (default DATA_DIR/downloads/manual)",
  )
  b.add_argument(
    "--skip_bad_files",
    action="store_true",
    help="leave out unreadable or inconsistent files and list them in build_report.json "
    "(default: fail, naming every one)",
  )
  i = dsub.add_parser("info", help="examples per split and per category")
  i.add_argument("name", help=names)
  i.add_argument("--data_dir", default="data")
  x = dsub.add_parser(
    "export", help="write a split's images as PNG (and its maps as .npy) to look at or predict"
  )
  x.add_argument("spec", metavar="NAME:SPLIT", help="e.g. synthetic:test")
  x.add_argument("--out", required=True, help="the folder to write")
  x.add_argument("--limit", type=int, default=None, help="the first N images in id order")
  x.add_argument("--data_dir", default="data")

  c = sub.add_parser(
    "convert-vgg16",
    help="check VGG-16 weights (Keras .h5, torchvision .pth) and write them as .npz",
  )
  c.add_argument("src", help="Keras .h5 or torchvision .pth (or a .npz to re-check)")
  c.add_argument("out", help="the .npz to write")

  for module in commands.modules():
    module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
  return p


def _split_overrides(rest: list[str]) -> list[str]:
  out = []
  for arg in rest:
    if arg.startswith("--config.") and "=" in arg:
      out.append(arg[len("--config.") :])
    else:
      raise VMSError(
        f"unrecognised argument {arg!r}; config overrides look like --config.a.b=VALUE"
      )
  return out


def run(argv: list[str]) -> int:
  args, rest = _parser().parse_known_args(argv)
  if args.command == "train":
    from vmsjax import config as config_lib
    from vmsjax import train

    overrides = _split_overrides(rest)
    config = config_lib.load(args.config)
    config_lib.override(config, overrides)
    config_lib.validate(config)
    distributed.initialize(
      args.distributed, args.coordinator_address, args.num_processes, args.process_id
    )
    parent = None
    if args.init_from:
      from vmsjax import lineage

      parent = lineage.parse(args.init_from, args.init_from_params_only)
    elif args.init_from_params_only:
      raise VMSError("--init_from_params_only needs --init_from W[:STEP]")
    train.train_and_evaluate(config, args.workdir, init_from=parent)
    print(f"training finished; evaluate with: vmsjax evaluate --workdir {args.workdir}")
    return 0
  plugin = next((m for m in commands.modules() if m.NAME == args.command), None)
  if plugin is not None and getattr(plugin, "ACCEPTS_CONFIG_OVERRIDES", False):
    args.config_overrides = _split_overrides(rest)
  elif rest:
    raise VMSError(
      f"unrecognised argument {rest[0]!r} for `vmsjax {args.command}` "
      f"(see vmsjax {args.command} --help)"
    )
  if args.command == "evaluate":
    from vmsjax import evaluate

    report = evaluate.evaluate(
      args.workdir, args.split, args.checkpoint, args.data_dir, args.baselines, args.dataset
    )
    from vmsjax import eval_report

    eval_report.print_report(report)
    files = ", ".join(f"{args.workdir}/eval/{f}" for f in report["files"].values())
    print(f"written to {files}")
    return 0
  if args.command == "data":
    from vmsjax.data import catalogue

    if args.data_command == "build":
      report = catalogue.build(args.name, args.data_dir, args.manual_dir, args.skip_bad_files)
      print(catalogue.describe(args.name, args.data_dir))
      if report is not None:
        print(catalogue.format_report(report))
      return 0
    if args.data_command == "info":
      print(catalogue.describe(args.name, args.data_dir))
      return 0
    if args.data_command == "export":
      from vmsjax.data import spec

      name, (split,) = spec.parse(args.spec, single=True)
      source = catalogue.open_split(name, split, args.data_dir)
      from vmsjax.data import export

      paths = export.export(source, args.out, args.limit)
      print(f"wrote {len(paths)} images of {name}:{split} to {args.out}")
      return 0
  if plugin is not None:
    return plugin.run(args)
  if args.command == "convert-vgg16":
    from vmsjax import weights

    w = weights.convert(args.src, args.out)
    print(
      f"wrote {args.out}: VGG-16 trunk from {w.source} ({w.known or 'not an official file'}), "
      f"preprocessing={w.preprocessing}"
    )
    return 0
  return 2


def main(argv: list[str] | None = None) -> int:
  entry_point = argv is None
  argv = sys.argv[1:] if argv is None else argv
  try:
    if entry_point:
      hostmem.reexec_with_huge_pages()  # may restart the process; see vmsjax/hostmem.py
    return run(argv)
  except VMSError as e:
    print(f"vmsjax: error: {' '.join(str(e).split())}", file=sys.stderr)
    distributed.exit_now_if_joined(2)
    return 2
  except KeyboardInterrupt:
    print("vmsjax: interrupted", file=sys.stderr)
    distributed.exit_now_if_joined(130)
    return 130
  except Exception:
    # A bug, not a user error: show it, and in a multi-process job do not hang the
    # others in JAX's shutdown barrier (see distributed.exit_now_if_joined).
    if distributed.joined():
      import traceback

      traceback.print_exc()
      distributed.exit_now_if_joined(1)
    raise


if __name__ == "__main__":
  sys.exit(main())
