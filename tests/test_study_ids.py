"""Joining external ids to dataset ids: exact, base name, stem; `data export` round trip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from tests.test_data_folders import make_vischema
from vmsjax import cli
from vmsjax.errors import VMSError
from vmsjax.studies import reference, runners

DATA = ["sun_1.jpg", "sun_2.jpg", "sun_3.jpg", "x.jpg", "x.tif"]


def _join(external_ids, data_ids=DATA):
  scores = {k: float(i) for i, k in enumerate(external_ids)}
  return reference.join_scores(data_ids, scores, "vischema/test", "s.csv", warn=None)


def test_exact_ids_join_first():
  joined, m = _join(["sun_1.jpg", "sun_2.jpg", "sun_3.jpg", "x.jpg", "x.tif"])
  assert m.complete and m.levels == {"exact": 5, "name": 0, "stem": 0}
  assert joined == {
    "sun_1.jpg": 0.0,
    "sun_2.jpg": 1.0,
    "sun_3.jpg": 2.0,
    "x.jpg": 3.0,
    "x.tif": 4.0,
  }


def test_full_paths_join_by_base_name():
  ids = ["/data/vis/sun_1.jpg", "runs\\export\\sun_2.jpg", "sun_3.jpg", "x.jpg", "x.tif"]
  joined, m = _join(ids)
  assert m.complete and m.levels == {"exact": 3, "name": 2, "stem": 0}
  assert joined["sun_1.jpg"] == 0.0 and joined["sun_2.jpg"] == 1.0


def test_exported_png_names_and_stems_join_by_stem():
  # What a predictor writes over a `data export` folder: <stem>.png, or bare stems.
  joined, m = _join(["sun_1.png", "out/sun_2.png", "sun_3", "x.jpg", "x.tif"])
  assert m.complete and m.levels == {"exact": 2, "name": 0, "stem": 3}
  assert joined == {
    "sun_1.jpg": 0.0,
    "sun_2.jpg": 1.0,
    "sun_3.jpg": 2.0,
    "x.jpg": 3.0,
    "x.tif": 4.0,
  }
  # A stem shared by two images is never guessed, even when one of them matched exactly.
  assert reference.match_ids(DATA, ["x.png"]).ambiguous == {"x.png": ["x.jpg", "x.tif"]}


@pytest.mark.parametrize(
  "external, fragment",
  [
    # Two images share the stem x.
    (["sun_1.jpg", "x.png"], "1 ambiguous (e.g. 'x.png' could be 'x.jpg' or 'x.tif')"),
    # Two scores for one image: an exact id and a stem of it.
    (["sun_1.jpg", "sun_1.png"], "1 ambiguous (e.g. 'sun_1.png' could be 'sun_1.jpg')"),
    # Two folders' files with one name: both ambiguous, whatever the row order.
    (["a/sun_2.png", "b/sun_2.png"], "2 ambiguous (e.g. 'a/sun_2.png' could be 'sun_2.jpg')"),
  ],
)
def test_ambiguous_ids_are_refused_with_the_counts(external, fragment):
  with pytest.raises(VMSError) as e:
    _join(external)
  msg = str(e.value)
  assert fragment in msg and "\n" not in msg
  assert msg.startswith("ids of s.csv against vischema/test: ")
  assert "unmatched (e.g. " in msg and "full file name" in msg
  with pytest.raises(VMSError):  # the same refusal with the rows reversed
    _join(external[::-1])


def test_partial_join_warns_one_line_and_keeps_the_matched():
  lines = []
  scores = {"sun_1.png": 0.1, "sun_2.jpg": 0.2, "elsewhere.jpg": 0.3}
  joined, m = reference.join_scores(DATA, scores, "vischema/test", "s.csv", warn=lines.append)
  assert joined == {"sun_1.jpg": 0.1, "sun_2.jpg": 0.2}
  assert lines == [
    "ids of s.csv against vischema/test: 2 matched (1 exact, 1 by stem), e.g. 'sun_1.png' as "
    "'sun_1.jpg'; 3 of vischema/test unmatched (e.g. 'sun_3.jpg'); 1 of s.csv unmatched (e.g. "
    "'elsewhere.jpg'); 0 ambiguous"
  ]


def test_no_match_is_an_error_with_an_example_of_each_side():
  with pytest.raises(VMSError) as e:
    _join(["elsewhere.jpg", "other.png"])
  msg = str(e.value)
  assert "0 matched;" in msg and "5 of vischema/test unmatched (e.g. 'sun_1.jpg')" in msg
  assert "2 of s.csv unmatched (e.g. 'elsewhere.jpg')" in msg and "check the id column" in msg


def test_score_study_refuses_an_ambiguous_csv(tmp_path):
  # The study itself goes through the one matcher: an ambiguous row stops it.
  rng = np.random.default_rng(0)
  records = [
    {"id": i, "image": np.zeros((8, 8, 3), np.uint8), "vms": rng.random((8, 8, 2), np.float32)}
    for i in DATA
  ]
  path = tmp_path / "s.csv"
  path.write_text("id,score\nsun_1.png,0.1\nsun_2.png,0.2\nsun_3.png,0.3\nx.png,0.4\n")
  with pytest.raises(VMSError, match="1 ambiguous \\(e.g. 'x.png' could be 'x.jpg' or 'x.tif'\\)"):
    runners.run_scores(None, records, tmp_path / "out", maps="truth", scores_csv=path)


# --- `data export` of JPEG sources, an external predictor's CSV, `study scores` ----------


@pytest.fixture(scope="module")
def jpeg_vischema(tmp_path_factory):
  """A built VISCHEMA whose sources are JPEGs (ids `<stem>.jpg`, as the real dataset's)."""
  base = tmp_path_factory.mktemp("vischema_jpg")
  root = base / "manual" / "vischema"
  expected = make_vischema(root, per_category=3, shape=(64, 64), map_shape=(32, 32))
  for png in sorted((root / "images").rglob("*.png")):
    Image.open(png).save(png.with_suffix(".jpg"), quality=95)
    png.unlink()
  data_dir = base / "data"
  manual = str(base / "manual")
  assert (
    cli.main(["data", "build", "vischema", "--data_dir", str(data_dir), "--manual_dir", manual])
    == 0
  )
  return data_dir, sorted(k[:-4] + ".jpg" for k in expected)


def test_exported_names_join_back_in_a_score_study(jpeg_vischema, tmp_path, capsys):
  data_dir, all_ids = jpeg_vischema
  exported = tmp_path / "export"
  args = ["data", "export", "vischema:test", "--out", str(exported), "--data_dir", str(data_dir)]
  assert cli.main(args) == 0
  with open(exported / "ids.csv", newline="") as f:
    mapping = list(csv.DictReader(f))
  # Lossless PNGs named by stem, each tied to its record's id by ids.csv.
  assert len(mapping) == 5 and all(row["id"] in all_ids for row in mapping)
  for row in mapping:
    assert row["file"] == row["id"][: -len(".jpg")] + ".png"
    assert (exported / row["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # An external predictor run over the folder: one score per exported file name.
  rng = np.random.default_rng(3)
  files = [row["file"] for row in mapping]
  scores = rng.random(len(files)).tolist()
  path = tmp_path / "predictor.csv"
  path.write_text(
    "id,score\n" + "".join(f"{f},{s!r}\n" for f, s in zip(files, scores, strict=True))
  )
  out = tmp_path / "study"
  args = ["study", "scores", "--workdir", str(tmp_path / "none"), "--data", "vischema:test"]
  args += ["--scores", str(path), "--maps", "truth", "--data_dir", str(data_dir)]
  code = cli.main([*args, "--out", str(out)])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  report = json.loads((out / "scores.json").read_text())
  assert report["images"] == 5 and report["images_without_score"] == 0
  assert report["csv_ids_matched"] == {"exact": 0, "name": 0, "stem": 5}
  # rho against scipy on the same pairs: the exported maps' means and the CSV's scores.
  memorability = [
    np.load(exported / "maps" / f.replace(".png", ".npy"))[..., 0].mean(dtype=np.float64)
    for f in files
  ]
  want = stats.spearmanr(memorability, scores)
  got = report["spearman"]["memorability"]
  assert got["rho"] == pytest.approx(float(want.statistic), abs=1e-12)
  assert got["p"] == pytest.approx(float(want.pvalue), rel=1e-9)
