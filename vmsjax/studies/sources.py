"""Random-access sources of records: ids, views, concatenation, seeded subsets, specs.

A source is a `catalogue.SplitSource`, or any sequence of record dicts with an `id`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vmsjax.errors import VMSError


def source_ids(source: Sequence) -> Sequence[str]:
  """The ids of a source's records, in record order (cheap for a `SplitSource`)."""
  ids = getattr(source, "ids", None)
  if ids is not None:
    return ids()
  return [source[i]["id"] for i in range(len(source))]


def source_name(source: Sequence) -> str:
  """`name/split` of a source (its `name` alone without a split; "records" without one)."""
  name, split = getattr(source, "name", "records"), getattr(source, "split", "")
  return f"{name}/{split}" if split else str(name)


class SourceView(Sequence):
  """Records `indices` of a source, as a source of their own (with `ids()`)."""

  def __init__(self, source: Sequence, indices: Sequence[int]):
    self._source = source
    self._indices = [int(i) for i in indices]
    self.name = getattr(source, "name", "records")
    self.split = getattr(source, "split", "")

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    return self._source[self._indices[index]]

  def ids(self) -> tuple[str, ...]:
    all_ids = source_ids(self._source)
    return tuple(all_ids[i] for i in self._indices)


class ConcatSource(Sequence):
  """Several sources read as one (e.g. a dataset's train and test splits)."""

  def __init__(self, sources: Sequence[Sequence]):
    self._sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in self._sources])  # (k + 1,)
    self.name = getattr(self._sources[0], "name", "records")
    self.split = "+".join(getattr(s, "split", "") for s in self._sources)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    if not 0 <= index < len(self):
      raise IndexError(index)
    k = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self._sources[k][index - int(self._starts[k])]

  def ids(self) -> tuple[str, ...]:
    return tuple(i for s in self._sources for i in source_ids(s))


def open_spec(text: str, data_dir: str, flag: str = "") -> Sequence:
  """The splits of a `DATASET:SPLIT[+SPLIT...]` spec (`vmsjax.data.spec`) as one source.

  Args:
    text: the spec; "train+test" reads both splits, one after the other.
    data_dir: where the dataset is built.
    flag: the option that gave the spec, for the error message.

  Raises:
    VMSError: a malformed spec, or a dataset or split that cannot be opened.
  """
  from vmsjax.data import catalogue, spec

  name, splits = spec.parse(text, flag)
  sources = [catalogue.open_split(name, split, data_dir) for split in splits]
  return sources[0] if len(sources) == 1 else ConcatSource(sources)


def subset_indices(ids: Sequence[str], size: int | None, seed: int) -> np.ndarray:
  """A seeded subset of record indices (see vmsjax/studies).

  Args:
    ids: the records' ids, in record order.
    size: how many to draw; None, or at least len(ids), keeps every record.
    seed: the numpy seed.

  Returns:
    int64 record indices, sorted by id.
  """
  if size is not None and size < 1:
    raise VMSError(f"--subset must be a positive integer, got {size}")
  order = np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
  if size is None or size >= len(ids):
    return order
  pick = np.random.default_rng(seed).choice(len(ids), size=size, replace=False)
  return order[np.sort(pick)]
