"""Loading VGG-16 weights exactly: torchvision .pth, Keras .h5 (legacy and Keras 3), .npz.

References are computed with torch (a test-only dependency) from the same random weights,
never with vmsjax's own model code, so a wrong transpose, channel order or preprocessing
shows up as a mismatch.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from vmsjax import cli, weights
from vmsjax.errors import VMSError
from vmsjax.models import vgg16

torch = pytest.importorskip("torch")
nn = torch.nn

# VGG-16 configuration D, as torchvision builds `features`: channels, "M" = max-pool.
CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
RTOL = 1e-5


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build_features() -> nn.Sequential:
  """torchvision's `vgg16().features`, rebuilt here since torchvision is not installed."""
  layers, cin = [], 3
  for v in CFG_D:
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      conv = nn.Conv2d(cin, v, 3, padding=1)
      # He init and non-zero biases keep a usable signal through 13 layers, so the
      # comparison is not between two near-zero outputs.
      nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
      nn.init.normal_(conv.bias, std=0.05)
      layers += [conv, nn.ReLU(inplace=True)]
      cin = v
  return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def model():
  torch.manual_seed(0)
  torch.set_num_threads(2)
  return build_features().eval()


@pytest.fixture(scope="module")
def state_dict(model):
  sd = {f"features.{k}": v for k, v in model.state_dict().items()}
  # The full model's classifier: present in torchvision's file, ignored by the loader.
  sd["classifier.0.weight"] = torch.randn(16, 8)
  sd["classifier.0.bias"] = torch.randn(16)
  sd["classifier.6.weight"] = torch.randn(10, 16)
  return sd


@pytest.fixture(scope="module")
def hwio(model):
  """The same weights as Keras stores them: kernels HWIO."""
  out = {}
  for name, idx in zip(vgg16.LAYER_NAMES, CONV_INDICES, strict=True):
    conv = model[idx]
    out[name] = {
      "kernel": conv.weight.detach().permute(2, 3, 1, 0).numpy().copy(),
      "bias": conv.bias.detach().numpy().copy(),
    }
  return out


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def torch_forward(model, x_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    y = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
  return y.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def ref_torch(model, images):
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  x = (images.astype(np.float32) / np.float32(255.0) - mean) / std
  return torch_forward(model, x)


@pytest.fixture(scope="module")
def ref_caffe(model, images):
  x = images[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
  return torch_forward(model, x)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def pth(files, state_dict) -> str:
  p = files / "vgg16.pth"
  torch.save(state_dict, p)
  return str(p)


def write_keras_legacy(path, hwio, naming="keras1", full_model=False, drop=(), extra=()):
  """A Keras 2-style HDF5 weights file: `layer_names` attrs and per-layer `weight_names`."""
  names = ["input_1"]
  for block, n_conv, _ in vgg16.BLOCKS:
    names += [f"block{block}_conv{i}" for i in range(1, n_conv + 1)] + [f"block{block}_pool"]
  names = [n for n in names if n not in drop] + list(extra)
  if full_model:
    names += ["flatten", "fc1", "fc2", "predictions"]
  with h5py.File(path, "w") as f:
    root = f.create_group("model_weights") if full_model else f
    root.attrs["layer_names"] = np.array([n.encode() for n in names])
    root.attrs["backend"] = b"tensorflow"
    root.attrs["keras_version"] = b"2.2.4"
    for name in names:
      g = root.create_group(name)
      arrays = []
      if name in hwio:
        arrays = [hwio[name]["kernel"], hwio[name]["bias"]]
      elif name in ("fc1", "fc2", "predictions"):
        arrays = [np.ones((8, 4), np.float32), np.ones(4, np.float32)]
      if naming == "keras1":
        wnames = [f"{name}/{name}_W_1:0", f"{name}/{name}_b_1:0"]
      else:  # tf.keras 2 save_weights
        wnames = [f"{name}/kernel:0", f"{name}/bias:0"]
      wnames = wnames[: len(arrays)]
      for wn, arr in zip(wnames, arrays, strict=True):
        g.create_dataset(wn, data=arr)
      g.attrs["weight_names"] = np.array([w.encode() for w in wnames])


def write_keras3(path, hwio, naming="named"):
  """A Keras 3 `.weights.h5`: `layers/<name>/vars/{0,1}`."""
  with h5py.File(path, "w") as f:
    layers = f.create_group("layers")
    if naming == "conv2d":  # a model wrapping the functional VGG16, class-named entries
      layers = layers.create_group("functional").create_group("layers")
      layers.create_group("input_layer").create_group("vars")
    for i, name in enumerate(vgg16.LAYER_NAMES):
      key = name if naming == "named" else ("conv2d" if i == 0 else f"conv2d_{i}")
      v = layers.create_group(key).create_group("vars")
      v.create_dataset("0", data=hwio[name]["kernel"])
      v.create_dataset("1", data=hwio[name]["bias"])
    layers.create_group("max_pooling2d").create_group("vars")
    v = layers.create_group("dense").create_group("vars")
    v.create_dataset("0", data=np.ones((8, 4), np.float32))
    v.create_dataset("1", data=np.ones(4, np.float32))


@pytest.fixture(scope="module")
def h5(files, hwio) -> str:
  p = files / "vgg16_notop.h5"
  write_keras_legacy(p, hwio)
  return str(p)


# ----------------------------------------------------------------------------- exactness


def test_torchvision_pth_matches_torch(pth, images, ref_torch):
  w = weights.load_vgg16(pth)
  assert (w.source, w.preprocessing, w.known) == ("torchvision-pth", "torch", None)
  assert w.sha256 == hashlib.sha256(Path(pth).read_bytes()).hexdigest()
  assert set(w.params) == set(vgg16.LAYER_NAMES)
  assert all(a.dtype == np.float32 for p in w.params.values() for a in p.values())
  out = np.asarray(vgg16.features(w, images))
  assert out.shape == (2, 2, 2, 512)
  assert np.linalg.norm(ref_torch) > 0
  assert rel_err(out, ref_torch) <= RTOL


def test_legacy_torch_format_loads_the_same(files, state_dict, pth):
  p = files / "legacy.pth"
  torch.save(state_dict, p, _use_new_zipfile_serialization=False)
  got, want = weights.load_vgg16(p).params, weights.load_vgg16(pth).params
  for name in vgg16.LAYER_NAMES:
    for part in ("kernel", "bias"):
      np.testing.assert_array_equal(got[name][part], want[name][part])


def test_non_contiguous_tensors_are_rebuilt_with_their_strides(files, state_dict, pth):
  sd = dict(state_dict)
  # A transposed copy's transpose: same values, but stored with non-trivial strides.
  sd["features.0.weight"] = state_dict["features.0.weight"].permute(3, 2, 1, 0).contiguous()
  sd["features.0.weight"] = sd["features.0.weight"].permute(3, 2, 1, 0)
  assert not sd["features.0.weight"].is_contiguous()
  p = files / "strided.pth"
  torch.save(sd, p)
  got = weights.load_vgg16(p).params["block1_conv1"]["kernel"]
  np.testing.assert_array_equal(got, weights.load_vgg16(pth).params["block1_conv1"]["kernel"])


@pytest.mark.parametrize("naming,full_model", [("keras1", False), ("tf2", True)])
def test_keras_h5_matches_caffe_reference(files, hwio, images, ref_caffe, naming, full_model):
  p = files / f"keras_{naming}.h5"
  write_keras_legacy(p, hwio, naming=naming, full_model=full_model)
  w = weights.load_vgg16(p)
  assert (w.source, w.preprocessing) == ("keras-h5", "caffe")
  out = np.asarray(vgg16.features(w, images))
  assert rel_err(out, ref_caffe) <= RTOL


@pytest.mark.parametrize("naming", ["named", "conv2d"])
def test_keras3_equals_legacy(files, hwio, h5, naming):
  p = files / f"keras3_{naming}.weights.h5"
  write_keras3(p, hwio, naming)
  w = weights.load_vgg16(p)
  assert (w.source, w.preprocessing) == ("keras3-h5", "caffe")
  legacy = weights.load_vgg16(h5).params
  for name in vgg16.LAYER_NAMES:
    for part in ("kernel", "bias"):
      np.testing.assert_array_equal(w.params[name][part], legacy[name][part])


# ----------------------------------------------------------------------------- identity


def test_known_files_are_recognised(pth, h5, monkeypatch, capsys):
  sha = hashlib.sha256(Path(pth).read_bytes()).hexdigest()
  md5 = hashlib.md5(Path(h5).read_bytes()).hexdigest()
  monkeypatch.setitem(weights.KNOWN_SHA256_PREFIX, sha[:8], "torchvision test.pth")
  monkeypatch.setitem(weights.KNOWN_MD5, md5, "keras test.h5")
  assert weights.load_vgg16(pth).known == "torchvision test.pth"
  assert weights.load_vgg16(h5).known == "keras test.h5"
  err = capsys.readouterr().err
  assert "recognised the official torchvision test.pth" in err
  assert "recognised the official keras test.h5" in err


def test_official_hashes_are_listed():
  assert weights.KNOWN_SHA256_PREFIX["397923af"].endswith("vgg16-397923af.pth")
  assert set(weights.KNOWN_MD5) == {
    "6d6bbae143d832006294945121d1f1fc",
    "64373286793e3c8b2b4e3219cbf3544b",
  }


def test_unknown_file_is_accepted_with_a_note(pth, capsys):
  assert weights.load_vgg16(pth).known is None
  assert "not a known official VGG-16 file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- preprocessing


def test_load_trunk_refuses_the_other_preprocessing(pth, h5):
  assert set(weights.load_trunk(pth, "torch")) == set(vgg16.LAYER_NAMES)
  with pytest.raises(VMSError, match=r"model\.encoder\.preprocessing=torch"):
    weights.load_trunk(pth, "caffe")
  with pytest.raises(VMSError, match=r"model\.encoder\.preprocessing=caffe"):
    weights.load_trunk(h5, "torch")


# ----------------------------------------------------------------------------- convert


@pytest.mark.parametrize("which", ["pth", "h5"])
def test_convert_cli_round_trip(request, files, images, which, capsys):
  src = request.getfixturevalue(which)
  out = files / f"converted_{which}.npz"
  assert cli.main(["convert-vgg16", src, str(out)]) == 0
  assert f"wrote {out}" in capsys.readouterr().out
  orig, conv = weights.load_vgg16(src), weights.load_vgg16(out)
  assert conv.source == "vmsjax-npz"
  assert conv.preprocessing == orig.preprocessing
  np.testing.assert_array_equal(
    np.asarray(vgg16.features(conv, images)), np.asarray(vgg16.features(orig, images))
  )
  # The .npz keeps its preprocessing for training too.
  with pytest.raises(VMSError, match="model.encoder.preprocessing="):
    weights.load_trunk(str(out), "caffe" if orig.preprocessing == "torch" else "torch")


def test_convert_cli_reports_errors(files, pth, capsys):
  assert cli.main(["convert-vgg16", pth, str(files / "out.bin")]) == 2
  assert "must end in .npz" in capsys.readouterr().err
  assert cli.main(["convert-vgg16", str(files / "missing.pth"), str(files / "o.npz")]) == 2
  assert "no such file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad files


def _torch_file(files, name, sd) -> str:
  p = files / name
  torch.save(sd, p)
  return str(p)


def _bad_files(files, state_dict, hwio, pth, h5) -> dict[str, tuple[str, str]]:
  """name -> (path, a fragment the error message must contain)."""
  rng = np.random.default_rng(1)
  garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
  out = {}
  for ext in ("pth", "h5", "npz"):
    (files / f"garbage.{ext}").write_bytes(garbage)
    out[f"garbage_{ext}"] = (str(files / f"garbage.{ext}"), "corrupt")
  for src, ext in ((pth, "pth"), (h5, "h5")):
    data = Path(src).read_bytes()
    (files / f"truncated.{ext}").write_bytes(data[: len(data) // 3])
    out[f"truncated_{ext}"] = (str(files / f"truncated.{ext}"), "truncated")
  extra = dict(state_dict, **{"features.30.weight": torch.zeros(512, 512, 3, 3)})
  out["extra_layer_pth"] = (_torch_file(files, "extra.pth", extra), "features.30.weight")
  missing = {k: v for k, v in state_dict.items() if not k.startswith("features.28.")}
  out["missing_layer_pth"] = (_torch_file(files, "missing.pth", missing), "block5_conv3 is missing")
  resnet = {
    "conv1.weight": torch.zeros(64, 3, 7, 7),
    "bn1.weight": torch.ones(64),
    "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3),
    "fc.weight": torch.zeros(1000, 512),
  }
  out["resnet_pth"] = (_torch_file(files, "resnet.pth", resnet), "not a VGG-16")
  shape = dict(state_dict, **{"features.0.weight": torch.zeros(64, 3, 5, 5)})
  out["wrong_shape_pth"] = (_torch_file(files, "shape.pth", shape), "block1_conv1 kernel has shape")
  ints = dict(state_dict, **{"features.2.bias": torch.zeros(64, dtype=torch.int64)})
  out["int_dtype_pth"] = (_torch_file(files, "ints.pth", ints), "block1_conv2 bias has dtype int64")
  whole = files / "module.pth"
  torch.save(build_features(), whole)
  out["pickled_module_pth"] = (str(whole), "not a plain state dict")
  other = {
    f"conv{i}": {"kernel": np.ones((3, 3, 3, 8), np.float32), "bias": np.ones(8, np.float32)}
    for i in range(3)
  }
  write_keras_legacy(files / "other.h5", other, extra=tuple(other))
  out["other_layers_h5"] = (str(files / "other.h5"), "not a VGG-16")
  write_keras_legacy(files / "missing.h5", hwio, drop=("block5_conv3",))
  out["missing_layer_h5"] = (str(files / "missing.h5"), "block5_conv3 is missing")
  wide = {"kernel": np.ones((3, 3, 64, 64), np.float32), "bias": hwio["block2_conv1"]["bias"]}
  bad = dict(hwio, block2_conv1=wide)
  write_keras_legacy(files / "shape.h5", bad)
  out["wrong_shape_h5"] = (str(files / "shape.h5"), "block2_conv1 kernel has shape (3, 3, 64, 64)")
  vgg19 = dict(hwio, block5_conv4=hwio["block5_conv3"])
  write_keras_legacy(files / "vgg19.h5", vgg19, extra=("block5_conv4",))
  out["extra_layer_h5"] = (str(files / "vgg19.h5"), "unexpected layer 'block5_conv4'")
  (files / "weights.bin").write_bytes(Path(pth).read_bytes())
  out["unknown_extension"] = (str(files / "weights.bin"), "unknown weights extension")
  return out


@pytest.fixture(scope="module")
def bad_files(files, state_dict, hwio, pth, h5):
  return _bad_files(files, state_dict, hwio, pth, h5)


BAD = (
  "garbage_pth garbage_h5 garbage_npz truncated_pth truncated_h5 extra_layer_pth "
  "missing_layer_pth resnet_pth wrong_shape_pth int_dtype_pth pickled_module_pth "
  "other_layers_h5 missing_layer_h5 wrong_shape_h5 extra_layer_h5 unknown_extension"
).split()


@pytest.mark.parametrize("case", BAD)
def test_bad_files_raise_one_line_errors(bad_files, case):
  path, fragment = bad_files[case]
  with pytest.raises(VMSError) as e:
    weights.load_vgg16(path)
  msg = str(e.value)
  assert fragment in msg
  assert path in msg
  assert "\n" not in msg


def test_unpickler_runs_no_code_from_the_file(files, capsys):
  class Boom:
    def __reduce__(self):
      return (print, ("ran code from the file",))

  # A real torch zip whose data.pkl calls print(): the loader must refuse, not run it.
  p = files / "evil.pth"
  torch.save({"x": torch.zeros(1)}, p)
  with zipfile.ZipFile(p) as zf:
    entries = {n: zf.read(n) for n in zf.namelist()}
  pkl = next(n for n in entries if n.endswith("data.pkl"))
  entries[pkl] = pickle.dumps({"features.0.weight": Boom()}, protocol=2)
  with zipfile.ZipFile(p, "w") as zf:
    for n, data in entries.items():
      zf.writestr(n, data)
  with pytest.raises(VMSError, match=r"refusing to load __builtin__\.print"):
    weights.load_vgg16(p)
  assert "ran code" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- training


def test_train_encoder_params_loads_the_file(pth):
  from tests.conftest import tiny_config
  from vmsjax import factory

  c = tiny_config(**{"model.encoder.weights": pth, "model.encoder.preprocessing": "torch"})
  params = factory.encoder_params(c)
  np.testing.assert_array_equal(
    params["block3_conv2"]["kernel"], weights.load_vgg16(pth).params["block3_conv2"]["kernel"]
  )
  c = tiny_config(**{"model.encoder.weights": pth, "model.encoder.preprocessing": "caffe"})
  with pytest.raises(VMSError, match=r"preprocessing=torch"):
    factory.encoder_params(c)


# ----------------------------------------------------------------------- .keras archives


def _keras_like_archive(path, weights_h5, compression=zipfile.ZIP_STORED):
  """A zip laid out as Keras 3's model.save writes it, around a `.weights.h5`."""
  with zipfile.ZipFile(path, "w", compression=compression, compresslevel=1) as zf:
    zf.writestr("metadata.json", '{"keras_version": "3.0.0"}')
    zf.writestr("config.json", "{}")
    zf.write(weights_h5, "model.weights.h5")
  return str(path)


@pytest.fixture(scope="module")
def keras3_weights(files, hwio) -> str:
  p = files / "for_archive.weights.h5"
  write_keras3(p, hwio, "conv2d")
  return str(p)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras' torch backend, numpy 2
def test_keras_archive_written_by_keras_matches_its_forward(files, hwio, images):
  import os
  import sys

  if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"  # torch is the test-only reference backend
  keras = pytest.importorskip("keras")
  model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(64, 64, 3))
  model.set_weights([hwio[name][part] for name in vgg16.LAYER_NAMES for part in ("kernel", "bias")])
  path = files / "vgg16.keras"
  model.save(path)
  x = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
  want = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
  w = weights.load_vgg16(path)
  assert (w.source, w.preprocessing) == ("keras3-keras", "caffe")
  out = np.asarray(vgg16.features(w, images))
  assert out.shape == want.shape == (2, 2, 2, 512) and np.linalg.norm(want) > 0
  assert rel_err(out, want) <= RTOL


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_keras_archive_equals_its_weights_h5(files, keras3_weights, compression):
  p = _keras_like_archive(files / f"archive_{compression}.keras", keras3_weights, compression)
  got, want = weights.load_vgg16(p), weights.load_vgg16(keras3_weights)
  assert got.source == "keras3-keras"
  for name in vgg16.LAYER_NAMES:
    for part in ("kernel", "bias"):
      np.testing.assert_array_equal(got.params[name][part], want.params[name][part])


def _misnamed(files) -> dict[str, tuple[Path, str]]:
  """name -> (a file whose content is not what its extension says, the message fragment)."""
  # Small files of each format: the content is refused before any layer is read.
  small = {"block1_conv1": {"kernel": np.ones((3, 3, 3, 4), np.float32), "bias": np.ones(4)}}
  h5 = files / "small.h5"
  write_keras_legacy(h5, small, drop=tuple(vgg16.LAYER_NAMES[1:]))
  write_keras3(files / "small.weights.h5", _every_layer(small))
  archive = _keras_like_archive(files / "small.keras", files / "small.weights.h5")
  pth = files / "small.pth"
  torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, pth)
  out: dict[str, tuple[Path, str]] = {}

  def copy(name, data, fragment):
    (files / name).write_bytes(data)
    out[name] = (files / name, fragment)

  copy("keras_as.h5", Path(archive).read_bytes(), "is a Keras 3 .keras archive (a zip holding "
       "model.weights.h5), not an HDF5 file (Keras weights); rename it to .keras")  # fmt: skip
  copy("pth_as.h5", Path(pth).read_bytes(), "is a PyTorch torch.save archive")
  legacy = files / "legacy_for_misnamed.pth"
  torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
  copy("legacy_pth_as.h5", legacy.read_bytes(), "is a Python pickle")
  np.savez(files / "some.npz", a=np.zeros(3))
  copy("npz_as.h5", (files / "some.npz").read_bytes(), "is a numpy .npz archive")
  copy("page.h5", b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n", "is an HTML page")
  copy("notes.h5", b"block1_conv1 64\nblock1_conv2 64\n", "is a text file (starting 'block1")
  copy("empty.h5", b"", "is an empty file")
  copy("h5_as.keras", Path(h5).read_bytes(), "is an HDF5 file, not a Keras 3 .keras")
  copy("h5_as.pth", Path(h5).read_bytes(), "is an HDF5 file, not a PyTorch torch.save file")
  data = Path(archive).read_bytes()
  copy("truncated.keras", data[: len(data) // 2], "corrupt or truncated")
  copy("zip_of_other.keras", (files / "some.npz").read_bytes(), "is a numpy .npz archive")
  copy("keras_as.bin", data, "unknown weights extension '.bin', and the file is a Keras 3")
  return out


MISNAMED = (
  "keras_as.h5 pth_as.h5 legacy_pth_as.h5 npz_as.h5 page.h5 notes.h5 empty.h5 h5_as.keras "
  "h5_as.pth truncated.keras zip_of_other.keras keras_as.bin"
).split()


def _every_layer(small):
  """`small`'s first layer under every trunk name, for `write_keras3`."""
  return {name: small["block1_conv1"] for name in vgg16.LAYER_NAMES}


@pytest.fixture(scope="module")
def misnamed(files):
  return _misnamed(files)


@pytest.mark.parametrize("case", MISNAMED)
def test_files_of_another_format_are_named_for_what_they_are(misnamed, case):
  path, fragment = misnamed[case]
  with pytest.raises(VMSError) as e:
    weights.load_vgg16(path)
  msg = str(e.value)
  assert fragment in msg and str(path) in msg and "\n" not in msg
