"""Reference scores from a CSV (`id,score` lines, e.g. AMNet's) and joining their ids.

`read_scores_csv` reads the file; `match_ids` joins its ids to a dataset's. Every
study that reads ids from outside the dataset joins them through `match_ids`, so
`vmsjax predict`'s scores.csv, an external predictor's output over a
`vmsjax data export` folder, and hand-written CSVs all join the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

from vmsjax.errors import VMSError


def read_scores_csv(path: str | Path, column: str | None = None) -> dict[str, float]:
  """Reads per-image scores from a CSV: `id,score` rows, an optional header line.

  With a header, the id is the column named `id` (else the first) and the score the
  column `column` (default `score`, else the second of a two-column file). Blank lines
  and lines starting with `#` are skipped.

  Raises:
    VMSError: missing file, malformed line (named by its number), non-finite or
      non-numeric score, duplicate id, unknown column, or no rows.
  """
  path = Path(path)
  if not path.is_file():
    raise VMSError(f"scores file {path} not found; give a CSV of `id,score` lines")
  try:
    text = path.read_text(encoding="utf-8-sig")
  except (OSError, UnicodeDecodeError) as e:
    raise VMSError(f"cannot read scores file {path} ({e}); give a UTF-8 CSV of `id,score`") from e
  id_col, score_col = 0, 1
  header_done = False
  scores: dict[str, float] = {}
  first_line: dict[str, int] = {}
  for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
    if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
      continue
    row = [cell.strip() for cell in row]
    if not header_done:
      header_done = True
      if len(row) < 2 or not _is_number(row[1]) or column is not None:
        id_col, score_col = _header_columns(path, line_no, row, column)
        continue
    if len(row) <= max(id_col, score_col) or not row[id_col]:
      raise VMSError(
        f"{path} line {line_no}: expected {max(id_col, score_col) + 1} comma-separated "
        f"fields with an id in field {id_col + 1}, got {','.join(row)!r}"
      )
    value = row[score_col]
    if not _is_number(value) or not math.isfinite(float(value)):
      raise VMSError(
        f"{path} line {line_no}: score {value!r} of {row[id_col]!r} is not a finite number"
      )
    key = row[id_col]
    if key in scores:
      raise VMSError(
        f"{path} line {line_no}: id {key!r} already given on line {first_line[key]}; "
        "keep one score per image"
      )
    scores[key] = float(value)
    first_line[key] = line_no
  if not scores:
    raise VMSError(f"{path} holds no `id,score` rows")
  return scores


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _header_columns(
  path: Path, line_no: int, header: list[str], column: str | None
) -> tuple[int, int]:
  names = [h.lower() for h in header]
  if len(names) < 2:
    raise VMSError(
      f"{path} line {line_no}: expected `id,score` (or a header naming the columns), "
      f"got {','.join(header)!r}"
    )
  id_col = names.index("id") if "id" in names else 0
  wanted = (column or "score").lower()
  if wanted in names:
    return id_col, names.index(wanted)
  if column is None and len(names) == 2:
    return id_col, 1 - id_col
  raise VMSError(
    f"{path} line {line_no}: no column {wanted!r} in the header {header}; "
    "choose one with --score_column"
  )


# ------------------------------------------------------------------------ joining ids


def base_name(text: str) -> str:
  """The last component of a path, `/` or `\\` separated: "a/b\\c.png" -> "c.png"."""
  return re.split(r"[\\/]", text)[-1]


def stem(text: str) -> str:
  """The base name without its last extension: "dir/sun_1.jpg" -> "sun_1"."""
  return PurePosixPath(base_name(text)).stem


# Tried in order; a weaker level is only tried for ids the stronger ones left unmatched.
LEVELS: tuple[tuple[str, Callable[[str], str]], ...] = (
  ("exact", lambda text: text),
  ("name", base_name),
  ("stem", stem),
)
_LEVEL_WORDS = {"exact": "exact", "name": "by file name", "stem": "by stem"}


@dataclasses.dataclass(frozen=True)
class Matching:
  """How external ids joined a dataset's ids (see `match_ids`).

  Attributes:
    pairs: dataset id -> the external id that gives its value.
    levels: external ids matched at each level of `LEVELS` ("exact", "name", "stem").
    unmatched_data: dataset ids no external id matched, sorted.
    unmatched_external: external ids that match no dataset id, sorted.
    ambiguous: external id -> the dataset ids it could be (several share its base
      name or stem, or another external id already claims the one it matches).
  """

  pairs: dict[str, str]
  levels: dict[str, int]
  unmatched_data: list[str]
  unmatched_external: list[str]
  ambiguous: dict[str, list[str]]

  @property
  def complete(self) -> bool:
    """Every id on both sides matched, none ambiguous."""
    return not (self.unmatched_data or self.unmatched_external or self.ambiguous)

  def summary(self, data: str, external: str) -> str:
    """One line: matched, unmatched and ambiguous counts, with an example of each.

    Args:
      data: what the dataset ids are, e.g. "vischema/test".
      external: where the external ids come from, e.g. the CSV's path.
    """
    how = ", ".join(f"{n} {_LEVEL_WORDS[k]}" for k, n in self.levels.items() if n)
    parts = [f"{len(self.pairs)} matched" + (f" ({how})" if how else "")]
    if self.pairs:
      data_id, ext_id = next(iter(sorted(self.pairs.items())))
      parts[0] += f", e.g. {ext_id!r}" + (f" as {data_id!r}" if ext_id != data_id else "")
    parts.append(
      f"{len(self.unmatched_data)} of {data} unmatched"
      + (f" (e.g. {self.unmatched_data[0]!r})" if self.unmatched_data else "")
    )
    parts.append(
      f"{len(self.unmatched_external)} of {external} unmatched"
      + (f" (e.g. {self.unmatched_external[0]!r})" if self.unmatched_external else "")
    )
    ambiguous = sorted(self.ambiguous.items())
    parts.append(
      f"{len(ambiguous)} ambiguous"
      + (
        f" (e.g. {ambiguous[0][0]!r} could be " + " or ".join(map(repr, ambiguous[0][1])) + ")"
        if ambiguous
        else ""
      )
    )
    return f"ids of {external} against {data}: " + "; ".join(parts)


def match_ids(data_ids: Sequence[str], external_ids: Iterable[str]) -> Matching:
  """Joins external ids (a CSV's) to a dataset's ids: exactly, by base name, by stem.

  Each external id is matched at the first level of `LEVELS` where its key (the id
  itself, its base name with any folders stripped, its stem) equals the key of a
  dataset id. It is ambiguous, and matches nothing, when at that level several
  dataset ids share its key (`x.jpg` and `x.png` both have the stem `x`), or when
  the dataset id it finds is claimed by another external id as well (`a/x.png` and
  `b/x.png`, or `x.jpg` and `x.png` for one image `x.jpg`): the result never depends
  on the order of the rows. An id is only tried at a weaker level when the stronger
  ones found no dataset id at all for it.

  Args:
    data_ids: the dataset's ids, unique.
    external_ids: the ids to join, unique.

  Returns:
    A `Matching`.
  """
  data_ids = list(data_ids)
  remaining = sorted(set(external_ids))
  pairs: dict[str, str] = {}
  levels: dict[str, int] = {}
  ambiguous: dict[str, list[str]] = {}
  for level, key in LEVELS:
    index: dict[str, list[str]] = {}
    for data_id in data_ids:
      index.setdefault(key(data_id), []).append(data_id)
    claims: dict[str, list[str]] = {}  # dataset id -> external ids finding it here
    left = []
    for ext_id in remaining:
      found = index.get(key(ext_id), [])
      if not found:
        left.append(ext_id)
      elif len(found) > 1:
        ambiguous[ext_id] = sorted(found)
      else:
        claims.setdefault(found[0], []).append(ext_id)
    levels[level] = 0
    for data_id, ext_ids in claims.items():
      if len(ext_ids) == 1 and data_id not in pairs:
        pairs[data_id] = ext_ids[0]
        levels[level] += 1
      else:
        for ext_id in ext_ids:
          ambiguous[ext_id] = [data_id]
    remaining = left
  return Matching(
    pairs=pairs,
    levels=levels,
    unmatched_data=sorted(set(data_ids) - set(pairs)),
    unmatched_external=sorted(remaining),
    ambiguous=ambiguous,
  )


def join_scores(
  data_ids: Sequence[str],
  external: dict[str, float],
  data: str,
  where: str,
  warn: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], Matching]:
  """External scores per dataset id, through `match_ids`; refuses a join it cannot trust.

  Args:
    data_ids: the dataset's ids.
    external: external id -> score (from `read_scores_csv`).
    data: the dataset's name, for messages (e.g. "vischema/test").
    where: the scores' file, for messages.
    warn: told the one-line `Matching.summary` when the join is partial (some ids
      on either side unmatched); the study then runs on the images that matched.

  Returns:
    ({dataset id: score} of the matched images, the `Matching`).

  Raises:
    VMSError: an ambiguous id (the scores could go to the wrong image), or no id
      matched at all; one line with the counts and an example of each.
  """
  matching = match_ids(data_ids, external)
  line = matching.summary(data, where)
  if matching.ambiguous:
    raise VMSError(f"{line}; give each ambiguous id as the dataset's full file name (its `id`)")
  if not matching.pairs:
    raise VMSError(
      f"{line}; no id joins, so check the id column: ids are the dataset's file names"
      " (or their stems, or paths ending in them)"
    )
  if not matching.complete and warn is not None:
    warn(line)
  return {data_id: external[ext_id] for data_id, ext_id in matching.pairs.items()}, matching
