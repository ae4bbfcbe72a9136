"""`vmsjax reproduce` and the environment record: a rerun on the same machine is
bit-identical; one on another device count drifts, and the report says what changed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from vmsjax import environment, evaluate, factory, inference, reproduce
from vmsjax.data import catalogue
from vmsjax.errors import VMSError

REPO = Path(__file__).resolve().parent.parent


def _record(workdir: Path) -> dict:
  config = inference.load_config(workdir)
  dataset = catalogue.dataset_record(config.data.name, config.data.data_dir)
  return environment.record(config, dataset, factory.encoder_params(config))


@pytest.fixture(scope="module")
def source(tmp_path_factory, trained_workdir):
  """A copy of the session's tiny run (12 steps, checkpoints 4, 8, 12) with its
  environment recorded and one evaluation report (test split, centre baseline)."""
  work = tmp_path_factory.mktemp("reproduce") / "source"
  # Other tests' reports in the shared run (other baselines, datasets) stay behind.
  shutil.copytree(trained_workdir, work, ignore=shutil.ignore_patterns("eval"))
  if environment.read(work) is None:  # what train writes once it records environments
    environment.write(work, _record(work))
  evaluate.evaluate(work, checkpoint=12, baselines="centre")
  return work


@pytest.fixture(scope="module")
def reproduced(source, tmp_path_factory):
  seen = []
  new = tmp_path_factory.mktemp("reproduce") / "again"
  report = reproduce.reproduce(source, new, hooks=[lambda step, members: seen.append(step)])
  return new, report, seen


def test_reproduction_on_the_same_machine_is_bit_identical(source, reproduced):
  new, report, seen = reproduced
  assert seen == list(range(1, 13))  # the hook ran in the reproduction's loop
  assert report["verdict"] == "bit-identical", report["differences"][:3]
  assert report["steps"] == [4, 8, 12] and report["to_step"] == 12
  names = {(d["kind"], d["name"]) for d in report["differences"]}
  for group in ("params/head", "params/decoder", "batch_stats/decoder", "opt_state/mu/head"):
    assert ("params", group) in names
  assert ("metrics", "train/loss") in names
  (evaluation,) = [d for d in report["differences"] if d["kind"] == "evaluation"]
  assert evaluation["name"] == "test-12.json" and evaluation["compared"] > 50
  assert (new / "eval" / "test-12.json").exists()
  assert all(d["identical"] and d["max_abs"] == 0 for d in report["differences"])
  assert report["environment"]["differences"] == []
  assert json.loads((new / "reproduce.json").read_text()) == report
  md = (new / "reproduce.md").read_text()
  assert "**Verdict: bit-identical**" in md and "| encoder.checksum |" in md


def test_reproduction_from_a_checkpoint_branches_and_is_bit_identical(source, tmp_path):
  report = reproduce.reproduce(source, tmp_path / "tail", from_step=8, evaluate=False)
  assert report["verdict"] == "bit-identical"
  assert report["steps"] == [12] and report["from_step"] == 8
  (parent,) = json.loads((tmp_path / "tail" / "lineage.json").read_text())["parents"]
  assert parent["step"] == 8 and parent["changed_keys"] == []


def test_reproduction_on_another_device_count_reports_drift_and_environment(source, tmp_path):
  # Half the devices: the batch splits differently, so the float sums (gradients, batch
  # statistics) add up in another order. The CLI in a fresh process, as a user runs it.
  # (VMSJAX_HUGE_PAGES=off: no restart of the process for huge pages, a second start-up.)
  env = dict(
    os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", VMSJAX_HUGE_PAGES="off"
  )
  new = tmp_path / "two"
  cmd = [sys.executable, "-m", "vmsjax.cli", "reproduce", str(source), "--to", "4"]
  out = subprocess.run(
    [*cmd, "--workdir", str(new), "--no_eval"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  report = json.loads((new / "reproduce.json").read_text())
  assert out.returncode == (1 if report["verdict"] == "drifted" else 0), out.stderr[-2000:]
  assert report["verdict"] in ("within tolerance", "drifted")
  assert report["steps"] == [4]
  moved = [d for d in report["differences"] if not d["identical"]]
  assert moved and moved[0]["max_rel"] > 0  # largest first
  assert report["differences"][0] == moved[0]
  env_diffs = report["environment"]["differences"]
  assert "backend.device_count: 4 -> 2" in env_diffs
  assert any(d.startswith("env.XLA_FLAGS:") for d in env_diffs)
  assert f"reproduced in {new}: {report['verdict']}" in out.stdout
  assert "environment changed: backend.device_count: 4 -> 2" in out.stdout
  assert "backend.device_count: 4 -> 2" in (new / "reproduce.md").read_text()


def test_reproduce_refuses_bad_steps_and_a_used_workdir(source, reproduced, tmp_path):
  with pytest.raises(VMSError, match=r"no checkpoint at that step; it has \[4, 8, 12\]"):
    reproduce.reproduce(source, tmp_path / "a", from_step=5)
  with pytest.raises(VMSError, match="no checkpoint after step 0 up to 3"):
    reproduce.reproduce(source, tmp_path / "b", to_step=3)
  with pytest.raises(VMSError, match="already holds a run"):
    reproduce.reproduce(source, reproduced[0])
  with pytest.raises(VMSError, match="is the run to reproduce"):
    reproduce.reproduce(source, source)
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compare_trees_groups_and_measures():
  a = {"params": {"head": np.ones(3, np.float32), "decoder": np.full(2, 4.0, np.float32)}}
  b = {"params": {"head": np.array([1, 1, 1.5], np.float32), "decoder": a["params"]["decoder"]}}
  got = {d.name: d for d in reproduce.compare_trees(a, b, step=4)}
  assert set(got) == {"params/head", "params/decoder"}
  assert got["params/decoder"].identical and got["params/decoder"].max_abs == 0
  head = got["params/head"]
  assert not head.identical and head.max_abs == 0.5 and head.max_rel == pytest.approx(0.5 / 1.5)
  assert reproduce.verdict(list(got.values()), rtol=0.5) == "within tolerance"
  assert reproduce.verdict(list(got.values()), rtol=0.1) == "drifted"


def _tiny_record() -> dict:
  config = tiny_config()
  dataset = {"name": "synthetic", "version": "1.0.0", "fingerprint": "f00d", "data_dir": "/d"}
  return environment.record(config, dataset, {"w": np.arange(6.0).reshape(2, 3)})


def test_environment_record_holds_what_a_result_depends_on():
  env = _tiny_record()
  assert env["packages"]["jax"] == jax.__version__
  assert env["backend"]["device_count"] == jax.device_count() == 4  # conftest's devices
  assert env["backend"]["platform"] == "cpu" and env["cpu"]["model"]
  assert env["cpu"]["cores"] >= 1
  assert env["env"]["XLA_FLAGS"] == os.environ["XLA_FLAGS"]
  assert env["dataset"]["fingerprint"] == "f00d"
  trunk = {"w": np.arange(6.0).reshape(2, 3)}
  assert env["encoder"]["checksum"] == environment.tree_checksum(trunk)
  assert "jax_threefry_partitionable" in env["jax_config"]
  json.dumps(env)  # JSON as it is
  # Without the dataset at hand (predicting images in the wild) nothing about it is
  # recorded, and nothing about it compared.
  bare = environment.record(tiny_config(), None, trunk)
  assert "dataset" not in bare and environment.differences(env, bare) == []


def test_environment_variables_are_whitelisted():
  got = environment.environment_variables(
    {
      "XLA_FLAGS": "--a",
      "JAX_ENABLE_X64": "1",
      "OMP_NUM_THREADS": "2",
      "HOME": "/root",
      "AWS_SECRET_ACCESS_KEY": "s",
      "JAX_API_TOKEN": "t",
      "TF_VAR_db_password": "p",  # Terraform's, not TensorFlow's
    }
  )
  assert got == {"JAX_ENABLE_X64": "1", "OMP_NUM_THREADS": "2", "XLA_FLAGS": "--a"}


def test_differences_name_changes_and_ignore_what_does_not_matter():
  saved = _tiny_record()
  same = json.loads(json.dumps(saved))
  same.update(pid=1, time="yesterday", host="elsewhere", argv=["x"])
  same["env"]["JAX_COMPILATION_CACHE_DIR"] = "/elsewhere"
  same["dataset"]["data_dir"] = "/elsewhere"
  same["packages"]["huge_pages"] = "on"
  assert environment.differences(saved, same) == []

  other = json.loads(json.dumps(same))
  other["packages"]["jax"] = "0.0.1"
  other["env"]["XLA_FLAGS"] = "--xla_cpu_enable_fast_math=true"
  other["cpu"]["model"] = "Other"
  got = environment.differences(saved, other)
  assert len(got) == 3, got
  assert got[0] == f"jax: {saved['packages']['jax']} -> 0.0.1"
  assert got[1].startswith("cpu.model: ") and got[1].endswith(" -> Other")
  assert got[2] == f"env.XLA_FLAGS: {saved['env']['XLA_FLAGS']} -> --xla_cpu_enable_fast_math=true"
  # A record written before environment.json (versions.json only) compares what it has.
  legacy = {"packages": dict(saved["packages"], jax="0.0.1")}
  assert environment.differences(legacy, saved) == [f"jax: 0.0.1 -> {saved['packages']['jax']}"]


def test_warn_if_changed_prints_one_line(tmp_path, capsys):
  saved = _tiny_record()
  assert environment.warn_if_changed(tmp_path, saved) == []  # nothing recorded: silent
  environment.write(tmp_path, saved)
  assert environment.read(tmp_path) == json.loads(json.dumps(saved))
  assert environment.warn_if_changed(tmp_path, saved) == []
  assert capsys.readouterr().err == ""
  now = json.loads(json.dumps(saved))
  now["packages"]["jaxlib"] = "9.9.9"
  now["backend"]["device_count"] = 8
  assert len(environment.warn_if_changed(tmp_path, now)) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1
  assert err[0].startswith(f"vmsjax: warning: {tmp_path} was recorded under another environment:")
  assert "jaxlib: " in err[0] and "-> 9.9.9" in err[0] and "backend.device_count: 4 -> 8" in err[0]
  # An older run: versions.json stands in for the record.
  (tmp_path / "environment.json").unlink()
  (tmp_path / "versions.json").write_text(json.dumps(saved["packages"]))
  assert environment.warn_if_changed(tmp_path, now) == [
    f"jaxlib: {saved['packages']['jaxlib']} -> 9.9.9"
  ]
  (tmp_path / "environment.json").write_text("{")
  with pytest.raises(VMSError, match="environment.json is not valid JSON"):
    environment.read(tmp_path)
