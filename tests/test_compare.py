"""`vmsjax compare`, on docs/reproducibility.md's worked example at the tiny config:
beta -> 0 (`loss.weights.kl=0`) branched from the middle of a run, against its parent."""

import json
import shutil

import pytest
from PIL import Image

from tests.conftest import tiny_config
from vmsjax import cli, compare, evaluate, lineage, train
from vmsjax.errors import VMSError


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_workdir, synthetic_data_dir):
  """(parent, branch): a copy of the session's tiny run, and its beta = 0 branch from
  checkpoint 4 to step 12; both evaluated on the test split with the centre baseline."""
  root = tmp_path_factory.mktemp("compare")
  parent = root / "parent"
  shutil.copytree(trained_workdir, parent, ignore=shutil.ignore_patterns("eval"))
  branch = root / "beta0"
  config = tiny_config(**{"data.data_dir": synthetic_data_dir, "loss.weights.kl": 0.0})
  train.train_and_evaluate(config, branch, init_from=lineage.Parent(parent, 4))
  for w in (parent, branch):
    evaluate.evaluate(w, checkpoint=12, baselines="centre")
  return parent, branch


def test_compare_a_branch_with_its_parent(runs, tmp_path):
  parent, branch = runs
  out = tmp_path / "cmp"
  report = compare.compare(parent, branch, out)
  assert report["config"] == [{"key": "loss.weights.kl", "a": 1.0, "b": 0.0}]
  rel = report["relation"]
  assert rel["kind"] == "branch" and rel["child"] == 2 and rel["step"] == 4
  assert rel["changed_keys"] == ["loss.weights.kl"] and rel["direct"]

  (table,) = report["evaluation"]
  assert (table["dataset"], table["split"], table["steps"]) == ("synthetic", "test", [12, 12])
  rows = {(r["who"], r["channel"], r["metric"]): r for r in table["rows"]}
  model = rows[("model", "all", "rho2d")]
  assert model["a"] != model["b"]  # 8 steps without the KL term change the model
  assert model["difference"] == pytest.approx(model["b"] - model["a"])
  centre = rows[("centre", "all", "rho2d")]
  assert centre["a"] == centre["b"] and centre["difference"] == 0  # same data, same baseline

  last = {(m["split"], m["key"]): m for m in report["metrics"]}
  assert last[("train", "weight_kl")]["b"] == 0.0 and last[("train", "weight_kl")]["a"] > 0
  assert last[("train", "loss")]["a_step"] == last[("train", "loss")]["b_step"] == 12
  # The figures docs/reproducibility.md quotes (printed with pytest -s).
  print(
    f"\nworked example: rho2D(all) parent {model['a']:.4f} beta0 {model['b']:.4f}; "
    f"kl parent {last[('train', 'kl')]['a']:.4f} beta0 {last[('train', 'kl')]['b']:.4f}; "
    f"loss parent {last[('train', 'loss')]['a']:.2f} beta0 {last[('train', 'loss')]['b']:.2f}"
  )

  md = (out / "compare.md").read_text()
  assert "beta0 is a branch of parent at step 4" in md
  assert "| loss.weights.kl | 1 | 0 |" in md and "| model | all | rho2d |" in md
  assert json.loads((out / "compare.json").read_text())["config"] == report["config"]
  with Image.open(out / "curves.png") as im:
    assert im.size == tuple(report["curves_size"]) and im.size[0] >= 900


def test_compare_command_writes_its_files_and_prints_the_table(runs, tmp_path, monkeypatch, capsys):
  parent, branch = runs
  monkeypatch.chdir(tmp_path)
  assert cli.main(["compare", str(branch), str(parent)]) == 0
  out = tmp_path / "compare-beta0-parent"  # the documented default
  assert {p.name for p in out.iterdir()} == {"compare.md", "compare.json", "curves.png"}
  printed = capsys.readouterr().out
  assert "# beta0 vs parent" in printed and "beta0 is a branch of parent at step 4" in printed
  assert "written to " in printed and str(out.relative_to(tmp_path) / "curves.png") in printed


def test_compare_of_unrelated_runs_and_of_a_folder_that_is_no_run(runs, tmp_path):
  parent, _ = runs
  other = tmp_path / "copy"
  shutil.copytree(parent, other, ignore=shutil.ignore_patterns("eval", "checkpoints"))
  report = compare.compare(parent, other, tmp_path / "out")
  assert report["relation"] is None and report["config"] == []
  assert report["evaluation"] == [] and report["evaluation_only"][0]["run"] == 1
  assert "Neither run is a branch" in (tmp_path / "out" / "compare.md").read_text()
  with pytest.raises(VMSError, match="not a vmsjax training workdir"):
    compare.compare(parent, tmp_path / "nothing", tmp_path / "out2")
  assert compare.default_out("a/run", "b/run").name == "compare-a_run-b_run"
