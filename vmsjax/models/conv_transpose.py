"""Transposed convolutions without the dilated input: three equivalent forms.

`nn.ConvTranspose` (`lax.conv_transpose`) convolves an input dilated with zeros. The
forms here compute the same numbers from the undilated input; which one is fastest
depends on the backend and the layer (vmsjax/tuning.py chooses, docs/benchmarks.md
measures). `ConvTranspose` is a drop-in module with the same parameters.
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


def lax_conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int]):
  """The reference: `lax.conv_transpose` on the dilated input, as `nn.ConvTranspose` does."""
  return lax.conv_transpose(x, kernel, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


FORMS: dict[str, Callable] = {
  "subpixel": subpixel_conv_transpose,
  "phases": phase_conv_transpose,
  "matmul": matmul_conv_transpose,
  "lax": lax_conv_transpose,
}
METHODS: tuple[str, ...] = tuple(FORMS)


def conv_transpose(
  x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, int], method: str
) -> jnp.ndarray:
  """`lax.conv_transpose(x, kernel, strides, "SAME")` (flax's `nn.ConvTranspose`) by one
  of the equivalent forms in `FORMS`: "subpixel", "phases", "matmul" or "lax"."""
  if method not in FORMS:
    raise ValueError(f"unknown conv_transpose method {method!r}; expected one of {METHODS}")
  return FORMS[method](x, kernel, tuple(strides))


class ConvTranspose(nn.Module):
  """Drop-in for `nn.ConvTranspose(..., padding="SAME")`, computed by a form of `FORMS`.

  Same parameter names, shapes and initialisers as `nn.ConvTranspose` (so checkpoints
  and initial values carry over), same outputs to float rounding.

  Attributes:
    method: "subpixel", "phases", "matmul" or "lax" (`vmsjax.tuning.decoder_form`
      chooses per backend).
  """

  features: int
  kernel_size: Sequence[int]
  method: str
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
      raise NotImplementedError("ConvTranspose covers 2-D SAME padding only")
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, kernel)
    y = conv_transpose(x.astype(dtype), kernel.astype(dtype), tuple(self.strides), self.method)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y
