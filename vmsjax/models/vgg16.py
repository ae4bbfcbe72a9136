"""The VGG-16 convolutional trunk (the frozen encoder) and its input preprocessing.

Layer names mirror Keras' `VGG16(include_top=False)` (`block1_conv1` ... `block5_conv3`)
so that converted weights map one to one. The trunk has 13 3x3 convolutions with ReLU
and five 2x2 max-pools: an (H, W) image becomes an (H/32, W/32, 512) feature map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# (block, number of convolutions, channels) of VGG-16 "configuration D".
BLOCKS: tuple[tuple[int, int, int], ...] = (
  (1, 2, 64),
  (2, 2, 128),
  (3, 3, 256),
  (4, 3, 512),
  (5, 3, 512),
)
LAYER_NAMES: tuple[str, ...] = tuple(
  f"block{b}_conv{i}" for b, n, _ in BLOCKS for i in range(1, n + 1)
)
FEATURES = 512  # channels of the trunk's output
STRIDE = 32  # total downsampling of the trunk

# The preprocessing each family of ImageNet weights was trained with.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # Keras: BGR order, 0-255 scale
TORCH_MEAN = (0.485, 0.456, 0.406)  # torchvision: RGB order, 0-1 scale
TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING: tuple[str, ...] = ("caffe", "torch")


class TrunkWeights(Protocol):
  """What `features` needs of loaded weights, e.g. a `vmsjax.weights.VGGWeights`.

  A protocol rather than that class: vmsjax.weights imports this module, so this
  module must not import it back. Read-only members, so frozen dataclasses match.
  """

  @property
  def params(self) -> Mapping[str, Any]:
    """The `VGG16Trunk` params."""
    ...

  @property
  def preprocessing(self) -> str:
    """The input preprocessing they were trained with, one of `PREPROCESSING`."""
    ...


def preprocess(images: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Maps RGB images on the 0-255 scale to the input the trunk's weights expect.

  Args:
    images: (B, H, W, 3) RGB, uint8 or float on the 0-255 scale.
    mode: "caffe" (Keras weights: RGB->BGR, subtract the Caffe means) or "torch"
      (torchvision weights: /255, subtract the ImageNet mean, divide by its std).

  Returns:
    (B, H, W, 3) float32.
  """
  x = images.astype(jnp.float32)
  if mode == "caffe":
    return x[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
  if mode == "torch":
    return (x / 255.0 - jnp.asarray(TORCH_MEAN, jnp.float32)) / jnp.asarray(TORCH_STD, jnp.float32)
  raise ValueError(f"unknown VGG-16 preprocessing {mode!r}; expected one of {PREPROCESSING}")


class Conv3x3(nn.Module):
  """A 3x3 'SAME' convolution with bias; parameters as `nn.Conv(features, (3, 3))`.

  The parameter names, shapes and initialisers are nn.Conv's (and its name in the
  trunk), so weights files, checkpoints and random trunks are unchanged. On maps of
  at most 2x2 (block 5 of a 32x32 input) it sums nine shifted matrix products instead
  of calling XLA's convolution: XLA:CPU runs a 2x2 convolution ~25x slower than a 4x4
  one (measured with 512 channels), which made small test models crawl.
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param(
      "kernel",
      # He init keeps activations at a steady scale through 13 ReLU layers, so a
      # randomly initialised (frozen) trunk still passes a usable signal.
      nn.initializers.he_normal(),
      (3, 3, x.shape[-1], self.features),
      jnp.float32,
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    h, w = x.shape[1], x.shape[2]
    if h <= 2 and w <= 2:
      padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      y = sum(padded[:, i : i + h, j : j + w, :] @ kernel[i, j] for i in range(3) for j in range(3))
    else:
      y = lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    return y + bias


class VGG16Trunk(nn.Module):
  """VGG-16 without its classifier: (B, H, W, 3) preprocessed -> (B, H/32, W/32, 512).

  Attributes:
    dtype: compute dtype of the convolutions (parameters stay float32).
  """

  dtype: jnp.dtype = jnp.float32
  blocks: Sequence[tuple[int, int, int]] = BLOCKS

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for block, n_conv, channels in self.blocks:
      for i in range(1, n_conv + 1):
        x = Conv3x3(channels, dtype=self.dtype, name=f"block{block}_conv{i}")(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))  # halves H and W
    return x  # (B, H/32, W/32, 512)


def random_params(key: jax.Array) -> dict[str, dict[str, jnp.ndarray]]:
  """A random trunk: He-normal kernels and zero biases, float32, drawn from `key`.

  The same values as `VGG16Trunk().init(key, images)["params"]` for images of any size
  and any compute dtype, in the same (Keras) layer order. Jitted, on one 32x32 window:
  an eager init at 224x224 runs the trunk forward op by op and took ~8 s on a 2-core CPU.
  """
  params = _random_params(key)
  # jit hands dicts back with sorted keys; restore the order flax builds them in.
  return {n: {"kernel": params[n]["kernel"], "bias": params[n]["bias"]} for n in LAYER_NAMES}


@jax.jit
def _random_params(key: jax.Array) -> dict[str, dict[str, jnp.ndarray]]:
  return VGG16Trunk().init(key, jnp.zeros((1, STRIDE, STRIDE, 3), jnp.float32))["params"]


def features(weights: TrunkWeights, images_uint8: jnp.ndarray) -> jnp.ndarray:
  """Trunk features of RGB images, preprocessed the way `weights` were trained.

  The preprocessing comes from the weights themselves, so Keras weights always see Caffe
  input and torchvision weights torch input.

  Args:
    weights: loaded by `vmsjax.weights.load_vgg16`.
    images_uint8: (B, H, W, 3) RGB on the 0-255 scale (uint8 or float).

  Returns:
    (B, H/32, W/32, 512) float32.
  """
  x = preprocess(jnp.asarray(images_uint8), weights.preprocessing)
  return VGG16Trunk().apply({"params": weights.params}, x)
