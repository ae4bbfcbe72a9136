"""The `vmsjax` command: argument parsing only.

  vmsjax train [--config FILE[:ARG]] [--workdir DIR] [--config.a.b=VALUE ...]
  vmsjax evaluate --workdir DIR [--split test] [--checkpoint STEP]
  vmsjax data build NAME [--data_dir DIR]
  vmsjax data info NAME [--data_dir DIR]
  vmsjax convert-vgg16 SRC OUT.npz
  vmsjax <command> ...   each module of vmsjax/commands/ (predict, saliency, study, sweep ...)

A VMSError (something the user can fix) is printed on one line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

from vmsjax import commands
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

  e = sub.add_parser("evaluate", help="evaluate a trained workdir")
  e.add_argument("--workdir", default=DEFAULT_WORKDIR)
  e.add_argument("--split", default=None, help="dataset split (default: the config's eval split)")
  e.add_argument("--checkpoint", type=int, default=None, help="step (default: the latest)")
  e.add_argument("--data_dir", default=None, help="where the dataset is built (default: config)")

  d = sub.add_parser("data", help="build or describe datasets")
  dsub = d.add_subparsers(dest="data_command", required=True)
  b = dsub.add_parser("build", help="build a dataset as array_record")
  b.add_argument("name")
  b.add_argument("--data_dir", default="data")
  i = dsub.add_parser("info", help="examples per split and per category")
  i.add_argument("name")
  i.add_argument("--data_dir", default="data")

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
    train.train_and_evaluate(config, args.workdir)
    print(f"training finished; evaluate with: vmsjax evaluate --workdir {args.workdir}")
    return 0
  if rest:
    _split_overrides(rest)  # raises with the offending argument
  if args.command == "evaluate":
    from vmsjax import evaluate

    report = evaluate.evaluate(args.workdir, args.split, args.checkpoint, args.data_dir)
    evaluate.print_report(report)
    print(f"written to {args.workdir}/eval/{report['split']}-{report['step']}.{{json,md}}")
    return 0
  if args.command == "data":
    from vmsjax.data import pipeline

    if args.data_command == "build":
      pipeline.build(args.name, args.data_dir)
      print(pipeline.describe(args.name, args.data_dir))
      return 0
    if args.data_command == "info":
      print(pipeline.describe(args.name, args.data_dir))
      return 0
  for module in commands.modules():
    if args.command == module.NAME:
      return module.run(args)
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
  argv = sys.argv[1:] if argv is None else argv
  try:
    return run(argv)
  except VMSError as e:
    print(f"vmsjax: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("vmsjax: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
