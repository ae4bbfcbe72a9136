"""On-device geometric augmentation, one draw per example, applied to image and map alike.

A draw is (shift_x, shift_y, zoom, flip): shifts are fractions of the width/height in
[-max_shift, max_shift]; zoom is a magnification in [1 - zoom_range, 1 + zoom_range]
(>1 zooms in); flip mirrors left-right with probability 1/2. The same affine map of
output to input coordinates is used to resample the image and its VMS with bilinear
interpolation (edges repeat, like Keras' `fill_mode="nearest"`), and the resampling also
resizes the stored 224x224 record to the model's input size, so augmentation and
resizing cost one pass. With the identity draw it is a plain bilinear resize.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Column order of a draw.
SHIFT_X, SHIFT_Y, ZOOM, FLIP = 0, 1, 2, 3


def draw(
  rng: jax.Array, batch: int, max_shift: float, zoom_range: float, flip: bool
) -> jnp.ndarray:
  """Samples (batch, 4) transform parameters: shift_x, shift_y, zoom, flip (0. or 1.)."""
  k_shift, k_zoom, k_flip = jax.random.split(rng, 3)
  shift = jax.random.uniform(k_shift, (batch, 2), minval=-max_shift, maxval=max_shift)
  zoom = jax.random.uniform(k_zoom, (batch, 1), minval=1.0 - zoom_range, maxval=1.0 + zoom_range)
  flips = jax.random.bernoulli(k_flip, 0.5, (batch, 1)).astype(jnp.float32)
  if not flip:
    flips = jnp.zeros_like(flips)
  return jnp.concatenate([shift, zoom, flips], axis=1)


def identity(batch: int) -> jnp.ndarray:
  """(batch, 4) parameters of the identity transform."""
  return jnp.tile(jnp.asarray([[0.0, 0.0, 1.0, 0.0]], jnp.float32), (batch, 1))


def _sample_coords(params: jnp.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]):
  """Input pixel coordinates (rows, cols), each (H_out, W_out), for one draw."""
  h_in, w_in = in_hw
  h_out, w_out = out_hw
  # Output pixel centres in normalised coordinates centred on the image: [-0.5, 0.5].
  v = (jnp.arange(h_out, dtype=jnp.float32) + 0.5) / h_out - 0.5
  u = (jnp.arange(w_out, dtype=jnp.float32) + 0.5) / w_out - 0.5
  v, u = jnp.meshgrid(v, u, indexing="ij")  # (H_out, W_out)
  u = jnp.where(params[FLIP] > 0.5, -u, u)
  # Zooming in by s shows the central 1/s of the input; the shift moves the content by
  # +shift (so the window moves by -shift).
  u = u / params[ZOOM] - params[SHIFT_X]
  v = v / params[ZOOM] - params[SHIFT_Y]
  rows = (v + 0.5) * h_in - 0.5
  cols = (u + 0.5) * w_in - 0.5
  return rows, cols


def _warp_one(x: jnp.ndarray, params: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """(H, W, C) float -> (H_out, W_out, C) resampled with the draw `params`."""
  rows, cols = _sample_coords(params, x.shape[:2], out_hw)

  def channel(c: jnp.ndarray) -> jnp.ndarray:
    return jax.scipy.ndimage.map_coordinates(c, [rows, cols], order=1, mode="nearest")

  return jax.vmap(channel, in_axes=2, out_axes=2)(x)


def warp(x: jnp.ndarray, params: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """Applies one draw per example: (B, H, W, C) -> (B, H_out, W_out, C) float32."""
  return jax.vmap(lambda xi, pi: _warp_one(xi, pi, out_hw))(x.astype(jnp.float32), params)


def augment(
  rng: jax.Array,
  image: jnp.ndarray,
  vms: jnp.ndarray,
  out_hw: tuple[int, int],
  *,
  max_shift: float,
  zoom_range: float,
  flip: bool,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Draws one transform per example and applies it to the image and its map.

  Args:
    rng: key of the `augment` stream.
    image: (B, H, W, 3) uint8 or float on 0-255.
    vms: (B, H, W, 2) maps in [0, 1].
    out_hw: model input size.

  Returns:
    image (B, H_out, W_out, 3) float32 on 0-255, vms (B, H_out, W_out, 2) float32.
  """
  params = draw(rng, image.shape[0], max_shift, zoom_range, flip)
  return warp(image, params, out_hw), warp(vms, params, out_hw)
