"""experiments/cache_seeds.py: the paired, per-seed comparison of two sweep reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import cache_seeds  # noqa: E402


def _report(values: dict[str, list[float | None]]) -> dict:
  """A sweep report with points LABEL_sI whose rho2D(all) is values[LABEL][I] (None: the
  point failed)."""
  points = []
  for label, vals in values.items():
    for i, v in enumerate(vals):
      point = {
        "name": f"{label}_s{i}",
        "label": label,
        "status": "done" if v is not None else "failed",
      }
      if v is not None:
        point["table"] = {
          ch: {"rho2d": v + (0.1 if ch == "true" else 0.0)} for ch in ("true", "false", "all")
        }
      points.append(point)
  return {
    "sweep": "table1.py:synthetic,seeds=N",
    "labels": {k: {} for k in values},
    "points": points,
  }


def test_paired_difference_matches_scipy():
  rng = np.random.default_rng(3)
  ref = rng.normal(0.55, 0.04, 8)
  other = ref + 0.01 + rng.normal(0, 0.01, 8)
  cmp = cache_seeds.compare(_report({"m8": list(ref)}), _report({"m8": list(other)}))["m8"]
  p = cmp["paired"]
  diffs = other - ref
  assert p["n"] == 8
  assert p["mean"] == pytest.approx(diffs.mean())
  assert p["se"] == pytest.approx(stats.sem(diffs))
  # mean / se is the paired t statistic, and the interval is scipy's 95% t interval.
  assert p["mean"] / p["se"] == pytest.approx(stats.ttest_rel(other, ref).statistic)
  lo, hi = stats.t.interval(0.95, 7, loc=diffs.mean(), scale=stats.sem(diffs))
  assert p["ci95"] == pytest.approx([lo, hi])
  assert cmp["reference"]["mean"] == pytest.approx(ref.mean())
  assert cmp["other"]["std"] == pytest.approx(other.std(ddof=1))


def test_only_seeds_finished_in_both_are_paired():
  ref = _report({"m32": [0.60, 0.62, 0.58, 0.61]})
  other = _report({"m32": [0.61, None, 0.60, 0.63, 0.70]})  # s1 failed, s4 only here
  cmp = cache_seeds.compare(ref, other)["m32"]
  assert cmp["paired"]["seeds"] == ["_s0", "_s2", "_s3"]
  assert cmp["paired"]["differences"] == pytest.approx([0.01, 0.02, 0.02])
  assert cmp["reference"]["n"] == 4 and cmp["other"]["n"] == 4
  assert cmp["other"]["mean"] == pytest.approx(np.mean([0.61, 0.60, 0.63, 0.70]))
  # the channel picks the table column
  assert cache_seeds.compare(ref, other, "true")["m32"]["reference"]["mean"] == pytest.approx(
    np.mean([0.70, 0.72, 0.68, 0.71])
  )


def test_tolerance_verdicts():
  ref = [0.5, 0.5, 0.5, 0.5]
  tight = cache_seeds.compare(_report({"a": ref}), _report({"a": [0.51, 0.512, 0.508, 0.51]}))
  assert tight["a"]["paired"]["ci_within_tolerance"]
  # a small mean difference whose interval is wide: within on the mean only
  wide = cache_seeds.compare(_report({"a": ref}), _report({"a": [0.55, 0.46, 0.53, 0.47]}))
  assert wide["a"]["paired"]["mean_within_tolerance"]
  assert not wide["a"]["paired"]["ci_within_tolerance"]
  far = cache_seeds.compare(_report({"a": ref}), _report({"a": [0.55, 0.56, 0.54, 0.55]}))
  assert not far["a"]["paired"]["mean_within_tolerance"]
  table = cache_seeds.markdown([("off", 8), ("memory", 8)], [_report({"a": ref})], [wide])
  assert "| a | memory:8 | 4 |" in table and "| mean |" in table


def test_one_seed_gives_no_paired_difference():
  cmp = cache_seeds.compare(_report({"a": [0.5]}), _report({"a": [0.6]}))["a"]
  assert cmp["paired"] is None and cmp["other"]["n"] == 1


@pytest.mark.parametrize(
  "text", ["off:8", "of:8,memory:8", "off:x,memory:8", "off:8,off:8", "off:0,memory:8"]
)
def test_bad_modes_are_named(text):
  with pytest.raises(ValueError, match="--modes"):
    cache_seeds.parse_modes(text)


def test_modes_default_k():
  assert cache_seeds.parse_modes("off,memory:40") == [("off", 8), ("memory", 40)]


def test_sweep_mean_pairs_each_seeds_mean_over_models():
  ref = _report({"a": [0.6, 0.5, 0.7], "b": [0.2, 0.3, None]})
  other = _report({"a": [0.62, 0.55, 0.71], "b": [0.25, 0.28, 0.3]})
  row = cache_seeds.compare(ref, other)[cache_seeds.SWEEP_MEAN]
  # seed 2 of b failed in the reference: the sweep mean uses seeds 0 and 1 there
  assert row["reference"]["n"] == 2 and row["other"]["n"] == 3
  assert row["paired"]["differences"] == pytest.approx([(0.02 + 0.05) / 2, (0.05 - 0.02) / 2])
  assert row["paired"]["median"] == pytest.approx(0.025)
  assert row["paired"]["positive"] == 2
  table = cache_seeds.markdown(
    [("off", 8), ("memory", 8)], [ref], [cache_seeds.compare(ref, other)]
  )
  assert "| sweep mean | memory:8 | 3 |" in table
