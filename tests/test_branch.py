"""Branching (`vmsjax train --init_from W[:STEP]`): a new run from another run's checkpoint."""

import json

import jax
import numpy as np
import pytest

from tests.conftest import restored, tiny_config
from vmsjax import cli, factory, lineage, train
from vmsjax.errors import VMSError


def _leaves_equal(a, b) -> bool:
  return all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.fixture(scope="module")
def parent_config(synthetic_data_dir):
  return tiny_config(**{"data.data_dir": synthetic_data_dir})


def test_unchanged_branch_ends_bit_identical_to_its_parent(
  tmp_path, trained_workdir, parent_config, capsys
):
  new = tmp_path / "branch"
  final = train.train_and_evaluate(parent_config, new, init_from=lineage.Parent(trained_workdir, 8))
  assert "branching" in capsys.readouterr().err
  assert _leaves_equal(jax.device_get(final), restored(trained_workdir, parent_config)[0])
  steps = [json.loads(line)["step"] for line in (new / "metrics.jsonl").read_text().splitlines()]
  assert steps == [9, 10, 11, 12]  # from the parent's step and data position on
  (record,) = lineage.read(new)
  assert record["workdir"] == str(trained_workdir.resolve()) and record["step"] == 8
  assert record["changed_keys"] == [] and record["params_only"] is False
  assert (
    record["config_fingerprint"]
    == restored(trained_workdir, parent_config, 8)[1]["config_fingerprint"]
  )


def test_branch_with_another_beta_differs_and_names_its_parent(
  tmp_path, trained_workdir, parent_config
):
  first = tmp_path / "beta0"
  changed = tiny_config(**{"data.data_dir": parent_config.data.data_dir, "loss.weights.kl": 0.0})
  code = cli.main(
    [
      "train",
      "--config",
      "configs/synthetic.py:tiny",
      "--workdir",
      str(first),
      f"--init_from={trained_workdir}:8",
      f"--config.data.data_dir={parent_config.data.data_dir}",
      "--config.loss.weights.kl=0.0",
    ]
  )
  assert code == 0
  parent_final = restored(trained_workdir, parent_config)[0]
  branch_final = restored(first, changed)[0]
  assert int(branch_final.step) == 12
  assert not _leaves_equal(branch_final.params, parent_final.params)
  (record,) = lineage.read(first)
  assert record["step"] == 8 and record["changed_keys"] == ["loss.weights.kl"]
  # A branch of the branch keeps the whole lineage, oldest first.
  second = tmp_path / "beta0_more"
  longer = tiny_config(
    **{
      "data.data_dir": parent_config.data.data_dir,
      "loss.weights.kl": 0.0,
      "optim.learning_rate": 5e-4,
      "train.epochs": 4,  # a resumable key: it makes the run longer, changes no step
    }
  )
  train.train_and_evaluate(longer, second, init_from=lineage.Parent(first))
  chain = lineage.read(second)
  assert [r["step"] for r in chain] == [8, 12]
  assert chain[0]["workdir"] == str(trained_workdir.resolve())
  assert chain[1]["workdir"] == str(first.resolve()) and chain[1]["changed_keys"] == [
    "optim.learning_rate"
  ]


def test_params_only_starts_at_step_zero_with_a_fresh_optimiser(trained_workdir, parent_config):
  setup = factory.build(parent_config)
  fresh = setup.init(parent_config.seed)
  state, record = lineage.branch(
    lineage.Parent(trained_workdir, 8, params_only=True), parent_config, fresh
  )
  at8 = restored(trained_workdir, parent_config, 8)[0]
  assert int(state.step) == 0
  assert _leaves_equal(jax.device_get(state.params), at8.params)
  assert _leaves_equal(jax.device_get(state.batch_stats), at8.batch_stats)
  assert _leaves_equal(jax.device_get(state.opt_state), jax.device_get(fresh.opt_state))
  assert not _leaves_equal(jax.device_get(state.opt_state), at8.opt_state)
  assert record["parents"][-1]["params_only"] is True


@pytest.mark.parametrize(
  "override, needle",
  [
    ("model.latent=6", "params['decoder']['dense']['kernel'] has shape (4, "),
    ("model.decoder_channels=(16,8,8)", "params['decoder']['"),
  ],
)
def test_incompatible_branch_is_one_line(
  tmp_path, capsys, trained_workdir, parent_config, override, needle
):
  code = cli.main(
    [
      "train",
      "--config",
      "configs/synthetic.py:tiny",
      "--workdir",
      str(tmp_path / "w"),
      "--init_from",
      str(trained_workdir),
      f"--config.data.data_dir={parent_config.data.data_dir}",
      f"--config.{override}",
    ]
  )
  err = capsys.readouterr().err
  lines = [ln for ln in err.splitlines() if ln.startswith("vmsjax: error:")]
  assert code == 2 and len(lines) == 1, err
  assert f"cannot branch from {trained_workdir} step 12" in lines[0] and needle in lines[0]


def test_init_from_spec_and_missing_step(trained_workdir, parent_config):
  assert lineage.parse("runs/a:400") == lineage.Parent(lineage.Path("runs/a"), 400)
  assert lineage.parse("runs/a") == lineage.Parent(lineage.Path("runs/a"), None)
  setup = factory.build(parent_config)
  with pytest.raises(VMSError, match=r"no checkpoint 5; available: \[4, 8, 12\]"):
    lineage.branch(lineage.Parent(trained_workdir, 5), parent_config, setup.init(0))
