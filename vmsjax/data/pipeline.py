"""The grain input pipeline: training and evaluation batches from a split.

A split is any random-access sequence of example dicts, typically a `SplitSource`
opened through the dataset catalogue (vmsjax/data/catalogue.py).

Training order (`train_batches`): epoch e is a fresh permutation of the split,
drawn from numpy's PCG64 seeded with (seed, e); the stream is the concatenation
of the epochs' permutations and global batch k is its slice [k*B, (k+1)*B). Batches
straddle epoch boundaries when B does not divide the split size (with 640 examples
and B = 32 an epoch is exactly 20 steps). So batch k is a pure function of
(source, seed, k, process_index, process_count): a run resumed at step k reads
exactly what it would have read had it never stopped. With several processes,
process p reads only its part [p*b, (p+1)*b) of each global batch, b = B / P.
The order is numpy index arithmetic; reading, decoding and stacking are grain
`MapDataset` maps, indexed by step (no iterator state to checkpoint: the step is
the state).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from vmsjax.errors import VMSError

Batch = dict[str, Any]

# Keys stacked into batches, when the dataset has them; `id` stays a list of str.
_ARRAY_KEYS: dict[str, type] = {
  "image": np.uint8,
  "vms": np.float32,
  "category": np.int32,
  "score": np.float32,
}
# Stands in for "forever": grain datasets have a length, and 2**62 elements is
# more than any run reads.
_STREAM_LENGTH = 2**62


def num_examples(source: Sequence) -> int:
  """Returns the number of examples of a source."""
  return len(source)


def _example_arrays(example: dict[str, Any]) -> dict[str, Any]:
  """Keeps the fields that go into batches, with their batch dtypes."""
  out: dict[str, Any] = {
    key: np.asarray(example[key], dtype) for key, dtype in _ARRAY_KEYS.items() if key in example
  }
  if "id" in example:
    out["id"] = example["id"]
  return out


def _train_arrays(example: dict[str, Any]) -> dict[str, Any]:
  arrays = _example_arrays(example)
  arrays.pop("id", None)  # not needed on the device, and not an array
  return arrays


def _stack(examples: Sequence[dict[str, Any]]) -> Batch:
  """Stacks examples into a batch; `id`, being text, stays a list."""
  batch: Batch = {}
  for key in examples[0]:
    values = [example[key] for example in examples]
    batch[key] = values if key == "id" else np.stack(values)
  return batch


class EpochOrder:
  """Maps a position in the concatenated per-epoch permutations to a record index."""

  def __init__(self, size: int, seed: int):
    self._size = size
    self._seed = seed
    self._cache: dict[int, np.ndarray] = {}  # the epochs the last batch touched

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:  # a batch spans at most a few epochs; keep memory flat
        self._cache.pop(next(iter(self._cache)))
      # Seeded by (seed, epoch) as a sequence: unlike seed + epoch, runs with
      # neighbouring seeds never share an epoch's order.
      self._cache[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self._size)
    return self._cache[epoch]

  def __call__(self, position: int) -> int:
    epoch, offset = divmod(position, self._size)
    return int(self._permutation(epoch)[offset])


def _check_positive(value: int, what: str) -> None:
  if value < 1:
    raise VMSError(f"{what} must be a positive integer, got {value}")


def _check_order_args(
  size: int, batch_size: int, seed: int, start_step: int, process_index: int, process_count: int
) -> None:
  _check_positive(batch_size, "batch_size")
  _check_positive(process_count, "process_count")
  if batch_size % process_count:
    raise VMSError(
      f"batch_size {batch_size} is not divisible by the number of "
      f"processes {process_count}; choose a multiple of {process_count}"
    )
  if not 0 <= process_index < process_count:
    raise VMSError(f"process_index {process_index} not in [0, {process_count})")
  if seed < 0 or start_step < 0:
    raise VMSError(f"seed and start_step must be >= 0, got seed={seed}, start_step={start_step}")
  if size == 0:
    raise VMSError("cannot train on an empty split")


def _position(step: int, row: int, batch_size: int, process_index: int, local: int) -> int:
  """Where row `row` of this process's part of global batch `step` is in the stream of
  epoch permutations (`EpochOrder` turns it into a record)."""
  return step * batch_size + process_index * local + row


def batch_positions(
  batch_size: int, start_step: int = 0, process_index: int = 0, process_count: int = 1
) -> Iterator[range]:
  """Yields, from `start_step` on, the stream positions of this process's rows of each
  global batch: what `train_batches`, `batch_indices` and the feature cache's batches
  read, so they can never drift apart."""
  local = batch_size // process_count
  for step in itertools.count(start_step):
    first = _position(step, 0, batch_size, process_index, local)
    yield range(first, first + local)


def batch_indices(
  size: int,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[np.ndarray]:
  """Yields (b,) int32 record indices of this process's batches from `start_step` on:
  the records `train_batches` with the same arguments yields, for a split that lives on
  the device and is gathered there."""
  _check_order_args(size, batch_size, seed, start_step, process_index, process_count)
  order = EpochOrder(size, seed)
  for positions in batch_positions(batch_size, start_step, process_index, process_count):
    yield np.asarray([order(p) for p in positions], np.int32)


def train_batches(
  source: Sequence,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  workers: int = 0,
) -> Iterator[Batch]:
  """Yields this process's training batches forever, starting at step `start_step`.

  Batch k is a pure function of (source, seed, k, process_index, process_count):
  see the module docstring for the order. `train_batches(..., start_step=k)` yields
  first exactly what the (k+1)-th `next()` of a stream started at 0 yields.

  Args:
    source: random-access examples (a `SplitSource`, or any sequence of dicts).
    batch_size: the global batch size B, summed over processes.
    seed: the data-order seed (>= 0).
    start_step: the step of the first batch to yield.
    process_index: this process, 0 <= process_index < process_count.
    process_count: the number of processes; must divide `batch_size`.
    workers: threads that read and decode batches ahead of the consumer (grain's
      prefetch); 0 reads each batch when it is asked for. The order is the same.

  Yields:
    Dicts of stacked numpy arrays with b = B / process_count rows: `image` uint8
    (b, 224, 224, 3), `vms` float32 (b, 224, 224, 2), `category` int32 (b,), and
    `score` float32 (b,) for datasets that have one.

  Raises:
    VMSError: empty source, or bad batch size, seed, step or process arguments.
  """
  if len(source) == 0:
    raise VMSError(f"cannot train on an empty source: {source!r}")
  _check_order_args(len(source), batch_size, seed, start_step, process_index, process_count)
  if workers < 0:
    raise VMSError(f"workers must be >= 0, got {workers}")

  local = batch_size // process_count
  order = EpochOrder(len(source), seed)
  records = grain.MapDataset.source(source)

  def record_of(element: int) -> dict[str, Any]:
    # Element j of this process's stream is row j % b of its batch j // b,
    # i.e. global position (j // b) * B + p * b + j % b.
    step, row = divmod(element, local)
    return records[order(_position(step, row, batch_size, process_index, local))]

  # Random access all the way: indexing `batches` at k reads only batch k.
  batches = (
    grain.MapDataset.range(_STREAM_LENGTH)
    .map(record_of)
    .map(_train_arrays)
    .batch(local, batch_fn=_stack)
  )
  if workers == 0:
    for step in itertools.count(start_step):
      yield batches[step]
    return
  # Threads suffice: decoding (PIL, zlib) releases the GIL. Grain keeps the order.
  options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
  yield from batches[start_step:].to_iter_dataset(options)


def read_split(source: Sequence, workers: int = 0) -> Batch:
  """Every record of a split, in record order, stacked as `train_batches` stacks a batch
  (`image`, `vms`, ...): for a split kept in device memory."""
  records = grain.MapDataset.source(source).map(_train_arrays)
  if workers:
    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
    return _stack(list(records.to_iter_dataset(options)))
  return _stack([records[i] for i in range(len(records))])


def _record_ids(source: Sequence) -> Sequence[str]:
  ids: Callable[[], Sequence[str]] | None = getattr(source, "ids", None)
  if ids is not None:
    return ids()
  return [source[i]["id"] for i in range(len(source))]


def eval_batches(source: Sequence, batch_size: int) -> Iterator[Batch]:
  """Yields the whole split once, in a fixed order (sorted by id).

  Args:
    source: random-access examples (a `SplitSource`, or any sequence of dicts
      with an `id`).
    batch_size: rows per batch; the last batch may be smaller.

  Yields:
    Dicts like those of `train_batches`, plus `id`: the list of the rows' ids.

  Raises:
    VMSError: bad batch size.
  """
  _check_positive(batch_size, "batch_size")
  ids = _record_ids(source)
  order = sorted(range(len(source)), key=ids.__getitem__)
  records = grain.MapDataset.source(source)
  batches = (
    grain.MapDataset.source(order)
    .map(lambda index: records[index])
    .map(_example_arrays)
    .batch(batch_size, batch_fn=_stack)
  )
  for k in range(len(batches)):
    yield batches[k]
