"""Model shapes, layer names, preprocessing and the latent's sampling rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmsjax.models import vae, vgg16


def test_trunk_names_mirror_keras_and_output_shape():
  trunk = vgg16.VGG16Trunk()
  params = jax.eval_shape(trunk.init, jax.random.key(0), jnp.zeros((2, 64, 96, 3)))["params"]
  assert tuple(params) == vgg16.LAYER_NAMES
  assert len(params) == 13 and "block5_conv3" in params
  assert params["block1_conv1"]["kernel"].shape == (3, 3, 3, 64)
  out = jax.eval_shape(
    lambda p, x: trunk.apply({"params": p}, x), params, jnp.zeros((2, 64, 96, 3))
  )
  assert out.shape == (2, 2, 3, 512)


@pytest.mark.parametrize("hw", [(64, 64), (64, 96), (224, 224)])
def test_decoder_output_has_input_size(hw):
  model = vae.VMSVAE(dense=8, latent=4, out_hw=hw, channels=(8, 8, 8, 8))
  feats = jnp.zeros((2, hw[0] // 32, hw[1] // 32, 512))
  variables = jax.eval_shape(
    lambda: model.init(
      {"params": jax.random.key(0), "latent": jax.random.key(1)}, feats, train=False, sample=True
    )
  )
  assert variables["params"]["head"]["dense"]["kernel"].shape == (
    hw[0] // 32 * hw[1] // 32 * 512,
    8,
  )
  assert variables["params"]["head"]["mu"]["kernel"].shape == (8, 4)
  logits, mu, logvar = jax.eval_shape(
    lambda v: model.apply(v, feats, train=False, sample=False), variables
  )
  assert logits.shape == (2, *hw, 2) and mu.shape == (2, 4) and logvar.shape == (2, 4)


def test_bad_image_size_is_rejected():
  with pytest.raises(ValueError, match="multiple of 32"):
    vae.check_image_size(100, 64)


def test_evaluation_uses_mu_and_training_samples():
  model = vae.VMSVAE(dense=8, latent=4, out_hw=(32, 32), channels=(4, 4, 4, 4))
  feats = jax.random.normal(jax.random.key(0), (3, 1, 1, 512))
  v = model.init(
    {"params": jax.random.key(1), "latent": jax.random.key(2)}, feats, train=False, sample=True
  )
  a = model.apply(v, feats, train=False, sample=False, rngs={"latent": jax.random.key(5)})[0]
  b = model.apply(v, feats, train=False, sample=False, rngs={"latent": jax.random.key(6)})[0]
  np.testing.assert_array_equal(a, b)  # z = mu: the latent stream is not used
  c = model.apply(v, feats, train=False, sample=True, rngs={"latent": jax.random.key(5)})[0]
  d = model.apply(v, feats, train=False, sample=True, rngs={"latent": jax.random.key(6)})[0]
  assert not np.allclose(c, d)  # z = mu + sigma * eps from the "latent" stream
  with pytest.raises(Exception, match="latent"):
    model.apply(v, feats, train=False, sample=True)  # no latent stream given


def test_preprocessing_modes():
  img = jnp.asarray([[[[10.0, 20.0, 30.0]]]])
  caffe = vgg16.preprocess(img, "caffe")
  np.testing.assert_allclose(caffe[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
  torch = vgg16.preprocess(img, "torch")
  want = (np.asarray([10, 20, 30]) / 255 - np.asarray(vgg16.TORCH_MEAN)) / np.asarray(
    vgg16.TORCH_STD
  )
  np.testing.assert_allclose(torch[0, 0, 0], want, rtol=1e-5)
  with pytest.raises(ValueError):
    vgg16.preprocess(img, "tf")
