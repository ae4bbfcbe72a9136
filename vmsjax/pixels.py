"""Pixels to trunk features, on the device: resize or augment, then the frozen VGG-16.

The training step (uncached), the feature cache's build and inference all go through
`encode`, so a cached feature is exactly what the uncached step computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vmsjax import factory, tuning
from vmsjax.data import augment
from vmsjax.models import vgg16


def resized_inputs(config: ml_collections.ConfigDict, batch: dict) -> tuple[jax.Array, jax.Array]:
  """A stored batch resized to the model's input size, without augmentation."""
  hw = factory.image_hw(config)
  ident = augment.identity(batch["image"].shape[0])
  return augment.warp(batch["image"], ident, hw), augment.warp(batch["vms"], ident, hw)


def augmented_inputs(
  config: ml_collections.ConfigDict, rng: jax.Array, batch: dict
) -> tuple[jax.Array, jax.Array]:
  """Augments (or just resizes) a batch; returns images on 0-255 (B, H, W, 3) and maps."""
  if not config.augment.enabled:
    return resized_inputs(config, batch)
  return augment.augment(
    rng,
    batch["image"],
    batch["vms"],
    factory.image_hw(config),
    max_shift=config.augment.max_shift,
    zoom_range=config.augment.zoom_range,
    flip=config.augment.flip,
  )


def encode(
  config: ml_collections.ConfigDict,
  encoder: vgg16.VGG16Trunk,
  enc_params,
  image: jax.Array,
  micro_batch: int | None = None,
) -> jax.Array:
  """Frozen trunk features (B, H/32, W/32, 512) float32 of 0-255 RGB images (B, H, W, 3).

  No gradient flows into the trunk. The batch goes through `micro_batch` images at a
  time (default: what `tuning.encoder_micro_batch` gives for this backend; the same
  features to float rounding, faster on CPU at large images).
  """

  def trunk(image):
    x = vgg16.preprocess(image, config.model.encoder.preprocessing)
    return encoder.apply({"params": enc_params}, x.astype(encoder.dtype))

  b, h, w = image.shape[:3]
  micro = tuning.encoder_micro_batch(b, h, w) if micro_batch is None else micro_batch
  if micro < b and b % micro == 0:
    chunks = image.reshape(b // micro, micro, *image.shape[1:])  # (B/u, u, H, W, 3)
    feats = jax.lax.map(trunk, chunks)  # (B/u, u, H/32, W/32, 512)
    feats = feats.reshape(b, *feats.shape[2:])
  else:
    feats = trunk(image)
  return jax.lax.stop_gradient(feats.astype(jnp.float32))  # (B, H/32, W/32, 512)
