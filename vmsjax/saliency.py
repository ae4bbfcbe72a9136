"""GBVS saliency (Harel, Koch & Perona, NIPS 2006) in JAX.

A port of Jonathan Harel's MATLAB `gbvs.m` (GBVS revision of 7/24/2012) with the
defaults of its `makeGBVSParams.m`: channels "DIO" (DKL colour, intensity, orientation),
feature levels 2-4 (1/4, 1/8, 1/16 of the image), 32-pixel working maps, graph activation
(`graphsalapply` algtype 2: edge weight exp(-d^2 / 2 sigma^2) |A(i) - A(j)|,
sigma_frac_act 0.15) by the equilibrium of a Markov chain, normalisation by raising to
the power 1.5 (normalizationType 1 = `graphsalapply` algtype 4, which returns before
sigma_frac_norm or num_norm_iters are used), summation, border attenuation, a final blur
(blurfrac 0.02) and a bicubic resize to the image size.

Every step follows the MATLAB/C sources of the GBVS package (read in the public copy
sergeyk/vislab, matlab/gbvs/) and is checked against tests/gbvs_reference.py, a literal
float64 numpy transliteration of them. docs/saliency.md lists each step with its MATLAB
file and what cannot be verified without MATLAB.

  gbvs(image)          uint8 (H, W, 3) -> float32 (H, W) in [0, 1]
  gbvs_batch(images)   uint8 (N, H, W, 3) -> float32 (N, H, W); jitted, vmapped

Grey images, (H, W) or (N, H, W), skip the colour channel as the MATLAB code does.

The graph work runs in JAX, float32, under `jit`; the constant matrices (resize and
decimation weights, Gabor filters, graph distances) are built once per image size in
numpy float64, as MATLAB builds them, and enter the computation as constants.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from vmsjax.errors import VMSError

# makeGBVSParams.m defaults.
SALMAPMAXSIZE = 32  # longest side of the working maps
LEVELS = (2, 3, 4)  # pyramid levels whose feature maps are used (level k: 2^-k of the image)
GABOR_ANGLES = (0, 45, 90, 135)
SIGMA_FRAC_ACT = 0.15  # Gaussian of the activation graph, as a fraction of the map size
TOL = 1e-4  # stopping rule of the equilibrium (principalEigenvectorRaw.m)
NORM_POWER = 1.5  # graphsalapply.m algtype 4, what normalizationType 1 uses
BLURFRAC = 0.02  # final blur, in standard deviations per map size
MASTER_BORDER = 4  # attenuateBordersGBVS(master_map, 4)
ORIENTATION_BORDER = 13  # attenuateBordersGBVS(|f0| + |f90|, 13) in O_orientation.m
MIN_SIDE = 32  # smallest image side accepted (the MATLAB code refuses < 128)

# A safety net for the power iteration; MATLAB's loop has none. A column-stochastic
# matrix of a connected graph converges in a few dozen steps at tol 1e-4.
MAX_POWER_ITERS = 10_000

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 / bf16 shortcuts on accelerators


# ---------------------------------------------------------------------------------------
# MATLAB helpers, numpy float64 (constants built at trace time)


def _matlab_round(x: float) -> int:
  """MATLAB's round: halves go away from zero (Python's round goes to even)."""
  return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def working_size(height: int, width: int) -> tuple[int, int]:
  """The size of GBVS's working maps for an image (initGBVS.m: salmapsize).

  The longer side becomes SALMAPMAXSIZE and the other follows the aspect ratio,
  rounded the way MATLAB rounds.
  """
  scale = SALMAPMAXSIZE / max(height, width)
  return _matlab_round(height * scale), _matlab_round(width * scale)


def _cubic(x: np.ndarray) -> np.ndarray:
  """MATLAB imresize's bicubic kernel (Keys, a = -0.5)."""
  ax = np.abs(x)
  ax2, ax3 = ax**2, ax**3
  inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
  outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
  return inner + outer


@functools.cache
def resize_matrix(in_len: int, out_len: int, antialias: bool = True) -> np.ndarray:
  """The (out_len, in_len) matrix of MATLAB's `imresize(..., 'bicubic')` along one axis.

  Follows imresize.m's `contributions`: output pixel x (1-based) samples the input at
  u = x / scale + (1 - 1 / scale) / 2; when shrinking with antialiasing the kernel is
  stretched by 1 / scale (h(x) = scale * cubic(scale * x)); each row's weights are
  normalised to sum to 1; samples beyond the edges are mirrored with the edge pixel
  repeated (index sequence 1..n, n..1).

  Args:
    in_len: input length.
    out_len: output length.
    antialias: MATLAB's 'Antialiasing' option (true by default for bicubic).

  Returns:
    float64 (out_len, in_len); rows sum to 1.
  """
  scale = out_len / in_len
  if scale < 1 and antialias:
    kernel_width = 4.0 / scale
    kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
  else:
    kernel_width = 4.0
    kernel = _cubic
  x = np.arange(1, out_len + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - kernel_width / 2.0)
  taps = int(math.ceil(kernel_width)) + 2
  index = left[:, None] + np.arange(taps)[None, :]  # (out, taps), 1-based
  weights = kernel(u[:, None] - index)
  weights = weights / weights.sum(axis=1, keepdims=True)
  mirror = np.concatenate([np.arange(1, in_len + 1), np.arange(in_len, 0, -1)])
  index = mirror[np.mod(index.astype(np.int64) - 1, 2 * in_len)]
  m = np.zeros((out_len, in_len))
  rows = np.repeat(np.arange(out_len), taps)
  np.add.at(m, (rows, index.reshape(-1) - 1), weights.reshape(-1))
  return m


@functools.cache
def decimation_matrix(n: int) -> np.ndarray:
  """The (n // 2, n) matrix of one axis of `mySubsample` (SaliencyToolbox's mex).

  Output k averages inputs 2k-2 .. 2k+3 (0-based) with the taps [1 5 10 10 5 1]; taps
  that fall outside the image are dropped and the rest renormalised, which is what the
  mex's special cases ([10 10 5 1]/26 first, [1 5 10 10 5]/31 or [1 5 10 10]/26 last)
  amount to.
  """
  taps = np.array([1.0, 5.0, 10.0, 10.0, 5.0, 1.0])
  m = np.zeros((max(n // 2, 1), n))
  for k in range(m.shape[0]):
    index = 2 * k - 2 + np.arange(6)
    inside = (index >= 0) & (index < n)
    m[k, index[inside]] = taps[inside] / taps[inside].sum()
  return m


def gabor_kernel(angle: float, phase: float) -> np.ndarray:
  """makeGaborFilterGBVS.m with initGBVS.m's parameters, float64 (27, 27).

  stddev 2, elongation 2 (minor stddev 4), period pi, half-size ceil(4 * sqrt(10)) = 13;
  zero mean and unit L2 norm.
  """
  major_sd, minor_sd = 2.0, 4.0
  half = math.ceil(max(major_sd, minor_sd) * math.sqrt(10.0))
  psi = math.pi / 180.0 * phase
  theta = math.pi / 180.0 * angle
  omega = 2.0 * math.pi / math.pi
  co, si = math.cos(theta), -math.sin(theta)
  vec = np.arange(-half, half + 1, dtype=np.float64)
  major = vec[:, None] * co + vec[None, :] * si  # major(i, j) = vec(i) co + vec(j) si
  minor = vec[:, None] * si - vec[None, :] * co
  result = np.cos(omega * major + psi) * np.exp(
    -(major**2) / (2 * major_sd**2) - minor**2 / (2 * minor_sd**2)
  )
  result = result - result.mean()
  return result / np.sqrt((result**2).sum())


def gauss_kernel(std: float, nstds: float = 2.0) -> np.ndarray:
  """mygausskernel.m: a normalised 1-D Gaussian of 2 * round(std * nstds) + 1 taps."""
  half = _matlab_round(std * nstds)
  t = np.arange(-half, half + 1, dtype=np.float64)
  k = np.exp(-(t**2) / (2 * std**2))
  return k / k.sum()


def border_mask(height: int, width: int, border: int) -> np.ndarray:
  """attenuateBordersGBVS.m as a multiplicative mask, float64 (height, width).

  The `border` outermost rows and columns ramp linearly 1/(b+1) .. b/(b+1) towards the
  inside; corners get both factors. A border wider than half the map is cut to
  floor(side / 2), the same value for both axes.
  """
  if border * 2 > height:
    border = height // 2
  if border * 2 > width:
    border = width // 2
  rows, cols = np.ones(height), np.ones(width)
  if border >= 1:
    coeffs = np.arange(1, border + 1) / (border + 1)
    rows[:border] *= coeffs
    rows[height - np.arange(border) - 1] *= coeffs  # the last row gets coeffs[0]
    cols[:border] *= coeffs
    cols[width - np.arange(border) - 1] *= coeffs
  return rows[:, None] * cols[None, :]


@functools.cache
def graph_weights(height: int, width: int, sigma_frac: float = SIGMA_FRAC_ACT) -> np.ndarray:
  """exp(-d^2 / (2 sigma^2)) between all nodes of a (height, width) lattice, float64.

  graphsalinit.m / simpledistance.m: d^2 is the squared lattice distance (non-cyclic,
  cyclic_type 2), every node connected to every node, sigma = sigma_frac * mean size.
  Nodes are numbered row-major (the node order does not change the equilibrium).
  """
  rr, cc = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  r, c = rr.reshape(-1), cc.reshape(-1)
  d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2  # (N, N)
  sigma = sigma_frac * (height + width) / 2.0
  return np.exp(-d2 / (2.0 * sigma**2))


# ---------------------------------------------------------------------------------------
# JAX building blocks


def mat2gray(x: jax.Array) -> jax.Array:
  """MATLAB's mat2gray over the last two axes: (x - min) / (max - min).

  A constant map comes back as itself clipped to [0, 1], as mat2gray.m does
  ("Constant Image": I = double(A); then I = max(0, min(I, 1))).
  """
  lo = jnp.min(x, axis=(-2, -1), keepdims=True)
  hi = jnp.max(x, axis=(-2, -1), keepdims=True)
  span = hi - lo
  return jnp.where(span > 0, (x - lo) / jnp.where(span > 0, span, 1.0), jnp.clip(x, 0.0, 1.0))


def imresize(x: jax.Array, size: tuple[int, int], antialias: bool = True) -> jax.Array:
  """MATLAB `imresize(x, size, 'bicubic')` of the last two axes of `x` (float)."""
  h, w = x.shape[-2:]
  ry = jnp.asarray(resize_matrix(h, size[0], antialias), x.dtype)  # (oh, h)
  rx = jnp.asarray(resize_matrix(w, size[1], antialias), x.dtype)  # (ow, w)
  return jnp.einsum("oh,...hw,pw->...op", ry, x, rx, precision=_HIGHEST)


def subsample(x: jax.Array) -> jax.Array:
  """mySubsample.cc of the last two axes: halves each with the [1 5 10 10 5 1] filter.

  Like the mex, an image whose height or width is 10 or less is returned unchanged, the
  width is decimated first (lowPass6xDecX, then lowPass6yDecY) and the input, the
  intermediate and the output are held as float32 (the mex works on float copies).
  The float32 sums differ from the mex's float/double mix in the last bit.
  """
  h, w = x.shape[-2:]
  if h <= 10 or w <= 10:
    return x
  dy = jnp.asarray(decimation_matrix(h), x.dtype)  # (h // 2, h)
  dx = jnp.asarray(decimation_matrix(w), x.dtype)  # (w // 2, w)
  f32 = lambda a: a.astype(jnp.float32).astype(x.dtype)  # noqa: E731
  # Like the mex: input, x-decimated and final arrays held as float32; x first, then y.
  decx = f32(jnp.einsum("...hw,pw->...hp", f32(x), dx, precision=_HIGHEST))
  return f32(jnp.einsum("oh,...hp->...op", dy, decx, precision=_HIGHEST))


def _conv_replicate(x: jax.Array, kernels: np.ndarray) -> jax.Array:
  """myconv2.m for several kernels: true 2-D convolution, edges replicated.

  Args:
    x: (H, W).
    kernels: (K, kh, kw), odd sizes.

  Returns:
    (K, H, W).
  """
  kh, kw = kernels.shape[-2:]
  padded = jnp.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2)), mode="edge")
  flipped = jnp.asarray(kernels[:, None, ::-1, ::-1].copy(), x.dtype)  # (K, 1, kh, kw)
  out = jax.lax.conv_general_dilated(
    padded[None, None], flipped, (1, 1), "VALID", precision=_HIGHEST
  )  # (1, K, H, W)
  return out[0]


# rgb2dkl.m constants: cone excitations of the adapting grey and the RGB -> LMS matrix.
_LMS0 = np.array([34.918538957799996, 19.314796676499999, 0.585610818500000])
_RGB2LMS = np.array(
  [
    [18.32535, 44.60077, 7.46216],
    [4.09544, 28.20135, 6.66066],
    [0.02114, 0.10325, 1.05258],
  ]
)


def _lms2dkl() -> np.ndarray:
  fac = 1.0 / (_LMS0[0] + _LMS0[1])
  norm = math.sqrt(_LMS0[0] ** 2 + _LMS0[1] ** 2)
  return np.array(
    [
      [math.sqrt(3.0) * fac, math.sqrt(3.0) * fac, 0.0],
      [norm / _LMS0[0] * fac, -norm / _LMS0[1] * fac, 0.0],
      [-fac, -fac, (_LMS0[0] + _LMS0[1]) / _LMS0[2] * fac],
    ]
  )


_LMS2DKL = _lms2dkl()
_DKL_SCALE = np.array([0.5774, 2.7525, 0.4526])


@functools.cache
def lut_thresholds(dtype: str) -> np.ndarray:
  """T[k], k = 0..256: the largest value of `dtype` that is <= k / 255 (exactly).

  For v of that dtype, v <= T[k] exactly when the real number 255 v is <= k, so
  ceil(255 v) can be found without rounding the product.
  """
  dt = np.dtype(dtype)
  out = np.empty(257, dt)
  for k in range(257):
    t = dt.type(k / 255)
    while Fraction(float(t)) > Fraction(k, 255):
      t = np.nextafter(t, dt.type(-1))
    while Fraction(float(np.nextafter(t, dt.type(2)))) <= Fraction(k, 255):
      t = np.nextafter(t, dt.type(2))
    out[k] = t
  return out


def dkl_lut_index(rgb: jax.Array) -> jax.Array:
  """The 0-based row of the gamma table for RGB values in [0, 1] (rgb2dkl.m).

  rgb2dkl.m, for double input: `rgb = ceil(rgb * 255); rgb(rgb < 1) = 1; rgb(rgb > 256) =
  256`, 1-based. The values it gets are mySubsample outputs, float32 numbers held in
  doubles, so `rgb * 255` is exact in MATLAB and the ceil sees on which side of an integer
  the value really lies: a flat region of level k (value fl32(k / 255)) reads row k or
  k + 1 depending on how k / 255 rounded to float32. A float32 `ceil(v * 255)` would round
  the product to k first; this finds the exact ceil with the thresholds of
  `lut_thresholds`: round(255 v) is within one of it, and v > T[c] says 255 v > c.
  """
  thresholds = jnp.asarray(lut_thresholds(np.dtype(rgb.dtype).name))  # (257,)
  c0 = jnp.clip(jnp.round(rgb * 255.0), 0, 256).astype(jnp.int32)
  c = c0 + (rgb > thresholds[c0]).astype(jnp.int32)  # exact ceil(255 v)
  return jnp.clip(c, 1, 256) - 1


def rgb_to_dkl(rgb: jax.Array) -> jax.Array:
  """rgb2dkl.m: RGB in [0, 1] (..., 3) -> DKL (..., 3) (luminance, L-M, S-(L+M)).

  Gamma-table lookup to linear RGB, linear RGB -> LMS cone excitations minus those of
  the adapting grey, LMS -> DKL, each axis scaled as in the MATLAB code.
  """
  lut = jnp.asarray(GAMMA_TABLE, rgb.dtype)  # (256, 3)
  index = dkl_lut_index(rgb)  # (..., 3)
  linear = jnp.stack([lut[index[..., c], c] for c in range(3)], axis=-1)  # (..., 3)
  # Explicit multiply-adds rather than a matmul: exact float32 on every backend.
  m = jnp.asarray(_RGB2LMS, rgb.dtype)
  lms = (linear[..., None, :] * m).sum(-1) - jnp.asarray(_LMS0, rgb.dtype)  # (..., 3)
  mm = jnp.asarray(_LMS2DKL, rgb.dtype)
  dkl = (lms[..., None, :] * mm).sum(-1)  # (..., 3)
  return dkl * jnp.asarray(_DKL_SCALE, rgb.dtype)


def markov_equilibrium(
  markov: jax.Array, tol: float = TOL, max_iters: int = MAX_POWER_ITERS
) -> tuple[jax.Array, jax.Array]:
  """principalEigenvectorRaw.m: equilibrium of a column-stochastic matrix by power iteration.

  Starts from the uniform distribution and applies v <- M v until the L2 norm of the
  change is at most `tol` (MATLAB: `while df > tol`), then divides by the sum.

  Args:
    markov: (N, N), columns summing to 1 (M[to, from]).
    tol: the stopping threshold on ||v_new - v_old||_2.
    max_iters: a safety cap (not in MATLAB).

  Returns:
    v (N,) summing to 1, and the number of iterations.
  """
  n = markov.shape[-1]
  v0 = jnp.full((n,), 1.0 / n, markov.dtype)

  def cond(state):
    _, df, it = state
    return (df > tol) & (it < max_iters)

  def body(state):
    v, _, it = state
    new = jnp.matmul(markov, v, precision=_HIGHEST)  # (N,)
    return new, jnp.linalg.norm(new - v), it + 1

  v, _, iters = jax.lax.while_loop(cond, body, (v0, jnp.asarray(1.0, markov.dtype), 0))
  return v / jnp.sum(v), iters


def graph_activation(fmap: jax.Array, weights: jax.Array, tol: float = TOL) -> jax.Array:
  """graphsalapply.m with algtype 2: the equilibrium of the dissimilarity Markov chain.

  The edge from node c to node r weighs exp(-d^2 / 2 sigma^2) * |A(r) - A(c)|
  (mexAssignWeights, algtype 2); each column is normalised to sum to 1
  (mexColumnNormalize); the activation map is the chain's equilibrium.

  Args:
    fmap: (h, w) feature map.
    weights: (h*w, h*w) distance weights from `graph_weights(h, w)`.
    tol: stopping threshold of the power iteration.

  Returns:
    (h, w), summing to 1.
  """
  h, w = fmap.shape
  # The weights are invariant to scaling and shifting the map; mat2gray only keeps
  # float32 away from tiny differences (formMapPyramid also rescales).
  a = mat2gray(fmap).reshape(-1)  # (N,)
  edges = weights * jnp.abs(a[:, None] - a[None, :])  # (N, N), [to, from]
  colsum = jnp.sum(edges, axis=0)  # (N,)
  markov = edges / jnp.where(colsum > 0, colsum, 1.0)
  v, _ = markov_equilibrium(markov, tol)
  # A constant map has all-zero columns: MATLAB's NaN check then returns the start
  # vector, the uniform distribution.
  constant = jnp.max(a) == jnp.min(a)
  v = jnp.where(constant, jnp.full_like(v, 1.0 / v.shape[0]), v)
  return v.reshape(h, w)


def feature_maps(image: jax.Array) -> jax.Array:
  """getFeatureMaps.m for channels D, I, O at LEVELS, resized to the working size.

  Args:
    image: float (H, W, 3) RGB in [0, 1]; or (H, W) grey, for which MATLAB skips the
      colour channel ("cannot compute color channel on black and white image").

  Returns:
    (len(LEVELS) * 8, sh, sw) for RGB: per level DKL luminance, DKL L-M, DKL S,
    intensity, then the four orientations; (len(LEVELS) * 5, sh, sw) for grey.
  """
  height, width = image.shape[:2]
  size = working_size(height, width)
  colour = image.ndim == 3
  if colour:
    intensity = jnp.max(image, axis=-1)  # mygetrgb: max(r, g, b)
    planes = jnp.concatenate([jnp.moveaxis(image, -1, 0), intensity[None]])  # (4, H, W)
  else:
    planes = image[None]  # (1, H, W)
  pyramid = []  # pyramid[k - 1] is level k: (r, g, b,) intensity
  for _ in range(max(LEVELS)):
    planes = subsample(planes)
    pyramid.append(planes)
  kernels = np.stack(
    [gabor_kernel(a, p) for a in GABOR_ANGLES for p in (0.0, 90.0)]
  )  # (8, 27, 27): per angle, phase 0 then 90
  maps = []
  for level in LEVELS:
    inten = pyramid[level - 1][-1]  # (h, w)
    responses = jnp.abs(_conv_replicate(inten, kernels))  # (8, h, w)
    orient = responses[0::2] + responses[1::2]  # (4, h, w): |f0| + |f90|
    mask = border_mask(*inten.shape, ORIENTATION_BORDER)
    orient = orient * jnp.asarray(mask, orient.dtype)
    level_maps = [inten[None], orient]
    if colour:
      rgb = jnp.moveaxis(pyramid[level - 1][:3], 0, -1)  # (h, w, 3)
      level_maps.insert(0, jnp.moveaxis(rgb_to_dkl(rgb), -1, 0))  # (3, h, w)
    maps.append(imresize(jnp.concatenate(level_maps), size))  # (8 or 5, sh, sw)
  return jnp.concatenate(maps)


def _gbvs_core(image: jax.Array, dtype: type = jnp.float32) -> jax.Array:
  """gbvs.m on one uint8 (H, W, 3) or (H, W) image -> (H, W) in [0, 1], in `dtype`."""
  height, width = image.shape[:2]
  sh, sw = working_size(height, width)
  img = image.astype(dtype) / 255.0
  maps = feature_maps(img)  # (24, sh, sw); (15, sh, sw) for grey
  weights = jnp.asarray(graph_weights(sh, sw), dtype)
  # STEP 2: activation; STEP 3: normalisation (normalizationType 1: A .^ 1.5).
  act = jax.vmap(graph_activation, in_axes=(0, None))(maps, weights)  # (maps, sh, sw)
  norm = act**NORM_POWER
  # STEPS 4-5: sum within and across channels, all weights 1.
  master = jnp.sum(norm, axis=0)  # (sh, sw)
  master = master * jnp.asarray(border_mask(sh, sw, MASTER_BORDER), master.dtype)
  master = mat2gray(master)
  # STEP 6: blur (rows then columns, edges replicated).
  k = gauss_kernel(max(sh, sw) * BLURFRAC, 2.0)
  master = _conv_replicate(master, k[None, None, :])[0]
  master = _conv_replicate(master, k[None, :, None])[0]
  master = mat2gray(master)
  # master_map_resized = mat2gray(imresize(master_map, [H W]))
  return mat2gray(imresize(master, (height, width)))


def check_images(images: np.ndarray, batched: bool = False) -> np.ndarray:
  """Returns `images` as a numpy array if GBVS can take it.

  Args:
    images: uint8 RGB (H, W, 3) or grey (H, W); with `batched`, (N, H, W, 3) or
      (N, H, W).
    batched: whether a leading batch axis is expected.

  Raises:
    VMSError: wrong shape or dtype, a side under MIN_SIDE, or an aspect ratio that
      leaves fewer than 4 working-map pixels on the short side.
  """
  arr = np.asarray(images)
  lead = 1 if batched else 0
  want = "(N, H, W, 3) or (N, H, W)" if batched else "(H, W, 3) or (H, W)"
  rgb = arr.ndim == lead + 3 and arr.shape[-1] == 3
  if not (rgb or arr.ndim == lead + 2):
    raise VMSError(f"gbvs needs an RGB or grey image array {want}, got shape {arr.shape}")
  if arr.dtype != np.uint8:
    raise VMSError(
      f"gbvs needs uint8 values 0..255, got dtype {arr.dtype}; convert with "
      "np.clip(x, 0, 255).astype(np.uint8) (or vmsjax.data.images.read_rgb for files)"
    )
  height, width = arr.shape[lead : lead + 2]
  if min(height, width) < MIN_SIDE or min(working_size(height, width)) < 4:
    raise VMSError(
      f"image of {height}x{width} pixels is too small or too elongated for GBVS "
      f"(each side >= {MIN_SIDE} and aspect ratio <= 8:1); the MATLAB original wants >= 128"
    )
  return arr


_gbvs_jit = jax.jit(_gbvs_core)


@functools.partial(jax.jit, static_argnames="batch_size")
def _gbvs_batch_jit(images: jax.Array, batch_size: int) -> jax.Array:
  # lax.map with batch_size vmaps over chunks: bounded memory (24 dense N x N chains per
  # image) and one compiled program for any N.
  return jax.lax.map(_gbvs_core, images, batch_size=batch_size)


def gbvs(image: np.ndarray) -> np.ndarray:
  """The GBVS saliency map of one image, as the MATLAB `out.master_map_resized`.

  Args:
    image: uint8 RGB (H, W, 3), or grey (H, W) (no colour channel, as in MATLAB for
      a grey image); each side >= MIN_SIDE.

  Returns:
    float32 (H, W) in [0, 1], maximum 1.

  Raises:
    VMSError: wrong shape, dtype or size.
  """
  arr = check_images(image, batched=False)
  return np.asarray(_gbvs_jit(jnp.asarray(arr)))


def gbvs_batch(images: np.ndarray, batch_size: int = 8) -> np.ndarray:
  """GBVS maps of images of one size, jitted and vmapped in chunks of `batch_size`.

  Gives the same maps as `gbvs` applied one image at a time (to float rounding).

  Args:
    images: uint8 (N, H, W, 3), or grey (N, H, W).
    batch_size: images per vectorised chunk (memory: about 0.2 GB per image in a chunk).

  Returns:
    float32 (N, H, W) in [0, 1].

  Raises:
    VMSError: wrong shape, dtype or size.
  """
  arr = check_images(images, batched=True)
  if arr.shape[0] == 0:
    return np.zeros(arr.shape[:3], np.float32)  # (0, H, W)
  size = max(1, min(int(batch_size), arr.shape[0]))
  return np.asarray(_gbvs_batch_jit(jnp.asarray(arr), size))


# rgb2dkl.m's gamma table: linear R, G, B for each 8-bit level 0..255 (two rows a line).
_GAMMA_TEXT = """
0.024935 0.0076954 0.042291  0.024974 0.0077395 0.042346
0.025013 0.0077836 0.042401  0.025052 0.0078277 0.042456
0.025091 0.0078717 0.042511  0.02513 0.0079158 0.042566
0.025234 0.007992 0.042621  0.025338 0.0080681 0.042676
0.025442 0.0081443 0.042731  0.025545 0.0082204 0.042786
0.025649 0.0082966 0.042841  0.025747 0.0084168 0.042952
0.025844 0.0085371 0.043062  0.025942 0.0086573 0.043172
0.026039 0.0087776 0.043282  0.026136 0.0088978 0.043392
0.026234 0.0090581 0.043502  0.026331 0.0092184 0.043612
0.026429 0.0093788 0.043722  0.026526 0.0095391 0.043833
0.026623 0.0096994 0.043943  0.026818 0.0099198 0.044141
0.027013 0.01014 0.044339  0.027208 0.010361 0.044537
0.027403 0.010581 0.044736  0.027597 0.010802 0.044934
0.027857 0.010994 0.04522  0.028117 0.011186 0.045507
0.028377 0.011379 0.045793  0.028636 0.011571 0.046079
0.028896 0.011764 0.046366  0.029104 0.012068 0.046652
0.029312 0.012373 0.046938  0.029519 0.012677 0.047225
0.029727 0.012982 0.047511  0.029935 0.013287 0.047797
0.030273 0.013663 0.048326  0.03061 0.01404 0.048855
0.030948 0.014417 0.049383  0.031286 0.014794 0.049912
0.031623 0.01517 0.050441  0.032156 0.015707 0.051035
0.032688 0.016244 0.05163  0.033221 0.016782 0.052225
0.033753 0.017319 0.052819  0.034286 0.017856 0.053414
0.034961 0.018693 0.054493  0.035636 0.019531 0.055573
0.036312 0.020369 0.056652  0.036987 0.021206 0.057731
0.037662 0.022044 0.058811  0.038623 0.023246 0.060044
0.039584 0.024449 0.061278  0.040545 0.025651 0.062511
0.041506 0.026854 0.063744  0.042468 0.028056 0.064978
0.043857 0.029659 0.066806  0.045247 0.031263 0.068634
0.046636 0.032866 0.070463  0.048026 0.034469 0.072291
0.049416 0.036072 0.074119  0.051221 0.038156 0.076476
0.053026 0.04024 0.078833  0.054831 0.042325 0.081189
0.056636 0.044409 0.083546  0.058442 0.046493 0.085903
0.06039 0.048737 0.087996  0.062338 0.050982 0.090088
0.064286 0.053226 0.092181  0.066234 0.055471 0.094273
0.068182 0.057715 0.096366  0.070519 0.06012 0.098921
0.072857 0.062525 0.10148  0.075195 0.06493 0.10403
0.077532 0.067335 0.10659  0.07987 0.069739 0.10914
0.082208 0.072345 0.11176  0.084545 0.07495 0.11438
0.086883 0.077555 0.117  0.089221 0.08016 0.11963
0.091558 0.082766 0.12225  0.094026 0.085611 0.12533
0.096494 0.088457 0.12841  0.098961 0.091303 0.1315
0.10143 0.094148 0.13458  0.1039 0.096994 0.13767
0.10688 0.10028 0.14119  0.10987 0.10357 0.14471
0.11286 0.10685 0.14824  0.11584 0.11014 0.15176
0.11883 0.11343 0.15529  0.12208 0.11695 0.15903
0.12532 0.12048 0.16278  0.12857 0.12401 0.16652
0.13182 0.12754 0.17026  0.13506 0.13106 0.17401
0.1387 0.13499 0.17819  0.14234 0.13892 0.18238
0.14597 0.14285 0.18656  0.14961 0.14677 0.19075
0.15325 0.1507 0.19493  0.15727 0.15519 0.19956
0.1613 0.15968 0.20419  0.16532 0.16417 0.20881
0.16935 0.16866 0.21344  0.17338 0.17315 0.21806
0.17805 0.17796 0.22291  0.18273 0.18277 0.22775
0.1874 0.18758 0.2326  0.19208 0.19238 0.23744
0.19675 0.19719 0.24229  0.20156 0.20224 0.24758
0.20636 0.20729 0.25286  0.21117 0.21234 0.25815
0.21597 0.21739 0.26344  0.22078 0.22244 0.26872
0.2261 0.22806 0.27423  0.23143 0.23367 0.27974
0.23675 0.23928 0.28524  0.24208 0.24489 0.29075
0.2474 0.2505 0.29626  0.25299 0.25651 0.3022
0.25857 0.26253 0.30815  0.26416 0.26854 0.3141
0.26974 0.27455 0.32004  0.27532 0.28056 0.32599
0.28156 0.28697 0.33238  0.28779 0.29339 0.33877
0.29403 0.2998 0.34515  0.30026 0.30621 0.35154
0.30649 0.31263 0.35793  0.3126 0.31904 0.36388
0.3187 0.32545 0.36982  0.32481 0.33186 0.37577
0.33091 0.33828 0.38172  0.33701 0.34469 0.38767
0.34325 0.3511 0.39361  0.34948 0.35752 0.39956
0.35571 0.36393 0.40551  0.36195 0.37034 0.41145
0.36818 0.37675 0.4174  0.37429 0.38317 0.42313
0.38039 0.38958 0.42885  0.38649 0.39599 0.43458
0.3926 0.4024 0.44031  0.3987 0.40882 0.44604
0.40494 0.41523 0.45198  0.41117 0.42164 0.45793
0.4174 0.42806 0.46388  0.42364 0.43447 0.46982
0.42987 0.44088 0.47577  0.43623 0.44689 0.48128
0.4426 0.45291 0.48678  0.44896 0.45892 0.49229
0.45532 0.46493 0.4978  0.46169 0.47094 0.5033
0.46792 0.47695 0.50837  0.47416 0.48297 0.51344
0.48039 0.48898 0.5185  0.48662 0.49499 0.52357
0.49286 0.501 0.52863  0.49805 0.50701 0.53392
0.50325 0.51303 0.53921  0.50844 0.51904 0.54449
0.51364 0.52505 0.54978  0.51883 0.53106 0.55507
0.52442 0.53667 0.55969  0.53 0.54228 0.56432
0.53558 0.5479 0.56894  0.54117 0.55351 0.57357
0.54675 0.55912 0.57819  0.55182 0.56433 0.58304
0.55688 0.56954 0.58789  0.56195 0.57475 0.59273
0.56701 0.57996 0.59758  0.57208 0.58517 0.60242
0.57675 0.58998 0.60639  0.58143 0.59479 0.61035
0.5861 0.5996 0.61432  0.59078 0.60441 0.61828
0.59545 0.60922 0.62225  0.60065 0.61403 0.62709
0.60584 0.61884 0.63194  0.61104 0.62365 0.63678
0.61623 0.62846 0.64163  0.62143 0.63327 0.64648
0.62584 0.63808 0.65088  0.63026 0.64289 0.65529
0.63468 0.6477 0.65969  0.63909 0.65251 0.6641
0.64351 0.65731 0.6685  0.64857 0.66132 0.67269
0.65364 0.66533 0.67687  0.6587 0.66934 0.68106
0.66377 0.67335 0.68524  0.66883 0.67735 0.68943
0.67273 0.68136 0.69361  0.67662 0.68537 0.6978
0.68052 0.68938 0.70198  0.68442 0.69339 0.70617
0.68831 0.69739 0.71035  0.69221 0.7022 0.7141
0.6961 0.70701 0.71784  0.7 0.71182 0.72159
0.7039 0.71663 0.72533  0.70779 0.72144 0.72907
0.71169 0.72505 0.73348  0.71558 0.72866 0.73789
0.71948 0.73226 0.74229  0.72338 0.73587 0.7467
0.72727 0.73948 0.7511  0.73247 0.74349 0.75507
0.73766 0.74749 0.75903  0.74286 0.7515 0.763
0.74805 0.75551 0.76696  0.75325 0.75952 0.77093
0.75714 0.76393 0.77599  0.76104 0.76834 0.78106
0.76494 0.77275 0.78612  0.76883 0.77715 0.79119
0.77273 0.78156 0.79626  0.77792 0.78677 0.80132
0.78312 0.79198 0.80639  0.78831 0.79719 0.81145
0.79351 0.8024 0.81652  0.7987 0.80762 0.82159
0.80519 0.81283 0.82687  0.81169 0.81804 0.83216
0.81818 0.82325 0.83744  0.82468 0.82846 0.84273
0.83117 0.83367 0.84802  0.83636 0.83888 0.85286
0.84156 0.84409 0.85771  0.84675 0.8493 0.86256
0.85195 0.85451 0.8674  0.85714 0.85972 0.87225
0.86364 0.86613 0.87819  0.87013 0.87255 0.88414
0.87662 0.87896 0.89009  0.88312 0.88537 0.89604
0.88961 0.89178 0.90198  0.8961 0.8986 0.90947
0.9026 0.90541 0.91696  0.90909 0.91222 0.92445
0.91558 0.91904 0.93194  0.92208 0.92585 0.93943
0.92857 0.93307 0.94493  0.93506 0.94028 0.95044
0.94156 0.94749 0.95595  0.94805 0.95471 0.96145
0.95455 0.96192 0.96696  0.96364 0.96954 0.97357
0.97273 0.97715 0.98018  0.98182 0.98477 0.98678
0.99091 0.99238 0.99339  1 1 1
"""

GAMMA_TABLE = np.array(_GAMMA_TEXT.split(), np.float64).reshape(256, 3)
