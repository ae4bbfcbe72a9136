"""The dataset catalogue: building datasets, opening their splits, describing them.

Datasets are TFDS builders written as array_record files and read back without
TensorFlow through `builder.as_data_source(split)`. A split is opened as a
`SplitSource`: random access to dicts of numpy values. Names: `synthetic`
(generated), and the manual downloads `vischema`, `vischema2`, `lamem`
(vmsjax/data/vischema.py, lamem.py; folder layouts in docs/data.md), each optionally
with a builder config after a slash (`vischema/centre_crop`, `lamem/split3`).

A run's records name the data it read through `dataset_record` (builder, version,
sizes and a content fingerprint). Batching and the training order are the input
pipeline's job (vmsjax/data/pipeline.py).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vmsjax.data import integrity
from vmsjax.errors import VMSError

# Name on the command line -> (module, builder class). Imported lazily: tfds is
# slow to import and the model code never needs it.
_BUILDERS: dict[str, tuple[str, str]] = {
  "synthetic": ("vmsjax.data.synthetic", "VmsSynthetic"),
  "vischema": ("vmsjax.data.vischema", "Vischema"),
  "vischema2": ("vmsjax.data.vischema", "Vischema2"),
  "lamem": ("vmsjax.data.lamem", "Lamem"),
}
# Built from files the user downloads by hand (`--manual_dir`).
_MANUAL = ("vischema", "vischema2", "lamem")
_FINGERPRINT_RECORDS = 1024  # per split; bounds the cost on large datasets


def dataset_names() -> tuple[str, ...]:
  """Returns the names `build`, `open_split` and friends accept.

  Each also takes a builder config after a slash, e.g. "vischema/centre_crop" or
  "lamem/split3"; the plain name is the dataset's first (default) config.
  """
  return tuple(_BUILDERS)


def _builder(name: str, data_dir: str, **kwargs: Any):
  """Returns the TFDS builder of dataset `name` ("name" or "name/config") in `data_dir`."""
  base, _, config = name.partition("/")
  if base not in _BUILDERS:
    raise VMSError(f"unknown dataset {name!r}; valid names: {', '.join(_BUILDERS)}")
  module_name, class_name = _BUILDERS[base]
  builder_class = getattr(importlib.import_module(module_name), class_name)
  configs = [c.name for c in builder_class.BUILDER_CONFIGS]
  if config and config not in configs:
    raise VMSError(
      f"dataset {base!r} has no config {config!r}; valid: "
      + ", ".join(f"{base}/{c}" for c in configs)
    )
  if config:
    kwargs["config"] = config
  return builder_class(data_dir=os.path.expanduser(os.fspath(data_dir)), **kwargs)


def _build_command(name: str, data_dir: str) -> str:
  manual = " --manual_dir DIR" if name.partition("/")[0] in _MANUAL else ""
  return f"vmsjax data build {name}{manual} --data_dir {data_dir}"


def _prepared_builder(name: str, data_dir: str):
  builder = _builder(name, data_dir)
  if not builder.is_prepared():
    raise VMSError(
      f"dataset {name!r} is not built in {data_dir} (looked for {builder.data_path}); "
      f"run `{_build_command(name, data_dir)}` (docs/data.md gives the folder layout)"
    )
  return builder


def build(
  name: str,
  data_dir: str,
  manual_dir: str | None = None,
  skip_bad_files: bool = False,
) -> dict[str, Any] | None:
  """Builds dataset `name` into `data_dir` as array_record files (no-op if built).

  Args:
    name: one of `dataset_names()`, optionally "/config".
    data_dir: the TFDS data directory; created if missing.
    manual_dir: for vischema, vischema2 and lamem, the folder holding the
      downloaded files (itself, or its `<name>/` subfolder, holds `images/`);
      default `<data_dir>/downloads/manual`, as in tfds.
    skip_bad_files: leave out files that cannot be read (listed with the reason
      in the returned report and in `build_report.json`) instead of failing.

  Returns:
    The build report of a manual dataset (found_images, written per split,
    skipped_images, skipped: [{file, reason}], ignored files), None for synthetic.

  Raises:
    VMSError: unknown dataset or config, missing manual files, bad files when
      not skipping (the message names every one).
  """
  import tensorflow_datasets as tfds

  base = name.partition("/")[0]
  if base not in _MANUAL:
    if manual_dir is not None or skip_bad_files:
      raise VMSError(
        f"dataset {name!r} is generated: --manual_dir and --skip_bad_files do not apply"
      )
    _builder(name, data_dir).download_and_prepare(file_format="array_record")
    return None
  builder = _builder(name, data_dir, skip_bad_files=skip_bad_files)
  if not builder.is_prepared():
    manual = os.path.expanduser(
      os.fspath(manual_dir) if manual_dir else os.path.join(data_dir, "downloads", "manual")
    )
    # tfds asserts on a missing or empty manual dir; say it in our words instead.
    if not os.path.isdir(manual) or not os.listdir(manual):
      raise VMSError(
        f"manual dir {manual} is missing or empty; download {base} by hand and pass its folder"
        f" with --manual_dir. {builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    try:
      builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual),
      )
    except AssertionError as e:
      # tfds refuses to write a split left empty (every image of it unreadable).
      if "No examples were yielded" not in str(e):
        raise
      bad = "; ".join(f"{f}: {r}" for f, r in builder._bad.problems)
      raise VMSError(f"building {name} from {manual}: a split has no readable image: {bad}") from e
  return build_report(name, data_dir)


def build_report(name: str, data_dir: str) -> dict[str, Any] | None:
  """Returns the build report of a built manual dataset (None if it has none)."""
  import json

  path = os.path.join(os.fspath(_prepared_builder(name, data_dir).data_path), "build_report.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    report = json.load(f)
  report["report_path"] = path
  return report


def format_report(report: dict[str, Any]) -> str:
  """Returns a build report as lines for the terminal: counts, then each skipped file."""
  written = report.get("written", {})
  order = ["train", "val", "test"]  # the JSON file has its keys sorted
  written = dict(
    sorted(
      written.items(),
      key=lambda kv: (kv[0] not in order, order.index(kv[0]) if kv[0] in order else 0, kv[0]),
    )
  )
  lines = [
    f"found {report.get('found_images', '?')} images; wrote "
    + ", ".join(f"{n} {split}" for split, n in written.items())
    + f"; skipped {report.get('skipped_images', 0)} images"
  ]
  skipped = report.get("skipped", [])
  if skipped:
    lines.append(f"skipped or bad files ({len(skipped)}):")
    lines += [f"  {entry['file']}: {entry['reason']}" for entry in skipped]
  ignored = report.get("ignored", [])
  if ignored:
    shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
    lines.append(f"ignored {len(ignored)} files that are neither images nor maps: {shown}")
  if "report_path" in report:
    lines.append(f"report: {report['report_path']}")
  return "\n".join(lines)


def is_built(name: str, data_dir: str) -> bool:
  """Returns whether dataset `name` is fully built in `data_dir`.

  Raises:
    VMSError: unknown dataset name.
  """
  return bool(_builder(name, data_dir).is_prepared())


def _to_numpy(record: dict[str, Any]) -> dict[str, Any]:
  """Normalises a decoded tfds record: numpy arrays, Python ints, `id` as str."""
  example = {}
  for key, value in record.items():
    if isinstance(value, bytes):
      example[key] = value.decode("utf-8")
    elif isinstance(value, np.ndarray) and value.ndim > 0:
      example[key] = value
    elif isinstance(value, (float, np.floating)):
      example[key] = float(value)
    else:
      example[key] = int(value)
  return example


# tfds' numpy decoder logs, once per process without OpenCV, advice to install it: on
# stderr of every data and study command. Pillow decodes the records' PNGs exactly;
# vmsjax needs no OpenCV.
def _not_opencv_note(record: logging.LogRecord) -> bool:
  return not str(record.msg).startswith("OpenCV is not installed.")


def _quiet_opencv_note() -> None:
  """Drops tfds' OpenCV advice, and nothing else, from the `absl` logger (once).

  Called after tfds is imported: absl.logging must create the `absl` logger itself
  (of its own logger class) before a filter is added to it.
  """
  absl_logger = logging.getLogger("absl")
  if _not_opencv_note not in absl_logger.filters:
    absl_logger.addFilter(_not_opencv_note)


class SplitSource(Sequence):
  """Random access to one split of a built dataset.

  Items are dicts: `image` uint8 (224, 224, 3), `vms` float32 (224, 224, 2) where
  the dataset has maps, `category`, `category_mid`, `category_top` (int), `id`
  (str), `score` (float) where the dataset has one. Record order is the file
  order, which tfds shuffles at build time: sort by `ids()` for a fixed order.
  """

  def __init__(self, builder, split: str, name: str, data_dir: str):
    import tensorflow_datasets as tfds

    _quiet_opencv_note()
    self.name = name
    self.split = split
    self._damage = (builder.data_path, _build_command(name, data_dir))  # named_damage
    self._records = builder.as_data_source(split)
    # A second view that leaves images encoded: listing the ids of a split then
    # costs no image decoding.
    self._light = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    self._ids: tuple[str, ...] | None = None

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {self.name}/{self.split}")
    try:
      with integrity.named_damage(*self._damage):
        record = self._records[index % len(self)]
    except (ValueError, TypeError, KeyError) as e:
      # Typically a dataset written by another version of the builder's schema.
      raise VMSError(
        f"record {index} of {self.name}/{self.split} cannot be decoded ({e}); the files "
        f"may come from another vmsjax version: rebuild with `vmsjax data build {self.name}`"
        " into an empty --data_dir"
      ) from e
    return _to_numpy(record)

  def ids(self) -> tuple[str, ...]:
    """Returns the ids of the records, in record order."""
    if self._ids is None:
      with integrity.named_damage(*self._damage):
        self._ids = tuple(self._light[i]["id"].decode("utf-8") for i in range(len(self)))
    return self._ids

  def __repr__(self) -> str:
    return f"SplitSource({self.name}/{self.split}, {len(self)} examples)"


def open_split(name: str, split: str, data_dir: str) -> SplitSource:
  """Opens one split of a built dataset for random access.

  Args:
    name: one of `dataset_names()`.
    split: a split of that dataset, e.g. "train" or "test", optionally with a tfds
      slice, e.g. "test[:32]" (the first 32 records in file order) or "train[:10%]".
    data_dir: the TFDS data directory it was built into.

  Returns:
    A `SplitSource` (see its docstring for the items).

  Raises:
    VMSError: unknown dataset, dataset not built in `data_dir` (the message gives
      the build command), unknown split or malformed slice.
  """
  builder = _prepared_builder(name, data_dir)
  splits = list(builder.info.splits)
  if split.partition("[")[0] not in splits:
    raise VMSError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(splits)}")
  try:
    return SplitSource(builder, split, name, data_dir)
  except (ValueError, AssertionError) as e:  # tfds' message for a malformed slice
    why = " ".join(str(e).split())
    raise VMSError(f"bad split {split!r} of {name!r} ({why}); e.g. test or test[:32]") from e


def _update_with_record(digest: Any, record: dict[str, Any]) -> None:
  """Feeds one record to a hash, in a canonical form (keys sorted, arrays with dtype)."""
  for key in sorted(record):
    value = record[key]
    digest.update(key.encode() + b"=")
    if isinstance(value, np.ndarray):
      digest.update(f"{value.dtype.str}{value.shape}".encode())
      digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, bytes):
      digest.update(value)
    else:
      digest.update(repr(value).encode())
    digest.update(b";")


def damaged_dataset_error(e: BaseException, name: str, data_dir: str, extra: str = ""):
  """`integrity.corrupt_dataset_error` for dataset `name` built in `data_dir`."""
  builder = _prepared_builder(name, data_dir)
  return integrity.corrupt_dataset_error(
    e, builder.data_path, _build_command(name, data_dir), extra
  )


def _fingerprint(builder, name: str, data_dir: str) -> str:
  """Returns a sha256 hex digest of a built dataset's schema, sizes and content."""
  import tensorflow_datasets as tfds

  digest = hashlib.sha256()
  config = getattr(builder.builder_config, "name", None)
  digest.update(f"{builder.name}/{config}/{builder.version}\n".encode())
  for key, info in sorted(builder.info.features.get_tensor_info().items()):
    digest.update(f"{key}:{np.dtype(info.np_dtype).str}{info.shape}\n".encode())
  for key, feature in sorted(builder.info.features.items()):
    if isinstance(feature, tfds.features.ClassLabel):
      digest.update(f"{key}:{','.join(feature.names)}\n".encode())
  for split, info in sorted(builder.info.splits.items()):
    digest.update(f"{split}:{info.num_examples}:{info.num_bytes}\n".encode())
    # Records, not files: tfds serialises a record's features in hash order, so
    # the files' bytes and sizes differ from one build of the same data to the
    # next, while the decoded values (and the record order) do not. Images stay
    # encoded, which keeps this at about 1 ms a record.
    records = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    count = len(records)
    for index in np.unique(np.linspace(0, count - 1, min(count, _FINGERPRINT_RECORDS), dtype=int)):
      with integrity.named_damage(builder.data_path, _build_command(name, data_dir)):
        _update_with_record(digest, records[int(index)])
  return digest.hexdigest()


def dataset_record(name: str, data_dir: str) -> dict[str, Any]:
  """Describes a built dataset for a run's records, so a run can tell its data changed.

  The fingerprint is a sha256 over the builder name, config and version, the
  feature shapes and dtypes, the class names, each split's number of examples and
  bytes, and the decoded content of up to 1024 records per split, evenly spaced
  in file order (so all of them for VISCHEMA-sized sets). Two builds of the same
  data give the same fingerprint, though their files differ byte for byte.

  Returns:
    A JSON-serialisable dict: name, builder, version, config, data_dir,
    num_examples (per split), file_format, fingerprint.

  Raises:
    VMSError: unknown dataset, or not built in `data_dir`.
  """
  builder = _prepared_builder(name, data_dir)
  return {
    "name": name,
    "builder": builder.name,
    "version": str(builder.version),
    "config": builder.builder_config.name if builder.builder_config else None,
    "data_dir": str(builder.data_path),
    "num_examples": {split: int(info.num_examples) for split, info in builder.info.splits.items()},
    "file_format": "array_record",
    "fingerprint": _fingerprint(builder, name, data_dir),
  }


def category_counts(name: str, data_dir: str) -> dict[str, dict[str, int]] | None:
  """Counts the examples of each leaf category, per split, of a built dataset.

  Reads only the labels (images and maps stay encoded).

  Returns:
    {split: {leaf: count}} over all 8 leaves (zeros included), or None for a
    dataset without categories (LaMem).

  Raises:
    VMSError: unknown dataset, or not built in `data_dir`.
  """
  import tensorflow_datasets as tfds

  from vmsjax.data import schema

  builder = _prepared_builder(name, data_dir)
  features = builder.info.features
  if "category" not in features:
    return None
  skip = {key: tfds.decode.SkipDecoding() for key in ("image", "vms") if key in features}
  counts: dict[str, dict[str, int]] = {}
  for split in builder.info.splits:
    records = builder.as_data_source(split, decoders=skip)
    labels = np.bincount(
      [int(records[i]["category"]) for i in range(len(records))], minlength=len(schema.LEAVES)
    )
    counts[split] = {leaf: int(n) for leaf, n in zip(schema.LEAVES, labels, strict=True)}
  return counts


def describe(name: str, data_dir: str) -> str:
  """Returns a few lines on a built dataset, for `vmsjax data build` / `data info`.

  Counts per split and, for datasets with categories, per leaf category (a table,
  leaves as rows, splits as columns), the metadata the builder recorded (split
  rule, map scale, ...) in short, and the fingerprint.

  Raises:
    VMSError: unknown dataset, or not built in `data_dir`.
  """
  record = dataset_record(name, data_dir)
  lines = [
    f"{name}: {record['builder']}/{record['config']} {record['version']} in {record['data_dir']}"
  ]
  lines += [f"  {split}: {count} examples" for split, count in record["num_examples"].items()]
  counts = category_counts(name, data_dir)
  if counts:
    splits = list(counts)
    width = max(len(leaf) for leaf in next(iter(counts.values())))
    lines.append("  per category:")
    lines.append(f"    {'':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
    for leaf in next(iter(counts.values())):
      row = "  ".join(f"{counts[s][leaf]:>6}" for s in splits)
      lines.append(f"    {leaf:<{width}}  {row}")
  metadata = dict(_prepared_builder(name, data_dir).info.metadata or {})
  for key, value in sorted(metadata.items()):
    if isinstance(value, list) and len(value) > 4:
      value = f"[{len(value)} items]"  # e.g. the test ids of a drawn split
    elif isinstance(value, dict):
      value = {k: (f"[{len(v)} items]" if isinstance(v, list) else v) for k, v in value.items()}
    lines.append(f"  {key}: {value}")
  lines.append(f"  fingerprint: {record['fingerprint']}")
  return "\n".join(lines)
