"""Model files (.vmsmodel): export, predict without the workdir, strict loading."""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

import vmsjax
from vmsjax import cli, inference, model_file, weights
from vmsjax import predict as predict_lib
from vmsjax.errors import VMSError
from vmsjax.studies import stats

# Two sizes, so `predict` groups images; PNG so both runs read the same pixels.
SIZES = {"a.png": (40, 52), "b.png": (40, 52), "c.png": (36, 30)}
GROUPS = (("a.png", "b.png"), ("c.png",))  # what `predict` stacks together


def _stem(name):
  return name.rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("model_file_images")
  rng = np.random.default_rng(11)
  arrays = {}
  for name, (h, w) in SIZES.items():
    arrays[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arrays[name]).save(folder / name)
  return folder, arrays


@pytest.fixture(scope="module")
def reference(trained_workdir, images, tmp_path_factory):
  """What `vmsjax predict --workdir` does (`inference.load`, `predict_files`), and its
  `Trained`."""
  folder, _ = images
  out = tmp_path_factory.mktemp("reference") / "out"
  trained = inference.load(trained_workdir)
  found = predict_lib.find_images([str(folder)])
  predict_lib.predict_files(trained, found, out, figures_too=False, log=lambda _: None)
  return trained, out


@pytest.fixture(scope="module")
def exported(trained_workdir, reference, tmp_path_factory):
  """The workdir exported with its trunk (CLI, from a copy that is then deleted: nothing
  can read the workdir afterwards) and without it (Python)."""
  base = tmp_path_factory.mktemp("exported")
  work = base / "run"
  shutil.copytree(trained_workdir, work)
  full, bare = base / "model.vmsmodel", base / "bare.vmsmodel"
  assert cli.main(["export-model", "--workdir", str(work), "--out", str(full)]) == 0
  shutil.rmtree(work)
  manifest = model_file.write(reference[0], bare, include_encoder=False)
  return full, bare, manifest


@pytest.fixture(scope="module")
def loaded(exported):
  return vmsjax.load_model(exported[0])


def test_predict_model_in_a_fresh_process_equals_predict_workdir(
  exported, images, reference, tmp_path
):
  folder, _ = images
  _, ref = reference
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  shutil.copy(exported[0], elsewhere / "shared.vmsmodel")
  # The dataset code is never imported: the file needs no dataset.
  code = (
    "import sys; from vmsjax import cli; rc = cli.main(sys.argv[1:]); "
    "assert 'vmsjax.data.catalogue' not in sys.modules; sys.exit(rc)"
  )
  argv = ["predict", "--model", "shared.vmsmodel", str(folder), "--out", "out", "--no_figures"]
  proc = subprocess.run(
    [sys.executable, "-c", code, *argv],
    cwd=elsewhere,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  out = elsewhere / "out"
  for name in SIZES:
    got = np.load(out / "npy" / f"{_stem(name)}.npy")
    assert np.array_equal(got, np.load(ref / "npy" / f"{_stem(name)}.npy")), name
    assert np.array_equal(
      np.load(out / "full" / f"{_stem(name)}.npy"), np.load(ref / "full" / f"{_stem(name)}.npy")
    )
  assert (out / "scores.csv").read_text() == (ref / "scores.csv").read_text()
  record = json.loads((out / "predict.json").read_text())
  assert record["workdir"] is None and record["model"] == "shared.vmsmodel"
  assert record["checkpoint"] == 12


def test_python_api_gives_the_same_maps(loaded, images, reference):
  _, arrays = images
  trained, ref = reference
  s = trained.image_size
  assert loaded.image_size == s
  # One group: the fresh-process test covers every size.
  stack = np.stack([arrays[n] for n in GROUPS[0]])
  maps = loaded.predict(stack)
  assert maps.dtype == np.float32 and maps.shape == (len(stack), s, s, 2)
  expected = np.stack([np.load(ref / "npy" / f"{_stem(n)}.npy") for n in GROUPS[0]])
  assert np.array_equal(maps, expected)
  scores = loaded.scores(stack)
  assert list(scores) == list(stats.SCORES)
  for c, name in enumerate(stats.SCORES):
    np.testing.assert_array_equal(scores[name], expected[..., c].mean((1, 2), np.float64))
  mean, std = loaded.sample(stack, 4, seed=7)
  ref_mean, ref_std = inference.predict_samples(trained, stack, 4, 7)
  assert np.array_equal(mean, ref_mean) and np.array_equal(std, ref_std)
  assert std.max() > 0


def test_manifest_records_what_the_run_was(exported, trained_workdir, loaded):
  full, bare, manifest = exported
  assert loaded.manifest["format"] == "vmsjax-model" and loaded.manifest["format_version"] == 1
  assert loaded.manifest["vmsjax_version"] == vmsjax.__version__
  assert loaded.manifest["dataset"] == json.loads((trained_workdir / "dataset.json").read_text())
  assert loaded.manifest["config"] == json.loads((trained_workdir / "config.json").read_text())
  assert loaded.manifest["preprocessing"]["trunk"] == "caffe"
  assert loaded.manifest["encoder"]["included"] and not manifest["encoder"]["included"]
  assert loaded.manifest["encoder"]["checksum"] == manifest["encoder"]["checksum"]
  with zipfile.ZipFile(full) as z, zipfile.ZipFile(bare) as b:
    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    assert sum(n.startswith("encoder/") for n in z.namelist()) == 26  # 13 kernels, 13 biases
    assert not any(n.startswith("encoder/") for n in b.namelist())
    params = [n for n in z.namelist() if n.startswith(("params/", "batch_stats/"))]
    assert params and all(z.read(n) == b.read(n) for n in params)


def test_no_encoder_needs_the_right_trunk(exported, images, reference, tmp_path, capsys):
  _, bare, _ = exported
  folder, arrays = images
  trained, ref = reference
  with pytest.raises(VMSError, match="--encoder_weights random") as e:
    model_file.load(bare)
  assert "\n" not in str(e.value)

  trunk = jax.device_get(trained.enc_params)
  right = tmp_path / "trunk.npz"
  weights.save_npz(weights.VGGWeights(trunk, "caffe", "vmsjax-npz", "", None), right)
  model = vmsjax.load_model(bare, encoder_weights=right)
  stack = np.stack([arrays[n] for n in GROUPS[0]])
  expected = np.stack([np.load(ref / "npy" / f"{_stem(n)}.npy") for n in GROUPS[0]])
  assert np.array_equal(model.predict(stack), expected)
  # A random trunk is drawn again from the config, and the checksum says it is the same.
  model_file.load(bare, encoder_weights=model_file.RANDOM_TRUNK)

  off = {k: dict(v) for k, v in trunk.items()}
  off["block5_conv3"]["bias"] = np.asarray(off["block5_conv3"]["bias"]) + 1e-3
  wrong = tmp_path / "wrong.npz"
  weights.save_npz(weights.VGGWeights(off, "caffe", "vmsjax-npz", "", None), wrong)
  with pytest.raises(VMSError, match="is not the one bare.vmsmodel was trained with") as e:
    model_file.load(bare, encoder_weights=wrong)
  assert "\n" not in str(e.value)
  capsys.readouterr()
  argv = ["predict", "--model", str(bare), "--encoder_weights", str(wrong), str(folder)]
  assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("vmsjax: error")]
  assert len(err) == 1 and "wrong.npz" in err[0] and "not the one" in err[0]
  assert not (tmp_path / "o" / "npy").exists()


def _rewrite(src, dst, manifest_edit=None, member_edit=None, fix_checksum=True):
  """A copy of a model file, re-zipped (valid CRCs) with its manifest or a member edited."""
  with zipfile.ZipFile(src) as z:
    members = {n: z.read(n) for n in z.namelist()}
  manifest = json.loads(members["manifest.json"])
  if manifest_edit:
    manifest_edit(manifest)
    if fix_checksum:
      manifest["checksum"] = model_file._manifest_checksum(manifest)
  members["manifest.json"] = json.dumps(manifest).encode()
  if member_edit:
    member_edit(members)
  with zipfile.ZipFile(dst, "w") as z:
    for name, data in members.items():
      z.writestr(name, data)


def _flip_in_member(src, dst, name):
  """A copy with one byte flipped in the middle of member `name`'s stored bytes."""
  data = bytearray(src.read_bytes())
  with zipfile.ZipFile(src) as z:
    info = z.getinfo(name)
  head = data[info.header_offset : info.header_offset + 30]
  start = info.header_offset + 30 + int.from_bytes(head[26:28], "little")
  start += int.from_bytes(head[28:30], "little")
  data[start + info.file_size // 2] ^= 0xFF
  dst.write_bytes(bytes(data))


def _a_params_member(src):
  with zipfile.ZipFile(src) as z:
    return max(
      (i for i in z.infolist() if i.filename.startswith("params/")), key=lambda i: i.file_size
    ).filename


def _swap_member_bytes(members):
  name = next(n for n in members if n.startswith("params/"))
  arr = np.load(io.BytesIO(members[name]))
  buf = io.BytesIO()
  np.save(buf, arr + 1)
  members[name] = buf.getvalue()


DAMAGE = {
  "flipped params byte": (
    lambda s, d: _flip_in_member(s, d, _a_params_member(s)),
    "damaged model file",
  ),
  "flipped manifest byte": (lambda s, d: _flip_in_member(s, d, "manifest.json"), "damaged"),
  "truncated": (lambda s, d: d.write_bytes(s.read_bytes()[: s.stat().st_size // 2]), "truncated"),
  "last bytes cut": (lambda s, d: d.write_bytes(s.read_bytes()[:-7]), "truncated"),
  "edited manifest": (
    lambda s, d: _rewrite(s, d, lambda m: m["config"]["model"].update(latent=5), None, False),
    "manifest.json fails its checksum",
  ),
  "replaced member": (
    lambda s, d: _rewrite(s, d, member_edit=_swap_member_bytes),
    "fails its sha256",
  ),
  "future format": (
    lambda s, d: _rewrite(s, d, lambda m: m.update(format_version=model_file.FORMAT_VERSION + 1)),
    "newer than this vmsjax",
  ),
  "not a model file": (lambda s, d: _rewrite(s, d, lambda m: m.update(format="x")), "not a vmsjax"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_or_future_file_is_refused_with_one_line(
  damage, exported, images, tmp_path, capsys
):
  make, expected = DAMAGE[damage]
  bad = tmp_path / "bad.vmsmodel"
  make(exported[0], bad)
  with pytest.raises(VMSError, match=expected) as e:
    vmsjax.load_model(bad)
  assert "\n" not in str(e.value) and str(bad) in str(e.value)
  folder, _ = images
  capsys.readouterr()
  assert cli.main(["predict", "--model", str(bad), str(folder), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("vmsjax: error:") and "bad.vmsmodel" in err[0]


def test_export_refuses_a_wrong_suffix_and_predict_refuses_mixed_sources(tmp_path, capsys):
  with pytest.raises(VMSError, match=r"must end in \.vmsmodel"):
    model_file.export(tmp_path, tmp_path / "model.zip")
  code = cli.main(["predict", "--model", "m.vmsmodel", "--workdir", "w", "x.png", "--out", "o"])
  assert code == 2 and "not both" in capsys.readouterr().err


def test_import_vmsjax_stays_cheap():
  code = (
    "import sys, vmsjax; assert callable(vmsjax.load_model); "
    "print([m for m in ('jax', 'numpy', 'flax', 'vmsjax.model_file') if m in sys.modules])"
  )
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]"
