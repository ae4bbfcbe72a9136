"""Evaluation of a trained workdir: per-channel MSE and rho2D beside a centre-bias baseline.

Predictions use z = mu and batch-norm running statistics, so evaluating a checkpoint
gives the same numbers every time. Ground-truth maps are resampled to the model's
resolution (`data.image_size`) with the same bilinear resize as training inputs.

The centre-bias baseline is one fixed isotropic Gaussian at the image centre (sigma =
a quarter of the side), scaled per channel by the least-squares factor that best fits
the evaluated maps. That scale only matters for MSE (rho2D ignores it) and flatters the
baseline, so beating it is a conservative result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np

from vmsjax import config as config_lib
from vmsjax import metrics, records
from vmsjax import train as train_lib
from vmsjax.errors import VMSError


def load_config(workdir: Path) -> ml_collections.ConfigDict:
  saved = config_lib.read_saved(workdir)
  if saved is None:
    raise VMSError(
      f"{workdir / 'config.json'} not found: {workdir} is not a vmsjax training workdir"
    )
  cfg = ml_collections.ConfigDict(saved)
  # JSON turns tuples into lists; the model wants tuples.
  with cfg.unlocked():
    cfg.model.decoder_channels = tuple(cfg.model.decoder_channels)
  return cfg


def make_predict(config, model, encoder, mesh):
  repl, split = train_lib.shardings(mesh)

  def predict(state, enc_params, batch):
    image, vms = train_lib.resized_inputs(config, batch)
    feats = train_lib.encode(config, encoder, enc_params, image)
    logits, _, _ = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, feats, train=False, sample=False
    )
    return jax.nn.sigmoid(logits), vms

  return jax.jit(predict, in_shardings=(repl, repl, split), out_shardings=(split, split))


def evaluate(
  workdir: str | Path,
  split: str | None = None,
  checkpoint: int | None = None,
  data_dir: str | None = None,
) -> dict:
  """Evaluates a checkpoint of `workdir` on a split; writes eval/<split>-<step>.{json,md}.

  Returns:
    The report: {"step", "split", "dataset", "model": {channel: {...}},
    "centre_bias": {channel: {...}}}.
  """
  from vmsjax.data import pipeline

  workdir = Path(workdir)
  config = load_config(workdir)
  split = split or config.data.eval_split
  data_dir = data_dir or config.data.data_dir
  source = pipeline.open_split(config.data.name, split, data_dir)

  model, tx, encoder = (
    train_lib.make_model(config),
    train_lib.make_optimizer(config),
    train_lib.make_encoder(config),
  )
  mesh = train_lib.data_mesh()
  repl, split_sh = train_lib.shardings(mesh)
  root = jax.random.key(config.seed)
  enc_params = jax.device_put(train_lib.encoder_params(config, root), repl)
  state = jax.jit(lambda r: train_lib.init_state(config, model, tx, r), out_shardings=repl)(root)
  mngr = train_lib.checkpoint_manager(workdir, config)
  steps = mngr.all_steps()
  if not steps:
    raise VMSError(f"no checkpoint in {workdir / 'checkpoints'}; run vmsjax train first")
  step = steps[-1] if checkpoint is None else checkpoint
  if step not in steps:
    raise VMSError(f"checkpoint {step} not in {workdir / 'checkpoints'}; available: {steps}")
  state, _ = train_lib.restore(mngr, step, state)
  mngr.close()

  batch_size = config.eval.batch_size
  if batch_size % jax.device_count():
    batch_size = jax.device_count() * max(1, batch_size // jax.device_count())
  predict = make_predict(config, model, encoder, mesh)
  preds, targets, cats = [], [], []
  for batch in pipeline.eval_batches(source, batch_size):
    n = len(batch["image"])
    padded = {k: _pad(np.asarray(batch[k]), batch_size) for k in ("image", "vms")}
    p, t = predict(state, enc_params, train_lib.device_batch(padded, split_sh))
    preds.append(np.asarray(p)[:n])
    targets.append(np.asarray(t)[:n])
    cats.append(np.asarray(batch["category"]))
  pred = np.concatenate(preds)  # (N, H, W, 2)
  target = np.concatenate(targets)

  centre = metrics.centre_bias(*pred.shape[1:3])
  baseline = np.empty_like(target)
  for c in range(2):
    t = target[..., c]
    scale = float(np.sum(t * centre) / (np.sum(centre * centre) * len(t)))
    baseline[..., c] = scale * centre
  report = {
    "workdir": str(workdir),
    "step": int(step),
    "split": split,
    "dataset": config.data.name,
    "images": int(len(pred)),
    "image_size": int(pred.shape[1]),
    "model": metrics.summarise(metrics.per_image(pred, target)),
    "centre_bias": metrics.summarise(metrics.per_image(baseline, target)),
  }
  out_dir = workdir / "eval"
  out_dir.mkdir(exist_ok=True)
  records.write_json(out_dir / f"{split}-{step}.json", report)
  (out_dir / f"{split}-{step}.md").write_text(markdown_table(report))
  return report


def _pad(x: np.ndarray, n: int) -> np.ndarray:
  if len(x) == n:
    return x
  pad = np.repeat(x[-1:], n - len(x), axis=0)  # repeats are dropped after prediction
  return np.concatenate([x, pad])


def markdown_table(report: dict) -> str:
  """The report as a Markdown table (model beside centre bias, per channel)."""
  lines = [
    f"Evaluation of `{report['workdir']}` at step {report['step']} on "
    f"{report['dataset']}/{report['split']} ({report['images']} images, "
    f"{report['image_size']}x{report['image_size']})",
    "",
    "| VMS | model rho2D | centre rho2D | model MSE | centre MSE | model MSE (0-255) "
    "| constant maps |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for c in metrics.CHANNELS:
    m, b = report["model"][c], report["centre_bias"][c]
    lines.append(
      f"| {c} | {m['rho2d']:.3f} | {b['rho2d']:.3f} | {m['mse']:.4f} | {b['mse']:.4f} "
      f"| {m['mse_255']:.1f} | {m['constant']} |"
    )
  return "\n".join(lines) + "\n"


def print_report(report: dict, file=None) -> None:
  print(markdown_table(report), file=file or sys.stdout)
