"""The VMS variational autoencoder: frozen VGG-16 trunk, latent head, map decoder.

The trunk's parameters live in their own pytree (`encoder` collection is never
trained); `VMSVAE` applies only the trainable part, on trunk features. Keeping the
two apart lets the training step pass the frozen weights as a plain argument, out
of the optimiser, and lets a feature cache skip the trunk entirely.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vmsjax.models import vgg16

N_UPSAMPLE = 5  # five stride-2 transposed convolutions: H/32 -> H


# --------------------------------------------------------------------------- sub-pixel


def _same_pads(k: int, s: int) -> tuple[int, int]:
  """Padding of the dilated input that `lax.conv_transpose(padding="SAME")` uses."""
  pad_len = k + s - 2
  pad_a = k - 1 if s > k - 1 else math.ceil(pad_len / 2)
  return pad_a, pad_len - pad_a


def _phase_taps(k: int, s: int) -> tuple[np.ndarray, int]:
  """For one axis: (taps (L, s), lo) with taps[d, a] the kernel index that output phase a
  takes from input offset d + lo (relative to the output's input pixel), or k for none.

  Output pixel s*i + a of a SAME transposed convolution sums x[i + d] * kernel[t] over
  the taps t with (a + t - pad_a) divisible by s, d = (a + t - pad_a) / s.
  """
  pad_a, _ = _same_pads(k, s)
  pairs = [(a, t, (a + t - pad_a) // s) for a in range(s) for t in range(k)]
  pairs = [(a, t, d) for a, t, d in pairs if (a + t - pad_a) % s == 0]
  lo = min(d for _, _, d in pairs)
  hi = max(d for _, _, d in pairs)
  taps = np.full((hi - lo + 1, s), k, np.int32)
  for a, t, d in pairs:
    taps[d - lo, a] = t
  return taps, lo


def subpixel_conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int]):
  """`lax.conv_transpose(x, kernel, strides, "SAME")` as a plain convolution + depth-to-space.

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out), the layout `nn.ConvTranspose` stores (not flipped).
    strides: (sh, sw).

  Returns:
    (B, H * sh, W * sw, C_out).
  """
  kh, kw, c_in, c_out = kernel.shape
  sh, sw = strides
  ty, lo_y = _phase_taps(kh, sh)  # (Ly, sh)
  tx, lo_x = _phase_taps(kw, sw)  # (Lx, sw)
  # A zero row and column at index k stand for "no tap".
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  k2 = padded[ty[:, None, :, None], tx[None, :, None, :]]  # (Ly, Lx, sh, sw, C_in, C_out)
  ly, lx = ty.shape[0], tx.shape[0]
  k2 = k2.transpose(0, 1, 4, 2, 3, 5).reshape(ly, lx, c_in, sh * sw * c_out)
  y = lax.conv_general_dilated(
    x,
    k2,
    window_strides=(1, 1),
    padding=((-lo_y, ly - 1 + lo_y), (-lo_x, lx - 1 + lo_x)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )  # (B, H, W, sh * sw * C_out)
  b, h, w, _ = y.shape
  y = y.reshape(b, h, w, sh, sw, c_out).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h * sh, w * sw, c_out)  # (B, H*sh, W*sw, C_out)


class SubpixelConvTranspose(nn.Module):
  """Drop-in for the decoder's `nn.ConvTranspose(..., padding="SAME")` layers.

  Same parameter names, shapes and initialisers as `nn.ConvTranspose` (so checkpoints
  and initial values carry over), same outputs to float rounding; computed by
  `subpixel_conv_transpose`.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.padding != "SAME" or len(self.kernel_size) != 2:
      raise NotImplementedError("SubpixelConvTranspose covers 2-D SAME padding only")
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    y = subpixel_conv_transpose(x.astype(dtype), kernel.astype(dtype), tuple(self.strides))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


class LatentHead(nn.Module):
  """Flattened trunk features -> Dense(n) -> (mu, log sigma^2), each of size m."""

  dense: int
  latent: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    h = features.reshape(features.shape[0], -1)  # (B, H/32 * W/32 * 512)
    h = nn.relu(nn.Dense(self.dense, dtype=self.dtype, name="dense")(h))  # (B, n)
    mu = nn.Dense(self.latent, dtype=self.dtype, name="mu")(h)  # (B, m)
    logvar = nn.Dense(self.latent, dtype=self.dtype, name="logvar")(h)  # (B, m)
    return mu.astype(jnp.float32), logvar.astype(jnp.float32)


class Decoder(nn.Module):
  """z -> Dense(h*w*C) -> five stride-2 transposed convolutions with batch norm -> logits.

  Attributes:
    out_hw: spatial size of the map to draw; both sides multiples of 32.
    channels: widths of the first four transposed convolutions (the fifth has
      2 output channels, true and false VMS).
  """

  out_hw: tuple[int, int]
  channels: Sequence[int] = (256, 128, 64, 32)
  kernel: int = 3
  output_batchnorm: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jnp.ndarray, train: bool) -> jnp.ndarray:
    h0, w0 = self.out_hw[0] // 32, self.out_hw[1] // 32
    c0 = self.channels[0]
    x = nn.Dense(h0 * w0 * c0, dtype=self.dtype, name="dense")(z)
    x = nn.relu(x).reshape(z.shape[0], h0, w0, c0)  # (B, H/32, W/32, C0)
    widths = list(self.channels) + [2]
    for i, width in enumerate(widths):
      last = i == len(widths) - 1
      norm = self.output_batchnorm or not last
      x = SubpixelConvTranspose(
        width,
        (self.kernel, self.kernel),
        strides=(2, 2),
        padding="SAME",
        # No bias before a batch norm: it subtracts any constant, so a bias would only
        # receive rounding-noise gradients, which Adam amplifies to full steps.
        use_bias=not norm,
        dtype=self.dtype,
        name=f"deconv{i + 1}",
      )(x)  # doubles H and W
      # Batch norm after every convolution (paper §5.1). On the output layer it is off
      # by default: it pins the logits to zero mean and unit variance over the batch,
      # and only its offset, moving about one learning rate per Adam step, could bring
      # the mostly-empty maps' background down (~-3 logits: 30k steps at lr 1e-4).
      if norm:
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.99,
          epsilon=1e-3,
          dtype=self.dtype,
          name=f"bn{i + 1}",
        )(x)
      if not last:
        x = nn.relu(x)
    return x.astype(jnp.float32)  # (B, H, W, 2) logits; the maps are sigmoid(logits)


class VMSVAE(nn.Module):
  """Trainable part of the model: trunk features -> (map logits, mu, logvar).

  With `sample=True` the latent is z = mu + sigma * eps, eps drawn from the RNG
  stream named "latent"; otherwise z = mu (evaluation).
  """

  dense: int
  latent: int
  out_hw: tuple[int, int]
  channels: Sequence[int] = (256, 128, 64, 32)
  kernel: int = 3
  output_batchnorm: bool = False
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.head = LatentHead(self.dense, self.latent, dtype=self.dtype)
    self.decoder = Decoder(
      self.out_hw, self.channels, self.kernel, self.output_batchnorm, dtype=self.dtype
    )

  def __call__(
    self, features: jnp.ndarray, *, train: bool, sample: bool
  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    mu, logvar = self.head(features)  # (B, m) each
    if sample:
      eps = jax.random.normal(self.make_rng("latent"), mu.shape, mu.dtype)
      z = mu + jnp.exp(0.5 * logvar) * eps
    else:
      z = mu
    logits = self.decoder(z, train)  # (B, H, W, 2)
    return logits, mu, logvar


def check_image_size(height: int, width: int) -> None:
  """Raises ValueError unless both sides are positive multiples of the trunk's stride."""
  if height <= 0 or width <= 0 or height % vgg16.STRIDE or width % vgg16.STRIDE:
    raise ValueError(
      f"image size {height}x{width} is not a multiple of {vgg16.STRIDE}: the VGG-16 "
      f"trunk downsamples by {vgg16.STRIDE} and the decoder upsamples by 2**{N_UPSAMPLE}"
    )
