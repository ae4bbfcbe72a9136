"""vmsjax: Visual Memory Schema maps from a VGG-16 variational autoencoder, in JAX/Flax.

  model = vmsjax.load_model("model.vmsmodel")  # written by `vmsjax export-model`
  maps = model.predict(images)                 # uint8 (N, H, W, 3) -> float32 (N, S, S, 2)

Importing this package is cheap (no jax): `load_model` imports the model code when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vmsjax.errors import VMSError

if TYPE_CHECKING:
  from vmsjax.model_file import Model

__all__ = ["VMSError", "load_model"]
__version__ = "0.1.0"


def load_model(path: str | os.PathLike, encoder_weights: str | os.PathLike | None = None) -> Model:
  """Loads a `.vmsmodel` file for prediction (`vmsjax.model_file.load`).

  Args:
    path: the model file.
    encoder_weights: for a file exported with `--no-encoder`, the trunk it was trained
      with: a VGG-16 weights file (.h5, .pth, .npz), or "random" for a random trunk.

  Returns:
    A `vmsjax.model_file.Model`: `.predict(images)`, `.sample(images, k)`, `.scores(images)`.
  """
  from vmsjax import model_file  # jax and the model only when a model is loaded

  return model_file.load(path, encoder_weights)
