"""The README's commands after training run as written, on a small trained run."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import stats

from vmsjax import cli
from vmsjax.data import catalogue

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_commands() -> list[list[str]]:
  text = README.read_text()
  block = re.search(r"<!-- readme-commands -->\s*```bash\n(.*?)```", text, re.S)
  assert block, "README.md lost its <!-- readme-commands --> block"
  return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def test_readme_commands_after_training(tmp_path, monkeypatch, trained_workdir, synthetic_data_dir):
  commands = _readme_commands()
  assert [c[:2] for c in commands] == [
    ["vmsjax", "evaluate"],
    ["vmsjax", "data"],
    ["vmsjax", "predict"],
    ["vmsjax", "study"],
    ["vmsjax", "study"],
    ["vmsjax", "study"],
  ]
  monkeypatch.chdir(tmp_path)
  shutil.copytree(trained_workdir, tmp_path / "runs" / "synthetic")
  os.symlink(synthetic_data_dir, tmp_path / "data")
  for argv in commands:
    assert cli.main(argv[1:]) == 0, shlex.join(argv)
  run = tmp_path / "runs" / "synthetic"

  report = json.loads((run / "eval" / "test-12.json").read_text())
  assert set(report["baselines"]) == {"centre", "gbvs"}
  md = (run / "eval" / "test-12.md").read_text()
  assert "GBVS" in md or "gbvs" in md
  with Image.open(run / "eval" / "test-12-categories.png") as im:
    assert im.size[0] > 400

  examples = sorted((run / "examples").glob("*.png"))
  assert len(examples) == 8
  assert len(list((run / "examples" / "maps").glob("*.npy"))) == 8

  pred = run / "predict"
  with open(pred / "scores.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["id"] for r in rows) == [p.name for p in examples]
  stem = examples[0].stem
  maps = np.load(pred / "npy" / f"{stem}.npy")
  std = np.load(pred / "samples" / f"{stem}_std.npy")
  assert maps.shape[-1] == 2 and 0 <= maps.min() and maps.max() <= 1
  assert std.shape == maps.shape and std.max() > 0  # 8 latent draws differ

  with open(run / "studies" / "latent" / "latent.csv") as f:
    latent = list(csv.DictReader(f))
  assert len(latent) == 160 and np.isfinite([float(r["x"]) for r in latent]).all()

  cats = json.loads((run / "studies" / "categories" / "categories.json").read_text())
  assert -1 <= cats["spearman"]["memorability"]["rho"] <= 1

  # Ground-truth map scores against the model's predicted scores (the CSV the previous
  # study wrote), recomputed here from the records and the CSV.
  scores = json.loads((run / "studies" / "scores" / "scores.json").read_text())
  with open(run / "studies" / "categories" / "categories_images.csv") as f:
    predicted = {
      r["id"]: float(r["memorability"]) for r in csv.DictReader(f) if r["set"] == "predict"
    }
  source = catalogue.open_split("synthetic", "test", synthetic_data_dir)
  truth = {ex["id"]: float(ex["vms"][..., 0].mean()) for ex in source}
  ids = sorted(truth)
  want = stats.spearmanr([truth[i] for i in ids], [predicted[i] for i in ids]).statistic
  got = scores["spearman"]["memorability"]
  assert got["n"] == 160
  np.testing.assert_allclose(got["rho"], want, atol=1e-6)
