"""The trunk's own 3x3 convolution equals flax's nn.Conv: parameters and outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmsjax.models import vgg16


class _FlaxConvTrunk(nn.Module):
  """The trunk written with nn.Conv, as vmsjax had it before Conv3x3."""

  @nn.compact
  def __call__(self, x):
    for block, n_conv, channels in vgg16.BLOCKS:
      for i in range(1, n_conv + 1):
        x = nn.Conv(
          channels,
          (3, 3),
          padding="SAME",
          kernel_init=nn.initializers.he_normal(),
          name=f"block{block}_conv{i}",
        )(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


@pytest.mark.parametrize("size", [32, 64])  # block 5 at 2x2 (matmul path) and 4x4 (conv)
def test_trunk_equals_the_flax_conv_trunk(size):
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3)) * 60.0
  key = jax.random.key(0)
  ours = vgg16.VGG16Trunk().init(key, x)
  ref = _FlaxConvTrunk().init(key, x)
  # Same names, shapes and values: random trunks and weight files are unchanged.
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ours, ref)
  assert all(jax.tree.leaves(same))
  got = vgg16.VGG16Trunk().apply(ours, x)
  want = _FlaxConvTrunk().apply(ref, x)
  assert got.shape == (2, size // 32, size // 32, 512)
  scale = float(jnp.abs(want).max())
  assert scale > 0
  np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=1e-4)


def test_small_map_convolution_matches_lax():
  conv = vgg16.Conv3x3(8)
  for h, w in [(1, 1), (1, 2), (2, 2), (2, 1)]:
    x = jax.random.normal(jax.random.key(h * 3 + w), (3, h, w, 5))
    params = conv.init(jax.random.key(0), x)
    k, b = params["params"]["kernel"], params["params"]["bias"]
    want = jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(conv.apply(params, x), want + b, atol=1e-5, rtol=1e-5)
