"""Test setup: 4 simulated CPU devices, a tiny config, and one synthetic build per session."""

import os

# Must happen before jax is imported anywhere: the suite runs on 4 simulated devices so
# that data-parallel code paths are exercised on a CPU-only machine.
if "--xla_force_host_platform_device_count=4" not in os.environ.get("XLA_FLAGS", ""):
  # (pytest-xdist's workers inherit the flag from the process that started them)
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, its subprocesses included: the
# same tiny programs are compiled by many tests (results are the same either way).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vmsjax-test-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pytest  # noqa: E402

from vmsjax import config as config_lib  # noqa: E402


def tiny_config(**overrides):
  """The synthetic config shrunk for tests (32x32 inputs, tiny model, 12 steps)."""
  c = config_lib.load(str(config_lib.REPO_ROOT / "configs" / "synthetic.py") + ":tiny")
  config_lib.override(c, [f"{k}={v}" for k, v in overrides.items()])
  config_lib.validate(c)
  return c


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """A data_dir holding the built synthetic dataset (built once per test session)."""
  from vmsjax.data import catalogue

  d = tmp_path_factory.mktemp("data")
  catalogue.build("synthetic", str(d))
  return str(d)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, synthetic_data_dir):
  """A workdir trained with the tiny synthetic config (12 steps, checkpoints 4, 8, 12).

  Shared by every test that needs a trained model; treat it as read-only (write
  outputs elsewhere, or copy it first).
  """
  from vmsjax import train

  work = tmp_path_factory.mktemp("trained") / "run"
  train.train_and_evaluate(tiny_config(**{"data.data_dir": synthetic_data_dir}), work)
  return work


def restored(workdir, config, step=None):
  """(host TrainState, meta) of checkpoint `step` (default: the latest) of a workdir."""
  import jax

  from vmsjax import factory
  from vmsjax import workdir as workdir_lib

  model, tx = factory.make_model(config), factory.make_optimizer(config.optim.learning_rate)
  state = factory.init_state(config, model, tx, jax.random.key(config.seed))
  mngr = workdir_lib.checkpoint_manager(workdir, config)
  state, meta = workdir_lib.restore(mngr, mngr.latest_step() if step is None else step, state)
  mngr.close()
  return jax.device_get(state), meta


# The files that train the most run first: pytest-xdist hands out whole files in
# collection order (`-n 2 --dist loadfile`, README), so the long ones started last
# would leave one worker running alone at the end.
SLOW_FIRST = (
  "test_paper.py",
  "test_placement.py",
  "test_resume.py",
  "test_extending.py",
  "test_readme.py",
  "test_unattended.py",
  "test_reproduce.py",
  "test_multihost.py",
  "test_analysis.py",
  "test_cache.py",
  "test_multi.py",
  "test_full_disk.py",
  "test_branch.py",
  "test_train_step.py",
)


def pytest_collection_modifyitems(items):
  import pathlib

  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(pathlib.Path(str(item.fspath)).name, len(rank)))
