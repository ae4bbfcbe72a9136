"""configs/vischema.py trains on the VISCHEMA builder's output and evaluates (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np

from tests.test_data_folders import make_vischema
from vmsjax import cli, factory, weights
from vmsjax import config as config_lib


def _random_vgg_npz(path) -> None:
  """A VGG-16 trunk of random (He-scaled) weights, written as the project's .npz."""
  rng = np.random.default_rng(0)
  params = {}
  for layer, shapes in weights.expected_shapes().items():
    kernel_shape = shapes["kernel"]
    fan_in = int(np.prod(kernel_shape[:3]))
    params[layer] = {
      "kernel": (rng.standard_normal(kernel_shape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
      "bias": np.zeros(shapes["bias"], np.float32),
    }
  # Caffe preprocessing feeds 0-255-scale pixels; scale the first layer as train.py does
  # for its random trunk, so the features are O(1) rather than O(100).
  params["block1_conv1"]["kernel"] /= factory.RANDOM_TRUNK_INPUT_SPREAD["caffe"]
  w = weights.VGGWeights(params, "caffe", "vmsjax-npz", "0" * 64, None)
  weights.save_npz(w, path)


def test_vischema_config_trains_and_evaluates(tmp_path, capsys):
  make_vischema(tmp_path / "manual" / "vischema", per_category=2, shape=(40, 48))
  data_dir = tmp_path / "data"
  assert (
    cli.main(
      [
        "data",
        "build",
        "vischema",
        "--manual_dir",
        str(tmp_path / "manual"),
        "--data_dir",
        str(data_dir),
      ]
    )
    == 0
  )
  npz = tmp_path / "vgg16_random.npz"
  _random_vgg_npz(npz)
  config_file = str(config_lib.REPO_ROOT / "configs" / "vischema.py")
  workdir = tmp_path / "run"
  args = [
    "train",
    "--config",
    f"{config_file}:m8,runlocal",
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    "--config.data.image_size=32",
    "--config.model.decoder_channels=(8, 8, 8, 8)",
    f"--config.model.encoder.weights={npz}",
    "--config.train.batch_size=4",
    "--config.train.epochs=1",
    "--config.train.steps_per_epoch=3",
    "--config.checkpoint.every_steps=3",
  ]
  assert cli.main(args) == 0
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["name"] == "vischema" and saved["model"]["latent"] == 8
  dataset = json.loads((workdir / "dataset.json").read_text())
  assert dataset["name"] == "vischema" and dataset["num_examples"] == {"train": 13, "test": 3}
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(workdir)]) == 0
  reports = sorted((workdir / "eval").glob("test-*.json"))
  assert reports, list((workdir / "eval").iterdir())
  text = reports[-1].read_text()
  assert "rho" in text.lower() or "mse" in text.lower()
