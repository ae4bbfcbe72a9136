"""The paper's three VISCHEMA models (Table 1), 224x224, batch 32, 250 epochs x 20 steps.

Args (comma-separated, first the model):
  m32         n=128 dense, m=32 latent, BCE reconstruction (best rho2D in the paper)
  m8          n=64, m=8, BCE
  m8_l1       n=64, m=8, L1 reconstruction (best MSE in the paper)
  centre_crop train on the `vischema/centre_crop` build (non-square images cropped to
              their centred square) instead of the default `vischema` (squashed)
  runlocal    shrink the schedule for a laptop smoke run (2 epochs x 5 steps, batch 8)

Run (the data first: docs/data.md gives the folder layouts it accepts):

  vmsjax data build vischema --manual_dir ~/Downloads/vischema_files --data_dir data
  vmsjax train --config configs/vischema.py:m32 --workdir runs/vischema_m32 \
      --config.model.encoder.weights=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
  vmsjax evaluate --workdir runs/vischema_m32

Paper figures (Table 1; rho2D true/false/all): m32 0.545/0.369/0.570,
m8 0.513/0.333/0.530, m8_l1 0.543/0.168/0.559.
"""

from vmsjax.config import base_config

MODELS = {
  "m32": dict(dense=128, latent=32, reconstruction="bce"),
  "m8": dict(dense=64, latent=8, reconstruction="bce"),
  "m8_l1": dict(dense=64, latent=8, reconstruction="l1"),
}


def get_config(arg: str | None = None):
  args = list(filter(None, (arg or "m32").split(",")))
  models = [a for a in args if a in MODELS]
  unknown = [a for a in args if a not in MODELS and a not in ("runlocal", "centre_crop")]
  if unknown or len(models) > 1:
    raise ValueError(
      f"bad arg {arg!r} for configs/vischema.py: give one of {', '.join(MODELS)}"
      " optionally followed by ',centre_crop' and/or ',runlocal'"
    )
  spec = MODELS[models[0] if models else "m32"]
  c = base_config()
  # The builder's output (vmsjax/data/vischema.py): 640 train / 160 test, maps in [0, 1].
  c.data.name = "vischema/centre_crop" if "centre_crop" in args else "vischema"
  c.data.eval_split = "test"
  c.data.image_size = 224
  c.model.dense = spec["dense"]
  c.model.latent = spec["latent"]
  c.loss.reconstruction = spec["reconstruction"]
  c.model.encoder.preprocessing = "caffe"  # the paper used Keras' ImageNet weights
  c.model.encoder.allow_random = False
  if "runlocal" in args:
    c.train.batch_size = 8
    c.train.epochs = 2
    c.train.steps_per_epoch = 5
  return c
