"""The VMS variational autoencoder: frozen VGG-16 trunk, latent head, map decoder.

The trunk's parameters live in their own pytree (never trained); `VMSVAE` applies only
the trainable part, on trunk features. Keeping the two apart lets the training step
pass the frozen weights as a plain argument, out of the optimiser, and lets a feature
cache skip the trunk entirely.

`VMSVAE`'s fields are the keys of the config's `model` section (but `encoder`), so
`vmsjax.factory.make_model` builds it as `VMSVAE(**config.model, ...)`: a new model
option is a config key plus a field here.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmsjax.models import vgg16
from vmsjax.models.conv_transpose import ConvTranspose


def upsampling(decoder_channels: Sequence[int]) -> int:
  """The decoder's total upsampling factor: one stride-2 layer per width, plus the output."""
  return 2 ** (len(decoder_channels) + 1)


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
  """z -> Dense(h*w*C) -> stride-2 transposed convolutions with batch norm -> logits.

  Attributes:
    out_hw: spatial size of the map to draw; both sides multiples of `upsampling`.
    channels: widths of the transposed convolutions before the output one, which has
      2 channels (true and false VMS); L widths make L + 1 layers, upsampling 2**(L+1).
    kernel: transposed-convolution kernel size.
    output_batchnorm: batch norm on the output layer too.
    conv_method: the transposed-convolution form (`conv_transpose.FORMS`).
    dtype: compute dtype.
  """

  out_hw: tuple[int, int]
  channels: Sequence[int] = (256, 128, 64, 32)
  kernel: int = 3
  output_batchnorm: bool = False
  conv_method: str = "subpixel"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jnp.ndarray, train: bool) -> jnp.ndarray:
    up = upsampling(self.channels)
    h0, w0 = self.out_hw[0] // up, self.out_hw[1] // up
    c0 = self.channels[0]
    x = nn.Dense(h0 * w0 * c0, dtype=self.dtype, name="dense")(z)
    x = nn.relu(x).reshape(z.shape[0], h0, w0, c0)  # (B, H/up, W/up, C0)
    widths = list(self.channels) + [2]
    for i, width in enumerate(widths):
      last = i == len(widths) - 1
      norm = self.output_batchnorm or not last
      x = ConvTranspose(
        width,
        (self.kernel, self.kernel),
        method=self.conv_method,
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

  Attributes (the config's `model` keys, docs in vmsjax/config.py):
    dense, latent: n and m of the latent head.
    decoder_channels, kernel, output_batchnorm: the decoder (`Decoder`).
    dtype: compute dtype name, "float32" or "bfloat16"; parameters stay float32.
    out_hw: the map size (the config's `data.image_size`).
    conv_method: the decoder's transposed-convolution form (`vmsjax.tuning`).
  """

  dense: int
  latent: int
  out_hw: tuple[int, int]
  decoder_channels: Sequence[int] = (256, 128, 64, 32)
  kernel: int = 3
  output_batchnorm: bool = False
  dtype: str = "float32"
  conv_method: str = "subpixel"

  def setup(self):
    dtype = jnp.dtype(self.dtype)
    self.head = LatentHead(self.dense, self.latent, dtype=dtype)
    self.decoder = Decoder(
      self.out_hw,
      tuple(self.decoder_channels),
      self.kernel,
      self.output_batchnorm,
      self.conv_method,
      dtype=dtype,
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


def check_image_size(height: int, width: int, decoder_channels: Sequence[int]) -> None:
  """Raises ValueError unless both sides are positive multiples of the trunk's stride and
  of the decoder's upsampling."""
  step = max(vgg16.STRIDE, upsampling(decoder_channels))
  if height <= 0 or width <= 0 or height % step or width % step:
    raise ValueError(
      f"image size {height}x{width} is not a multiple of {step}: the VGG-16 trunk "
      f"downsamples by {vgg16.STRIDE} and the decoder upsamples by {upsampling(decoder_channels)}"
    )
