"""The command line: one-line errors with exit code 2 for what a user can get wrong."""

import json
import os

import pytest

from vmsjax import cli

TINY = ["--config", "configs/synthetic.py:tiny"]


def _run(capsys, argv):
  code = cli.main(argv)
  err = capsys.readouterr().err
  return code, err


def _error_line(err: str) -> str:
  lines = [ln for ln in err.splitlines() if ln.startswith("vmsjax: error:")]
  assert len(lines) == 1, err
  return lines[0]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))


def test_unknown_config_key(capsys, tmp_path):
  code, err = _run(capsys, ["train", *TINY, "--workdir", str(tmp_path), "--config.model.latnt=3"])
  assert code == 2
  assert "unknown config key model.latnt" in _error_line(err)
  assert "Traceback" not in err


@pytest.mark.parametrize(
  "override, needle",
  [
    ("model.latent=-4", "model.latent=-4"),
    ("loss.reconstruction=huber", "loss.reconstruction='huber'"),
    ("data.image_size=100", "multiple of 32"),
    ("model.latent=abc", "model.latent expects an integer"),
    # Issue 16: values that used to pass validation.
    ("optim.learning_rate=1e999", "optim.learning_rate=inf: must be a finite number"),
    ("optim.learning_rate=nan", "optim.learning_rate=nan: must be a finite number"),
    ("optim.learning_rate=-inf", "optim.learning_rate=-inf: must be a finite number"),
    ("optim.learning_rate=0", "optim.learning_rate=0.0: must be a finite number > 0"),
    ("model.latent=True", "model.latent expects an integer, got 'True'"),
    ("loss.weights.kl=false", "loss.weights.kl expects a number, got 'false'"),
  ],
)
def test_invalid_config_values(capsys, tmp_path, override, needle):
  code, err = _run(capsys, ["train", *TINY, "--workdir", str(tmp_path), f"--config.{override}"])
  assert code == 2 and needle in _error_line(err)


@pytest.mark.parametrize(
  "text, needle",
  [
    ("c.model.latent = True", "model.latent=True: must be an integer, not true/false"),
    ("c.loss.weights.kl = float('inf')", "loss.weights.kl=inf: must be a finite number"),
  ],
)
def test_config_file_values_are_checked(capsys, tmp_path, text, needle):
  """A config file can set what an override cannot: validation checks the types too."""
  path = tmp_path / "bad.py"
  path.write_text(
    "from vmsjax import config as config_lib\n\n\ndef get_config(arg):\n"
    f"  c = config_lib.base_config()\n  {text}\n  return c\n"
  )
  code, err = _run(capsys, ["train", "--config", str(path), "--workdir", str(tmp_path / "w")])
  assert code == 2 and needle in _error_line(err)


@pytest.mark.parametrize(
  "name, body, needle",
  [
    ("some.txt", "x = 1", "is not a Python file"),
    ("some.py", "x = 1", "has no get_config(arg) function"),
  ],
)
def test_config_file_not_a_config(capsys, tmp_path, name, body, needle):
  (tmp_path / name).write_text(body)
  code, err = _run(capsys, ["train", "--config", str(tmp_path / name), "--workdir", str(tmp_path)])
  assert code == 2 and needle in _error_line(err) and "Traceback" not in err


def test_unknown_config_arg(capsys, tmp_path):
  code, err = _run(
    capsys, ["train", "--config", "configs/vischema.py:m99", "--workdir", str(tmp_path)]
  )
  assert code == 2 and "m32" in _error_line(err)


def test_dataset_not_built(capsys, tmp_path):
  empty = tmp_path / "nodata"
  code, err = _run(
    capsys,
    [
      "train",
      *TINY,
      "--workdir",
      str(tmp_path / "w"),
      f"--config.data.data_dir={empty}",
      "--config.data.auto_build=false",
    ],
  )
  line = _error_line(err)
  assert code == 2 and "not built" in line and str(empty) in line and "vmsjax data build" in line


def test_paper_config_refuses_random_encoder(capsys, tmp_path, synthetic_data_dir):
  code, err = _run(
    capsys,
    [
      "train",
      "--config",
      "configs/vischema.py:m32,runlocal",
      "--workdir",
      str(tmp_path),
      "--config.data.name=synthetic",
      f"--config.data.data_dir={synthetic_data_dir}",
    ],
  )
  line = _error_line(err)
  assert code == 2 and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in line


def test_unwritable_workdir(capsys, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  code, err = _run(capsys, ["train", *TINY, "--workdir", str(blocker / "w")])
  assert code == 2 and str(blocker / "w") in _error_line(err)


def test_evaluate_without_a_run(capsys, tmp_path):
  code, err = _run(capsys, ["evaluate", "--workdir", str(tmp_path)])
  assert code == 2 and "not a vmsjax training workdir" in _error_line(err)


def test_nan_loss_stops_with_the_step(capsys, tmp_path, synthetic_data_dir):
  # A learning rate near float32's maximum sends the parameters to Inf within steps.
  work = tmp_path / "w"
  code, err = _run(
    capsys,
    [
      "train",
      *TINY,
      "--workdir",
      str(work),
      f"--config.data.data_dir={synthetic_data_dir}",
      "--config.optim.learning_rate=1e37",
      "--config.checkpoint.every_steps=1",
    ],
  )
  line = _error_line(err)
  assert code == 2 and "NaN/Inf at step" in line
  bad = int(line.split("at step ")[1].split(";")[0])
  assert bad >= 2  # step 1 is computed from finite initial values
  # The last good checkpoint is kept and named; nothing at or after the bad step was saved.
  saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and max(saved) < bad
  assert f"last good checkpoint is step {max(saved)}" in line
  # The good steps before it are logged, and the bad one (its loss shows how it failed);
  # nothing after it.
  logged = [json.loads(x)["step"] for x in (work / "metrics.jsonl").read_text().splitlines()]
  assert logged == list(range(1, bad + 1))


def test_configs_saved_by_older_versions_compare_by_what_they_meant():
  from vmsjax import config as config_lib

  current = config_lib.load(None)
  saved = config_lib.flat(current)
  older = {k: v for k, v in saved.items() if k != "data.seed" and not k.startswith("features.")}
  nested: dict = {}
  for key, value in older.items():
    *parents, leaf = key.split(".")
    node = nested
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  # Absent keys at what the older code did: no difference, the run resumes.
  assert config_lib.differences(nested, current) == []
  # The older code drew its data order from `seed`: a different data.seed is a change.
  nested["seed"] = 3
  current.seed = 3
  assert config_lib.differences(nested, current) == ["data.seed: 3 -> 0"]
  current.data.seed = 3
  current.features.cache = "memory"
  assert config_lib.differences(nested, current) == ["features.cache: 'off' -> 'memory'"]
