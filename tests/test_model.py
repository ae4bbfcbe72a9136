"""Model shapes, layer names, preprocessing, the latent's sampling rule, and the decoder's
transposed convolutions against flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmsjax.models import conv_transpose, vae, vgg16


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
  model = vae.VMSVAE(dense=8, latent=4, out_hw=hw, decoder_channels=(8, 8, 8, 8))
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
    vae.check_image_size(100, 64, (8, 8, 8, 8))
  with pytest.raises(ValueError, match="multiple of 64: .* upsamples by 64"):
    vae.check_image_size(32, 32, (8, 8, 8, 8, 8))  # six layers
  vae.check_image_size(32, 32, (8, 8, 8))  # four layers: 16 divides 32


def test_evaluation_uses_mu_and_training_samples():
  model = vae.VMSVAE(dense=8, latent=4, out_hw=(32, 32), decoder_channels=(4, 4, 4, 4))
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


@pytest.mark.parametrize("method", conv_transpose.METHODS)
@pytest.mark.parametrize(
  "kernel,use_bias,strides",
  [(3, False, 2), (3, True, 2), (4, True, 2), (5, False, 2), (3, True, 3)],
)
def test_subpixel_conv_transpose_matches_flax(kernel, use_bias, strides, method):
  rng = np.random.default_rng(kernel)
  x = jnp.asarray(rng.standard_normal((2, 5, 7, 6), np.float32))
  s = (strides, strides)
  ref = nn.ConvTranspose(4, (kernel, kernel), strides=s, padding="SAME", use_bias=use_bias)
  new = conv_transpose.ConvTranspose(
    4, (kernel, kernel), method=method, strides=s, padding="SAME", use_bias=use_bias
  )
  v_ref = ref.init(jax.random.key(0), x)
  v_new = new.init(jax.random.key(0), x)
  # Same parameter tree and the same initial values: checkpoints carry over.
  assert jax.tree.structure(v_ref) == jax.tree.structure(v_new)
  jax.tree.map(np.testing.assert_array_equal, v_ref, v_new)
  if use_bias:
    v_ref = {"params": dict(v_ref["params"], bias=jnp.arange(4.0))}
  y_ref, y_new = ref.apply(v_ref, x), new.apply(v_ref, x)
  assert y_new.shape == (2, 5 * strides, 7 * strides, 4)
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)

  def loss(module, v, x):
    return jnp.sum(jnp.sin(module.apply(v, x)))

  g_ref = jax.grad(lambda v, x: loss(ref, v, x), argnums=(0, 1))(v_ref, x)
  g_new = jax.grad(lambda v, x: loss(new, v, x), argnums=(0, 1))(v_ref, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_ref, g_new)


@pytest.mark.parametrize("kernel,strides", [(3, 2), (2, 3), (5, 2)])
def test_matmul_form_gradients_match_autodiff_under_vmap_and_bfloat16(kernel, strides):
  """The matmul form's written-out backward equals autodiff of its forward, for a stack
  of models under vmap (as a group trains them) and in bfloat16 (model.dtype)."""
  rng = np.random.default_rng(strides)
  x = jnp.asarray(rng.standard_normal((3, 2, 4, 5, 6), np.float32))  # 3 models
  k = jnp.asarray(rng.standard_normal((3, kernel, kernel, 6, 4), np.float32))
  s = (strides, strides)

  def loss(form, x, k):
    return jnp.sum(jnp.sin(form(x, k, s)) * jnp.arange(4.0))

  def grads(form, x, k):
    return jax.vmap(jax.grad(lambda x, k: loss(form, x, k), argnums=(0, 1)))(x, k)

  want = grads(conv_transpose._matmul_forward, x, k)  # plain autodiff
  got = grads(conv_transpose.matmul_conv_transpose, x, k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), want, got)
  assert float(jnp.abs(got[1]).sum()) > 0
  xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
  got_b = grads(conv_transpose.matmul_conv_transpose, xb, kb)
  assert [g.dtype for g in got_b] == [jnp.bfloat16, jnp.bfloat16]
  for g, w in zip(got_b, want, strict=True):
    scale = float(jnp.abs(w).max())
    np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=0.05 * scale)


def test_conv_transpose_rejects_unknown_method():
  with pytest.raises(ValueError, match="method"):
    conv_transpose.conv_transpose(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 4)), (2, 2), "fft")


def test_decoder_params_and_outputs_match_the_conv_transpose_decoder(monkeypatch):
  """Checkpoints written with flax's nn.ConvTranspose decoder load and give the same maps."""
  model = vae.VMSVAE(dense=8, latent=4, out_hw=(64, 96), decoder_channels=(16, 8, 8, 4))
  feats = jax.random.normal(jax.random.key(0), (3, 2, 3, 512))
  rngs = {"params": jax.random.key(1), "latent": jax.random.key(2)}
  new = model.init(rngs, feats, train=False, sample=True)

  def flax_layer(*args, method, **kwargs):  # the decoder as it was: flax's own layer
    del method
    return nn.ConvTranspose(*args, **kwargs)

  with monkeypatch.context() as m:
    m.setattr(vae, "ConvTranspose", flax_layer)
    old = model.init(rngs, feats, train=False, sample=True)
    # Train-mode forward (batch statistics) of the old decoder on the same variables.
    (y_old, _, _), s_old = model.apply(
      old, feats, train=True, sample=False, mutable=["batch_stats"]
    )
  assert jax.tree.map(lambda a: (a.shape, a.dtype), old) == jax.tree.map(
    lambda a: (a.shape, a.dtype), new
  )
  jax.tree.map(np.testing.assert_array_equal, old, new)  # same names, shapes, values
  (y_new, _, _), s_new = model.apply(old, feats, train=True, sample=False, mutable=["batch_stats"])
  np.testing.assert_allclose(y_new, y_old, rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), s_old, s_new)


def test_random_trunk_params_match_an_eager_init_at_any_size():
  key = jax.random.key(7)
  got = vgg16.random_params(key)
  want = vgg16.VGG16Trunk(dtype=jnp.bfloat16).init(key, jnp.zeros((1, 64, 96, 3)))["params"]
  assert list(got) == list(vgg16.LAYER_NAMES)
  assert all(list(got[n]) == ["kernel", "bias"] for n in got)
  jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, want))
  assert got["block5_conv3"]["kernel"].dtype == jnp.float32
