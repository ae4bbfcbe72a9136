"""A tiny run through the CLI: records, TensorBoard events, evaluation outputs."""

import json
import math
import os

import numpy as np

from vmsjax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_then_evaluate(tmp_path, synthetic_data_dir, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  work = tmp_path / "run"
  code = cli.main(
    [
      "train",
      "--config",
      "configs/synthetic.py:tiny",
      "--workdir",
      str(work),
      f"--config.data.data_dir={synthetic_data_dir}",
    ]
  )
  assert code == 0, capsys.readouterr().err

  # Records of the run.
  saved = json.loads((work / "config.json").read_text())
  assert saved["model"]["latent"] == 4 and saved["data"]["image_size"] == 32
  versions = json.loads((work / "versions.json").read_text())
  assert versions["jax"] != "not installed" and "python" in versions
  assert versions["huge_pages"].startswith(("on", "off"))  # the start-up setting, recorded
  dataset = json.loads((work / "dataset.json").read_text())
  assert dataset["name"] == "synthetic" and dataset["num_examples"]["train"] == 640
  lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == list(range(1, 13))
  assert all(math.isfinite(r["loss"]) for r in lines)
  for r in lines:
    weighted = sum(r[f"weight_{t}"] * r[t] for t in ("kl", "l2"))
    assert abs(r["loss"] - (r["reconstruction"] + weighted)) < 1e-2 * r["loss"]

  # TensorBoard can read the events.
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(str(work / "tb"))
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  assert {"train/loss", "train/kl", "train/reconstruction", "train/l2"} <= tags
  tb_loss = [e.value for e in acc.Scalars("train/loss")]
  np.testing.assert_allclose(tb_loss, [r["loss"] for r in lines], rtol=1e-6)

  # Evaluation: JSON and Markdown, model beside the centre bias, per channel.
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(work)]) == 0
  printed = capsys.readouterr().out
  report = json.loads((work / "eval" / "test-12.json").read_text())
  assert report["images"] == 160 and report["step"] == 12 and report["image_size"] == 32
  for summary in (report["model"], report["baselines"]["centre"]):
    for channel in ("true", "false", "all"):
      cell = summary[channel]
      assert cell["images"] == 160
      assert -1 <= cell["rho2d"] <= 1 and cell["mse"] > 0
      assert math.isclose(cell["mse_255"], cell["mse"] * 255**2, rel_tol=1e-9)
  # Centre bias on the synthetic set is weak but positive (objects are spread out).
  assert 0.05 < report["baselines"]["centre"]["true"]["rho2d"] < 0.35
  md = (work / "eval" / "test-12.md").read_text()
  row = next(line for line in md.splitlines() if line.startswith("|  | all |"))
  assert f"| {report['model']['all']['rho2d']:.3f} |" in row
  assert row in printed
  assert (work / "eval" / "test-12-categories.png").stat().st_size > 0

  # Evaluating the same checkpoint again gives the same numbers.
  assert cli.main(["evaluate", "--workdir", str(work), "--checkpoint", "12"]) == 0
  again = json.loads((work / "eval" / "test-12.json").read_text())
  assert again["model"] == report["model"]
