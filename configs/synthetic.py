"""The embedded default: the VMS-VAE on the synthetic dataset, sized for a 2-core CPU.

Run (builds the synthetic dataset into ./data on first use, ~30 s):

  vmsjax train --workdir runs/synthetic
  vmsjax evaluate --workdir runs/synthetic

Expected on a 2-core CPU: about 6 minutes of training; on the synthetic test split the
model beats the centre-bias baseline on rho2D(all) and rho2D(true) by a wide margin
(README "Measured" gives the figures). Args (comma-separated): `tiny` shrinks
everything for tests (32x32, a few steps).

The encoder is a randomly initialised, frozen VGG-16 (no weights can be downloaded):
the synthetic maps are simple enough for random features; real data needs ImageNet
weights (`model.encoder.weights`).
"""

from vmsjax.config import base_config


def get_config(arg: str | None = None):
  args = set(filter(None, (arg or "").split(",")))
  unknown = args - {"tiny"}
  if unknown:
    raise ValueError(f"unknown arg(s) {sorted(unknown)} for configs/synthetic.py; known: tiny")
  c = base_config()
  c.data.name = "synthetic"
  c.data.auto_build = True
  c.data.image_size = 64
  c.model.encoder.allow_random = True
  c.model.dense = 128
  c.model.latent = 32
  c.model.decoder_channels = (128, 64, 32, 16)
  c.train.batch_size = 32
  c.train.epochs = 40
  c.train.steps_per_epoch = 20
  c.optim.learning_rate = 1e-3
  # At 64x64 the reconstruction term is 12x smaller than at 224x224, and with beta = 1
  # from step 0 the latent collapses (KL -> 0, every prediction the mean map). A KL
  # warm-up over the first half of training avoids it (rho2D(all) 0.28 -> 0.65).
  c.loss.kl_warmup_steps = 400
  c.checkpoint.every_steps = 200
  if "tiny" in args:
    c.data.image_size = 32
    c.model.dense = 16
    c.model.latent = 4
    c.model.decoder_channels = (16, 8, 8, 8)
    c.train.batch_size = 8
    c.train.epochs = 1
    c.train.steps_per_epoch = 12
    c.checkpoint.every_steps = 4
    c.log.every_steps = 2
    c.eval.batch_size = 16
  return c
