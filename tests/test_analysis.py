"""Memorability studies and latent embeddings, checked against independent computations."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest
from scipy import stats

from vmsjax import cli, figures, inference, records
from vmsjax.data import catalogue, schema
from vmsjax.errors import VMSError
from vmsjax.studies import embedding, reference, runners, sources
from vmsjax.studies import stats as study_stats


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _scipy(x, y):
  r = stats.spearmanr(np.asarray(x, float), np.asarray(y, float))
  return float(r.statistic), float(r.pvalue)


@pytest.fixture(scope="module")
def trained(trained_workdir):
  return inference.load(trained_workdir)


@pytest.fixture(scope="module")
def test_split(synthetic_data_dir):
  return catalogue.open_split("synthetic", "test", synthetic_data_dir)


# --- scores and statistics ------------------------------------------------------------


def test_map_scores_are_channel_means():
  maps = np.random.default_rng(0).random((3, 5, 7, 2)).astype(np.float32)
  got = study_stats.map_scores(maps)
  assert got.shape == (3, 2)
  np.testing.assert_allclose(got[:, 0], maps[..., 0].reshape(3, -1).mean(1), rtol=1e-6)
  np.testing.assert_allclose(got[:, 1], maps[..., 1].reshape(3, -1).mean(1), rtol=1e-6)


def test_spearman_matches_scipy_and_is_nan_when_undefined():
  rng = np.random.default_rng(1)
  x = rng.random(25)
  y = x + rng.normal(0, 0.3, 25)
  got = study_stats.spearman(x, y)
  assert (got["rho"], got["p"]) == _scipy(x, y) and got["n"] == 25
  assert np.isnan(study_stats.spearman(x, np.ones(25))["rho"])
  assert np.isnan(study_stats.spearman([1.0, 2.0], [2.0, 1.0])["p"])


def test_category_means():
  scores = np.array([[0.1, 0.5], [0.3, 0.7], [0.9, 0.2]])
  rows = study_stats.category_means(scores, np.array([2, 2, 4]))
  assert [(r["category"], r["count"]) for r in rows] == [("small_public", 2), ("work_home", 1)]
  assert rows[0]["memorability"] == pytest.approx(0.2)
  assert rows[0]["false_memorability"] == pytest.approx(0.6)


def test_concat_source():
  a = [{"id": "a0"}, {"id": "a1"}]
  b = [{"id": "b0"}, {"id": "b1"}, {"id": "b2"}]
  both = sources.ConcatSource([a, sources.SourceView(b, [2, 0])])
  assert len(both) == 4
  assert [both[i]["id"] for i in range(4)] == ["a0", "a1", "b2", "b0"]
  assert both.ids() == ("a0", "a1", "b2", "b0")
  with pytest.raises(IndexError):
    both[4]


def test_subset_is_seeded_and_sorted_by_id():
  ids = [f"img{k:03d}" for k in np.random.default_rng(0).permutation(200)]
  a = sources.subset_indices(ids, 50, seed=7)
  assert len(set(a)) == 50
  assert a.tolist() == sources.subset_indices(ids, 50, seed=7).tolist()
  assert a.tolist() != sources.subset_indices(ids, 50, seed=8).tolist()
  picked = [ids[i] for i in a]
  assert picked == sorted(picked)
  # Independent of the record order: the same ids whatever order they are stored in.
  shuffled = sorted(ids)
  b = sources.subset_indices(shuffled, 50, seed=7)
  assert sorted(shuffled[i] for i in b) == sorted(picked)
  assert len(sources.subset_indices(ids, 1000, seed=0)) == 200


def test_pca_matches_covariance_eigenvectors():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(60, 6)) @ rng.normal(size=(6, 6)) + 3.0
  coords, ratio = embedding.pca(x, 2)
  centred = x - x.mean(0)
  evals, evecs = np.linalg.eigh(np.cov(centred, rowvar=False))
  top = evecs[:, ::-1][:, :2]  # (6, 2), largest eigenvalues first
  ref = centred @ top
  for k in range(2):
    sign = np.sign(ref[:, k] @ coords[:, k])
    np.testing.assert_allclose(coords[:, k], sign * ref[:, k], atol=1e-9)
  np.testing.assert_allclose(ratio, evals[::-1][:2] / evals.sum(), rtol=1e-9)


# --- external scores CSV --------------------------------------------------------------


def test_read_scores_csv_formats(tmp_path):
  p = tmp_path / "a.csv"
  p.write_text("a.jpg,0.5\n\n# comment\nb.jpg, 0.25\n")
  assert reference.read_scores_csv(p) == {"a.jpg": 0.5, "b.jpg": 0.25}
  p.write_text("id,path,memorability,false_memorability\nx,p/x,0.1,0.9\ny,p/y,0.3,0.2\n")
  assert reference.read_scores_csv(p, "false_memorability") == {"x": 0.9, "y": 0.2}
  p.write_text("image,amnet\nx,0.7\n")
  assert reference.read_scores_csv(p) == {"x": 0.7}


@pytest.mark.parametrize(
  "text, needle",
  [
    ("id,score\na,0.5\nb\n", "line 3"),
    ("id,score\na,0.5\nb,high\n", "line 3: score 'high'"),
    ("a,0.5\nb,nan\n", "line 2"),
    ("a,0.5\nb,0.1\na,0.2\n", "line 3: id 'a' already given on line 1"),
    ("id,x,y\na,1,2\n", "no column 'score'"),
    ("# nothing\n", "no `id,score` rows"),
  ],
)
def test_read_scores_csv_errors_name_the_line(tmp_path, text, needle):
  p = tmp_path / "bad.csv"
  p.write_text(text)
  with pytest.raises(VMSError, match="bad.csv") as e:
    reference.read_scores_csv(p)
  assert needle in str(e.value)


# --- studies --------------------------------------------------------------------------


def test_latent_study_cli(trained_workdir, trained, test_split, tmp_path):
  out = tmp_path / "latent"
  argv = ["study", "latent", "--workdir", str(trained_workdir), "--data", "synthetic:test"]
  argv += ["--subset", "48", "--seed", "3", "--out", str(out)]
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    assert cli.main(argv) == 0
  assert "Spearman" in stdout.getvalue()
  rows = _read_csv(out / "latent.csv")
  ids = [r["id"] for r in rows]
  expected = [test_split.ids()[i] for i in sources.subset_indices(test_split.ids(), 48, 3)]
  assert ids == expected and len(set(ids)) == 48
  xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
  assert np.isfinite(xy).all()

  # Independent: encode the same images, PCA by eigen-decomposition of the covariance.
  index = {k: i for i, k in enumerate(test_split.ids())}
  records = [test_split[index[k]] for k in ids]
  maps, mu = inference.predict(trained, np.stack([r["image"] for r in records]))
  centred = mu.astype(np.float64) - mu.mean(0)
  _, evecs = np.linalg.eigh(np.cov(centred, rowvar=False))
  ref = centred @ evecs[:, ::-1][:, :2]
  for k in range(2):
    sign = np.sign(ref[:, k] @ xy[:, k])
    np.testing.assert_allclose(xy[:, k], sign * ref[:, k], atol=1e-4)
  assert [r["category"] for r in rows] == [schema.LEAVES[r["category"]] for r in records]
  mem = np.array([float(r["memorability"]) for r in rows])
  np.testing.assert_allclose(mem, maps[..., 0].reshape(48, -1).mean(1), rtol=1e-5)

  report = json.loads((out / "latent.json").read_text())
  assert report["images"] == 48 and report["projection"]["method"] == "pca"
  fmem = [float(r["false_memorability"]) for r in rows]
  rho, p = _scipy(mem, fmem)
  assert report["spearman_memorability_false_memorability"]["rho"] == pytest.approx(rho)
  from PIL import Image

  with Image.open(out / "latent.png") as im:
    assert im.size == figures.panel_size(1, 2)


def test_latent_unknown_method_is_an_error(trained, test_split, tmp_path):
  with pytest.raises(VMSError, match="--method"):
    runners.run_latent(trained, test_split, tmp_path, method="isomap")


def test_category_study(trained, test_split, synthetic_data_dir, tmp_path):
  train = catalogue.open_split("synthetic", "train", synthetic_data_dir)
  # Ground truth from two splits read as one (as `--truth synthetic:train+test` does).
  truth_view = sources.ConcatSource(
    [sources.SourceView(train, range(0, len(train), 5)), sources.SourceView(test_split, range(5))]
  )  # 128 + 5 records
  pred_view = sources.SourceView(test_split, range(0, len(test_split), 3))  # 54 of 160
  report = runners.run_categories(trained, pred_view, truth_view, tmp_path, log=lambda s: None)
  on_disk = json.loads((tmp_path / "categories.json").read_text())
  assert on_disk["spearman"] == records.json_safe(report["spearman"])

  # Counts from the records themselves.
  pred_counts = np.bincount([pred_view[i]["category"] for i in range(len(pred_view))], minlength=8)
  truth_records = [truth_view[i] for i in range(len(truth_view))]
  truth_counts = np.bincount([r["category"] for r in truth_records], minlength=8)
  rows = _read_csv(tmp_path / "categories.csv")
  assert [r["category"] for r in rows] == list(schema.LEAVES)
  assert [int(r["predict_count"]) for r in rows] == pred_counts.tolist()
  assert [int(r["truth_count"]) for r in rows] == truth_counts.tolist()

  # Ground-truth per-category means, recomputed from the maps.
  for c, name in enumerate(schema.LEAVES):
    vms = [r["vms"] for r in truth_records if r["category"] == c]
    expected = np.mean([v[..., 0].mean(dtype=np.float64) for v in vms])
    assert float(rows[c]["truth_memorability"]) == pytest.approx(expected, rel=1e-9), name

  both = [r for r in rows if int(r["predict_count"]) and int(r["truth_count"])]
  for key in study_stats.SCORES:
    rho, p = _scipy(
      [float(r[f"predict_{key}"]) for r in both], [float(r[f"truth_{key}"]) for r in both]
    )
    got = on_disk["spearman"][key]
    assert got["n"] == len(both) >= 6
    assert got["rho"] == pytest.approx(rho, abs=1e-12) and got["p"] == pytest.approx(p, rel=1e-9)
  images = _read_csv(tmp_path / "categories_images.csv")
  assert sum(r["set"] == "predict" for r in images) == len(pred_view)
  assert (tmp_path / "categories.png").is_file()
  from PIL import Image

  with Image.open(tmp_path / "categories.png") as im:  # two panels side by side
    assert im.size == figures.panel_size(1, 2)
  assert "| kitchen |" in (tmp_path / "categories.md").read_text()


def test_score_study_on_scored_records(test_split, tmp_path):
  """A scored source built in memory (LaMem-like): ground-truth maps vs `score`."""
  rng = np.random.default_rng(4)
  records = []
  for i in range(60):
    r = dict(test_split[i])
    # A score that follows the true map's mean, plus noise: the study must find it.
    r["score"] = float(r["vms"][..., 0].mean() + rng.normal(0, 0.003))
    records.append(r)
  report = runners.run_scores(None, records, tmp_path, maps="truth", subset=40, seed=1)
  rows = _read_csv(tmp_path / "scores.csv")
  assert len(rows) == 40 == report["images"]
  by_id = {r["id"]: r for r in records}
  mem = [float(r["memorability"]) for r in rows]
  ref = [float(r["reference"]) for r in rows]
  for row in rows:
    rec = by_id[row["id"]]
    assert float(row["memorability"]) == pytest.approx(rec["vms"][..., 0].mean(dtype=np.float64))
    assert float(row["reference"]) == pytest.approx(rec["score"])
  on_disk = json.loads((tmp_path / "scores.json").read_text())
  rho, p = _scipy(mem, ref)
  assert on_disk["spearman"]["memorability"]["rho"] == pytest.approx(rho, abs=1e-12)
  assert on_disk["spearman"]["memorability"]["p"] == pytest.approx(p, rel=1e-9)
  assert rho > 0.5 and p < 0.01
  counts = {r["category"]: r["count"] for r in on_disk["per_category"]}
  assert sum(counts.values()) == 40
  for name, n in counts.items():
    assert n == sum(r["category"] == name for r in rows)


def test_score_study_without_scores_is_an_error(test_split, tmp_path):
  with pytest.raises(VMSError, match="no `score` feature"):
    runners.run_scores(None, test_split, tmp_path, maps="truth")


def test_score_study_external_csv(trained, test_split, tmp_path):
  view = sources.SourceView(test_split, range(40))
  ids = sorted(view.ids())
  scored = ids[::2]  # half the images have an external score
  rng = np.random.default_rng(5)
  path = tmp_path / "amnet.csv"
  lines = ["id,score"] + [f"{k},{rng.random():.6f}" for k in scored] + ["elsewhere.jpg,0.4"]
  path.write_text("\n".join(lines) + "\n")
  warnings = []
  report = runners.run_scores(
    trained, view, tmp_path / "out", scores_csv=path, warn=warnings.append, log=lambda s: None
  )
  assert report["images"] == len(scored)
  assert report["images_without_score"] == len(ids) - len(scored)
  assert report["csv_ids_not_in_data"] == 1
  assert report["csv_ids_not_in_data_first"] == ["elsewhere.jpg"]
  assert report["csv_ids_matched"] == {"exact": len(scored), "name": 0, "stem": 0}
  (line,) = warnings  # one line, with the counts of matched and unmatched ids
  assert f"{len(scored)} matched ({len(scored)} exact)" in line
  assert f"{len(ids) - len(scored)} of synthetic/test unmatched" in line
  assert f"1 of {path} unmatched (e.g. 'elsewhere.jpg')" in line and "\n" not in line
  rows = _read_csv(tmp_path / "out" / "scores.csv")
  assert [r["id"] for r in rows] == scored
  external = reference.read_scores_csv(path)
  fmem = [float(r["false_memorability"]) for r in rows]
  rho, p = _scipy(fmem, [external[r["id"]] for r in rows])
  got = json.loads((tmp_path / "out" / "scores.json").read_text())["spearman"]
  assert got["false_memorability"]["rho"] == pytest.approx(rho, abs=1e-12)
  assert got["false_memorability"]["p"] == pytest.approx(p, rel=1e-9)


def test_study_cli_errors(capsys, trained_workdir, tmp_path):
  code = cli.main(
    ["study", "latent", "--workdir", str(trained_workdir), "--data", "synthetic", "--out", "x"]
  )
  err = capsys.readouterr().err
  assert code == 2 and "DATASET:SPLIT" in err and len(err.strip().splitlines()) == 1
