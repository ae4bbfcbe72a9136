"""Dataset specs on the command line: `DATASET:SPLIT[+SPLIT...]`.

DATASET is a name of the catalogue, with its config after a slash (`lamem/subset10k`);
each SPLIT is a split of it, optionally with a tfds slice (`test[:32]`). The spec is
cut at its first colon, so a slice's own colon stays in the split. `A+B` names several
splits, read one after the other (`vmsjax study`); a command that reads one split asks
for exactly one.
"""

from __future__ import annotations

from vmsjax.errors import VMSError

FORM = "DATASET:SPLIT[+SPLIT...], e.g. synthetic:test or synthetic:train+test"
SINGLE_FORM = "DATASET:SPLIT, e.g. synthetic:test"


def parse(text: str, flag: str = "", single: bool = False) -> tuple[str, tuple[str, ...]]:
  """`DATASET:SPLIT[+SPLIT...]` -> (dataset, splits).

  Args:
    text: the spec, e.g. "vischema:train+test" or "synthetic:test[:32]".
    flag: the option that gave it (e.g. "--data"), named in the error message.
    single: exactly one split is allowed.

  Returns:
    The dataset name and the splits in the order given, e.g. ("vischema", ("train",
    "test")).

  Raises:
    VMSError: no colon, an empty name or split, or several splits where one is allowed;
      the one-line message names the spec and shows the expected form.
  """
  name, sep, rest = text.partition(":")
  splits = tuple(rest.split("+"))
  if not sep or not name or not all(splits) or (single and len(splits) > 1):
    where = f"{flag} " if flag else ""
    raise VMSError(f"{where}{text!r}: expected {SINGLE_FORM if single else FORM}")
  return name, splits
