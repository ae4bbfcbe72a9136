"""experiments/paper.py end to end on the synthetic set at 32x32: the report's content.

One run trains the three Table 1 models for 4 steps (random frozen trunk), evaluates them
with the centre and GBVS baselines on 32 test images, and runs every study; the checks
read the report it wrote (JSON, Markdown, figures), then rerun it to see that nothing is
trained or evaluated again.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vmsjax import config as config_lib
from vmsjax.data import catalogue, schema

sys.path.insert(0, str(config_lib.REPO_ROOT / "experiments"))

import paper  # noqa: E402
import paper_report  # noqa: E402

MODELS = ["m32", "m8", "m8_l1"]
CHANNELS = ("true", "false", "all")
EVAL_SPLIT = "test[:32]"  # 32 of the 160 test images keep the run short


def _argv(work, data_dir, *more):
  return [
    "--dataset",
    "synthetic",
    "--tiny",
    "--workdir",
    str(work),
    "--data_dir",
    data_dir,
    "--set",
    f"data.eval_split={EVAL_SPLIT}",
    "--set",
    "log.progress=false",
    *more,
  ]


def _in_unit_range(x):
  return x is not None and math.isfinite(x) and -1.0 <= x <= 1.0


def _snapshot(root):
  """Modification times of the runs' checkpoints and evaluations."""
  files = [p for p in sorted(root.rglob("*")) if p.is_file()]
  return {
    str(p): p.stat().st_mtime_ns for p in files if "checkpoints" in p.parts or "eval" in p.parts
  }


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data_dir):
  """One full run of the paper script; returns (workdir, argv, paper.json, paper.md).

  It runs in a subprocess on one CPU device: the suite's 4 simulated devices make every
  compilation of the three models (train step, prediction) markedly slower, and this run
  is mostly compilation. The reruns below are in-process `paper.main` calls.
  """
  tmp = tmp_path_factory.mktemp("paper")
  ids = catalogue.open_split("synthetic", EVAL_SPLIT, synthetic_data_dir).ids()
  scores = np.random.default_rng(0).random(len(ids))
  csv = tmp / "amnet.csv"
  csv.write_text("id,score\n" + "".join(f"{i},{s:.6f}\n" for i, s in zip(ids, scores, strict=True)))
  work = tmp / "paper"
  argv = _argv(work, synthetic_data_dir, "--external_scores", str(csv))
  flags = os.environ.get("XLA_FLAGS", "").split()
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=" ".join(f for f in flags if "device_count" not in f),
  )
  done = subprocess.run(
    [sys.executable, str(config_lib.REPO_ROOT / "experiments" / "paper.py"), *argv],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "sweep: training m32" in done.stderr and "section latent" in done.stderr
  report = json.loads((work / "paper.json").read_text())
  return work, argv, report, (work / "paper.md").read_text()


def test_table1_has_a_row_per_model_with_finite_numbers(run):
  work, _, report, md = run
  t1 = report["sections"]["table1"]
  assert t1["status"] == "done"
  assert [m["name"] for m in t1["models"]] == MODELS
  for m in t1["models"]:
    assert m["status"] == "done" and m["step"] == 4 and m["images"] == 32
    assert m["image_size"] == 32 and m["split"] == EVAL_SPLIT
    own = json.loads(open(m["eval_json"]).read())  # the model's own evaluation
    for ch in CHANNELS:
      cell = m["model"][ch]
      for key in ("rho2d", "mse", "mse_255", "cc", "sim", "kld"):
        assert cell[key] is not None and math.isfinite(cell[key]), (m["name"], ch, key)
        assert cell[key] == own["model"][ch][key]
      assert -1 <= cell["rho2d"] <= 1 and cell["mse"] >= 0 and cell["kld"] >= 0
    # Every Markdown row of the model's block holds finite numbers.
    lines = md.split("\n## 2.")[0].splitlines()  # section 1 only
    rows = [line for line in lines if line.startswith(f"| {m['name']} | true |")]
    assert len(rows) == 1
    block = lines[lines.index(rows[0]) :][:3]
    for line, ch in zip(block, CHANNELS, strict=True):
      cells = [c.strip() for c in line.strip("|").split("|")]
      assert cells[1] == ch
      assert all(math.isfinite(float(v)) for v in cells[2:8]), line
  assert set(t1["baselines"]) == {"centre", "gbvs"}
  assert t1["best"] == max(t1["models"], key=lambda m: m["model"]["all"]["rho2d"])["name"]
  # The exact commands and configs: the sweep, the evaluations, one train line per model.
  assert (
    t1["commands"][0].startswith("vmsjax sweep ") and "table1.py:synthetic" in t1["commands"][0]
  )
  assert len(t1["train_commands"]) == 3
  for m, line in zip(t1["models"], t1["train_commands"], strict=True):
    assert f"--workdir {work / 'runs' / m['name']}" in line
    assert "--config.data.image_size=32" in line
    saved = json.loads((work / "runs" / m["name"] / "config.json").read_text())
    assert saved["data"]["eval_split"] == EVAL_SPLIT and saved["data"]["image_size"] == 32


def test_json_has_every_section_with_a_status(run):
  _, argv, report, md = run
  assert set(report["sections"]) == set(paper_report.SECTIONS)
  assert report["argv"] == argv and "experiments/paper.py" in report["command"]
  for name, s in report["sections"].items():
    assert s["status"] in ("done", "skipped"), (name, s)
    assert paper_report.TITLES[name] in md
    if s["status"] == "done":
      assert s["commands"], name  # each section says what produced it
      for c in s["commands"]:
        assert c.startswith("vmsjax ") and c in md
    else:
      assert s["reason"], name
  # LaMem is not built in the test's data dir: skipped, saying why and how to get it.
  lamem = report["sections"]["lamem"]
  assert lamem["status"] == "skipped"
  assert "not built" in lamem["reason"] and "vmsjax data build lamem" in lamem["reason"]
  assert f"| skipped | {lamem['reason']} |" in md


def test_table2_and_saliency_follow_the_evaluation(run):
  _, _, report, _ = run
  t1, t2 = report["sections"]["table1"], report["sections"]["table2"]
  best = next(m for m in t1["models"] if m["name"] == t1["best"])
  assert t2["status"] == "done" and t2["model"] == best["name"]
  for ch in CHANNELS:
    cell = t2["table2"]["model"][ch]
    assert cell["overall"] == best["model"][ch]["rho2d"]
    assert cell["best"]["category"] in schema.LEAVES and cell["worst"]["category"] in schema.LEAVES
    assert cell["worst"]["rho2d"] <= cell["best"]["rho2d"]
    defined = [v[ch] for v in t2["per_category"].values() if v[ch] is not None]
    assert cell["best"]["rho2d"] == max(defined) and cell["worst"]["rho2d"] == min(defined)
  assert sum(v["images"] for v in t2["per_category"].values()) == 32
  sal = report["sections"]["saliency"]
  assert sal["status"] == "done" and list(sal["models"]) == MODELS
  for v in sal["models"].values():
    for ch in CHANNELS:
      assert _in_unit_range(v["predicted"][ch]["rho2d"])
      # Ground truth against GBVS is the GBVS baseline's own rho2D.
      assert v["ground_truth"][ch]["rho2d"] == t1["baselines"]["gbvs"][ch]["rho2d"]


def test_rank_studies_lie_in_the_unit_interval(run):
  _, _, report, _ = run
  rank = report["sections"]["vischema2"]
  assert rank["status"] == "done" and "stand-in" in rank["note"]
  assert rank["predict"] == f"synthetic:{EVAL_SPLIT}" and rank["truth"] == "synthetic:train"
  for key in ("memorability", "false_memorability"):
    s = rank["spearman"][key]
    assert _in_unit_range(s["rho"]) and 0 <= s["p"] <= 1 and s["n"] >= 3
  assert sum(r["predict_count"] for r in rank["categories"]) == 32
  assert sum(r["truth_count"] for r in rank["categories"]) == 640
  ext = report["sections"]["external"]
  assert ext["status"] == "done" and len(ext["studies"]) == 1
  (study,) = ext["studies"]
  assert study["images"] == 32 and study["images_without_score"] == 0
  for key in ("memorability", "false_memorability"):
    assert _in_unit_range(study["spearman"][key]["rho"])
    for row in study["per_category"]:
      r = row[key]["rho"]
      assert r is None or _in_unit_range(r)
  latent = report["sections"]["latent"]
  assert latent["status"] == "done" and latent["images"] == 32
  assert latent["projection"]["method"] == "pca"
  assert _in_unit_range(latent["spearman_memorability_false_memorability"]["rho"])


def test_figures_are_png_with_content(run):
  work, _, report, md = run
  figures = {
    "table2": (1000, 700),  # evaluate.category_figure
    "vischema2": (720, 320),  # two panels of figures.category_bars
    "latent": (720, 320),  # figures.scatter_figure
  }
  for name, size in figures.items():
    rel = report["sections"][name]["figure"]
    assert rel in md
    path = work / rel
    assert path.stat().st_size > 10_000
    with Image.open(path) as im:
      assert im.format == "PNG" and im.size == size
      pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, not blank


def test_rerun_trains_and_evaluates_nothing(run, capsys):
  work, argv, report, _ = run
  before = _snapshot(work / "runs")
  capsys.readouterr()
  assert paper.main(argv) == 0
  err = capsys.readouterr().err
  assert "trained already" in err and "sweep: training" not in err and "evaluating" not in err
  assert err.count("done already") == 3  # the three studies were read back
  assert _snapshot(work / "runs") == before
  again = json.loads((work / "paper.json").read_text())
  for name in paper_report.SECTIONS:
    a, b = dict(report["sections"][name]), dict(again["sections"][name])
    a.pop("seconds"), b.pop("seconds")
    assert a == b, name
  # --skip_train reads the same runs.
  assert paper.main([*argv, "--skip_train"]) == 0
  skip = json.loads((work / "paper.json").read_text())
  assert skip["sections"]["table1"]["models"] == report["sections"]["table1"]["models"]


def test_skip_train_without_runs_says_why(tmp_path, synthetic_data_dir, capsys):
  work = tmp_path / "empty"
  assert paper.main(_argv(work, synthetic_data_dir, "--skip_train")) == 1
  report = json.loads((work / "paper.json").read_text())
  t1 = report["sections"]["table1"]
  assert t1["status"] == "failed" and "--skip_train" in t1["reason"]
  assert [m["status"] for m in t1["models"]] == ["missing"] * 3
  for name in paper_report.SECTIONS[1:]:
    assert report["sections"][name] == {
      "status": "skipped",
      "reason": "no trained model (see table1)",
    }
  assert not (work / "runs").exists() or not any((work / "runs").rglob("checkpoints"))
