"""experiments/benchmark.py run tiny, as the GPU machines would run it, and its FLOP counts.

The subprocess run has ml_collections, grain, tensorflow_datasets and array_record made
unimportable (the lent GPU machines have none of them) and 2 simulated CPU devices, so it
also covers the data-parallel path. experiments/profile_step.py's patches (the earlier
forms of the step) are checked to give the same numbers and to be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

import benchmark  # noqa: E402
import profile_step  # noqa: E402

from vmsjax import hostmem  # noqa: E402

BLOCKED = ("ml_collections", "grain", "tensorflow_datasets", "array_record")
MODEL_PHASES = ("encoder", "train", "head", "eval")
FIELDS = ("phase", "batch", "dtype", "device", "images_per_s", "gflops_per_s", "ceiling_ratio")


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory):
  """Records of a tiny run (32x32, 2 images per device, 2 devices) without the blocked
  packages; also its stdout."""
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  wrapper = textwrap.dedent(
    f"""
    import runpy, sys
    for name in {BLOCKED!r}:
      sys.modules[name] = None  # `import name` now raises ImportError
    sys.argv = ["benchmark.py"] + sys.argv[1:]
    runpy.run_path({str(REPO / "experiments" / "benchmark.py")!r}, run_name="__main__")
    assert not any(sys.modules.get(n) for n in {BLOCKED!r} if n != "ml_collections")
    """
  )
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
  }
  args = ["--size", "32", "--batch", "2", "--repeats", "2", "--iters", "1"]
  args += ["--matmul-n", "128", "--out", str(out)]
  proc = subprocess.run(
    [sys.executable, "-c", wrapper, *args],
    cwd=str(REPO),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_records_fields_and_arithmetic(blocked_run):
  records, stdout = blocked_run
  assert [r["phase"] for r in records] == ["matmul", *MODEL_PHASES]
  ceiling = records[0]["gflops_per_s"]
  assert records[0]["matmul_n"] == 128
  # The matmul's FLOPs: one 128^3 product per device, 2 FLOPs per multiply-add.
  assert records[0]["flops"] == 2 * 2 * 128**3
  assert records[0]["ceiling_ratio"] == pytest.approx(1.0)
  for r in records:
    for f in FIELDS:
      assert f in r, (r["phase"], f)
    assert r["dtype"] == "float32"
    assert r["device"] == "cpu" and r["devices"] == 2
    assert r["ml_collections_stand_in"] is True
    # Run as a program, the script restarts itself with huge pages where they apply.
    if hostmem.available():
      assert r["huge_pages"] == "on"
    assert r["huge_pages"].startswith(("on", "off ("))
    assert len(r["seconds_all"]) == 2
    assert r["seconds_per_call"] == pytest.approx(float(np.median(r["seconds_all"])))
    assert r["gflops_per_s"] == pytest.approx(r["flops"] / r["seconds_per_call"] / 1e9)
    assert r["ceiling_gflops_per_s"] == pytest.approx(ceiling)
    assert r["ceiling_ratio"] == pytest.approx(r["gflops_per_s"] / ceiling)
    assert r["peak_memory_bytes"] > 0 and r["xla_memory_bytes"] > 0
    if r["flops_xla"] is not None:
      assert r["gflops_per_s_xla"] == pytest.approx(r["flops_xla"] / r["seconds_per_call"] / 1e9)
  for r in records[1:]:
    assert r["batch"] == 4 and r["batch_per_device"] == 2 and r["image_size"] == 32
    assert r["images_per_s"] > 0
    assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds_per_call"])
  by = {r["phase"]: r for r in records}
  # A training step does the encoder's forward and more.
  assert by["train"]["flops"] > by["encoder"]["flops"] > by["head"]["flops"]
  assert by["eval"]["flops"] > by["encoder"]["flops"]
  for phase in MODEL_PHASES:
    assert phase in stdout


def test_vgg16_flops_match_published_count():
  # VGG-16's 13 convolutions: about 15.35 GMACs for a 224x224 image.
  assert benchmark.vgg16_forward_flops(224) == pytest.approx(30.7e9, rel=0.005)


def _layer_flops_from_params(config) -> int:
  """Forward FLOPs of head + decoder, read off the initialised parameters' shapes."""
  import vmsjax.train as train

  model = train.make_model(config)
  s = config.data.image_size // 32
  feats = jnp.zeros((1, s, s, 512))
  params = jax.eval_shape(
    lambda: model.init(
      {"params": jax.random.key(0), "latent": jax.random.key(1)}, feats, train=False, sample=True
    )
  )["params"]
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [p.key for p in path]
    if names[-1] != "kernel":
      continue
    if leaf.ndim == 2:  # Dense: every input meets every output once
      total += 2 * leaf.shape[0] * leaf.shape[1]
    else:  # deconvN takes an input of side s * 2**(N-1)
      n = int(names[-2].removeprefix("deconv"))
      side = s * 2 ** (n - 1)
      total += 2 * side * side * int(np.prod(leaf.shape))
  return total


@pytest.mark.parametrize("size", [32, 224])
def test_head_decoder_flops_match_model(size):
  benchmark.import_train()
  config = benchmark.make_config(size, "float32")
  fwd = _layer_flops_from_params(config)
  assert sum(f for _, f in benchmark.head_decoder_layers(config)) == fwd
  enc = benchmark.vgg16_forward_flops(size)
  assert benchmark.analytic_flops("eval", config, 3) == 3 * (enc + fwd)
  first = 2 * (size // 32) ** 2 * 512 * config.model.dense  # no input gradient for it
  assert benchmark.analytic_flops("head", config, 2) == 2 * (3 * fwd - first)
  assert benchmark.analytic_flops("train", config, 1) == enc + 3 * fwd - first


def test_config_is_the_papers():
  from vmsjax import config as config_lib

  benchmark.import_train()
  c = benchmark.make_config(224, "bfloat16")
  paper = config_lib.load(str(REPO / "configs" / "vischema.py") + ":m32")
  assert c.model.dtype == "bfloat16" and c.model.encoder.allow_random
  for key in ("model.dense", "model.latent", "model.decoder_channels", "loss.reconstruction"):
    a, b = c, paper
    for part in key.split("."):
      a, b = a[part], b[part]
    assert a == b, key
  assert paper.data.image_size == 224 and paper.train.batch_size == 32 and paper.augment.enabled


def test_encode_in_micro_batches_matches_whole_batch_and_patch_restores():
  """train.encode runs the trunk 4 images at a time on CPU from 128x128 up: same features."""
  from vmsjax import train
  from vmsjax.models import vae

  benchmark.import_train()
  config = benchmark.make_config(32, "float32")
  encoder = train.make_encoder(config)
  params = train.encoder_params(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (8, 128, 128, 3)), jnp.float32)
  got = jax.jit(lambda p, x: train.encode(config, encoder, p, x))(params, images)
  original, original_ct = train.encode, vae.SubpixelConvTranspose
  with profile_step.patched("convT+whole"):
    assert vae.SubpixelConvTranspose is nn.ConvTranspose
    assert train.encode is profile_step.whole_encode
    ref = jax.jit(lambda p, x: train.encode(config, encoder, p, x))(params, images)
  with profile_step.patched("phases+chunk2"):
    assert vae.SubpixelConvTranspose.keywords == {"method": "phases"}
    two = jax.jit(lambda p, x: train.encode(config, encoder, p, x))(params, images)
  assert train.encode is original and vae.SubpixelConvTranspose is original_ct
  assert got.shape == ref.shape == (8, 4, 4, 512)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(two, ref, rtol=1e-5, atol=1e-5)

  def trunk_jaxpr(x):
    return str(jax.make_jaxpr(lambda p, x: train.encode(config, encoder, p, x))(params, x))

  assert "scan" in trunk_jaxpr(images)  # lax.map over 2 micro-batches of 4
  # Batches that 4 does not divide, and batches of 4 or fewer, go through at once.
  for b in (3, 4, 6):
    assert "scan" not in trunk_jaxpr(images[:b])
  # Small images go through at once too (there micro-batches were slower).
  assert "scan" not in trunk_jaxpr(images[:, :64, :64])
  with pytest.raises(ValueError, match="unknown variant"):
    with profile_step.patched("fft"):
      pass


def test_xla_flops_left_out_where_a_loop_holds_convolutions():
  x = jnp.ones((8, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))

  def conv(x):
    return jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  plain = jax.jit(conv).lower(x).compile()
  looped = jax.jit(lambda x: jax.lax.map(conv, x.reshape(2, 4, 8, 8, 3))).lower(x).compile()
  assert benchmark.xla_flops(plain) is None or benchmark.xla_flops(plain) > 0
  assert not benchmark._convolutions_in_loops(plain.as_text())
  assert benchmark._convolutions_in_loops(looped.as_text())
  assert benchmark.xla_flops(looped) is None
