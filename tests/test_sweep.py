"""Sweeps: points run into their folders (grouped when they can share a step), a rerun
skips finished points, the report holds each point's own evaluation, and the printed
commands reproduce each point's config."""

import json
import shlex

import pytest

from tests.conftest import tiny_config
from vmsjax import cli, sweep
from vmsjax import config as config_lib
from vmsjax.errors import VMSError

REPO = config_lib.REPO_ROOT
# Point b of the tiny sweep: tests/test_multi.py's second member, so that a test session
# running both files compiles that group's step once.
B_OVERRIDES = [
  "seed=1",
  "loss.weights.kl=0.5",
  "loss.kl_warmup_steps=4",
  "loss.weights.l2=0.01",
  "optim.learning_rate=3e-3",
]


def _write_sweep(path, data_dir):
  path.write_text(
    "from vmsjax.sweep import Point, Sweep\n\n"
    f"B = {B_OVERRIDES!r}\n\n\n"
    "def get_sweep(arg=None):\n"
    f"  common = ['--config.data.data_dir={data_dir}', 'log.progress=false']\n"
    "  return Sweep(\n"
    "    config='configs/synthetic.py:tiny',\n"
    "    points=[\n"
    "      Point('a', common, label='tiny'),\n"
    "      Point('b', [*B, *common], label='tiny'),\n"
    "    ],\n"
    "  )\n"
  )
  return str(path)


def _eval(workdir):
  return json.loads((workdir / "eval" / "test-12.json").read_text())


def _snapshot(workdir):
  """Modification times of everything a training or an evaluation writes."""
  return {str(p): p.stat().st_mtime_ns for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_sweep_runs_skips_reports_and_prints_commands(tmp_path, synthetic_data_dir, capsys):
  spec = _write_sweep(tmp_path / "tiny_sweep.py", synthetic_data_dir)
  out = tmp_path / "sweep"
  assert cli.main(["sweep", spec, "--workdir", str(out)]) == 0
  err = capsys.readouterr().err
  assert "training a, b" in err  # a and b differ only in seed and beta: one group

  report = json.loads((out / "report.json").read_text())
  assert report["groups"] == [["a", "b"]]
  assert [p["name"] for p in report["points"]] == ["a", "b"]
  for p in report["points"]:
    # The points trained as one group (vmsjax.train.train_group): their workdirs evaluate like any.
    own = _eval(out / p["name"])
    assert p["status"] == "done" and p["step"] == 12 and own["images"] == 160
    for c in ("true", "false", "all"):
      for m in ("rho2d", "mse", "mse_255"):
        assert p["table"][c][m] == own["model"][c][m]
  assert report["points"][0]["table"] != report["points"][1]["table"]
  tiny = report["labels"]["tiny"]
  rho = [p["table"]["all"]["rho2d"] for p in report["points"]]
  assert tiny["all"]["rho2d"]["mean"] == pytest.approx(sum(rho) / 2)
  assert tiny["all"]["rho2d"]["std"] == pytest.approx(abs(rho[0] - rho[1]) / 2**0.5)
  md = (out / "report.md").read_text()
  assert "| a | true |" in md and f"{rho[1]:.3f}" in md

  # A rerun trains and evaluates nothing, and writes the same report.
  before = {n: _snapshot(out / n) for n in ("a", "b")}
  assert cli.main(["sweep", spec, "--workdir", str(out)]) == 0
  err = capsys.readouterr().err
  assert "trained already" in err and "evaluating" not in err
  assert {n: _snapshot(out / n) for n in ("a", "b")} == before
  again = json.loads((out / "report.json").read_text())
  assert again["points"] == report["points"] and again["timing"] == report["timing"]
  assert [t["points"] for t in again["timing"]] == [["a", "b"]]

  # --print-commands: one parseable `vmsjax train` line per point, and running one
  # gives that point's config (train refuses a workdir whose config differs).
  saved = {n: (out / n / "config.json").read_text() for n in ("a", "b")}
  assert cli.main(["sweep", spec, "--workdir", str(out), "--print-commands"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  argvs = [shlex.split(line) for line in lines]
  for argv, name in zip(argvs, ("a", "b"), strict=True):
    assert argv[:2] == ["vmsjax", "train"]
    assert argv[argv.index("--workdir") + 1] == str(out / name)
  assert f"--config.data.data_dir={synthetic_data_dir}" in argvs[1]
  assert "--config.seed=1" in argvs[1]
  assert cli.main(argvs[1][1:]) == 0
  assert json.loads((out / "b" / "config.json").read_text()) == json.loads(saved["b"])


def test_plan_groups_points_that_share_a_step():
  configs = [
    tiny_config(),
    tiny_config(seed=3, **{"optim.learning_rate": 0.01}),
    tiny_config(**{"model.latent": 8}),
    tiny_config(**{"loss.weights.l2": 0.0, "loss.kl_warmup_steps": 3}),
    tiny_config(**{"model.latent": 8, "seed": 2}),
  ]
  assert sweep.plan(configs) == [[0, 1, 3], [2, 4]]
  assert sweep.plan(configs, max_group=2) == [[0, 1], [2, 4], [3]]
  assert sweep.plan(configs, group=False) == [[0], [1], [2], [3], [4]]


def test_table1_points_are_the_paper_configs():
  paper, _ = sweep.load(str(REPO / "experiments" / "table1.py"))
  spec = sweep.resolve_config(paper.config)
  assert [p.name for p in paper.points] == ["m32", "m8", "m8_l1"]
  for p in paper.points:
    got = sweep.point_config(spec, p)
    want = config_lib.load(str(REPO / "configs" / f"vischema.py:{p.name}"))
    assert config_lib.flat(got) == config_lib.flat(want)

  synth, _ = sweep.load(str(REPO / "experiments" / "table1.py") + ":synthetic,seeds=2,epochs=3")
  spec = sweep.resolve_config(synth.config)
  configs = [sweep.point_config(spec, p) for p in synth.points]
  assert [p.name for p in synth.points][:2] == ["m32_s0", "m32_s1"]
  assert all(c.data.image_size == 64 and c.train.epochs == 3 for c in configs)
  assert [c.model.latent for c in configs] == [32, 32, 8, 8, 8, 8]
  assert [c.loss.reconstruction for c in configs][-1] == "l1"
  assert sweep.plan(configs) == [[0, 1], [2, 3], [4, 5]]  # the seeds of a model together


def test_bad_sweeps_are_one_line_errors(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text(
    "from vmsjax.sweep import Point, Sweep\n"
    f"B = {B_OVERRIDES!r}\n\n\n"
    "def get_sweep(arg=None):\n"
    "  return Sweep('configs/synthetic.py:tiny', [Point('a'), Point('a')])\n"
  )
  assert cli.main(["sweep", str(bad), "--workdir", str(tmp_path / "w")]) == 2
  assert "appears twice" in capsys.readouterr().err
  typo = tmp_path / "typo.py"
  typo.write_text(
    "from vmsjax.sweep import Point, Sweep\n"
    f"B = {B_OVERRIDES!r}\n\n\n"
    "def get_sweep(arg=None):\n"
    "  return Sweep('configs/synthetic.py:tiny', [Point('a', ['model.latnet=3'])])\n"
  )
  assert cli.main(["sweep", str(typo), "--workdir", str(tmp_path / "w"), "--print-commands"]) == 2
  assert "model.latnet" in capsys.readouterr().err
  with pytest.raises(VMSError, match="not found"):
    sweep.load(str(tmp_path / "missing.py"))
  with pytest.raises(VMSError, match="unknown arg"):
    sweep.load(str(REPO / "experiments" / "table1.py") + ":bogus")


def test_config_flags_reach_sweep_points_and_are_refused_elsewhere(tmp_path, capsys):
  spec = _write_sweep(tmp_path / "tiny_sweep.py", tmp_path / "data")
  argv = ["sweep", spec, "--workdir", str(tmp_path / "w"), "--print-commands"]
  assert cli.main([*argv, "--config.model.latent=5", "--set", "loss.weights.l2=0.5"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  for line in lines:
    assert "--config.model.latent=5" in line and "--config.loss.weights.l2=0.5" in line
  # A command that takes no config overrides refuses them by name.
  assert cli.main(["evaluate", "--workdir", str(tmp_path / "w"), "--config.model.latent=5"]) == 2
  assert "--config.model.latent=5" in capsys.readouterr().err
  assert cli.main([*argv, "--bogus"]) == 2
  assert "--bogus" in capsys.readouterr().err
