"""The training loop: every run, alone or grouped, pixels or cached features, goes here.

A run alone is a group of one. `train_group(configs, workdirs)` trains G >= 1 models
whose configs differ only in `config.member_keys` (seed, loss weights, learning rate):
one jitted step per batch (`vmsjax.step`), the inputs computed once and the update
`vmap`ped over the members. The loop owns what happens around the step: resume,
records, metrics, checkpoints and the NaN stop.

Each member keeps its own workdir, written exactly as a run alone writes it
(config.json, versions.json, dataset.json, metrics.jsonl, tb/, orbax checkpoints of its
own unstacked state), so `vmsjax evaluate` and `vmsjax train --workdir` (to resume or
extend it alone) work on it unchanged. A member of a group computes what it would
compute alone up to float rounding: batching members changes the order of some float
sums (a step agrees to ~1e-7 relative), which Adam and ReLU units at zero amplify over
long runs, as they amplify any rounding difference (another device count, another XLA).

Resume: each member resumes from its own checkpoints. The group restarts at the latest
step every unfinished member has a checkpoint of (or from scratch); a member that was
further ahead recomputes its steps silently until it passes its own latest checkpoint.
Finished members are left out. A member whose loss or gradients become NaN/Inf keeps
its last good state (the step's guard), stops being logged and saved, and is named in
the error raised once the others have finished.

Tests inject faults with `hooks`: callables `hook(step, members)` run after each step.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmsjax import config as config_lib
from vmsjax import distributed, environment, factory, inputs, lineage, progress, records, workdir
from vmsjax import step as step_lib
from vmsjax.data import integrity
from vmsjax.errors import VMSError
from vmsjax.factory import TrainState

Hook = Callable[[int, Sequence["Member"]], None]

# Stacking the members' states and taking one out, as jitted programs: the states are
# global arrays, which eager ops cannot touch in a multi-process job.
_stack = jax.jit(lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
_take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree))


class Member:
  """Book-keeping of one model of the group: its workdir, checkpoints, metrics, failure."""

  def __init__(self, config: ml_collections.ConfigDict, path: Path):
    self.config = config
    self.workdir = path
    self.mngr = workdir.checkpoint_manager(path, config)
    self.fingerprint = config_lib.fingerprint(config)
    self.accepted = workdir.accepted_fingerprints(path, config)
    self.latest = self.mngr.latest_step()
    self.last_saved = self.latest
    self.restored: tuple[TrainState, dict] | None = None  # the latest good checkpoint
    self.base_step = 0  # where a run with no checkpoint starts (a branch: the parent's)
    self.lineage: dict | None = None  # set for a branch (`vmsjax.lineage`)
    self.writer = records.NullWriter()
    self.bad_step: int | None = None  # steps after this one are not logged or saved
    self.failed: str | None = None

  def close(self, quiet: bool = False) -> None:
    """Closes the metric log and the checkpoint manager (which waits for a save in
    flight); `quiet` drops their errors, when the run is failing already."""
    for close in (self.writer.close, self.mngr.close):
      try:
        close()
      except Exception:
        if not quiet:
          raise


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  path: str | Path,
  hooks: Sequence[Hook] = (),
  init_from: lineage.Parent | None = None,
  stop_at: int | None = None,
) -> TrainState:
  """Trains one model (resuming from the workdir's latest good checkpoint); its final
  state. `init_from` starts a new run from another run's checkpoint (`vmsjax.lineage`)."""
  return train_group([config], [path], stop_at, hooks, [init_from])[0]


def train_group(
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[str | Path],
  stop_at: int | None = None,
  hooks: Sequence[Hook] = (),
  init_from: Sequence[lineage.Parent | None] | None = None,
) -> list[TrainState]:
  """Trains G >= 1 models together, each into its own workdir, resuming where they are.

  Args:
    configs: one config per model, differing only in `config.member_keys`.
    workdirs: one distinct workdir per model.
    stop_at: stop after this step, with a checkpoint (to split a long run into shorter
      jobs; the next call resumes there). Default: the end of the schedule.
    hooks: called as hook(step, members) after every step (fault injection in tests).
    init_from: per model, a checkpoint of another run to start from when the model's
      workdir has no checkpoint of its own (branching, `vmsjax.lineage`), or None.

  Returns:
    Each model's final train state (restored from its checkpoint for a model that had
    already finished).

  Raises:
    VMSError: configs that cannot be grouped, a workdir in use by another run or holding
      another run, a full disk, a damaged dataset file, or models whose loss became
      NaN/Inf (the others are finished first; the message names them).
  """
  configs = list(configs)
  paths = [Path(w) for w in workdirs]
  parents = list(init_from or [None] * len(configs))
  if not (len(configs) == len(paths) == len(parents)):
    raise ValueError(f"{len(configs)} configs for {len(paths)} workdirs, {len(parents)} parents")
  if len({p.resolve() for p in paths}) != len(paths):
    raise VMSError(f"models of a group need distinct workdirs, got {[str(p) for p in paths]}")
  for c in configs:
    config_lib.validate(c)
  config_lib.check_group(configs)
  with contextlib.ExitStack() as held:
    for c, p in zip(configs, paths, strict=True):
      workdir.prepare(p)
      if distributed.is_main():  # one lock per run: process 0 holds it for the job
        held.enter_context(workdir.Lock(p))
      # Under the lock: a second run cannot read config.json before the first writes it.
      workdir.check_config(p, c)
    return _train_locked(configs, paths, stop_at, hooks, parents)


def _train_locked(configs, paths, stop_at, hooks, parents) -> list[TrainState]:
  config = configs[0]
  use_compilation_cache(config, paths[0])
  total = config_lib.total_steps(config)
  stop = total if stop_at is None else max(0, min(stop_at, total))
  members: list[Member] = []
  failing = True  # closing the checkpoint managers may fail again after an error
  try:
    source = inputs.open_training_data(config)
    setup = factory.build(config)
    fresh = [setup.init(c.seed) for c in configs]
    members += [Member(c, p) for c, p in zip(configs, paths, strict=True)]
    final: list = [None] * len(members)
    todo = []
    for i, (m, parent) in enumerate(zip(members, parents, strict=True)):
      m.restored = _newest_good(m, fresh[i])
      if m.latest is None and parent is not None:
        fresh[i], m.lineage = lineage.branch(parent, m.config, fresh[i])
        m.base_step = int(fresh[i].step)
        print(
          f"branching {m.workdir} from {parent.workdir} at step "
          f"{m.lineage['parents'][-1]['step']}" + (" (parameters only)" * parent.params_only),
          file=sys.stderr,
        )
      elif parent is not None:
        print(
          f"{m.workdir} has checkpoints of its own: resuming it, not branching", file=sys.stderr
        )
      if m.latest is not None and m.latest >= stop:
        final[i] = m.restored[0]
        print(f"{m.workdir}: at step {m.latest} already", file=sys.stderr)
      else:
        todo.append(i)
    if todo:
      trained = _loop(
        [members[i] for i in todo], [fresh[i] for i in todo], source, setup, total, stop, hooks
      )
      for i, s in zip(todo, trained, strict=True):
        final[i] = s
    failing = False
  except Exception as e:
    translated = _environment_error(e, members, config)
    if translated is None:
      raise
    raise translated from e
  finally:
    for m in members:
      m.close(quiet=failing)
  failed = [m.failed for m in members if m.failed]
  if len(members) == 1 and failed:
    raise VMSError(failed[0])
  if failed:
    raise VMSError(f"{len(failed)} of {len(members)} models stopped: " + "; ".join(failed))
  return final


def _newest_good(m: Member, fresh: TrainState) -> tuple[TrainState, dict] | None:
  """Restores the member's newest checkpoint that restores, moving damaged ones aside
  (the run holds the workdir's lock); updates `m.latest`."""
  if m.latest is None:
    return None
  found = workdir.restore_newest(m.mngr, fresh, move_aside=distributed.is_main())
  if found is None:
    print(f"vmsjax: no checkpoint of {m.workdir} restores; starting from scratch", file=sys.stderr)
    m.latest = m.last_saved = None
    return None
  state, meta, step = found
  m.latest = m.last_saved = step
  return state, meta


def _last_good(members: Sequence[Member]) -> str:
  """ "; the last good checkpoint is ..." for an error met while training ("" when no
  member has one)."""
  parts = []
  for m in members:
    steps = workdir.checkpoint_steps(m.workdir)  # the committed ones, from the folder
    if steps:
      parts.append(f"step {steps[-1]} in {m.workdir}")
  return "; the last good checkpoint is " + ", ".join(parts) if parts else ""


def _environment_error(e: BaseException, members: Sequence[Member], config) -> VMSError | None:
  """One line for a failure of the machine or the data met while training, or None (a
  bug, or a VMSError that says all already)."""
  seen = e
  while seen is not None:  # a reader thread's error may arrive wrapped
    if isinstance(seen, integrity.DamagedDataset):
      return VMSError(f"{seen}{_last_good(members)}")
    if integrity.is_corrupt_read(seen):
      from vmsjax.data import catalogue

      return catalogue.damaged_dataset_error(
        seen, config.data.name, config.data.data_dir, _last_good(members)
      )
    seen = seen.__cause__ or seen.__context__
  if isinstance(e, VMSError):
    return None
  where = ", ".join(str(m.workdir) for m in members) or "the workdir"
  return workdir.as_environment_error(
    e, f"writing to {where}", "rerun the same command to resume" + _last_good(members)
  )


def use_compilation_cache(config: ml_collections.ConfigDict, path: Path) -> Path | None:
  """Turns on XLA's persistent compilation cache as `train.compilation_cache` says.

  "auto" puts it beside the workdir (`<workdir>/../.jax_cache`): the points of a sweep
  and a resumed run then compile nothing they compiled before. JAX reads the setting
  once, at the process's first compilation: a folder set earlier (by the user's
  JAX_COMPILATION_CACHE_DIR or a previous run in this process) is kept.

  Returns:
    The cache folder in use, or None.
  """
  setting = config.train.compilation_cache
  current = jax.config.jax_compilation_cache_dir
  if current or not setting:
    return Path(current) if current else None
  folder = path.absolute().parent / ".jax_cache" if setting == "auto" else Path(setting)
  jax.config.update("jax_compilation_cache_dir", str(folder.expanduser()))
  # Cache every program: the default (1 s) leaves out the small ones, which add up.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return folder


def _resume(members: list[Member], fresh: list[TrainState]) -> tuple[int, list[TrainState]]:
  """The group's first step (the latest every member has a checkpoint of, else where
  they start: 0, or a branch's step) and each member's state there."""
  common = None
  for m in members:
    steps = set(m.mngr.all_steps()) | {m.base_step}
    common = steps if common is None else common & steps
  if not common:
    raise VMSError(
      "the models of this group have no step in common to start from; train them alone"
    )
  start = max(common)
  states = []
  for m, f in zip(members, fresh, strict=True):
    if start in m.mngr.all_steps():
      s, meta = m.restored if start == m.latest else workdir.restore(m.mngr, start, f)
      if meta.get("config_fingerprint") not in m.accepted:
        raise VMSError(
          f"checkpoint {start} in {m.workdir} was made with a different config "
          f"(fingerprint {meta.get('config_fingerprint')} != {m.fingerprint}); use a new "
          "--workdir"
        )
      states.append(s)
    else:
      states.append(f)  # from scratch, or a branch's starting state
    if distributed.is_main():  # a member ahead of the group logs its own steps once
      workdir.truncate_metrics(m.workdir, m.latest or m.base_step)
    if m.latest:
      print(f"resuming from checkpoint {m.latest} in {m.workdir}", file=sys.stderr)
  return start, states


def _write_records(members: list[Member], dataset: dict, start: int, env: dict) -> None:
  """config.json, versions.json, dataset.json, environment.json (kept from the run's
  start: a resume under another environment is warned of, not recorded over) and a
  branch's lineage.json of each member; opens its metric log at step `start` + 1."""
  versions = records.package_versions()
  for m in members:
    if not m.latest or environment.read(m.workdir) is None:
      environment.write(m.workdir, env)
    records.write_json(m.workdir / "config.json", m.config.to_dict())
    records.write_json(m.workdir / "versions.json", versions)
    records.write_json(m.workdir / "dataset.json", dataset)
    if m.lineage is not None:
      lineage.write(m.workdir, m.lineage)
    m.writer = records.MetricWriter(m.workdir, start)


def _loop(members, fresh, source, setup, total, stop, hooks) -> list[TrainState]:
  from vmsjax.data import catalogue

  config = members[0].config
  main = distributed.is_main()  # process 0 writes the runs' records
  start, states = _resume(members, fresh)
  dataset = catalogue.dataset_record(config.data.name, config.data.data_dir)
  if main:
    env = environment.record(config, dataset, setup.enc_params)
    for m in members:
      if m.latest:  # read before anything is written: the record of the run's start
        environment.warn_if_changed(m.workdir, env)
    _write_records(members, dataset, start, env)
  feed = inputs.open_inputs(config, source, dataset["fingerprint"], setup)
  states = _stack(states)
  group = jax.device_put(step_lib.members([m.config for m in members]), setup.repl)
  calls = config.train.steps_per_call
  bar = progress.Progress(total, config.train.batch_size, start, config.log.progress and main)
  if len(members) > 1:
    names = ", ".join(str(m.workdir) for m in members)
    print(f"training {len(members)} models together from step {start}: {names}", file=sys.stderr)
  reader = feed.reader(start, setup.mesh)
  every = config.checkpoint.every_steps
  step_fns = {}  # jitted step per steps-per-call length, looked up once each
  pending: list[tuple[list[int], dict]] = []
  step = start
  try:
    while step < stop:
      # Up to `train.steps_per_call` steps in one call, ending at the next checkpoint.
      n = min(calls, stop - step, every - step % every)
      if n not in step_fns:
        step_fns[n] = step_lib.jit_step(config, setup, len(members), n)
      states, metrics = step_fns[n](states, feed.aux, reader.take(n), group)
      done = list(range(step + 1, step + n + 1))
      pending.append((done, metrics))
      step += n
      at_end = step == stop
      log = at_end or any(s % config.log.every_steps == 0 for s in done)
      save = at_end or step % every == 0
      if log or save:  # a checkpoint's steps are logged before it is written
        _note_failures(members, states)
        _flush(members, pending)
        pending = []
      if log:
        bar.update(step, float(np.mean(np.asarray(metrics["loss"]))), force=True)
      if save:
        _save(members, states, step)
      for s in done:
        for hook in hooks:
          hook(s, members)
      if all(m.failed for m in members):
        _flush(members, pending)  # the good steps since the last log step
        break
    for m in members:
      m.mngr.wait_until_finished()
  finally:
    bar.close()
  return [_take(states, i) for i in range(len(members))]


def _note_failures(members: list[Member], states: TrainState) -> None:
  """Marks members whose NaN guard fired: their good steps and the bad one are logged,
  nothing after."""
  bad = np.asarray(jax.device_get(states.bad_step))
  for m, b in zip(members, bad, strict=True):
    if b >= 0 and not m.failed:
      m.bad_step = int(b)  # 0-based: step b + 1 was the first bad one
      kept = (
        f"the last good checkpoint is step {m.last_saved}"
        if m.last_saved is not None
        else "no checkpoint was written"
      )
      m.failed = (
        f"loss or gradients became NaN/Inf at step {int(b) + 1}; training stopped and "
        f"{kept} in {m.workdir}; lower optim.learning_rate or check the data"
      )
      if len(members) > 1:  # a run alone says it once, in its error
        print(f"vmsjax: {m.failed}", file=sys.stderr)


def _flush(members: list[Member], pending: list[tuple[list[int], dict]]) -> None:
  """Writes each member's metrics of the pending calls: {name: (G,)} for a call of one
  step, {name: (K, G)} for a call of K steps."""
  host = jax.device_get([metrics for _, metrics in pending])
  rows = []  # (step, {name: (G,)})
  for (steps, _), metrics in zip(pending, host, strict=True):
    if len(steps) == 1 and np.ndim(metrics["loss"]) == 1:
      rows.append((steps[0], metrics))
    else:
      rows += [(s, {k: v[j] for k, v in metrics.items()}) for j, s in enumerate(steps)]
  for i, m in enumerate(members):
    for step, metrics in rows:
      # The bad step itself is written too: its loss shows how the run failed.
      good = m.bad_step is None or step <= m.bad_step + 1
      if step > (m.latest or m.base_step) and good:
        m.writer.write(step, {k: v[i] for k, v in metrics.items()})
    m.writer.flush()


def _save(members: list[Member], states: TrainState, step: int) -> None:
  for i, m in enumerate(members):
    if m.failed or step <= (m.latest or 0):
      continue
    meta = {
      "config_fingerprint": m.fingerprint,
      "dataset": m.config.data.name,
      "step": step,
      "next_batch": step,
    }
    workdir.save(m.mngr, _take(states, i), meta)
    m.last_saved = step
