"""Feature cache against seed noise: the Table 1 sweep with N seeds per model, with and
without the cache, compared seed by seed.

One run per model cannot tell the cache's effect on rho2D from seed noise: on the
synthetic set one model's rho2D(all) spreads by ~0.04-0.05 between seeds. This runs
`experiments/table1.py:synthetic,seeds=N` once per mode (the N seeds of a model train
together in one vmapped step) and compares every mode with the first. Seed s has the same
parameter init, latent noise and data order in every mode, so the comparison is paired:
per model it reports each mode's mean ± std and the mean of the per-seed differences
with its standard error and 95% interval.

  python experiments/cache_seeds.py --data_dir data --workroot runs/cache_seeds --seeds 8
  python experiments/cache_seeds.py ... --modes off:8,memory:8,memory:40 --out cmp.json

A mode is CACHE:K (`features.cache`, `features.views`); the first is the reference.
Points trained before (same workroot, same settings) are reused, not retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from vmsjax import hostmem
from vmsjax.sweep import CHANNELS

TOLERANCE = 0.02  # issue 6: cached rho2D(all) within 0.02 of uncached


def parse_modes(text: str) -> list[tuple[str, int]]:
  """'off:8,memory:40' -> [('off', 8), ('memory', 40)]; a bad item is a ValueError naming it."""
  from vmsjax import config as config_lib

  modes = []
  for item in text.split(","):
    cache, sep, views = item.partition(":")
    if cache not in config_lib.FEATURE_CACHE_MODES or (
      sep and not (views.isdigit() and int(views) > 0)
    ):
      raise ValueError(
        f"--modes item {item!r}: want CACHE[:K] with CACHE one of "
        f"{', '.join(config_lib.FEATURE_CACHE_MODES)} and K a positive integer"
      )
    modes.append((cache, int(views) if sep else 8))
  if len(modes) < 2 or len(set(modes)) != len(modes):
    raise ValueError(f"--modes {text!r}: give at least two different modes")
  return modes


def _t_quantile(df: int) -> float:
  from scipy import stats

  return float(stats.t.ppf(0.975, df))


def _seed_values(report: dict, label: str, channel: str) -> dict[str, float]:
  """{seed suffix: rho2D} of the finished points of `label` in a sweep report."""
  out = {}
  for p in report["points"]:
    if p.get("label") == label and p.get("status") == "done":
      seed = p["name"][len(label) :] if p["name"].startswith(label) else p["name"]
      out[seed] = p["table"][channel]["rho2d"]
  return out


def _mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (NaN for one value)."""
  std = statistics.stdev(values) if len(values) > 1 else float("nan")
  return statistics.fmean(values), std


SWEEP_MEAN = "sweep mean"


def _row(ref: dict[str, float], oth: dict[str, float]) -> dict:
  """Both modes' mean ± std over their seeds, and the paired difference (oth - ref) over
  the seeds both have: mean, standard error, 95% t interval, and whether it lies within
  the tolerance (the mean, and the whole interval)."""
  row = {"reference": None, "other": None, "paired": None}
  for key, values in (("reference", ref), ("other", oth)):
    if values:
      mean, std = _mean_std(list(values.values()))
      row[key] = {"mean": mean, "std": std, "n": len(values)}
  seeds = sorted(set(ref) & set(oth))
  if len(seeds) >= 2:
    diffs = [oth[s] - ref[s] for s in seeds]
    mean, std = _mean_std(diffs)
    se = std / math.sqrt(len(diffs))
    half = _t_quantile(len(diffs) - 1) * se
    row["paired"] = {
      "n": len(diffs),
      "seeds": seeds,
      "differences": diffs,
      "mean": mean,
      "median": statistics.median(diffs),
      "positive": sum(d > 0 for d in diffs),
      "se": se,
      "ci95": [mean - half, mean + half],
      "mean_within_tolerance": abs(mean) <= TOLERANCE,
      "ci_within_tolerance": -TOLERANCE <= mean - half and mean + half <= TOLERANCE,
    }
  return row


def _sweep_means(per_label: list[dict[str, float]]) -> dict[str, float]:
  """{seed: mean over the labels} for the seeds every label finished."""
  seeds = set.intersection(*(set(v) for v in per_label)) if per_label else set()
  return {s: sum(v[s] for v in per_label) / len(per_label) for s in seeds}


def compare(reference: dict, other: dict, channel: str = "all") -> dict:
  """Per label of the reference sweep report, `_row` of the two reports' rho2D over
  their finished seeds; under SWEEP_MEAN, the same for each seed's mean over the labels
  (the sweep's mean rho2D, over the seeds where every label finished)."""
  ref = {lb: _seed_values(reference, lb, channel) for lb in reference["labels"]}
  oth = {lb: _seed_values(other, lb, channel) for lb in reference["labels"]}
  out = {lb: _row(ref[lb], oth[lb]) for lb in ref}
  out[SWEEP_MEAN] = _row(_sweep_means(list(ref.values())), _sweep_means(list(oth.values())))
  return out


def _workdir(root: Path, cache: str, views: int) -> Path:
  return root / f"{cache}_k{views}"


def _run_mode(args, cache: str, views: int) -> dict:
  from vmsjax import sweep

  extra = [
    f"data.data_dir={args.data_dir}",
    f"features.cache={cache}",
    f"features.views={views}",
    f"features.cache_dir={args.workroot / 'feature_cache'}",
    "log.progress=false",
  ]
  spec = f"{Path(__file__).parent / 'table1.py'}:synthetic,seeds={args.seeds}"
  if args.epochs:
    spec += f",epochs={args.epochs}"
  t0 = time.perf_counter()
  report = sweep.run(spec, _workdir(args.workroot, cache, views), extra)
  report["wall_seconds_this_call"] = round(time.perf_counter() - t0, 1)
  return report


def markdown(modes, reports, comparisons, channel: str = "all") -> str:
  ref_name = f"{modes[0][0]}:{modes[0][1]}"
  lines = [
    f"rho2D({channel}), {reports[0]['sweep']}; differences are mode - {ref_name}, paired by seed",
    "",
    "| model | mode | seeds | mean ± std | paired diff | SE | 95% interval | median | > 0 "
    "| within 0.02 |",
    "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
  ]
  for label in [*reports[0]["labels"], SWEEP_MEAN]:
    first = comparisons[0][label]["reference"]
    if first is None:
      continue
    lines.append(
      f"| {label} | {ref_name} | {first['n']} | {first['mean']:.3f} ± {first['std']:.3f} "
      + "| " * 6
      + "|"
    )
    for (cache, views), cmp in zip(modes[1:], comparisons, strict=True):
      row = cmp[label]
      o, p = row["other"], row["paired"]
      cells = [f"{o['mean']:.3f} ± {o['std']:.3f}" if o else "–"]
      if p:
        verdict = (
          "yes" if p["ci_within_tolerance"] else "mean" if p["mean_within_tolerance"] else "no"
        )
        cells += [
          f"{p['mean']:+.3f}",
          f"{p['se']:.3f}",
          f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]",
          f"{p['median']:+.3f}",
          f"{p['positive']}/{p['n']}",
          verdict,
        ]
      else:
        cells += ["–"] * 6
      n = o["n"] if o else 0
      lines.append(f"| {label} | {cache}:{views} | {n} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "paired diff: the mean over seeds of (mode - reference); > 0: the seeds where the mode "
    "is higher; within 0.02: yes = the whole 95% interval, mean = the mean difference "
    "only, no = neither. sweep mean: each seed's mean over the models.",
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  if argv is None:  # run as a program: may restart it with huge pages (vmsjax/hostmem.py)
    hostmem.reexec_with_huge_pages()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", default="data")
  p.add_argument("--workroot", type=Path, default=Path("runs/cache_seeds"))
  p.add_argument("--seeds", type=int, default=8)
  p.add_argument("--epochs", type=int, default=0, help="shorten the schedule (0: synthetic's)")
  p.add_argument("--modes", default="off:8,memory:8", help="CACHE:K,... (first = reference)")
  p.add_argument("--channel", default="all", choices=CHANNELS)
  p.add_argument("--out", type=Path, default=None)
  args = p.parse_args(argv)
  try:
    modes = parse_modes(args.modes)
  except ValueError as e:
    p.error(str(e))
  if args.seeds < 2:
    p.error("--seeds must be at least 2 (a paired difference needs two seeds)")
  args.data_dir = str(Path(args.data_dir).absolute())
  args.workroot = args.workroot.absolute()

  from vmsjax.data import catalogue

  if not catalogue.is_built("synthetic", args.data_dir):
    catalogue.build("synthetic", args.data_dir)
  reports = []
  for cache, views in modes:
    print(f"cache_seeds: sweep with features.cache={cache}, K={views}", file=sys.stderr)
    reports.append(_run_mode(args, cache, views))
  comparisons = [compare(reports[0], r, args.channel) for r in reports[1:]]
  print(markdown(modes, reports, comparisons, args.channel))
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
      "args": {k: str(v) for k, v in vars(args).items()},
      "modes": [f"{c}:{k}" for c, k in modes],
      "channel": args.channel,
      "wall_seconds": [r["wall_seconds_this_call"] for r in reports],
      "timing": [r["timing"] for r in reports],
      "comparisons": comparisons,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
