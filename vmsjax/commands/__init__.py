"""Sub-commands of `vmsjax` beyond train/evaluate/data, one module each.

A module here is found by `vmsjax.cli` without being listed anywhere. It must be
cheap to import (no jax, tfds or matplotlib at module level: import them inside
`run`) and define:

  NAME: str                       the sub-command, e.g. "predict"
  HELP: str                       one line for `vmsjax --help`
  add_arguments(parser) -> None   its argparse arguments
  run(args) -> int                the exit code; raise VMSError for anything the user can fix

and may set ACCEPTS_CONFIG_OVERRIDES = True to receive `--config.KEY=VALUE` arguments as
`args.config_overrides` (a list of "KEY=VALUE"); other commands refuse them.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def modules() -> list[ModuleType]:
  """The command modules of this package, sorted by name."""
  found = []
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not info.name.startswith("_"):
      found.append(importlib.import_module(f"{__name__}.{info.name}"))
  return found
