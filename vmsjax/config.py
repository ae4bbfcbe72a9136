"""Loading, overriding and validating ml_collections configs.

A config is named by a launch string `path/to/file.py[:arg]`: the file's
`get_config(arg)` builds the ConfigDict. Command-line overrides `a.b=value` may only
set keys that exist; the value is parsed to the type the key already has.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import ml_collections

from vmsjax.errors import VMSError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "synthetic.py")

# Keys that may differ between a checkpoint's config and the config resuming it:
# they change how long a run goes on, where it reads its data from, or what it
# logs, not what it computes at a given step.
RESUMABLE_KEYS: tuple[str, ...] = (
  "train.epochs",
  "data.data_dir",
  "data.auto_build",
  "checkpoint.every_steps",
  "checkpoint.keep",
  "log.every_steps",
  "log.progress",
  "eval.batch_size",
  "features.cache_dir",
  # How the same batches reach the same step (tests/test_placement.py: bit-identical).
  "data.placement",
  "data.workers",
  "train.steps_per_call",
  "train.compilation_cache",
)

PLACEMENTS: tuple[str, ...] = ("auto", "device", "host")

FEATURE_CACHE_MODES: tuple[str, ...] = ("off", "memory", "disk")

# Keys renamed since older vmsjax versions wrote their config.json: old -> new.
RENAMED_KEYS: dict[str, str] = {"loss.beta": "loss.weights.kl", "loss.l2": "loss.weights.l2"}

# Sections whose numbers enter the training step as traced values (see `member_keys`).
TRACED_SECTIONS: tuple[str, ...] = ("loss", "optim")


def base_config() -> ml_collections.ConfigDict:
  """The paper's model and schedule (§5.1); config files start from it."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.dense = 128  # n: width of the Dense layer after the VGG-16 trunk
  c.model.latent = 32  # m: size of the latent code
  # Widths of the transposed convolutions before the output one (which has 2 channels):
  # L widths make L + 1 stride-2 layers, so data.image_size must divide by 2**(L + 1).
  c.model.decoder_channels = (256, 128, 64, 32)
  c.model.kernel = 3  # transposed-convolution kernel size
  c.model.output_batchnorm = False  # batch norm on the output layer too (see models/vae.py)
  c.model.dtype = "float32"  # compute dtype; parameters and optimiser stay float32
  c.model.encoder = ml_collections.ConfigDict()
  c.model.encoder.weights = ""  # path to VGG-16 ImageNet weights ("" = random init)
  c.model.encoder.preprocessing = "caffe"  # what the weights expect: caffe (Keras) or torch
  c.model.encoder.allow_random = False  # train on a randomly initialised trunk

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"
  c.data.data_dir = "data"
  c.data.auto_build = False  # build the dataset when missing (only synthetic can)
  c.data.image_size = 224  # model input and output size; a multiple of 32
  c.data.eval_split = "test"
  # Data order, augmentation draws and a random trunk's init; `seed` drives parameter init
  # and latent noise. Apart so that a seed sweep shares its inputs (vmsjax.train.train_group).
  c.data.seed = 0
  # Where the training split lives (pixel inputs): `device` reads it once and keeps it in
  # device memory, each step gathering its batch there; `host` decodes each batch on the
  # host; `auto` is `device` when the split fits in DEVICE_DATA_FRACTION of one device's
  # memory and the run reads it at least once (vmsjax/inputs.py). Same batches either way.
  c.data.placement = "auto"
  c.data.workers = 0  # host placement: threads decoding batches ahead (0: in the loop)

  c.loss = ml_collections.ConfigDict()
  c.loss.reconstruction = "bce"  # bce | mse | l1 (weight 1)
  # The weight of each further term of the loss, by its name in `losses.TERMS`. A new
  # term is a function there and a weight here; nothing else changes.
  c.loss.weights = ml_collections.ConfigDict()
  c.loss.weights.kl = 1.0  # beta: KL(q(z|x) || N(0, I))
  c.loss.weights.l2 = 0.02  # Keras-style kernel regulariser on head and decoder kernels
  c.loss.kl_warmup_steps = 0  # ramp the kl weight linearly from 0 over this many steps

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4  # Adam

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global batch, split over all devices
  c.train.epochs = 250
  c.train.steps_per_epoch = 20
  c.train.steps_per_call = 1  # K training steps per jitted call (lax.scan); same numbers
  # XLA's persistent compilation cache: "auto" = <workdir>/../.jax_cache (shared by the
  # points of a sweep and by resumed runs), "" = off, or a folder.
  c.train.compilation_cache = "auto"

  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = True
  c.augment.max_shift = 0.1  # fraction of width / height
  c.augment.zoom_range = 0.1  # zoom in [1 - r, 1 + r]
  c.augment.flip = True  # horizontal flip with probability 1/2

  # Frozen-encoder feature cache (vmsjax/cache.py, docs/speed.md): the trunk's output
  # for `views` fixed augmentation draws per training image (drawn from data.seed),
  # computed once and shared by every run with the same data, encoder and augmentation.
  c.features = ml_collections.ConfigDict()
  c.features.cache = "off"  # off | memory (whole cache on the device) | disk (read per batch)
  c.features.views = 8  # K augmentation draws per training image
  c.features.cache_dir = ""  # "" = <data.data_dir>/feature_cache

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 3

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 20
  c.log.progress = True  # a bar on a terminal, else a line per log step; false: silent

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 32
  return c


def call_from_file(spec: str, function: str, kind: str) -> Any:
  """Calls `function(arg)` of the Python file named by `spec` = `path.py[:arg]`.

  Config files (`get_config`) and sweep files (`get_sweep`) are loaded this way; a
  missing file, a file that fails to import, a missing function or a ValueError /
  KeyError from it is a one-line VMSError naming the file (`kind` names it: "config").
  """
  path, _, arg = spec.partition(":")
  file = Path(path)
  if not file.is_file():
    raise VMSError(f"{kind} file {path} not found; give path/to/{kind}.py[:arg]")
  if file.suffix != ".py":
    raise VMSError(
      f"{kind} file {path} is not a Python file; give a .py file that defines "
      f"{function}(arg), e.g. configs/synthetic.py"
    )
  module_spec = importlib.util.spec_from_file_location(f"vmsjax_{kind}_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # a user's file: report it in one line
    raise VMSError(f"{kind} file {path} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, function):
    raise VMSError(f"{kind} file {path} has no {function}(arg) function")
  try:
    return getattr(module, function)(arg or None)
  except (ValueError, KeyError) as e:
    raise VMSError(f"{kind} {spec}: {e}") from e


def load(spec: str | None) -> ml_collections.ConfigDict:
  """Builds the config named by `path.py[:arg]` (the synthetic default when None)."""
  return call_from_file(spec or DEFAULT_CONFIG, "get_config", "config")


_KINDS = {int: "an integer", float: "a number", tuple: "a tuple, e.g. (64, 32)", str: "a string"}


def _expects(key: str, current: Any, text: str) -> VMSError:
  kind = _KINDS.get(type(current), f"a {type(current).__name__}")
  return VMSError(f"config key {key} expects {kind}, got {text!r}")


def _parse_value(key: str, text: str, current: Any) -> Any:
  """Parses an override's text to the type the key holds now."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise VMSError(f"config key {key} expects true or false, got {text!r}")
  if isinstance(current, str) or current is None:
    return text
  if isinstance(current, float) and text.strip().lower().lstrip("+-") in ("nan", "inf"):
    return float(text)  # parsed, so that `validate` can say why it is refused
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise _expects(key, current, text) from e
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list | int):
    value = tuple(value) if isinstance(value, list) else (value,)
  if not isinstance(value, type(current)) or isinstance(value, bool):
    # bool is an int to Python: `latent=True` would train with latent 1.
    raise _expects(key, current, text)
  return value


def override(config: ml_collections.ConfigDict, assignments: list[str]) -> None:
  """Applies `a.b=value` assignments in place; unknown keys are an error."""
  for item in assignments:
    key, sep, text = item.partition("=")
    if not sep:
      raise VMSError(f"config override {item!r} has no '='; write --config.{key}=VALUE")
    if key in RENAMED_KEYS:
      new = RENAMED_KEYS[key]
      raise VMSError(f"config key {key} is now {new}; write --config.{new}=VALUE")
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = (
          ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
        )
        where = ".".join(parts[:depth]) or "the config"
        raise VMSError(f"unknown config key {key}: {where} has no {part!r} (known: {known})")
      if depth < len(parts) - 1:
        node = node[part]
    leaf = parts[-1]
    if isinstance(node[leaf], ml_collections.ConfigDict):
      raise VMSError(f"config key {key} is a group; set one of its keys instead")
    value = _parse_value(key, text, node[leaf])
    with config.unlocked():
      node[leaf] = value


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values a typo could break; raises VMSError naming the key."""
  from vmsjax.losses import RECONSTRUCTIONS
  from vmsjax.models.vgg16 import PREPROCESSING

  def need(ok: bool, key: str, what: str) -> None:
    if not ok:
      value = config
      for part in key.split("."):
        value = value[part]
      raise VMSError(f"invalid config value {key}={value!r}: {what}")

  _check_types(config)
  m = config.model
  need(m.dense > 0, "model.dense", "must be a positive integer")
  need(m.latent > 0, "model.latent", "must be a positive integer")
  need(
    len(m.decoder_channels) >= 1 and all(_is_int(c) and c > 0 for c in m.decoder_channels),
    "model.decoder_channels",
    "must be one or more positive widths (the output layer after them has 2 channels)",
  )
  need(m.kernel > 0, "model.kernel", "must be a positive integer")
  need(m.dtype in ("float32", "bfloat16"), "model.dtype", "must be float32 or bfloat16")
  need(
    m.encoder.preprocessing in PREPROCESSING,
    "model.encoder.preprocessing",
    f"must be one of {', '.join(PREPROCESSING)}",
  )
  need(
    config.data.image_size > 0 and config.data.image_size % 32 == 0,
    "data.image_size",
    "must be a positive multiple of 32 (VGG-16 downsamples by 32)",
  )
  from vmsjax.models.vae import upsampling

  up = upsampling(m.decoder_channels)
  need(
    config.data.image_size % up == 0,
    "data.image_size",
    f"must be a multiple of {up}: a decoder of {len(m.decoder_channels) + 1} layers "
    f"upsamples by {up} (model.decoder_channels={tuple(m.decoder_channels)})",
  )
  need(
    config.loss.reconstruction in RECONSTRUCTIONS,
    "loss.reconstruction",
    f"must be one of {', '.join(RECONSTRUCTIONS)}",
  )
  from vmsjax.losses import TERMS

  for name, weight in config.loss.weights.items():
    need(name in TERMS, f"loss.weights.{name}", f"names no loss term; known: {', '.join(TERMS)}")
    need(weight >= 0, f"loss.weights.{name}", "must be >= 0")
  need(config.loss.kl_warmup_steps >= 0, "loss.kl_warmup_steps", "must be >= 0")
  need(
    math.isfinite(config.optim.learning_rate) and config.optim.learning_rate > 0,
    "optim.learning_rate",
    "must be a finite number > 0",
  )
  need(config.data.seed >= 0, "data.seed", "must be >= 0")
  need(config.train.batch_size > 0, "train.batch_size", "must be a positive integer")
  need(config.train.epochs > 0, "train.epochs", "must be a positive integer")
  need(config.train.steps_per_epoch > 0, "train.steps_per_epoch", "must be a positive integer")
  need(config.train.steps_per_call > 0, "train.steps_per_call", "must be a positive integer")
  need(
    config.data.placement in PLACEMENTS,
    "data.placement",
    f"must be one of {', '.join(PLACEMENTS)}",
  )
  need(config.data.workers >= 0, "data.workers", "must be >= 0")
  need(0 <= config.augment.max_shift < 0.5, "augment.max_shift", "must be in [0, 0.5)")
  need(0 <= config.augment.zoom_range < 1, "augment.zoom_range", "must be in [0, 1)")
  need(
    config.features.cache in FEATURE_CACHE_MODES,
    "features.cache",
    f"must be one of {', '.join(FEATURE_CACHE_MODES)}",
  )
  need(config.features.views > 0, "features.views", "must be a positive integer")
  need(config.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be > 0")
  need(config.checkpoint.keep > 0, "checkpoint.keep", "must be > 0")
  need(config.log.every_steps > 0, "log.every_steps", "must be > 0")


def _check_types(config: ml_collections.ConfigDict) -> None:
  """Numbers must be numbers: a bool where the base config has an int or a float (Python
  counts True as 1), and a float that is NaN or infinite, are refused by key."""
  defaults = flat(base_config())
  for key, value in flat(config).items():
    default = defaults.get(key)
    if isinstance(value, bool) and _is_number(default):
      kind = "an integer" if _is_int(default) else "a number"
      raise VMSError(f"invalid config value {key}={value!r}: must be {kind}, not true/false")
    if isinstance(value, float) and not math.isfinite(value):
      raise VMSError(f"invalid config value {key}={value!r}: must be a finite number")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def member_keys(config: ml_collections.ConfigDict | dict) -> tuple[str, ...]:
  """The keys that may differ between models trained together in one step.

  They follow from the config's structure: `seed`, and every number in the sections
  of `TRACED_SECTIONS` (`loss`, `optim`). Those numbers reach the step as traced
  values (`vmsjax.step.hyperparams`), so a group stacks them; every other key (and the
  strings of those sections, such as `loss.reconstruction`) selects code or data and
  must be equal.
  """
  items = flat(config)
  traced = [k for k, v in items.items() if k.split(".", 1)[0] in TRACED_SECTIONS and _is_number(v)]
  return ("seed", *sorted(traced))


def upgrade(saved: dict) -> dict:
  """A saved config dict with renamed keys (`RENAMED_KEYS`) moved to their new names."""
  out = json.loads(json.dumps(saved))
  for old, new in RENAMED_KEYS.items():
    *old_path, old_leaf = old.split(".")
    node = out
    for part in old_path:
      node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or old_leaf not in node:
      continue
    value = node.pop(old_leaf)
    *new_path, new_leaf = new.split(".")
    target = out
    for part in new_path:
      target = target.setdefault(part, {})
    target.setdefault(new_leaf, value)
  return out


def read_saved(workdir: Path) -> dict | None:
  """The config a run saved in `workdir/config.json`, or None if there is none."""
  path = Path(workdir) / "config.json"
  if not path.exists():
    return None
  try:
    return upgrade(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise VMSError(
      f"{path} is not valid JSON ({e}); the workdir's records are damaged: use a new --workdir"
    ) from e


def total_steps(config: ml_collections.ConfigDict) -> int:
  return int(config.train.epochs * config.train.steps_per_epoch)


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def flat(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} for every leaf, tuples as lists (as JSON stores them)."""
  items = config.items() if isinstance(config, dict) else config.to_dict().items()
  out = {}
  for k, v in items:
    if isinstance(v, dict | ml_collections.ConfigDict):
      out.update(flat(dict(v), f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def implied_by_older(saved_flat: dict[str, Any], key: str) -> Any:
  """What a config saved before `key` existed meant for it: the behaviour of the code
  that wrote it. `data.seed` did not exist and the input side used `seed`; keys added
  later with a default that keeps the old behaviour (features.*, ...) mean that default.
  """
  if key == "data.seed" and "seed" in saved_flat:
    return saved_flat["seed"]
  return flat(base_config()).get(key, "<absent>")


def differences(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
  """Keys (outside RESUMABLE_KEYS) whose values differ, as 'key: old -> new'.

  A key that the saved config lacks (written by an older vmsjax) compares by what it
  meant then (`implied_by_older`), so that older workdirs resume and evaluate.
  """
  a, b = flat(saved), flat(current)
  out = []
  for key in sorted(set(a) | set(b)):
    if key in RESUMABLE_KEYS:
      continue
    old = a[key] if key in a else implied_by_older(a, key)
    new = b.get(key, "<absent>")
    if old != new:
      out.append(f"{key}: {old!r} -> {new!r}")
  return out


def fingerprint(config: ml_collections.ConfigDict) -> str:
  """A hash of everything that changes what a step computes (RESUMABLE_KEYS excluded)."""
  items = {k: v for k, v in flat(config).items() if k not in RESUMABLE_KEYS}
  return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def group_key(config: ml_collections.ConfigDict) -> str:
  """A hash of everything but `member_keys`: configs with equal keys can train together."""
  skip = set(member_keys(config))
  items = {k: v for k, v in flat(config).items() if k not in skip}
  return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_group(configs: list[ml_collections.ConfigDict]) -> None:
  """Raises VMSError unless the configs differ only in `member_keys`."""
  if not configs:
    raise VMSError("a group of models needs at least one config")
  first = flat(configs[0])
  allowed = set(member_keys(configs[0]))
  for i, c in enumerate(configs[1:], start=1):
    other = flat(c)
    for key in sorted(set(first) | set(other)):
      if key in allowed and key in first and key in other:
        continue
      if first.get(key, "<absent>") != other.get(key, "<absent>"):
        raise VMSError(
          f"models 0 and {i} of a group differ in {key} ({first.get(key, '<absent>')!r} vs "
          f"{other.get(key, '<absent>')!r}); only seed and the numbers of the "
          f"{' and '.join(TRACED_SECTIONS)} sections may differ between models trained "
          "together: train them in separate groups"
        )
