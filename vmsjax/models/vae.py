"""The VMS variational autoencoder: frozen VGG-16 trunk, latent head, map decoder.

The trunk's parameters live in their own pytree (`encoder` collection is never
trained); `VMSVAE` applies only the trainable part, on trunk features. Keeping the
two apart lets the training step pass the frozen weights as a plain argument, out
of the optimiser, and lets a feature cache skip the trunk entirely.
"""

from __future__ import annotations

import functools
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
#
# A stride-s transposed convolution writes each output pixel s*i + a (per axis) from a
# few input pixels near i through a few kernel taps that depend only on the output's
# phase a. Computing it phase by phase on the undilated input gives the same numbers as
# `lax.conv_transpose` (which convolves an input dilated with zeros) without the zeros;
# XLA's CPU backend has no fast path for the gradients of the dilated form and runs
# them 10-50x slower than an ordinary convolution of the same size. Three forms:
#
#   subpixel  one convolution with an (L, L, C_in, s*s*C_out) kernel gathered from the
#             (k, k, C_in, C_out) one (zeros where a phase has no tap), then
#             depth-to-space.
#   phases    one convolution per output phase with only that phase's taps (9 of the
#             16 taps of `subpixel` for k = 3, s = 2), then interleave.
#   matmul    one matmul of every input pixel with every tap, (B*H*W, C_in) @
#             (C_in, k*k*C_out), then each phase sums its taps' shifted products.
#
# Same outputs and gradients to float rounding (tests/test_model.py); their speeds differ
# by layer shape and backend (docs/benchmarks.md).

CONV_TRANSPOSE_METHODS: tuple[str, ...] = ("auto", "subpixel", "phases", "matmul")


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


def _interleave(phases: list[list[jnp.ndarray]]) -> jnp.ndarray:
  """phases[a][c]: (B, H, W, C) output of phase (a, c) -> (B, H*sh, W*sw, C)."""
  b, h, w, c = phases[0][0].shape
  sh, sw = len(phases), len(phases[0])
  rows = [jnp.stack(row, axis=3) for row in phases]  # sh x (B, H, W, sw, C)
  y = jnp.stack(rows, axis=2)  # (B, H, sh, W, sw, C)
  return y.reshape(b, h * sh, w * sw, c)


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


def phase_conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int]):
  """`lax.conv_transpose(x, kernel, strides, "SAME")` as one plain convolution per phase.

  Output phase (a, c) (the pixels s*i + a, s*j + c) is an ordinary convolution of the
  undilated input with the kernel taps that reach it, so no multiply-add is spent on a
  zero (the `subpixel` form spends 7 of 16 on zeros for k = 3, s = 2).

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out), the layout `nn.ConvTranspose` stores (not flipped).
    strides: (sh, sw).

  Returns:
    (B, H * sh, W * sw, C_out).
  """
  kh, kw, c_in, c_out = kernel.shape
  b, h, w, _ = x.shape
  axes = [_phase_taps(kh, strides[0]), _phase_taps(kw, strides[1])]
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index k: no tap (zero)

  def window(axis: int, a: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(the phase's taps over its window of offsets, conv padding), or None if no tap."""
    taps, lo = axes[axis]
    used = [d for d in range(taps.shape[0]) if taps[d, a] != kernel.shape[axis]]
    if not used:
      return None
    first, last = used[0], used[-1]
    return taps[first : last + 1, a], (-(first + lo), last + lo)

  phases = []
  for a in range(strides[0]):
    row = []
    for c in range(strides[1]):
      wy, wx = window(0, a), window(1, c)
      if wy is None or wx is None:
        row.append(jnp.zeros((b, h, w, c_out), jnp.result_type(x, kernel)))
        continue
      k_ac = padded[wy[0][:, None], wx[0][None, :]]  # (wy, wx, C_in, C_out)
      row.append(
        lax.conv_general_dilated(
          x, k_ac, (1, 1), (wy[1], wx[1]), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
      )  # (B, H, W, C_out)
    phases.append(row)
  return _interleave(phases)  # (B, H*sh, W*sw, C_out)


def _tap_origins(taps: np.ndarray, k: int) -> dict[int, tuple[int, int]]:
  """For one axis: kernel index t -> (window offset d, output phase a) with taps[d, a] == t.

  Every tap reaches exactly one phase, at one offset.
  """
  return {
    int(taps[d, a]): (d, a)
    for d in range(taps.shape[0])
    for a in range(taps.shape[1])
    if taps[d, a] != k
  }


def _matmul_forward(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int]):
  """The forward of `matmul_conv_transpose` (same arguments), differentiable by autodiff."""
  kh, kw, c_in, c_out = kernel.shape
  b, h, w, _ = x.shape
  ty, lo_y = _phase_taps(kh, strides[0])
  tx, lo_x = _phase_taps(kw, strides[1])
  ly, lx = ty.shape[0], tx.shape[0]
  flat = kernel.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
  prod = jnp.dot(x.reshape(b * h * w, c_in), flat).reshape(b, h, w, kh, kw, c_out)
  # Phase (a, c) at pixel i takes prod[i + lo + d] for its offsets d: pad so that the
  # window of offsets d = 0 .. L-1 starts at index i.
  zero = jnp.zeros((), prod.dtype)
  prod = lax.pad(
    prod, zero, [(0, 0, 0), (-lo_y, ly - 1 + lo_y, 0), (-lo_x, lx - 1 + lo_x, 0)] + [(0, 0, 0)] * 3
  )
  phases = []
  for a in range(strides[0]):
    row = []
    for c in range(strides[1]):
      terms = [
        prod[:, dy : dy + h, dx : dx + w, ty[dy, a], tx[dx, c]]
        for dy in range(ly)
        for dx in range(lx)
        if ty[dy, a] != kh and tx[dx, c] != kw
      ]  # each (B, H, W, C_out)
      row.append(sum(terms[1:], terms[0]) if terms else jnp.zeros((b, h, w, c_out), prod.dtype))
    phases.append(row)
  return _interleave(phases)  # (B, H*sh, W*sw, C_out)


def _matmul_backward(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int], g):
  """(dx, dkernel) of `_matmul_forward` for the output cotangent g (B, H*sh, W*sw, C_out).

  The gradient of the products, d prod (B*H*W, k*k*C_out), holds for each tap the output
  gradient of the tap's phase, shifted back by the tap's offset; then dx = d prod @
  kernel^T and dkernel = x^T @ d prod, two matmuls. Written out rather than left to
  autodiff: autodiff transposes the sum of shifted slices into a sum of k*k zero-padded
  copies, which XLA:CPU fuses into one loop that evaluates all k*k branches (and the
  batch norm's backward feeding them) for every element of d prod; at the paper's
  shapes that loop alone took about a third of the cached-feature step.
  """
  kh, kw, c_in, c_out = kernel.shape
  b, h, w, _ = x.shape
  sh, sw = strides
  ty, lo_y = _phase_taps(kh, sh)
  tx, lo_x = _phase_taps(kw, sw)
  origin_y, origin_x = _tap_origins(ty, kh), _tap_origins(tx, kw)
  g = g.reshape(b, h, sh, w, sw, c_out)  # g[:, i, a, j, c] is phase (a, c) at (i, j)
  zero = jnp.zeros((), g.dtype)
  slots = []
  for ky in range(kh):
    dy, a = origin_y[ky]
    for kx in range(kw):
      dx, c = origin_x[kx]
      # prod[i, ky] fed phase a at pixel i - lo_y - dy (see _matmul_forward).
      sy, sx = -lo_y - dy, -lo_x - dx
      shifted = lax.pad(
        g[:, :, a, :, c, :], zero, [(0, 0, 0), (-sy, sy, 0), (-sx, sx, 0), (0, 0, 0)]
      )  # (B, H, W, C_out): shifted[i] = g_ac[i + sy], zero outside
      slots.append(shifted)
  dprod = jnp.stack(slots, axis=3).reshape(b * h * w, kh * kw * c_out)
  flat = kernel.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
  dx_ = jnp.dot(dprod, flat.T).reshape(x.shape)  # (B, H, W, C_in)
  dflat = jnp.dot(x.reshape(b * h * w, c_in).T, dprod)  # (C_in, kh*kw*C_out)
  dkernel = dflat.reshape(c_in, kh, kw, c_out).transpose(1, 2, 0, 3)
  return dx_.astype(x.dtype), dkernel.astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul_conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int]):
  """`lax.conv_transpose(x, kernel, strides, "SAME")` as one matmul + shifted sums.

  Every input pixel is multiplied by every kernel tap in one (B*H*W, C_in) @
  (C_in, kh*kw*C_out) matmul; output phase (a, c) then sums the products of its taps,
  each shifted by the tap's input offset. Its gradients are two matmuls more
  (`_matmul_backward`).

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out), the layout `nn.ConvTranspose` stores (not flipped).
    strides: (sh, sw), static.

  Returns:
    (B, H * sh, W * sw, C_out).
  """
  return _matmul_forward(x, kernel, strides)


matmul_conv_transpose.defvjp(
  lambda x, kernel, strides: (_matmul_forward(x, kernel, strides), (x, kernel)),
  lambda strides, res, g: _matmul_backward(*res, strides, g),
)


def conv_transpose_method(x_shape: Sequence[int], c_out: int) -> str:
  """The fastest of the equivalent forms for a layer, as measured (docs/benchmarks.md).

  On GPU/TPU: `subpixel` (one convolution). On CPU (XLA:CPU, jax 0.10, 2-core AMD EPYC):
  `matmul` for every layer of the paper's decoder at batch 32 (forward plus gradients,
  1.3-1.8x faster than `phases`, whose kernel gradients XLA:CPU runs as convolutions
  with a whole-map window at ~50 GFLOP/s).
  """
  del x_shape, c_out  # one form fits every layer measured so far
  return "matmul" if jax.default_backend() == "cpu" else "subpixel"


def conv_transpose(
  x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int], method: str = "auto"
) -> jnp.ndarray:
  """`lax.conv_transpose(x, kernel, strides, "SAME")` (flax's `nn.ConvTranspose`) by one
  of the equivalent forms above: "subpixel", "phases", "matmul" or "auto"
  (`conv_transpose_method`)."""
  if method == "auto":
    method = conv_transpose_method(x.shape, kernel.shape[-1])
  forms = {
    "subpixel": subpixel_conv_transpose,
    "phases": phase_conv_transpose,
    "matmul": matmul_conv_transpose,
  }
  if method not in forms:
    raise ValueError(
      f"unknown conv_transpose method {method!r}; expected one of {CONV_TRANSPOSE_METHODS}"
    )
  return forms[method](x, kernel, tuple(strides))


class SubpixelConvTranspose(nn.Module):
  """Drop-in for the decoder's `nn.ConvTranspose(..., padding="SAME")` layers.

  Same parameter names, shapes and initialisers as `nn.ConvTranspose` (so checkpoints
  and initial values carry over), same outputs to float rounding; computed by
  `conv_transpose` on the undilated input.

  Attributes:
    method: "auto" (per layer shape and backend), "subpixel", "phases" or "matmul".
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
  method: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.padding != "SAME" or len(self.kernel_size) != 2:
      raise NotImplementedError("SubpixelConvTranspose covers 2-D SAME padding only")
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    y = conv_transpose(x.astype(dtype), kernel.astype(dtype), tuple(self.strides), self.method)
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
