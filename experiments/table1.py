"""The paper's Table 1 as a sweep: (n=128, m=32), (n=64, m=8), (n=64, m=8, L1).

Args (comma-separated):
  synthetic  on the embedded synthetic set at 64x64 (configs/synthetic.py) instead of
             VISCHEMA at 224x224 (configs/vischema.py, needs ImageNet VGG-16 weights)
  runlocal   the paper configs' laptop schedule (configs/vischema.py's runlocal)
  seeds=N    N seeds per model (points m32_s0 ... ; seeds of one model train together
             in one step and are summarised as mean ± std in the report)
  epochs=N   shorten (or lengthen) the schedule to N epochs

Run:

  vmsjax sweep experiments/table1.py:synthetic --workdir runs/table1_synthetic
  vmsjax sweep experiments/table1.py --workdir runs/table1 \
      --set model.encoder.weights=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
  vmsjax sweep experiments/table1.py:seeds=3 --workdir runs/table1 --print-commands

Paper (Table 1; rho2D true/false/all): m32 0.545/0.369/0.570, m8 0.513/0.333/0.530,
m8_l1 0.543/0.168/0.559; MSE (0-255) all: 85.4, 83.5, 72.1.
"""

import importlib.util

from vmsjax.config import REPO_ROOT
from vmsjax.sweep import Point, Sweep


def _paper_models() -> dict:
  """configs/vischema.py's MODELS, so the sweep and the config file cannot drift apart."""
  spec = importlib.util.spec_from_file_location(
    "vischema_config", REPO_ROOT / "configs/vischema.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.MODELS


def get_sweep(arg: str | None = None) -> Sweep:
  flags, values = set(), {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if sep:
      values[key] = value
    else:
      flags.add(key)
  unknown = (flags - {"synthetic", "runlocal"}) | (set(values) - {"seeds", "epochs"})
  if unknown:
    raise ValueError(
      f"unknown arg(s) {sorted(unknown)} for experiments/table1.py; known: synthetic, "
      "runlocal, seeds=N, epochs=N"
    )
  try:
    seeds = int(values.get("seeds", 0))
    epochs = int(values["epochs"]) if "epochs" in values else None
  except ValueError as e:
    raise ValueError(f"seeds and epochs take integers ({e})") from e
  if seeds < 0 or (epochs is not None and epochs < 1):
    raise ValueError("seeds must be >= 0 and epochs >= 1")

  if "synthetic" in flags:
    if "runlocal" in flags:
      raise ValueError("runlocal shrinks the paper configs; with synthetic use epochs=N")
    config = "configs/synthetic.py"
  else:
    config = "configs/vischema.py:m32" + (",runlocal" if "runlocal" in flags else "")
  common = [f"train.epochs={epochs}"] if epochs else []
  points = []
  for name, model in _paper_models().items():
    overrides = [
      f"model.dense={model['dense']}",
      f"model.latent={model['latent']}",
      f"loss.reconstruction={model['reconstruction']}",
      *common,
    ]
    if seeds:
      points += [Point(f"{name}_s{s}", [*overrides, f"seed={s}"], label=name) for s in range(seeds)]
    else:
      points.append(Point(name, overrides))
  return Sweep(config=config, points=points, description="the paper's Table 1 models")
