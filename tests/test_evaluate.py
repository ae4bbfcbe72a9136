"""The evaluation report: JSON, Markdown, figure, baselines, determinism, errors."""

import json
import math
import shutil
import types

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_config
from vmsjax import cli, eval_report, evaluate, inference, metrics, records
from vmsjax.data import schema
from vmsjax.errors import VMSError


def _rows(md: str, heading: str) -> list[list[str]]:
  """The body rows of the first table after a Markdown heading, as lists of cells."""
  lines = md.split(f"## {heading}", 1)[1].splitlines()[1:]
  end = next((i for i, x in enumerate(lines) if x.startswith("## ")), len(lines))
  table = [x for x in lines[:end] if x.startswith("|")]
  return [[c.strip() for c in x.strip("|").split("|")] for x in table[2:]]


def _oracle(images, target):
  """A baseline that predicts the ground truth itself (checks the registry's contract)."""
  assert images.dtype == np.uint8 and images.shape == target.shape[:-1] + (3,)
  return target


@pytest.fixture(scope="module")
def report(trained_workdir):
  # One evaluation shared by the tests below (each costs seconds): the centre bias
  # and an oracle registered as a baseline in one line.
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(evaluate.BASELINES, "oracle", _oracle)
    return evaluate.evaluate(trained_workdir, checkpoint=12, baselines="centre,oracle")


def test_json_matches_return_and_counts(report, trained_workdir):
  on_disk = json.loads((trained_workdir / "eval" / "test-12.json").read_text())
  assert on_disk == report
  assert report["images"] == 160 and report["image_size"] == 32 and report["step"] == 12
  assert list(report["baselines"]) == ["centre", "oracle"]
  for level, names in (("leaf", schema.LEAVES), ("middle", schema.MIDDLE), ("top", schema.TOP)):
    cells = report["categories"][level]
    assert list(cells) == list(names)
    assert sum(v["images"] for v in cells.values()) == report["images"]
  # The synthetic test split has 20 images per leaf category, 40 per middle, 80 per top.
  assert {v["images"] for v in report["categories"]["leaf"].values()} == {20}
  assert {v["images"] for v in report["categories"]["top"].values()} == {80}


def test_eval_path_is_the_last_step_report_and_evaluate_once_reads_it(report, trained_workdir):
  config = inference.load_config(trained_workdir)  # 12 steps: the report above is the last
  path = evaluate.eval_path(trained_workdir, config)
  assert path == trained_workdir / "eval" / report["files"]["json"]
  # It has the centre baseline already: read back, nothing is evaluated (or logged).
  assert evaluate.evaluate_once(trained_workdir, config, "centre", log=pytest.fail) == report


def test_categories_add_up_to_the_overall_means(report):
  # The overall mean of a metric is the mean of the category means weighted by the
  # images each has a value for; checked at every level, for model and baseline.
  for level in ("leaf", "middle", "top"):
    for who in ("model", "centre"):
      for c in metrics.CHANNELS:
        overall = report[who][c] if who == "model" else report["baselines"][who][c]
        for m in ("rho2d", "mse", "sim", "kld"):
          num = den = 0.0
          for v in report["categories"][level].values():
            cell = v["model"][c] if who == "model" else v["baselines"][who][c]
            n = cell["images"] - cell["excluded"][m]
            if n:
              num, den = num + n * cell[m], den + n
          assert overall[m] == pytest.approx(num / den, rel=1e-9), (level, who, c, m)
        assert overall["mse_255"] == pytest.approx(overall["mse"] * 255**2)
        assert overall["cc"] == pytest.approx(overall["rho2d"], abs=1e-9)


def test_markdown_tables(report, trained_workdir):
  md = (trained_workdir / "eval" / "test-12.md").read_text()
  t1 = _rows(md, "Table 1")
  assert len(t1) == 3 * 3  # model, centre bias, oracle
  model_rows = {r[1]: r for r in t1[:3]}
  for c in metrics.CHANNELS:
    s = report["model"][c]
    assert model_rows[c][2] == f"{s['rho2d']:.3f}"
    assert model_rows[c][3] == f"{s['mse_255']:.1f}"
    assert model_rows[c][4] == f"{s['mse']:.4f}"
  assert t1[0][0].startswith("model (m=4")
  assert (
    t1[3][0] == "centre bias"
    and t1[3][2] == f"{report['baselines']['centre']['true']['rho2d']:.3f}"
  )

  # Table 2: best / worst are the argmax / argmin of the per-category rho2D.
  t2 = _rows(md, "Table 2")
  leaf = report["categories"]["leaf"]
  for row, c in zip(t2[:3], metrics.CHANNELS, strict=True):
    vals = {
      k: v["model"][c]["rho2d"] for k, v in leaf.items() if v["model"][c]["rho2d"] is not None
    }
    best, worst = max(vals, key=vals.get), min(vals, key=vals.get)
    assert row[2:6] == [best, f"{vals[best]:.3f}", worst, f"{vals[worst]:.3f}"]
    assert row[6] == f"{report['model'][c]['rho2d']:.3f}"

  sal = _rows(md, "Saliency-benchmark metrics")
  assert sal[2][1] == "all" and sal[2][4] == f"{report['model']['all']['kld']:.3f}"
  cats = _rows(md, "Per category")
  assert len(cats) == len(schema.LEAVES) + len(schema.MIDDLE) + len(schema.TOP)
  assert cats[0][:3] == ["leaf", "kitchen", "20"]
  assert cats[0][3] == f"{leaf['kitchen']['model']['true']['rho2d']:.3f}"
  assert f"]({report['files']['figure']})" in md
  # The JSON holds everything the Markdown shows (its keys come back sorted).
  on_disk = json.loads((trained_workdir / "eval" / "test-12.json").read_text())
  assert eval_report.markdown_report(on_disk) == md


def test_figure(report, trained_workdir):
  path = trained_workdir / "eval" / report["files"]["figure"]
  with Image.open(path) as im:
    assert im.format == "PNG"
    assert im.size == (1000, 700)
    pixels = np.asarray(im.convert("RGB"))
  # Something is drawn: more than the background colour.
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_older_checkpoint_is_reproducible(report, trained_workdir):
  first = evaluate.evaluate(trained_workdir, checkpoint=4, baselines="none")
  second = evaluate.evaluate(trained_workdir, checkpoint=4, baselines=[])
  assert first["step"] == 4 and first["baselines"] == {}
  assert first == second
  assert first["model"] != report["model"]
  assert first["model"]["all"]["mse"] != report["model"]["all"]["mse"]
  assert (trained_workdir / "eval" / "test-4.json").exists()
  # The step-12 report is still there, untouched.
  assert json.loads((trained_workdir / "eval" / "test-12.json").read_text()) == report


def test_baselines_and_correlation_with_them(report, trained_workdir):
  o = report["baselines"]["oracle"]
  for c in metrics.CHANNELS:
    assert o[c]["mse"] == 0.0 and o[c]["rho2d"] == pytest.approx(1.0)
    assert o[c]["sim"] == pytest.approx(1.0) and o[c]["kld"] == pytest.approx(0.0, abs=1e-9)
    corr = report["correlation_with_baselines"]["oracle"]
    # Correlation of the predictions with the oracle's maps is the model's rho2D.
    assert corr["predicted"][c]["rho2d"] == pytest.approx(report["model"][c]["rho2d"], rel=1e-9)
    assert corr["ground_truth"][c]["rho2d"] == pytest.approx(1.0)
    # The centre baseline's ground-truth correlation is its own rho2D.
    centre = report["correlation_with_baselines"]["centre"]["ground_truth"][c]["rho2d"]
    assert centre == report["baselines"]["centre"][c]["rho2d"]
  # Centre bias on the synthetic set is weak but positive (objects are spread out).
  assert 0.05 < report["baselines"]["centre"]["true"]["rho2d"] < 0.35
  md = (trained_workdir / "eval" / "test-12.md").read_text()
  assert "| oracle | true | 1.000 | 0.0 | 0.0000 | 160 / 160 |" in md
  corr_rows = _rows(md, "Correlation with the baselines' maps")
  assert [r[0] for r in corr_rows] == ["centre bias", "", "", "oracle", "", ""]


def test_unknown_baseline_is_refused():
  with pytest.raises(VMSError, match="unknown baseline.*nope.*known: centre, gbvs"):
    evaluate.parse_baselines("centre,nope")
  assert evaluate.parse_baselines("gbvs, centre,gbvs") == ("gbvs", "centre")
  assert evaluate.parse_baselines(None) == ("centre",)


def test_dataset_without_maps_is_refused(trained_workdir, monkeypatch, capsys):
  from vmsjax.data import catalogue

  records = [
    {"image": np.zeros((224, 224, 3), np.uint8), "category": 0, "id": f"{i}.jpg", "score": 0.5}
    for i in range(3)
  ]
  monkeypatch.setattr(catalogue, "open_split", lambda name, split, data_dir: records)
  code = cli.main(["evaluate", "--workdir", str(trained_workdir), "--dataset", "lamem"])
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1
  assert "lamem/test has no VMS maps" in err


def test_report_json_has_no_nan(report):
  def walk(x):
    if isinstance(x, dict):
      for v in x.values():
        walk(v)
    elif isinstance(x, float):
      assert math.isfinite(x)

  walk(report)


def test_gbvs_baseline_is_gbvs_scaled_per_channel():
  from vmsjax import saliency

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  target = rng.uniform(size=(3, 32, 32, 2)).astype(np.float32)
  got = evaluate.gbvs_baseline(images, target)
  assert got.shape == target.shape and got.dtype == np.float32
  g = saliency.gbvs_batch(images)  # (3, 32, 32)
  for c in range(2):
    # One least-squares factor per channel over all images, fitted independently here.
    a, *_ = np.linalg.lstsq(g.reshape(-1, 1).astype(np.float64), target[..., c].ravel())
    assert a[0] > 0
    np.testing.assert_allclose(got[..., c], a[0] * g, rtol=1e-5, atol=1e-7)


def test_other_dataset_without_categories(trained_workdir, monkeypatch):
  # A dataset with maps but no VISCHEMA categories, evaluated with --dataset: its
  # files are named after it, and the per-category parts are left out.
  from vmsjax.data import catalogue

  rng = np.random.default_rng(0)
  records = [
    {
      "image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
      "vms": rng.uniform(size=(224, 224, 2)).astype(np.float32),
      "id": f"{i}.png",
    }
    for i in range(6)
  ]
  monkeypatch.setattr(catalogue, "open_split", lambda name, split, data_dir: records)
  got = evaluate.evaluate(trained_workdir, checkpoint=12, dataset="other/cfg", baselines="none")
  assert got["images"] == 6 and got["categories"] == {} and got["dataset"] == "other/cfg"
  assert got["files"] == {"json": "other-cfg-test-12.json", "markdown": "other-cfg-test-12.md"}
  md = (trained_workdir / "eval" / "other-cfg-test-12.md").read_text()
  assert "## Table 1" in md and "Table 2" not in md and "## Per category" not in md
  assert json.loads((trained_workdir / "eval" / "other-cfg-test-12.json").read_text()) == got


def test_json_safe_writes_strict_json():
  # One convention for every report: NaN and both infinities are null (undefined).
  obj = {
    "nan": float("nan"),
    "inf": np.float32(np.inf),
    "-inf": -math.inf,
    "f32": np.float32(0.5),
    "i64": np.int64(3),
    "nested": [(1.0, np.nan), {"ok": True, "none": None, "s": "x"}],
  }
  got = records.json_safe(obj)
  assert got == {
    "nan": None,
    "inf": None,
    "-inf": None,
    "f32": 0.5,
    "i64": 3,
    "nested": [[1.0, None], {"ok": True, "none": None, "s": "x"}],
  }
  assert type(got["f32"]) is float and type(got["i64"]) is int and got["nested"][1]["ok"] is True
  text = json.dumps(got, allow_nan=False)  # strict JSON: no NaN or Infinity tokens
  assert json.loads(text) == got


def test_baselines_given_as_functions_and_memoised():
  calls = []

  def counting(images, target):
    calls.append(1)
    return target * 0.5

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
  target = rng.uniform(size=(2, 8, 8, 2)).astype(np.float32)
  once = evaluate.memoised(counting)
  first = once(images, target)
  np.testing.assert_array_equal(once(images.copy(), target.copy()), first)
  assert len(calls) == 1
  once(images, target[::-1].copy())  # other maps: computed again
  assert len(calls) == 2
  assert evaluate.baseline_functions("gbvs,centre") == {
    "gbvs": evaluate.gbvs_baseline,
    "centre": evaluate.centre_baseline,
  }
  chosen = evaluate.baseline_functions({"counting": counting}, memoise=True)
  assert list(chosen) == ["counting"] and chosen["counting"] is not counting
  assert evaluate.parse_baselines(evaluate.baseline_functions(None, memoise=True)) == ("centre",)


# ---------------------------------------------------------------------------------
# The ridge baseline, on a copy of the trained workdir (evaluate writes WORKDIR/eval,
# and the report fixture above owns the original's test-12 files). Its splits are cut
# to every 16th training and every 8th test image in id order (40 and 20): the trunk
# then encodes 60 images instead of 800, each twice (evaluate, and here independently).
SUBSET = {"train": 16, "test": 8}


def _subset(name, split, data_dir):
  from vmsjax.data import catalogue

  source = catalogue.open_split(name, split, data_dir)
  order = sorted(range(len(source)), key=lambda i: source.ids()[i])
  return [source[i] for i in order[:: SUBSET[split]]]


@pytest.fixture(scope="module")
def ridge_run(trained_workdir, tmp_path_factory):
  from vmsjax.data import catalogue

  work = tmp_path_factory.mktemp("ridge") / "run"
  shutil.copytree(trained_workdir, work, ignore=shutil.ignore_patterns("eval"))
  config = inference.load_config(work)
  splits = {s: _subset(config.data.name, s, config.data.data_dir) for s in SUBSET}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(catalogue, "open_split", lambda name, split, data_dir: splits[split])
    report = evaluate.evaluate(work, checkpoint=12, baselines="centre,ridge")
  return work, report, splits


def _independent_features(config, records):
  """Trunk features and maps of records, computed here from the config alone."""
  import jax

  from vmsjax import factory, pixels
  from vmsjax.data import augment

  image = np.stack([r["image"] for r in records])
  vms = np.stack([r["vms"] for r in records])
  encoder, params = factory.make_encoder(config), factory.encoder_params(config)
  hw = factory.image_hw(config)

  @jax.jit
  def features(image, vms):
    ident = augment.identity(image.shape[0])
    resized = augment.warp(image, ident, hw)
    return pixels.encode(config, encoder, params, resized), augment.warp(vms, ident, hw)

  # In chunks of 20 (both splits divide by it): one compilation of the trunk.
  parts = [features(image[i : i + 20], vms[i : i + 20]) for i in range(0, len(image), 20)]
  x = np.concatenate([np.asarray(p[0], np.float64) for p in parts])
  y = np.concatenate([np.asarray(p[1], np.float64) for p in parts])
  return x.reshape(len(x), -1), y


def test_ridge_baseline_equals_an_independent_fit(ridge_run):
  work, report, splits = ridge_run
  assert list(report["baselines"]) == ["centre", "ridge"] and report["images"] == 20
  fit = report["baseline_fits"]["ridge"]
  assert list(report["baseline_fits"]) == ["ridge"]
  # tiny config: 32 px inputs, 1x1x512 features, maps compared at 32x32; 40 training
  # images (fewer than 640: a fifth held out), fewer than features: the dual form.
  assert fit["feature_shape"] == [1, 1, 512] and fit["map_shape"] == [32, 32, 2]
  assert fit["rows"] == 40 and fit["held_out"] == 8 and fit["form"] == "dual"

  config = inference.load_config(work)
  x, y = _independent_features(config, splits["train"])
  x_test, y_test = _independent_features(config, splits["test"])
  y = y.reshape(len(y), -1)
  # The penalty: by held-out MSE of clipped predictions, the last 8 ids held out, the
  # grid relative to the mean squared norm of the centred fitted rows.
  xf, yf, xv, yv = x[:32], y[:32], x[32:], y[32:]
  scale = np.mean(np.sum((xf - xf.mean(0)) ** 2, axis=1))
  np.testing.assert_allclose(fit["scale"], scale, rtol=1e-4)

  def solve(xs, ys, penalty):
    xm, ym = xs.mean(0), ys.mean(0)
    w = np.linalg.solve(
      (xs - xm).T @ (xs - xm) + penalty * np.eye(xs.shape[1]), (xs - xm).T @ (ys - ym)
    )
    return lambda z: np.clip((z - xm) @ w + ym, 0.0, 1.0)

  errors = [np.mean((solve(xf, yf, g * scale)(xv) - yv) ** 2) for g in fit["relative_grid"]]
  np.testing.assert_allclose(fit["held_out_mse"], errors, rtol=1e-4)
  best = int(np.argmin(errors))
  assert fit["relative_penalty"] == fit["relative_grid"][best]
  # Refitted on all 40 with that penalty, scored like every baseline.
  pred = solve(x, y, fit["penalty"])(x_test).reshape(y_test.shape)
  expected = metrics.summarise(metrics.per_image(pred, y_test))
  # The trunk's features here and in evaluate agree to float32 rounding (other batch
  # shapes); KLD amplifies it where a clipped prediction is near 0 (log of p + eps).
  for c in metrics.CHANNELS:
    for m, rel in (("rho2d", 1e-4), ("mse", 1e-4), ("sim", 1e-4), ("kld", 1e-2)):
      got = report["baselines"]["ridge"][c][m]
      assert got == pytest.approx(expected[c][m], rel=rel), (c, m)


def test_ridge_rows_in_json_and_markdown(ridge_run):
  work, report, _ = ridge_run
  on_disk = json.loads((work / "eval" / "test-12.json").read_text())
  assert on_disk == report
  leaf = report["categories"]["leaf"]
  assert all(set(v["baselines"]) == {"centre", "ridge"} for v in leaf.values())
  md = (work / "eval" / "test-12.md").read_text()
  assert eval_report.markdown_report(on_disk) == md
  t1 = _rows(md, "Table 1")
  ridge_rows = t1[6:9]
  assert ridge_rows[0][0] == "ridge" and [r[1] for r in ridge_rows] == list(metrics.CHANNELS)
  for row, c in zip(ridge_rows, metrics.CHANNELS, strict=True):
    s = report["baselines"]["ridge"][c]
    assert row[2] == f"{s['rho2d']:.3f}" and row[4] == f"{s['mse']:.4f}"
  cats = _rows(md, "Per category")
  header = md.split("## Per category", 1)[1].split("| level |", 1)[1].splitlines()[0]
  assert "ridge true | ridge false | ridge all" in header
  assert cats[0][-3] == f"{leaf['kitchen']['baselines']['ridge']['true']['rho2d']:.3f}"
  grid = _rows(md, "How the ridge baseline was fitted")
  fit = report["baseline_fits"]["ridge"]
  assert len(grid) == len(fit["relative_grid"])
  assert [r[3] for r in grid].count("chosen") == 1
  assert "scored on the last 8" in md and "clipped to [0, 1]" in md


def test_fitted_baselines_are_memoised_per_features_and_target():
  calls = []

  def fit(run, features, target):
    calls.append(1)
    return target * 0.5, {"calls": len(calls)}

  # A run stands in by what the memo key reads of it: the training dataset's name.
  run = evaluate.Run(types.SimpleNamespace(config=tiny_config()), "data", features=None)
  once = evaluate.memoised(evaluate.FittedBaseline(fit))
  assert isinstance(once, evaluate.FittedBaseline)
  features = np.ones((2, 1, 1, 4), np.float32)
  target = np.zeros((2, 4, 4, 2), np.float32)
  assert once.fit(run, features, target)[1] == {"calls": 1}
  assert once.fit(run, features.copy(), target.copy())[1] == {"calls": 1}
  assert once.fit(run, features + 1, target)[1] == {"calls": 2}  # another trunk
  assert isinstance(evaluate.baseline_functions("ridge")["ridge"], evaluate.FittedBaseline)
