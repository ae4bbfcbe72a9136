"""On-device augmentation: one draw per example, identical for image and map."""

import jax
import jax.numpy as jnp
import numpy as np

from vmsjax.data import augment


def test_image_and_map_get_the_same_transform():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(6, 40, 40, 3), dtype=np.uint8)
  # A map whose channels are copies of image channels: after augmentation they must
  # still be copies, pixel for pixel, if both got the same geometric transform.
  vms = np.stack([image[..., 0], image[..., 2]], axis=-1).astype(np.float32) / 255.0
  out_img, out_vms = augment.augment(
    jax.random.key(3),
    jnp.asarray(image),
    jnp.asarray(vms),
    (32, 32),
    max_shift=0.1,
    zoom_range=0.2,
    flip=True,
  )
  np.testing.assert_allclose(np.asarray(out_vms[..., 0]) * 255, out_img[..., 0], atol=1e-3)
  np.testing.assert_allclose(np.asarray(out_vms[..., 1]) * 255, out_img[..., 2], atol=1e-3)
  # And the draws differ between examples (not one transform for the batch).
  params = augment.draw(jax.random.key(3), 6, 0.1, 0.2, True)
  assert len(np.unique(np.asarray(params[:, 0]))) == 6


def test_identity_is_a_resize_and_flip_mirrors():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(size=(2, 16, 16, 1)), jnp.float32)
  same = augment.warp(x, augment.identity(2), (16, 16))
  np.testing.assert_allclose(same, x, atol=1e-5)
  flipped = augment.warp(x, jnp.asarray([[0, 0, 1, 1.0]] * 2), (16, 16))
  np.testing.assert_allclose(flipped, x[:, :, ::-1], atol=1e-5)


def test_shift_moves_content():
  x = np.zeros((1, 20, 20, 1), np.float32)
  x[0, 10, 5] = 1.0
  # Shift right by 0.25 of the width = 5 pixels.
  out = augment.warp(jnp.asarray(x), jnp.asarray([[0.25, 0.0, 1.0, 0.0]]), (20, 20))
  assert np.unravel_index(np.argmax(out[0, ..., 0]), (20, 20)) == (10, 10)


def test_draw_ranges():
  p = np.asarray(augment.draw(jax.random.key(0), 512, 0.1, 0.2, False))
  assert np.abs(p[:, :2]).max() <= 0.1 and p[:, :2].std() > 0.03
  assert p[:, 2].min() >= 0.8 and p[:, 2].max() <= 1.2
  assert (p[:, 3] == 0).all()
