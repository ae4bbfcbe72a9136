"""experiments/benchmark.py run tiny, as the GPU machines would run it, and its FLOP counts.

The subprocess run is the script from the checkout (`PYTHONPATH=.`) with grain,
tensorflow_datasets and array_record made unimportable (the lent GPU machines have none
of them; ml-collections they carry as a wheel) and 2 simulated CPU devices, so it also
covers the data-parallel path. experiments/profile_step.py's variants are arguments:
they are checked to change what is computed (the decoder form changes the program, a
micro-batch the trunk's loop), to keep the numbers, and to default to `vmsjax.tuning`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))

import benchmark  # noqa: E402
import profile_step  # noqa: E402

from vmsjax import factory, hostmem, inference, pixels, step, tuning  # noqa: E402

BLOCKED = ("grain", "tensorflow_datasets", "array_record")
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
    try:
      runpy.run_path({str(REPO / "experiments" / "benchmark.py")!r}, run_name="__main__")
    finally:
      assert not any(sys.modules.get(n) for n in {BLOCKED!r})
      import ml_collections, vmsjax  # the real packages; vmsjax from the checkout
      assert vmsjax.__file__.startswith({str(REPO)!r}), vmsjax.__file__
      assert ml_collections.__file__ and ml_collections.ConfigDict.__module__.startswith(
        "ml_collections"
      )
    """
  )
  env = {
    **os.environ,
    "PYTHONPATH": str(REPO),
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
    assert "ml_collections_stand_in" not in r  # the real ml_collections, no stand-in
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
  model = factory.make_model(config)
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

  c = benchmark.make_config(224, "bfloat16")
  paper = config_lib.load(str(REPO / "configs" / "vischema.py") + ":m32")
  assert c.model.dtype == "bfloat16" and c.model.encoder.allow_random
  for key in ("model.dense", "model.latent", "model.decoder_channels", "loss.reconstruction"):
    a, b = c, paper
    for part in key.split("."):
      a, b = a[part], b[part]
    assert a == b, key
  assert paper.data.image_size == 224 and paper.train.batch_size == 32 and paper.augment.enabled


def test_encode_micro_batches_are_an_argument_defaulting_to_tuning(monkeypatch):
  """pixels.encode runs the trunk 4 images at a time on CPU from 128x128 up (tuning's
  choice), or `micro_batch` at a time when given: the same features either way."""
  config = benchmark.make_config(32, "float32")
  encoder = factory.make_encoder(config)
  params = factory.encoder_params(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (8, 128, 128, 3)), jnp.float32)

  def encode(x, micro=None):
    return jax.jit(lambda p, x: pixels.encode(config, encoder, p, x, micro))(params, x)

  def trunk_jaxpr(x, micro=None):
    return str(jax.make_jaxpr(lambda p, x: pixels.encode(config, encoder, p, x, micro))(params, x))

  got, whole, two = encode(images), encode(images, 8), encode(images, 2)
  assert got.shape == whole.shape == (8, 4, 4, 512)
  np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(two, whole, rtol=1e-5, atol=1e-5)
  assert tuning.encoder_micro_batch(8, 128, 128) == 4
  assert trunk_jaxpr(images) == trunk_jaxpr(images, 4)  # the default is tuning's
  assert "scan" in trunk_jaxpr(images)  # lax.map over 2 micro-batches of 4
  assert "scan" in trunk_jaxpr(images, 2) and "scan" not in trunk_jaxpr(images, 8)
  # Batches that 4 does not divide, and batches of 4 or fewer, go through at once.
  for b in (3, 4, 6):
    assert "scan" not in trunk_jaxpr(images[:b])
  # Small images go through at once too (there micro-batches were slower).
  assert "scan" not in trunk_jaxpr(images[:, :64, :64])
  monkeypatch.setattr(tuning, "encoder_micro_batch", lambda b, h, w, platform=None: 2)
  assert "scan" in trunk_jaxpr(images[:, :64, :64])  # read from tuning at every call


def test_profile_variants_parse():
  parse = profile_step.parse_variant
  assert parse("base").is_base and parse("base").form is None and parse("base").trunk is None
  v = parse("lax+whole")
  assert (v.form, v.trunk, v.micro_batch(8)) == ("lax", "whole", 8)
  v = parse("phases+chunk2")
  assert (v.form, v.trunk, v.micro_batch(8)) == ("phases", 2, 2)
  assert parse("chunk4").form is None and parse("matmul").micro_batch(8) is None
  for form in ("subpixel", "phases", "matmul", "lax"):
    assert parse(form).form == form
  # nov26 (a per-layer mix of old forms, reproduced by patching) is gone.
  for bad in ("fft", "nov26", "convT", "chunk0", "", "lax+bogus"):
    with pytest.raises(ValueError, match="unknown variant"):
      parse(bad)
  with pytest.raises(ValueError, match="at most one"):
    parse("lax+phases")
  with pytest.raises(ValueError, match="at most one"):
    parse("whole+chunk2")


def _lowered(fn, args) -> str:
  return fn.lower(*args).as_text()


def test_profile_decoder_form_is_an_argument_that_changes_the_program(monkeypatch):
  """A variant's form reaches the model (`model.clone(conv_method=...)`) and changes the
  compiled program; base's form is `tuning.decoder_form()`, read when the model is made."""
  config = benchmark.make_config(32, "float32")
  ph = {
    v: profile_step.VariantPhases(config, 2, profile_step.parse_variant(v))
    for v in ("base", "lax", "matmul", "phases")
  }
  assert ph["base"].setup.model.conv_method == tuning.decoder_form() == "matmul"  # CPU
  assert ph["lax"].setup.model.conv_method == "lax"
  head = {v: _lowered(*p.head_fn()[:2]) for v, p in ph.items()}
  assert head["base"] == head["matmul"]  # the default is tuning's form
  assert len({head["lax"], head["matmul"], head["phases"]}) == 3
  dilated = "lhs_dilate = [2, 2]"  # lax.conv_transpose convolves the dilated input
  assert dilated in head["lax"] and dilated not in head["phases"] + head["matmul"]
  # A decoder layer alone follows the variant's form too.
  layers = {v: _lowered(*profile_step.layer_fn(p, "deconv2")) for v, p in ph.items()}
  assert layers["base"] == layers["matmul"] and dilated in layers["lax"]
  assert len(set(layers.values())) == 3
  # tuning.decoder_form is read when the model is made.
  monkeypatch.setattr(tuning, "decoder_form", lambda platform=None: "phases")
  base = profile_step.VariantPhases(config, 2, profile_step.parse_variant("base"))
  assert base.setup.model.conv_method == "phases"
  assert _lowered(*base.head_fn()[:2]) == head["phases"]


def test_profile_trunk_variant_step_and_maps_are_the_librarys():
  """With the trunk's micro-batch as an argument, the profiled step traces to the very
  program `step.make_step` builds (at tuning's micro-batch), and the prediction gives
  what `vmsjax.inference` gives."""
  config = benchmark.make_config(32, "float32")
  ph = profile_step.VariantPhases(config, 2, profile_step.parse_variant("chunk2"))
  setup = ph.setup
  _, args, _ = ph.train_fn()  # (states, aux, batch, members)
  default = tuning.encoder_micro_batch(ph.batch, 32, 32)

  def jaxpr(fn) -> str:
    return str(jax.make_jaxpr(fn)(*args))

  assert jaxpr(profile_step.variant_step(config, setup, default)) == jaxpr(
    step.make_step(config, setup)
  )
  assert jaxpr(profile_step.variant_step(config, setup, 2)) != jaxpr(step.make_step(config, setup))
  assert "scan" in jaxpr(profile_step.variant_step(config, setup, 2))
  fn, eval_args, donates = ph.eval_fn()
  assert not donates
  maps, mu = fn(*eval_args)
  trained = inference.Trained(
    REPO, config, 0, eval_args[0], setup.enc_params, setup.model, setup.encoder, setup.mesh
  )
  ref_maps, ref_mu = inference._compiled(trained, "maps")(eval_args[0], setup.enc_params, ph.images)
  np.testing.assert_allclose(maps, ref_maps, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mu, ref_mu, rtol=1e-5, atol=1e-6)


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
