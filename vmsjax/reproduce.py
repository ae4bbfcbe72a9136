"""Re-running a recorded run and saying how closely it came out the same.

`reproduce(W, NEW)` trains W's recorded config (its config.json) again into NEW, from
scratch or from W's checkpoint at `from_step` (a branch, `vmsjax.lineage`), up to
`to_step`, then compares the two runs wherever both have something:

- the checkpoints at every step both kept: per parameter group (`group_of`: the top
  module of params and batch_stats, Adam's mu/nu per module and its count, the step),
  the largest absolute difference and the largest difference relative to the group's
  largest magnitude;
- the logged metrics (metrics.jsonl), per split and key over the common steps;
- W's evaluation reports (WORKDIR/eval/*.json) at steps NEW has: NEW is evaluated
  with the same dataset, split and baselines and every number compared.

The verdict is "bit-identical" (every number equal, bit for bit), "within tolerance"
(every relative difference <= rtol) or "drifted". NEW/reproduce.json and
NEW/reproduce.md hold it, the differences largest first, and W's recorded environment
beside the current one (`vmsjax.environment`). docs/reproducibility.md says what to
expect where.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmsjax import environment, records
from vmsjax.compare import read_metrics
from vmsjax.errors import VMSError

DEFAULT_RTOL = 1e-5
REPORT_JSON = "reproduce.json"
REPORT_MD = "reproduce.md"
VERDICTS = ("bit-identical", "within tolerance", "drifted")
# Parts of an evaluation report that are not numbers of the model.
REPORT_BOOKKEEPING = ("workdir", "files", "step", "model_label")


@dataclasses.dataclass
class Difference:
  """How far apart one compared thing (a parameter group, a metric, a report) is.

  Attributes:
    kind: "params", "metrics" or "evaluation".
    name: the group, "split/key", or the report's file name.
    step: the step of the largest difference (None where it has no step).
    max_abs: the largest absolute difference.
    max_rel: the largest relative difference (see `relative`).
    identical: every number equal, bit for bit.
    compared: how many numbers (or steps, for metrics) were compared.
  """

  kind: str
  name: str
  step: int | None
  max_abs: float
  max_rel: float
  identical: bool
  compared: int

  def line(self) -> str:
    at = f" at step {self.step}" if self.step is not None else ""
    return f"{self.kind} {self.name}{at}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}"


def relative(diff: float, scale: float) -> float:
  """diff / scale, 0 where both are 0, inf where only the scale is 0 or a value is NaN."""
  if math.isnan(diff):
    return math.inf
  if diff == 0:
    return 0.0
  return diff / scale if scale > 0 else math.inf


def group_of(path: tuple) -> str:
  """The parameter group of a TrainState leaf: "params/head", "batch_stats/decoder",
  "opt_state/mu/head", "opt_state/count", "step" ..."""
  names = []
  for key in path:  # attribute and dict keys; sequence indices (optax's tuple) left out
    name = getattr(key, "name", getattr(key, "key", None))
    if name is not None:
      names.append(str(name))
  if not names:
    return "state"
  top = names[0]
  if top in ("params", "batch_stats"):
    return "/".join(names[:2])
  if top == "opt_state":
    return "/".join(names[:3])
  return "step" if top in ("step", "bad_step") else top


def compare_trees(a: Any, b: Any, step: int) -> list[Difference]:
  """Per group (`group_of`), how far two host TrainStates of the same structure are."""
  import jax

  left = jax.tree_util.tree_leaves_with_path(a)
  right = dict(
    (jax.tree_util.keystr(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(b)
  )
  groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
  for path, x in left:
    key = jax.tree_util.keystr(path)
    if key not in right:
      raise VMSError(f"checkpoint {step}: {key} is in one run's state only; compare like runs")
    groups.setdefault(group_of(path), []).append((np.asarray(x), np.asarray(right[key])))
  out = []
  for name, pairs in sorted(groups.items()):
    identical = all(
      x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in pairs
    )
    max_abs, scale, n = 0.0, 0.0, 0
    for x, y in pairs:
      if x.shape != y.shape:
        max_abs, scale = math.inf, 1.0
        continue
      xf, yf = x.astype(np.float64).reshape(-1), y.astype(np.float64).reshape(-1)
      d = np.abs(xf - yf)
      d[np.isnan(xf) & np.isnan(yf)] = 0.0  # NaN in both: the same
      d[np.isnan(d)] = math.inf  # NaN in one only
      max_abs = max(max_abs, float(np.max(d, initial=0.0)))
      magnitude = np.abs(np.concatenate([xf, yf]))
      scale = max(scale, float(np.max(magnitude[np.isfinite(magnitude)], initial=0.0)))
      n += x.size
    out.append(Difference("params", name, step, max_abs, relative(max_abs, scale), identical, n))
  return out


def _scalar_difference(x: Any, y: Any) -> tuple[bool, float, float]:
  """(identical, abs, rel) of two numbers (None standing for NaN, as JSON stores it)."""
  fx = math.nan if x is None else float(x)
  fy = math.nan if y is None else float(y)
  if math.isnan(fx) and math.isnan(fy):
    return True, 0.0, 0.0
  same = fx == fy
  if math.isnan(fx) or math.isnan(fy) or math.isinf(fx) or math.isinf(fy):
    return same, (0.0 if same else math.inf), (0.0 if same else math.inf)
  d = abs(fx - fy)
  return same, d, relative(d, max(abs(fx), abs(fy)))


def compare_metrics(
  a: dict[tuple[str, int], dict[str, float]],
  b: dict[tuple[str, int], dict[str, float]],
  after: int = 0,
  upto: int | None = None,
) -> list[Difference]:
  """Per "split/key", the largest difference over the steps in (after, upto] both logged.

  A key one run logs at a step and the other does not counts as a difference (inf).
  """
  per: dict[str, Difference] = {}
  for split, step in sorted(set(a) & set(b)):
    if step <= after or (upto is not None and step > upto):
      continue
    x, y = a[(split, step)], b[(split, step)]
    for key in sorted(set(x) | set(y)):
      name = f"{split}/{key}"
      cur = per.setdefault(name, Difference("metrics", name, step, 0.0, 0.0, True, 0))
      if _fold(cur, x.get(key, _MISSING), y.get(key, _MISSING)):
        cur.step = step
  return list(per.values())


_MISSING = object()  # a number one side lacks


def _fold(into: Difference, x: Any, y: Any) -> bool:
  """Adds one pair of numbers to `into`; True when it is the largest difference so far."""
  if x is _MISSING or y is _MISSING:
    same, d, r = False, math.inf, math.inf
  else:
    same, d, r = _scalar_difference(x, y)
  into.compared += 1
  into.identical = into.identical and same
  if not same and (r > into.max_rel or (r == into.max_rel and d > into.max_abs)):
    into.max_rel, into.max_abs = r, d
    return True
  return False


def _numbers(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Every number (and None) of a JSON tree, by its path."""
  out: dict[str, Any] = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_numbers(v, f"{prefix}{k}."))
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      out.update(_numbers(v, f"{prefix}{i}."))
  elif tree is None or (isinstance(tree, int | float) and not isinstance(tree, bool)):
    out[prefix.rstrip(".")] = tree
  return out


def compare_reports(a: dict, b: dict, name: str) -> tuple[Difference, str | None]:
  """The largest difference between two evaluation reports' numbers, and where it is."""
  x = _numbers({k: v for k, v in a.items() if k not in REPORT_BOOKKEEPING})
  y = _numbers({k: v for k, v in b.items() if k not in REPORT_BOOKKEEPING})
  out = Difference("evaluation", name, a.get("step"), 0.0, 0.0, True, 0)
  worst = None
  for key in sorted(set(x) | set(y)):
    if _fold(out, x.get(key, _MISSING), y.get(key, _MISSING)):
      worst = key
  return out, worst


def restore_host(workdir: Path, config: Any, step: int) -> Any:
  """The TrainState of checkpoint `step` of `workdir`, on the host (numpy leaves)."""
  import jax

  from vmsjax import factory
  from vmsjax import workdir as workdir_lib

  model, tx = factory.make_model(config), factory.make_optimizer(config.optim.learning_rate)
  # On one local device: a checkpoint saved on another device count restores as well.
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
    jax.eval_shape(lambda: factory.init_state(config, model, tx, jax.random.key(0))),
  )
  mngr = workdir_lib.checkpoint_manager(workdir, config)
  try:
    state, _ = workdir_lib.restore(mngr, step, target)
  finally:
    mngr.close()
  return jax.device_get(state)


def verdict(differences: Sequence[Difference], rtol: float) -> str:
  """ "bit-identical", "within tolerance" (every max_rel <= rtol) or "drifted"."""
  if all(d.identical for d in differences):
    return "bit-identical"
  if all(d.max_rel <= rtol for d in differences):
    return "within tolerance"
  return "drifted"


def _current_environment(new_workdir: Path, config: Any) -> dict:
  """NEW's environment.json where the trainer wrote one, else this process's record."""
  found = environment.read(new_workdir)
  if found is not None:
    return found
  from vmsjax import factory
  from vmsjax.data import catalogue

  dataset = catalogue.dataset_record(config.data.name, config.data.data_dir)
  return environment.record(config, dataset, factory.encoder_params(config))


def _train(config, new_workdir: Path, source: Path, from_step, to_step, hooks) -> None:
  from vmsjax import lineage, train

  parent = None if from_step is None else lineage.Parent(source, from_step, params_only=False)
  train.train_and_evaluate(config, new_workdir, hooks=hooks, init_from=parent, stop_at=to_step)


def _check_arguments(source: Path, new_workdir: Path, config, to_step, from_step) -> tuple:
  from vmsjax import config as config_lib
  from vmsjax import workdir as workdir_lib

  steps = workdir_lib.checkpoint_steps(source)
  if not steps:
    raise VMSError(f"no checkpoint in {source / 'checkpoints'}; reproduce a trained workdir")
  total = config_lib.total_steps(config)
  to_step = steps[-1] if to_step is None else int(to_step)
  if not 1 <= to_step <= total:
    raise VMSError(f"--to {to_step} is outside {source}'s schedule (1 to {total}); pick a step")
  if from_step is not None:
    from_step = int(from_step)
    if from_step not in steps:
      raise VMSError(f"--from {from_step}: {source} has no checkpoint at that step; it has {steps}")
    if from_step >= to_step:
      raise VMSError(f"--from {from_step} must come before --to {to_step}")
  after = from_step or 0
  if not any(after < s <= to_step for s in steps):
    raise VMSError(
      f"{source} has no checkpoint after step {after} up to {to_step} to compare with "
      f"(its checkpoints: {steps}); choose --to among them"
    )
  if new_workdir.resolve() == source.resolve():
    raise VMSError(f"--workdir {new_workdir} is the run to reproduce; give a new folder")
  if (new_workdir / "config.json").exists() or workdir_lib.checkpoint_steps(new_workdir):
    raise VMSError(
      f"--workdir {new_workdir} already holds a run; give a new folder for the reproduction"
    )
  return steps, to_step, from_step


def reproduce(
  source_workdir: str | Path,
  new_workdir: str | Path,
  to_step: int | None = None,
  from_step: int | None = None,
  hooks: Sequence[Callable] = (),
  rtol: float = DEFAULT_RTOL,
  data_dir: str | None = None,
  evaluate: bool = True,
  log: Callable[[str], None] = lambda line: print(f"vmsjax: {line}", file=sys.stderr),
) -> dict:
  """Re-runs `source_workdir`'s recorded config into `new_workdir` and compares the two.

  Args:
    source_workdir: the recorded run W (read only).
    new_workdir: a new folder for the reproduction.
    to_step: train up to this step (default: W's last checkpoint).
    from_step: start from W's checkpoint at this step (default: from scratch); only
      the steps after it are compared.
    hooks: `hook(step, members)` run after each step (`vmsjax.train`; tests perturb
      the reproduction with one).
    rtol: the largest relative difference (per parameter group over its largest
      magnitude, per metric and per evaluation number) still "within tolerance".
    data_dir: where W's dataset is built here (default: W's `data.data_dir`); its
      fingerprint is compared with W's as part of the environment.
    evaluate: evaluate NEW where W has evaluation reports, and compare them.
    log: told what is being done.

  Returns:
    The report written to NEW/reproduce.json: "source", "workdir", "from_step",
    "to_step", "rtol", "verdict", "steps" (checkpoints compared), "differences"
    (largest first: kind, name, step, max_abs, max_rel, identical, compared),
    "evaluation_skipped" ({file: why}), "environment" ({"source", "current",
    "differences"}), "files".

  Raises:
    VMSError: W is no trained workdir, a step outside it, NEW already holds a run.
  """
  from vmsjax import inference
  from vmsjax import workdir as workdir_lib

  source, new = Path(source_workdir), Path(new_workdir)
  if rtol < 0 or not math.isfinite(rtol):
    raise VMSError(f"--rtol must be a finite number >= 0, got {rtol}")
  config = inference.load_config(source)
  if data_dir is not None:
    with config.unlocked():
      config.data.data_dir = str(data_dir)
  source_steps, to_step, from_step = _check_arguments(source, new, config, to_step, from_step)
  after = from_step or 0
  wanted = [s for s in source_steps if after < s <= to_step]
  # NEW keeps every checkpoint from W's first one in range on (checkpoint.keep does not
  # change what a step computes), so each of W's steps finds its counterpart.
  every = int(config.checkpoint.every_steps)
  with config.unlocked():
    config.checkpoint.keep = max(int(config.checkpoint.keep), (to_step - wanted[0]) // every + 2)

  start = f"from its checkpoint {from_step}" if from_step is not None else "from scratch"
  log(f"reproducing {source} {start} up to step {to_step} in {new}")
  _train(config, new, source, from_step, to_step, hooks)

  steps = sorted(set(wanted) & set(workdir_lib.checkpoint_steps(new)))
  found: list[Difference] = []
  for step in steps:
    found += compare_trees(
      restore_host(source, config, step), restore_host(new, config, step), step
    )
  found += compare_metrics(read_metrics(source), read_metrics(new), after, to_step)

  skipped: dict[str, str] = {}
  if evaluate:
    found += _compare_evaluations(source, new, config, set(steps), skipped, log)

  saved_env = environment.recorded(source)
  current_env = _current_environment(new, config)
  report = {
    "source": str(source),
    "workdir": str(new),
    "from_step": from_step,
    "to_step": to_step,
    "rtol": rtol,
    "verdict": verdict(found, rtol),
    "steps": steps,
    "differences": [
      dataclasses.asdict(d)
      for d in sorted(found, key=lambda d: (-d.max_rel, -d.max_abs, d.kind, d.name))
    ],
    "evaluation_skipped": skipped,
    "environment": {
      "source": saved_env,
      "current": current_env,
      "differences": environment.differences(saved_env, current_env),
    },
    "files": {"json": REPORT_JSON, "markdown": REPORT_MD},
  }
  report = records.json_safe(report)
  (new / REPORT_MD).write_text(markdown(report))
  records.write_json(new / REPORT_JSON, report)
  return report


def _compare_evaluations(source, new, config, steps, skipped, log) -> list[Difference]:
  """NEW evaluated as each of W's reports at a step both have; their differences."""
  from vmsjax import evaluate as evaluate_lib

  out = []
  for path in sorted((source / "eval").glob("*.json")):
    try:
      theirs = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
      skipped[path.name] = f"unreadable ({e})"
      continue
    if not isinstance(theirs, dict) or theirs.get("step") not in steps:
      continue
    baselines = list(theirs.get("baselines", {}))
    log(f"evaluating {new} as {path.name} (baselines {', '.join(baselines) or 'none'})")
    try:
      ours = evaluate_lib.evaluate(
        new,
        split=theirs.get("split"),
        checkpoint=int(theirs["step"]),
        data_dir=config.data.data_dir,
        baselines=baselines,
        dataset=theirs.get("dataset"),
      )
    except VMSError as e:  # a baseline or dataset this installation lacks
      skipped[path.name] = str(e)
      continue
    diff, worst = compare_reports(theirs, ours, path.name)
    if worst is not None:
      diff.name = f"{path.name} ({worst})"
    out.append(diff)
  return out


def _number(x: Any) -> str:
  return "n/a" if x is None else f"{x:.3g}"


def markdown(report: dict) -> str:
  """NEW/reproduce.md: the verdict, the differences largest first, both environments."""
  diffs = report["differences"]
  origin = f"its checkpoint {report['from_step']}" if report["from_step"] is not None else "scratch"
  lines = [
    f"# Reproduction of {report['source']}",
    "",
    f"Re-ran its config from {origin} up to step {report['to_step']} in {report['workdir']}.",
    "",
    f"**Verdict: {report['verdict']}** (tolerance: relative difference <= {report['rtol']:g}"
    " per parameter group, metric and evaluation number).",
    "",
    f"Checkpoints compared: {', '.join(map(str, report['steps'])) or 'none'}; "
    f"{sum(d['kind'] == 'metrics' for d in diffs)} metrics, "
    f"{sum(d['kind'] == 'evaluation' for d in diffs)} evaluation reports.",
    "",
    "Relative difference: a parameter group's largest absolute difference over the largest "
    "magnitude in the group; a metric's or evaluation number's over the larger of the two.",
    "",
  ]
  # A group that drifts does so at every later step: its worst step stands for it here
  # (reproduce.json keeps every step). Identical ones are only counted.
  worst: dict[tuple[str, str], dict] = {}
  for d in diffs:
    worst.setdefault((d["kind"], d["name"]), d)
  moved = [d for d in worst.values() if not d["identical"]]
  if moved:
    lines += ["| what | name | step | max abs | max rel |", "| --- | --- | --- | --- | --- |"]
    lines += [
      f"| {d['kind']} | {d['name']} | {d['step'] if d['step'] is not None else ''} | "
      f"{_number(d['max_abs'])} | {_number(d['max_rel'])} |"
      for d in moved
    ]
    lines.append("")
  lines += [f"Bit-identical: {len(worst) - len(moved)} of {len(worst)} compared.", ""]
  for name, why in report["evaluation_skipped"].items():
    lines.append(f"- {name}: not compared ({why})")
  if report["evaluation_skipped"]:
    lines.append("")
  env = report["environment"]
  lines += ["## Environment", ""]
  if env["source"] is None:
    lines += ["The source recorded no environment (no environment.json or versions.json).", ""]
  elif env["differences"]:
    lines += ["Differences (recorded -> now):", ""]
    lines += [f"- {d}" for d in env["differences"]] + [""]
  else:
    lines += ["Recorded and current environments agree (time, pid, host and caches aside).", ""]
  lines += environment.table(env["source"], env["current"], ("recorded", "now"))
  return "\n".join(lines) + "\n"
