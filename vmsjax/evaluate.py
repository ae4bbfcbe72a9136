"""Evaluation of a trained workdir: the paper's tables and figure, beside baselines.

`evaluate(workdir)` predicts the maps of every image of a split (z = mu, batch-norm
running statistics: a checkpoint gives the same numbers every time), compares them
with the ground truth at the model's resolution (`data.image_size`; the stored maps
are resampled with the training resize) and writes, in `workdir/eval/`:

  <split>-<step>.json             every number below (NaN and infinities written as
                                  null: `records.json_safe`); with
                                  --dataset other than the training one, the files
                                  start with that dataset's name
  <split>-<step>.md               Table 1, the saliency-benchmark metrics, Table 2,
                                  per-category tables, correlation with baselines
  <split>-<step>-categories.png   rho2D per leaf category, true and false VMS, model
                                  and baselines (the paper's Figure 4)

Metrics, channels and the policy for constant maps are those of `vmsjax.metrics`; the
Markdown tables are `vmsjax.eval_report`'s. `eval_path(workdir, config)` is where the
report of a run's last step lands; `evaluate_once` evaluates only when that report is
missing or lacks a baseline.

Baselines are functions in `BASELINES`: (images uint8 (N, S, S, 3) at the model's
size, ground-truth maps (N, S, S, 2)) -> predicted maps (N, S, S, 2). A saliency
map used as a baseline is one map for both channels, scaled per channel by the
least-squares factor over the evaluated maps (`metrics.fit_scale`): the scale only
moves MSE and flatters the baseline, so beating it is a conservative result.
`evaluate` also takes baselines as a {name: function} mapping: with
`baseline_functions(names, memoise=True)` each is computed once for several models
evaluated on the same images (experiments/paper.py).

A `FittedBaseline` (`ridge`) is fitted on the run's training split: it gets the run
(`Run`) and the evaluated images' trunk features (`trunk_features`); its description of
the fit goes to the report's `baseline_fits`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from vmsjax import config as config_lib
from vmsjax import eval_report, factory, figures, inference, metrics, pixels, records, ridge
from vmsjax.data import augment
from vmsjax.errors import VMSError
from vmsjax.models import vgg16

Baseline = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Run:
  """What a `FittedBaseline` gets besides the evaluated maps: the run being evaluated.

  Attributes:
    trained: the restored checkpoint (its config, frozen trunk and trunk parameters).
    data_dir: where its training dataset is built (evaluate's `data_dir`).
    features: stored uint8 images (B, H, W, 3) -> trunk features (B, h, w, 512), as
      the model sees them (`trunk_features`).
  """

  trained: inference.Trained
  data_dir: str
  features: Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class FittedBaseline:
  """A baseline fitted on the run's training split, through the run's frozen trunk.

  Attributes:
    fit: (run, features (N, h, w, 512) of the evaluated images as the model sees them,
      ground truth (N, S, S, 2)) -> (maps (N, S, S, 2), a JSON-ready description of
      the fit, stored as the report's `baseline_fits[name]`).
  """

  fit: Callable[[Run, np.ndarray, np.ndarray], tuple[np.ndarray, dict]]


# What `evaluate` takes as baselines: names (a list or 'a,b'), or {name: baseline}.
Baselines = str | Sequence[str] | Mapping[str, Baseline | FittedBaseline] | None


def centre_baseline(images: np.ndarray, target: np.ndarray) -> np.ndarray:
  """A fixed Gaussian at the image centre (sigma = 1/4 of the side), scaled per channel."""
  del images  # the same map for every image
  return metrics.fit_scale(metrics.centre_bias(*target.shape[1:3]), target)


def gbvs_baseline(images: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Graph-Based Visual Saliency of each image, one map for both channels, scaled per channel."""
  try:
    from vmsjax import saliency
  except ImportError as e:
    raise VMSError(
      f"the gbvs baseline needs vmsjax.saliency, which cannot be imported ({e}); "
      "evaluate with --baselines centre"
    ) from e
  return metrics.fit_scale(saliency.gbvs_batch(images), target)


def ridge_fit(run: Run, features: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, dict]:
  """A ridge regression from trunk features to the flattened maps, fitted on train.

  Training images go through the trunk as the model sees them (`run.features`), their
  maps resized like the evaluated ones (`_resize`). The penalty is chosen on the last
  training ids, then refitted on all (`ridge.fit_with_held_out`); predictions are
  clipped to [0, 1], the maps' range (SIM and KLD need non-negative maps).

  Raises:
    VMSError: the training split is not built, has no maps or fewer than 2 images.
  """
  from vmsjax.data import catalogue, pipeline  # as in `evaluate`

  config = run.trained.config
  name = config.data.name
  train = catalogue.open_split(name, "train", run.data_dir)
  _check_has_maps(train, name, "train")
  if len(train) < 2:
    raise VMSError(
      f"{name}/train in {run.data_dir} has {len(train)} image; the ridge baseline needs at "
      "least 2 (some are held out to choose its penalty); evaluate without ridge"
    )
  hw = factory.image_hw(config)
  xs, ys = [], []
  # eval_batches walks the split in id order: the held-out rows are the last ids.
  for batch in pipeline.eval_batches(train, run.trained.batch_size):
    xs.append(run.features(batch["image"]))
    ys.append(np.asarray(_resize(batch["vms"], hw)))
  x, y = np.concatenate(xs), np.concatenate(ys)
  clip = (0.0, 1.0)
  fitted, info = ridge.fit_with_held_out(x.reshape(len(x), -1), y.reshape(len(y), -1), clip=clip)
  maps = fitted.predict(features.reshape(len(features), -1), clip=clip)
  shapes = {"feature_shape": list(x.shape[1:]), "map_shape": list(y.shape[1:])}
  info = {"dataset": name, "split": "train", **shapes, **info}
  return maps.reshape(target.shape).astype(np.float32), info


# Name (as given to --baselines) -> baseline. A new baseline is one line here.
BASELINES: dict[str, Baseline | FittedBaseline] = {
  "centre": centre_baseline,
  "gbvs": gbvs_baseline,
  "ridge": FittedBaseline(ridge_fit),
}
# GBVS is left out by default: it is slow (a graph over every image's feature maps).
DEFAULT_BASELINES: tuple[str, ...] = ("centre",)


def parse_baselines(text: Baselines) -> tuple[str, ...]:
  """'centre,gbvs' (or a sequence of names) -> ('centre', 'gbvs'); '' or 'none' -> ().

  A {name: baseline} mapping gives its names (which must be in `BASELINES`).

  Raises:
    VMSError: an unknown name (the message lists the known ones).
  """
  if text is None:
    return DEFAULT_BASELINES
  names = text.split(",") if isinstance(text, str) else list(text)
  names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise VMSError(
      f"unknown baseline(s) {', '.join(unknown)} in --baselines; known: {', '.join(BASELINES)}"
    )
  return tuple(dict.fromkeys(names))  # de-duplicated, in the order given


def _digest(*arrays: np.ndarray, extra: str = "") -> str:
  h = hashlib.sha256(extra.encode())
  for a in arrays:
    h.update(str((a.shape, a.dtype)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def memoised(baseline: Baseline | FittedBaseline) -> Baseline | FittedBaseline:
  """`baseline`, computed once per distinct (images, target) pair.

  Every model of a sweep is evaluated on the same images at the same size, and a
  baseline does not depend on the model, so the second and later evaluations can reuse
  the first one's maps (GBVS costs ~0.1 s of CPU per image). Pairs are told apart by a
  SHA-256 of both arrays' shapes, dtypes and bytes; the maps live as long as the
  returned function.

  A `FittedBaseline` is memoised per (features, target, training dataset, data_dir):
  features tell trunks apart, so a sweep's models (one trunk) share one fit.
  """
  if isinstance(baseline, FittedBaseline):
    fits: dict[str, tuple[np.ndarray, dict]] = {}

    def fit_once(run: Run, features: np.ndarray, target: np.ndarray):
      key = _digest(features, target, extra=f"{run.trained.config.data.name}|{run.data_dir}")
      if key not in fits:
        fits[key] = baseline.fit(run, features, target)
      return fits[key]

    return FittedBaseline(fit_once)
  done: dict[str, np.ndarray] = {}

  def once(images: np.ndarray, target: np.ndarray) -> np.ndarray:
    key = _digest(images, target)
    if key not in done:
      done[key] = baseline(images, target)
    return done[key]

  return once


def baseline_functions(
  baselines: Baselines = None, memoise: bool = False
) -> dict[str, Baseline | FittedBaseline]:
  """The baselines to evaluate, by name: names (see `parse_baselines`) or a mapping.

  Args:
    baselines: names, looked up in `BASELINES`, or {name: baseline} used as given.
    memoise: wrap each in `memoised` (for several evaluations on the same images).

  Raises:
    VMSError: an unknown name.
  """
  if isinstance(baselines, Mapping):
    chosen = dict(baselines)
  else:
    chosen = {n: BASELINES[n] for n in parse_baselines(baselines)}
  return {n: memoised(b) for n, b in chosen.items()} if memoise else chosen


def evaluate(
  workdir: str | Path,
  split: str | None = None,
  checkpoint: int | None = None,
  data_dir: str | None = None,
  baselines: Baselines = None,
  dataset: str | None = None,
) -> dict:
  """Evaluates a checkpoint of `workdir` on a split and writes the report files.

  Args:
    workdir: a training workdir.
    split: the split to evaluate (default: the config's `data.eval_split`).
    checkpoint: the step to restore (default: the latest).
    data_dir: where the dataset is built (default: the config's `data.data_dir`).
    baselines: names from `BASELINES`, as a list or 'a,b' (default: centre only), or
      {name: baseline} (`baseline_functions`).
    dataset: another dataset with maps to evaluate on (default: the training one).

  Returns:
    The report written to `eval/<split>-<step>.json` (NaN as None): "step", "split",
    "dataset", "images", "image_size", "model": {channel: summary}, "baselines":
    {name: {channel: summary}}, "categories": {level: {category: {"images",
    "model", "baselines"}}}, "correlation_with_baselines": {name: {"predicted",
    "ground_truth"}: {channel: ...}}, "baseline_fits": {name: description} (the
    fitted baselines only), "files". A summary is `metrics.summarise`'s.

  Raises:
    VMSError: not a workdir, no such checkpoint, dataset not built, unknown split or
      baseline, a dataset without VMS maps, an empty split.
  """
  from vmsjax.data import catalogue, pipeline

  chosen = baseline_functions(baselines)
  names = tuple(chosen)
  # The data is checked before the model is restored: a wrong dataset fails fast.
  config = inference.load_config(Path(workdir))
  split = split or config.data.eval_split
  dataset = dataset or config.data.name
  data_dir = data_dir or config.data.data_dir
  source = catalogue.open_split(dataset, split, data_dir)
  _check_has_maps(source, dataset, split)
  # Every dataset with maps has VISCHEMA categories so far; one without gets no
  # per-category tables, Table 2 or figure rather than an error.
  has_categories = "category" in source[0]
  trained = inference.load(workdir, checkpoint)
  workdir, config, step = trained.workdir, trained.config, trained.step

  hw = factory.image_hw(config)
  # Trunk features of the evaluated images only when a baseline is fitted on them.
  fitted = any(isinstance(b, FittedBaseline) for b in chosen.values())
  run = Run(trained, data_dir, trunk_features(trained)) if fitted else None
  preds, targets, images, cats, feats = [], [], [], [], []
  for batch in pipeline.eval_batches(source, trained.batch_size):
    p, _ = inference.predict(trained, batch["image"])
    preds.append(p)
    if run is not None:
      feats.append(run.features(batch["image"]))
    # Ground truth and the baselines' images at the model's resolution, with the
    # resize used for training inputs.
    targets.append(np.asarray(_resize(batch["vms"], hw)))
    small = np.asarray(_resize(batch["image"], hw))
    images.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    if has_categories:
      cats.append(np.asarray(batch["category"]))
  pred = np.concatenate(preds)  # (N, S, S, 2)
  target = np.concatenate(targets)  # (N, S, S, 2)
  image = np.concatenate(images)  # (N, S, S, 3) uint8

  per = {"model": metrics.per_image(pred, target)}
  correlation, fits = {}, {}
  for name in names:
    baseline = chosen[name]
    if isinstance(baseline, FittedBaseline):
      base, fits[name] = baseline.fit(run, np.concatenate(feats), target)
    else:
      base = baseline(image, target)
    base = np.asarray(base, np.float32)
    if base.shape != target.shape:
      raise ValueError(f"baseline {name} returned {base.shape}, expected {target.shape}")
    per[name] = metrics.per_image(base, target)
    # Paper §5.3: how closely the predicted and the human maps follow the baseline's.
    # Correlation ignores the baseline's per-channel scale, so this is the correlation
    # with the raw (e.g. GBVS) map; its ground-truth half is the baseline's rho2D.
    vs_pred = metrics.per_image(base, pred)
    correlation[name] = {
      "predicted": _correlation_cells(vs_pred),
      "ground_truth": _correlation_cells(per[name]),
    }

  categories = {}
  per_cat = {}
  if has_categories:
    category = np.concatenate(cats)  # (N,) leaf ids
    per_cat = {who: metrics.by_category(v, category) for who, v in per.items()}
  for level, cells in per_cat.get("model", {}).items():
    categories[level] = {
      cat: {
        "images": cell["true"]["images"],
        "model": cell,
        "baselines": {n: per_cat[n][level][cat] for n in names},
      }
      for cat, cell in cells.items()
    }

  stem = f"{split}-{step}"
  if dataset != config.data.name:  # keep the training dataset's report apart
    stem = f"{dataset.replace('/', '-')}-{stem}"
  report = {
    "workdir": str(workdir),
    "step": int(step),
    "split": split,
    "dataset": dataset,
    "images": int(len(pred)),
    "image_size": int(pred.shape[1]),
    "model_label": f"m={config.model.latent}, {config.loss.reconstruction}",
    "model": metrics.summarise(per["model"]),
    "baselines": {n: metrics.summarise(per[n]) for n in names},
    "categories": categories,
    "correlation_with_baselines": correlation,
    "baseline_fits": fits,
    "files": {"json": f"{stem}.json", "markdown": f"{stem}.md"},
  }
  if categories:
    report["files"]["figure"] = f"{stem}-categories.png"
  report = records.json_safe(report)
  out_dir = workdir / "eval"
  out_dir.mkdir(exist_ok=True)
  if categories:
    category_figure(report, out_dir / report["files"]["figure"])
  (out_dir / report["files"]["markdown"]).write_text(eval_report.markdown_report(report))
  records.write_json(out_dir / report["files"]["json"], report)
  return report


def eval_path(workdir: str | Path, config) -> Path:
  """Where `evaluate` writes the report of the last step of a run on its eval split.

  The training dataset's report (`--dataset` not given): `eval/<split>-<step>.json`.
  """
  return Path(workdir) / "eval" / f"{config.data.eval_split}-{config_lib.total_steps(config)}.json"


def evaluate_once(
  workdir: str | Path, config, baselines: Baselines = None, log: Callable[[str], None] = print
) -> dict:
  """The evaluation of a run's last checkpoint on its eval split, made only if needed.

  The report at `eval_path(workdir, config)` is read back when it has (at least)
  `baselines`; otherwise the checkpoint is evaluated and its report written there.

  Args:
    workdir: the run's workdir.
    config: its config (the last step is `config_lib.total_steps(config)`).
    baselines: as `evaluate` takes them.
    log: told when an evaluation runs.

  Returns:
    The report as stored (NaN and infinities as None), whether read or just written.
  """
  workdir = Path(workdir)
  names = parse_baselines(baselines)
  path = eval_path(workdir, config)
  if path.exists():
    report = json.loads(path.read_text())
    if set(names) <= set(report.get("baselines", {})):
      return report
  log(f"evaluating {workdir.name} (baselines {', '.join(names) or 'none'})")
  evaluate(workdir, checkpoint=config_lib.total_steps(config), baselines=baselines)
  return json.loads(path.read_text())  # as stored, like a rerun reads it


def _check_has_maps(source, dataset: str, split: str) -> None:
  if len(source) == 0:
    raise VMSError(f"{dataset}/{split} has no examples; evaluate another --split")
  if "vms" not in source[0]:
    raise VMSError(
      f"{dataset}/{split} has no VMS maps (an image-only dataset, like VISCHEMA2 or LaMem), "
      "so there is nothing to compare predictions with; evaluate on a dataset with maps "
      "(VISCHEMA, synthetic), or draw maps for these images with `vmsjax predict`"
    )


def trunk_features(trained: inference.Trained) -> Callable[[np.ndarray], np.ndarray]:
  """The frozen trunk's features of stored images, as `inference.predict` feeds the model.

  Inference's computation: the training resize (no augmentation), `pixels.encode`, in
  padded batches of the evaluation batch size (the same micro-batching) over the devices.

  Returns:
    uint8 images (B, H, W, 3), any B -> float32 features (B, h, w, 512) on the host.
  """
  config, encoder, hw = trained.config, trained.encoder, factory.image_hw(trained.config)
  repl, split = factory.shardings(trained.mesh)

  def encode(enc_params, image):
    resized = augment.warp(image, augment.identity(image.shape[0]), hw)
    return pixels.encode(config, encoder, enc_params, resized)

  jitted = jax.jit(encode, in_shardings=(repl, split), out_shardings=split)
  b = trained.batch_size

  def features(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    out = [np.zeros((0, *factory.feature_hw(config), vgg16.FEATURES), np.float32)]
    for start in range(0, len(images), b):
      chunk, n = images[start : start + b], min(b, len(images) - start)
      # Padding repeats the last image; its rows are dropped below.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
      x = factory.device_batch({"image": chunk}, split)["image"]
      out.append(np.asarray(jitted(trained.enc_params, x))[:n])
    return np.concatenate(out)

  return features


@functools.partial(jax.jit, static_argnums=1)
def _resize(x, hw):
  """(B, 224, 224, C) -> (B, S, S, C) float32, the training inputs' bilinear resize."""
  return augment.warp(x, augment.identity(x.shape[0]), hw)


def _correlation_cells(values: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
  """Mean rho2D per channel with the counts behind it."""
  out = {}
  for c, cell in metrics.summarise(values).items():
    out[c] = {"rho2d": cell["rho2d"], "images": cell["images"], "constant": cell["constant"]}
  return out


# ---------------------------------------------------------------------------------
# Figure.


def category_figure(report: dict, path: Path) -> tuple[int, int]:
  """Bars of rho2D per leaf category, one panel per VMS (true, false), model and baselines.

  `figures.category_bars`, stacked: 1000 x 700 pixels. Categories with no image, or no
  defined rho2D, have no bar.

  Returns:
    The PNG's (width, height) in pixels.
  """
  leaf = report["categories"]["leaf"]
  cats = eval_report.ordered(report, "leaf")
  labels = eval_report.LABELS
  who = [("model", "model")] + [(n, labels.get(n, n)) for n in report["baselines"]]

  def values(key: str, channel: str) -> np.ndarray:
    cells = [leaf[c]["model"] if key == "model" else leaf[c]["baselines"][key] for c in cats]
    rho = [cell[channel]["rho2d"] for cell in cells]
    return np.array([np.nan if v is None else v for v in rho], np.float64)

  return figures.category_bars(
    path,
    [f"{c}\n(n={leaf[c]['images']})" for c in cats],
    [
      (f"{channel} VMS", [(label, values(key, channel)) for key, label in who])
      for channel in ("true", "false")
    ],
    "mean ρ2D",
    title=f"ρ2D per category: {report['dataset']}/{report['split']}, step {report['step']}",
    xlabel="VISCHEMA category",
    stacked=True,
  )
