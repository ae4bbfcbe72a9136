"""VMS maps for any images: arrays, figures, overlays and per-image scores.

`predict_files` runs a trained model (`inference.predict`, z = mu; from a workdir or a
model file, see vmsjax/model_file.py) over image files of any size and writes, under
`out/`, for an image whose output stem is STEM:

  npy/STEM.npy          float32 (S, S, 2): the maps at the model's size S (channel 0
                        true VMS, 1 false VMS), exactly what `inference.predict` returns
  full/STEM.npy         float32 (H, W, 2): the same maps resized (bilinear) to the image
  overlay/STEM.png      the image with the true VMS in green and the false VMS in red
                        (blend rule: `figures.overlay`), at the image's own size; with
                        normalise="per-image" each of the two maps is first rescaled to
                        its own [min, max] (display only: arrays and scores stay raw)
  png/STEM.png          a figure: overlay, true map, false map, with colour bars
  samples/STEM_mean.npy, samples/STEM_std.npy, samples/STEM.png
                        with `samples` = K > 0: the per-pixel mean and standard
                        deviation of the maps over K latent draws z = mu + sigma * eps
  scores.csv            id, path, memorability, false_memorability (stats.map_scores
                        of npy/STEM.npy), plus true_std, false_std (the mean per-pixel
                        standard deviation) with samples
  predict.json          the workdir or model file, checkpoint, settings, and every
                        skipped file

An image's id is its file name; when two inputs share a name the later ones get
`~2`, `~3` ... before the extension. STEM is the id without its extension.

Images are read with `data.images.read_rgb` (uint8 RGB, EXIF orientation applied). A
file that cannot be read is named, skipped and listed in predict.json; the others are
still written. Images are batched by size, since `inference.predict` resizes a stack of
equal-sized images; each distinct size compiles the model once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vmsjax import figures, records
from vmsjax.errors import VMSError
from vmsjax.studies import report, stats

IMAGE_SUFFIXES: tuple[str, ...] = (
  ".jpg",
  ".jpeg",
  ".png",
  ".bmp",
  ".gif",
  ".tif",
  ".tiff",
  ".webp",
  ".ppm",
  ".pgm",
)
CHUNK = 64  # images read and held in memory at a time
NORMALISE: tuple[str, ...] = ("none", "per-image")  # the overlay's map scaling


@dataclasses.dataclass
class Found:
  """The files to predict, and what a folder held that is not an image."""

  files: list[Path]
  ignored: list[Path]  # files in a given folder without an image suffix


def find_images(inputs: Sequence[str | Path]) -> Found:
  """Expands files and folders (not recursively) into image files.

  A folder contributes its files with an image suffix (`IMAGE_SUFFIXES`, any case),
  sorted by name; a file given by name is always tried, whatever its suffix. A path
  given twice is kept once.

  Raises:
    VMSError: no inputs, or a path that does not exist.
  """
  if not inputs:
    raise VMSError("no images given; name image files or folders of images")
  files: list[Path] = []
  ignored: list[Path] = []
  seen: set[Path] = set()

  def add(path: Path) -> None:
    key = path.resolve()
    if key not in seen:
      seen.add(key)
      files.append(path)

  for item in inputs:
    path = Path(item)
    if path.is_dir():
      for child in sorted(path.iterdir()):
        if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
          add(child)
        elif child.is_file():
          ignored.append(child)
    elif path.exists():
      add(path)
    else:
      raise VMSError(f"{path} does not exist; give image files or folders of images")
  return Found(files, ignored)


def assign_ids(files: Sequence[Path]) -> list[str]:
  """Unique ids: the file names, with `~k` before the extension for repeated names."""
  counts: dict[str, int] = {}
  ids = []
  taken = {f.name for f in files}
  for f in files:
    n = counts.get(f.name, 0) + 1
    counts[f.name] = n
    if n == 1:
      ids.append(f.name)
      continue
    k = n
    while f"{f.stem}~{k}{f.suffix}" in taken:
      k += 1
    name = f"{f.stem}~{k}{f.suffix}"
    taken.add(name)
    ids.append(name)
  return ids


@dataclasses.dataclass
class Result:
  """What `predict_files` wrote and skipped."""

  out: Path
  rows: list[dict[str, Any]]  # one per written image, as in scores.csv
  skipped: list[tuple[str, str]]  # (path, reason)
  ignored: list[str]


def _sample_seed(seed: int, call: int) -> int:
  # A distinct key for each group of images, so groups do not share their noise.
  return int(np.random.SeedSequence([seed, call]).generate_state(1)[0])


def predict_files(
  trained,
  found: Found,
  out: str | Path,
  samples: int = 0,
  seed: int = 0,
  figures_too: bool = True,
  overlay_peak: bool = False,
  log: Callable[[str], None] = print,
  warn: Callable[[str], None] = print,
  normalise: str = "none",
) -> Result:
  """Predicts and writes the outputs listed in the module docstring.

  Args:
    trained: from `inference.load`.
    found: from `find_images`.
    out: the output folder (created; existing files of the same names are replaced).
    samples: K latent draws for the mean and standard deviation (0: none).
    seed: the seed of the draws.
    figures_too: write the PNG figures (the arrays, overlay and CSV are always written).
    overlay_peak: scale each image's maps to a joint peak of 1 in its overlay
      (`figures.overlay`); the arrays and scores are unchanged.
    log: progress lines.
    warn: one line per skipped file.
    normalise: "none" (map values as they are, so overlays of different images
      compare) or "per-image" (each map of an image rescaled to its own [min, max] in
      the overlays, to show the shape of faint or flat maps); arrays and scores are
      unchanged.

  Returns:
    A `Result`.
  """
  from vmsjax import inference
  from vmsjax.data.images import read_rgb

  if samples < 0:
    raise VMSError(f"--samples must be >= 0, got {samples}")
  if normalise not in NORMALISE:
    raise VMSError(f"--normalise must be one of {', '.join(NORMALISE)}, got {normalise!r}")
  out = Path(out)
  dirs = ["npy", "full", "overlay"] + (["png"] if figures_too else [])
  dirs += ["samples"] if samples else []
  for d in dirs:
    (out / d).mkdir(parents=True, exist_ok=True)
  ids = assign_ids(found.files)
  rows: list[dict[str, Any]] = []
  skipped: list[tuple[str, str]] = []
  calls = 0
  for start in range(0, len(found.files), CHUNK):
    chunk = list(range(start, min(start + CHUNK, len(found.files))))
    images: dict[int, np.ndarray] = {}
    for i in chunk:
      try:
        images[i] = read_rgb(found.files[i])
      except VMSError as e:
        skipped.append((str(found.files[i]), str(e)))
        warn(f"skipped {found.files[i]}: {' '.join(str(e).split())}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in images.items():
      groups.setdefault(image.shape, []).append(i)
    for members in groups.values():
      stack = np.stack([images[i] for i in members])  # (G, H, W, 3)
      maps, _ = inference.predict(trained, stack)  # (G, S, S, 2)
      mean = std = None
      if samples:
        mean, std = inference.predict_samples(trained, stack, samples, _sample_seed(seed, calls))
        calls += 1
      for g, i in enumerate(members):
        rows.append(
          _write_one(
            out,
            ids[i],
            found.files[i],
            images[i],
            maps[g],
            None if mean is None else mean[g],
            None if std is None else std[g],
            samples,
            figures_too,
            overlay_peak,
            normalise,
          )
        )
    log(_progress(start + len(chunk), len(found.files), len(rows), len(skipped)))
  order = {name: k for k, name in enumerate(ids)}
  rows.sort(key=lambda r: order[r["id"]])  # input order, whatever the grouping
  _write_scores(out / "scores.csv", rows, bool(samples))
  records.write_json(
    out / "predict.json",
    records.json_safe(
      {
        "workdir": None if trained.workdir is None else str(trained.workdir),
        "model": None if trained.model_file is None else str(trained.model_file),
        "checkpoint": trained.step,
        "image_size": trained.image_size,
        "samples": samples,
        "seed": seed,
        "images": len(rows),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "ignored": [str(p) for p in found.ignored],
        "scores": "memorability = mean of the true map (channel 0), false_memorability = "
        "mean of the false map (channel 1), on npy/STEM.npy",
        "overlay": "out = (1 - o * max(t, f)) * image + o * 255 * (f, t, 0), "
        f"o = {figures.OVERLAY_OPACITY}"
        + (", each map rescaled to its own [min, max] first" if normalise != "none" else "")
        + (", maps divided by their joint maximum first" if overlay_peak else ""),
        "normalise": normalise,
      }
    ),
  )
  return Result(out, rows, skipped, [str(p) for p in found.ignored])


def _progress(done: int, total: int, predicted: int, skipped: int) -> str:
  # Counts what was predicted, not what was looked at: a skipped file is not a prediction.
  return f"{done}/{total} files done: {predicted} predicted, {skipped} skipped"


def per_image_range(maps: np.ndarray) -> np.ndarray:
  """Each channel of (H, W, C) maps rescaled to its own [min, max] -> [0, 1].

  A constant channel becomes 0: it has no shape to show.
  """
  maps = np.asarray(maps, np.float32)
  lo = maps.min(axis=(0, 1), keepdims=True)
  span = maps.max(axis=(0, 1), keepdims=True) - lo
  return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def _stem(image_id: str) -> str:
  return Path(image_id).stem or image_id


def _write_one(
  out: Path,
  image_id: str,
  path: Path,
  image: np.ndarray,
  maps: np.ndarray,
  mean: np.ndarray | None,
  std: np.ndarray | None,
  samples: int,
  figures_too: bool,
  overlay_peak: bool,
  normalise: str,
) -> dict[str, Any]:
  stem = _stem(image_id)
  h, w = image.shape[:2]
  maps = np.asarray(maps, np.float32)  # (S, S, 2)
  full = figures.resize_maps(maps, h, w)  # (H, W, 2)
  np.save(out / "npy" / f"{stem}.npy", maps)
  np.save(out / "full" / f"{stem}.npy", full)
  shown = per_image_range(full) if normalise == "per-image" else full  # the overlays only
  figures.save_image(
    out / "overlay" / f"{stem}.png", figures.overlay(image, shown, peak=overlay_peak)
  )
  if figures_too:
    figures.prediction_figure(
      out / "png" / f"{stem}.png", image, maps, shown, title=image_id, peak=overlay_peak
    )
  score = stats.map_scores(maps[None])[0]
  row: dict[str, Any] = {
    "id": image_id,
    "path": str(path),
    "memorability": float(score[0]),
    "false_memorability": float(score[1]),
  }
  if mean is not None and std is not None:
    np.save(out / "samples" / f"{stem}_mean.npy", np.asarray(mean, np.float32))
    np.save(out / "samples" / f"{stem}_std.npy", np.asarray(std, np.float32))
    if figures_too:
      figures.samples_figure(out / "samples" / f"{stem}.png", mean, std, samples, title=image_id)
    row["true_std"] = float(np.mean(std[..., 0], dtype=np.float64))
    row["false_std"] = float(np.mean(std[..., 1], dtype=np.float64))
  return row


def _write_scores(path: Path, rows: list[dict[str, Any]], with_std: bool) -> None:
  header = ["id", "path", *stats.SCORES] + (["true_std", "false_std"] if with_std else [])
  report.write_csv(path, header, [[r[k] for k in header] for r in rows])


def summary(result: Result) -> str:
  """One line on what was written and skipped."""
  line = f"wrote maps for {len(result.rows)} images to {result.out}"
  if result.skipped:
    names = ", ".join(Path(p).name for p, _ in result.skipped)
    line += f"; skipped {len(result.skipped)} unreadable: {names}"
  if result.ignored:
    line += f"; ignored {len(result.ignored)} non-image files"
  return line
