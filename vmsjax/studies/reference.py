"""Reference scores from a CSV: `id,score` lines (an external predictor such as AMNet)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

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
