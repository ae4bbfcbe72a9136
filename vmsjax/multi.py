"""Many models per step: train a group of runs that share their inputs in one jitted step.

Members of a group differ only in `VMAPPABLE_KEYS`: the model seed (parameter init and
latent noise), the loss weights (beta, its warm-up, l2) and the learning rate. Every
other key is equal, so they read the same batches, draw the same augmentation (seeded
by `data.seed`, not `seed`) and see the same frozen trunk: the step augments and
encodes each batch once and `jax.vmap`s `train.head_step` over the members' stacked
train states, latent keys and loss weights.

Each member keeps its own workdir, written exactly as `vmsjax train` writes it
(config.json, versions.json, dataset.json, metrics.jsonl, tb/, orbax checkpoints of
its own unstacked state with the same metadata), so `vmsjax evaluate --workdir` and
`vmsjax train --workdir` (to resume or extend it alone) work on it unchanged. It
computes what `train.train_and_evaluate` computes on its config, up to float rounding:
batching the members changes the order of some float sums (a step agrees to ~1e-7
relative). Adam, and ReLU units at zero for some example, amplify that noise over many
steps, as they amplify any rounding difference (another device count, another XLA
version), so long runs agree statistically, not bit for bit.

The learning rate of a member enters as a traced scalar of `optax.adam`: Adam's update
is scaled by -lr at the end of the chain, so the optimiser state has the same structure
as a run alone and its checkpoints are interchangeable with one.

Resume: each member resumes from its own checkpoints. The group restarts at the latest
step that every unfinished member has a checkpoint of (or from scratch); a member that
was further ahead recomputes its steps silently (no metrics or checkpoints written
again) until it passes its own latest checkpoint. Finished members are left out.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmsjax import config as config_lib
from vmsjax import distributed, records
from vmsjax import train as train_lib
from vmsjax.errors import VMSError

# Config keys that may differ between the members of one group. Everything they change
# happens after the frozen encoder, per member.
VMAPPABLE_KEYS: tuple[str, ...] = (
  "seed",
  "loss.beta",
  "loss.kl_warmup_steps",
  "loss.l2",
  "optim.learning_rate",
)


def group_key(config: ml_collections.ConfigDict) -> str:
  """A hash of everything but `VMAPPABLE_KEYS`: configs with equal keys can be grouped."""
  items = {k: v for k, v in config_lib.flat(config).items() if k not in VMAPPABLE_KEYS}
  return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises VMSError unless the configs differ only in `VMAPPABLE_KEYS`."""
  if not configs:
    raise VMSError("a group of models needs at least one config")
  first = config_lib.flat(configs[0])
  for i, c in enumerate(configs[1:], start=1):
    other = config_lib.flat(c)
    for key in sorted(set(first) | set(other)):
      if key in VMAPPABLE_KEYS:
        continue
      if first.get(key, "<absent>") != other.get(key, "<absent>"):
        raise VMSError(
          f"models 0 and {i} of a group differ in {key} ({first.get(key, '<absent>')!r} vs "
          f"{other.get(key, '<absent>')!r}); only {', '.join(VMAPPABLE_KEYS)} may differ "
          "between models trained together: train them in separate groups"
        )


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def _hyper(configs, step: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Each member's loss weights at `step`, stacked: {"beta": (G,), "l2": (G,)}."""
  per = [train_lib.default_hyper(c, step) for c in configs]
  return {k: jnp.stack([h[k] for h in per]) for k in per[0]}


def make_group_step(configs, model, encoder):
  """Returns step(states, aux, batch, keys) -> (states, metrics), not yet jitted.

  `states` is the members' TrainStates stacked on a leading axis G, `keys` their model
  root keys as raw key data (G, ...), `aux` the frozen encoder's params (or, with
  `features.cache` on, the cache's device table). The batch is augmented and encoded
  once (or read from the cache once); metrics come back as {name: (G,)}.
  """
  config = configs[0]
  lrs = np.asarray([c.optim.learning_rate for c in configs], np.float32)  # (G,)

  def step(states, aux, batch, keys):
    k = states.step[0]  # the members move in lock-step
    if config.features.cache == "off":
      k_augment, _ = train_lib.step_keys(jax.random.key(train_lib.data_seed(config)), k)
      image, vms = train_lib.augmented_inputs(config, k_augment, batch)
      feats = train_lib.encode(config, encoder, aux, image)  # (B, h, w, 512), once
    else:
      from vmsjax import cache

      feats, vms = cache.step_inputs(config, aux, batch)

    def one(state, key_data, hyper, lr):
      _, k_latent = train_lib.step_keys(jax.random.wrap_key_data(key_data), k)
      tx = train_lib.make_optimizer(config, learning_rate=lr)
      return train_lib.head_step(config, model, tx, state, feats, vms, k_latent, hyper)

    return jax.vmap(one)(states, keys, _hyper(configs, k), jnp.asarray(lrs))

  return step


# Jitted group steps by (members' config fingerprints, devices): a process that trains
# the same group again (a resumed or extended group, a sweep rerun) reuses the compiled
# step. The fingerprint covers everything the step computes (model, loss weights,
# learning rates, seeds, augmentation, data seed); the model and encoder follow from it.
_JITTED: dict[tuple, object] = {}


def jit_group_step(configs, model, encoder, mesh):
  """`make_group_step` under `jax.jit` over `mesh` (batch split, states replicated, donated)."""
  key = (
    tuple(config_lib.fingerprint(c) for c in configs),
    tuple(d.id for d in mesh.devices.flat),
  )
  if key not in _JITTED:
    repl, split = train_lib.shardings(mesh)
    _JITTED[key] = jax.jit(
      make_group_step(configs, model, encoder),
      in_shardings=(repl, repl, split, repl),
      out_shardings=(repl, repl),
      donate_argnums=(0,),
    )
  return _JITTED[key]


class _Member:
  """Book-keeping of one member: its workdir, checkpoints, metrics and progress."""

  def __init__(self, config, workdir: Path):
    self.config = config
    self.workdir = workdir
    self.mngr = train_lib.checkpoint_manager(workdir, config)
    self.fingerprint = config_lib.fingerprint(config)
    self.latest = self.mngr.latest_step()
    self.last_saved = self.latest
    self.writer = None
    self.failed: str | None = None

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
    self.mngr.close()


def train_group(
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[str | Path],
  stop_at: int | None = None,
) -> list[train_lib.TrainState]:
  """Trains several models together, each into its own workdir, resuming where they are.

  Args:
    configs: one config per model, differing only in `VMAPPABLE_KEYS`.
    workdirs: one distinct workdir per model.
    stop_at: stop after this step, with a checkpoint (e.g. to split a long run into
      shorter jobs; the next call resumes there). Default: the end of the schedule.

  Returns:
    The final train state of each model (restored from its checkpoint for a model that
    had already finished).

  Raises:
    VMSError: configs that cannot be grouped, a workdir holding another run, or models
      whose loss became NaN/Inf (the others are finished first; the message names them).
  """
  configs = list(configs)
  workdirs = [Path(w) for w in workdirs]
  if len(configs) != len(workdirs):
    raise ValueError(f"{len(configs)} configs for {len(workdirs)} workdirs")
  if len({w.resolve() for w in workdirs}) != len(workdirs):
    raise VMSError(f"models of a group need distinct workdirs, got {[str(w) for w in workdirs]}")
  for c in configs:
    config_lib.validate(c)
  check_group(configs)
  for c, w in zip(configs, workdirs, strict=True):
    train_lib.prepare_workdir(w)
    train_lib.check_workdir_config(w, c)

  config = configs[0]
  source = train_lib.open_training_data(config)

  model, encoder = train_lib.make_model(config), train_lib.make_encoder(config)
  mesh = train_lib.data_mesh()
  repl, split = train_lib.shardings(mesh)
  enc_params = jax.device_put(
    train_lib.encoder_params(config, jax.random.key(train_lib.data_seed(config))), repl
  )
  tx = train_lib.make_optimizer(config)  # only its state's structure is used here
  init = jax.jit(lambda r: train_lib.init_state(config, model, tx, r), out_shardings=repl)
  fresh = [init(jax.random.key(c.seed)) for c in configs]

  total = config_lib.total_steps(config)
  stop = total if stop_at is None else max(0, min(stop_at, total))
  members = [_Member(c, w) for c, w in zip(configs, workdirs, strict=True)]
  try:
    final: list = [None] * len(members)
    todo = []
    for i, m in enumerate(members):
      if m.latest is not None and m.latest >= stop:
        final[i], _ = train_lib.restore(m.mngr, m.latest, fresh[i])
        print(f"{m.workdir}: at step {m.latest} already", file=sys.stderr)
      else:
        todo.append(i)
    if todo:
      trained = _train_members(
        [members[i] for i in todo],
        [fresh[i] for i in todo],
        enc_params,
        source,
        model,
        encoder,
        mesh,
        total,
        stop,
      )
      for i, s in zip(todo, trained, strict=True):
        final[i] = s
  finally:
    for m in members:
      m.close()
  failed = [m for m in members if m.failed]
  if failed:
    raise VMSError(
      f"{len(failed)} of {len(members)} models stopped: " + "; ".join(m.failed for m in failed)
    )
  return final


def _common_start(members: list[_Member]) -> int:
  """The latest step every member has a checkpoint of (0: start from scratch)."""
  common = None
  for m in members:
    steps = set(m.mngr.all_steps()) | {0}
    common = steps if common is None else common & steps
  return max(common)


def _train_members(members, fresh, enc_params, source, model, encoder, mesh, total, stop):
  from vmsjax.data import pipeline

  config = members[0].config
  repl, split = train_lib.shardings(mesh)
  start = _common_start(members)
  states = []
  for m, f in zip(members, fresh, strict=True):
    if start > 0:
      s, meta = train_lib.restore(m.mngr, start, f)
      if meta.get("config_fingerprint") != m.fingerprint:
        raise VMSError(
          f"checkpoint {start} in {m.workdir} was made with a different config "
          f"(fingerprint {meta.get('config_fingerprint')} != {m.fingerprint}); use a new "
          "--workdir"
        )
      states.append(s)
    else:
      states.append(f)
    # A member ahead of the group recomputes up to its own latest checkpoint silently.
    train_lib.truncate_metrics(m.workdir, m.latest or 0)
    if m.latest:
      print(f"resuming from checkpoint {m.latest} in {m.workdir}", file=sys.stderr)

  dataset = pipeline.dataset_record(config.data.name, config.data.data_dir)
  versions = records.package_versions()
  main = distributed.is_main()  # process 0 writes the runs' records
  for m in members:
    if main:
      records.write_json(m.workdir / "config.json", m.config.to_dict())
      records.write_json(m.workdir / "versions.json", versions)
      records.write_json(m.workdir / "dataset.json", dataset)
    m.writer = records.MetricWriter(m.workdir) if main else records.NullWriter()

  states = jax.device_put(_stack(states), repl)
  keys = jax.device_put(
    jnp.stack([jax.random.key_data(jax.random.key(m.config.seed)) for m in members]), repl
  )
  step_fn = jit_group_step([m.config for m in members], model, encoder, mesh)
  if config.features.cache == "off":
    aux = enc_params  # what the step reads besides the batch
    batch_keys = ("image", "vms")
    batches = pipeline.train_batches(
      source,
      config.train.batch_size,
      seed=train_lib.data_seed(config),
      start_step=start,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  else:  # one feature cache for the whole group (its key ignores VMAPPABLE_KEYS)
    from vmsjax import cache

    fcache = cache.open_or_build(config, source, dataset["fingerprint"], enc_params)
    print(f"{'built' if fcache.built else 'using'} feature cache {fcache.path}", file=sys.stderr)
    aux = cache.device_table(fcache, config, repl)
    batch_keys = cache.batch_keys(config)
    batches = cache.train_batches(fcache, config, start, jax.process_index(), jax.process_count())
  progress = train_lib.Progress(total, config.train.batch_size, start, config.log.progress and main)
  print(
    f"training {len(members)} models together from step {start}: "
    + ", ".join(str(m.workdir) for m in members),
    file=sys.stderr,
  )
  pending: list[tuple[int, dict]] = []
  try:
    for step in range(start, stop):
      batch = train_lib.device_batch(next(batches), split, keys=batch_keys)
      states, metrics = step_fn(states, aux, batch, keys)
      pending.append((step + 1, metrics))
      at_end = step + 1 == stop
      if (step + 1) % config.log.every_steps == 0 or at_end:
        _note_failures(members, states)
        _flush(members, pending)
        pending = []
        progress.update(step + 1, float(np.mean(np.asarray(metrics["loss"]))), force=True)
      if (step + 1) % config.checkpoint.every_steps == 0 or at_end:
        _note_failures(members, states)
        _save(members, states, step + 1)
      if all(m.failed for m in members):
        break
    for m in members:
      m.mngr.wait_until_finished()
  finally:
    progress.close()
  return [_member(states, i) for i in range(len(members))]


def _note_failures(members, states) -> None:
  """Marks members whose NaN guard fired; they are no longer logged or saved."""
  bad = np.asarray(jax.device_get(states.bad_step))
  for m, b in zip(members, bad, strict=True):
    if b >= 0 and not m.failed:
      kept = (
        f"the last good checkpoint is step {m.last_saved}"
        if m.last_saved is not None
        else "no checkpoint was written"
      )
      m.failed = (
        f"{m.workdir}: loss or gradients became NaN/Inf at step {int(b) + 1}, {kept}; "
        "lower optim.learning_rate or check the data"
      )
      print(f"vmsjax: {m.failed}", file=sys.stderr)


def _flush(members, pending) -> None:
  host = jax.device_get([metrics for _, metrics in pending])
  for i, m in enumerate(members):
    if m.failed:
      continue
    for (step, _), metrics in zip(pending, host, strict=True):
      if step > (m.latest or 0):
        m.writer.write(step, {k: v[i] for k, v in metrics.items()})
    m.writer.flush()


def _save(members, states, step: int) -> None:
  for i, m in enumerate(members):
    if m.failed or step <= (m.latest or 0):
      continue
    meta = {
      "config_fingerprint": m.fingerprint,
      "dataset": m.config.data.name,
      "step": step,
      "next_batch": step,
    }
    train_lib.save(m.mngr, _member(states, i), meta)
    m.last_saved = step
