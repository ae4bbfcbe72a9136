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

import functools
import sys
from pathlib import Path

import jax
import numpy as np

from vmsjax import inference, metrics, records
from vmsjax import train as train_lib
from vmsjax.data import augment


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

  trained = inference.load(workdir, checkpoint)
  workdir, config, step = trained.workdir, trained.config, trained.step
  split = split or config.data.eval_split
  data_dir = data_dir or config.data.data_dir
  source = pipeline.open_split(config.data.name, split, data_dir)

  preds, targets, cats = [], [], []
  hw = train_lib.image_hw(config)
  for batch in pipeline.eval_batches(source, trained.batch_size):
    p, _ = inference.predict(trained, batch["image"])
    preds.append(p)
    # Ground truth at the model's resolution, with the resize used for training.
    targets.append(np.asarray(_resize_maps(batch["vms"], hw)))
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


@functools.partial(jax.jit, static_argnums=1)
def _resize_maps(vms, hw):
  return augment.warp(vms, augment.identity(vms.shape[0]), hw)


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
