"""Host memory for XLA:CPU: back large buffers with transparent huge pages.

XLA:CPU allocates a step's temporary buffers with malloc and frees them when the step
ends: ~500 MB for the cached-feature step at the paper's shapes (batch 32), ~570 MB for
the full training step. glibc serves blocks that large with a fresh `mmap` and returns
them with `munmap`, so every step faults its buffers in again, 4 KiB at a time:
~100,000 page faults and ~150 ms of kernel time per cached-feature step on the 2-core
machine of docs/benchmarks.md, a quarter of the step. glibc's tunable
`glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc ask for transparent huge pages on
the blocks it maps, so the same buffers fault in 2 MiB at a time (~600 faults).

glibc reads tunables only when a process starts, so `reexec_with_huge_pages()` adds
the tunable to `GLIBC_TUNABLES` and replaces the process with a fresh copy of itself
(`os.execv`, same PID and arguments) before anything else has run. The `vmsjax` command
and the experiment scripts call it first thing. Nothing about it is hidden: the restart
prints one line on stderr, and every run records `status()` as `huge_pages` in its
versions.json (docs/speed.md argues this default against an opt-in). From your own Python, start the
interpreter with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` instead.

It does nothing, and says why in `status()`, where it cannot help or was not measured:
without glibc 2.35+ (macOS, musl, older Linux), when the kernel's transparent huge
pages are `never` (or `always`: then every large block gets them already), when a JAX
accelerator plugin is installed (GPU/TPU hosts; `JAX_PLATFORMS=cpu` turns it back on),
once JAX's client is running, and with `VMSJAX_HUGE_PAGES=off`. `VMSJAX_HUGE_PAGES=on`
forces it where glibc and the kernel allow it.

A different fix, setting `M_ARENA_MAX=1`, `M_MMAP_MAX=0` and a large trim threshold
with `mallopt` in-process, removed the faults entirely but funnelled every thread's
allocations through one lock: XLA's (multi-threaded) compilations became 1.5x slower
and the test suite 20% slower; huge pages cost neither.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import sys
from pathlib import Path

from vmsjax.errors import VMSError

ENV = "VMSJAX_HUGE_PAGES"
CHOICES = ("auto", "on", "off")
TUNABLE = "glibc.malloc.hugetlb"
ADDED_MARK = "VMSJAX_HUGE_PAGES_ADDED"  # set when vmsjax added the tunable itself
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def choice() -> str:
  """The user's setting of VMSJAX_HUGE_PAGES (default auto).

  Raises:
    VMSError: it holds something other than auto, on or off.
  """
  value = os.environ.get(ENV, "auto").strip().lower() or "auto"
  if value not in CHOICES:
    raise VMSError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)} (or unset it)")
  return value


def accelerator_plugin() -> str | None:
  """The name of an installed JAX accelerator plugin (CUDA, ROCm, TPU), or None."""
  if importlib.util.find_spec("libtpu") is not None:
    return "libtpu"
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations:
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
      return f"jax_plugins.{module.name}"
  for entry in importlib.metadata.entry_points(group="jax_plugins"):
    return entry.name
  return None


def thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode (always, madvise, never), or None if unknown."""
  try:
    text = THP_MODE_FILE.read_text()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else None


def _glibc_with_tunable() -> bool:
  if platform.system() != "Linux":
    return False
  lib, version = platform.libc_ver()
  try:
    return lib == "glibc" and tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)
  except ValueError:
    return False


def available() -> bool:
  """Whether this host can give malloc'd blocks huge pages through the tunable: glibc
  2.35 or later on Linux, kernel THP mode `madvise`."""
  return _glibc_with_tunable() and thp_mode() == "madvise"


def _tunable_entries() -> list[str]:
  """The NAME=VALUE entries of GLIBC_TUNABLES."""
  return [e for e in os.environ.get("GLIBC_TUNABLES", "").split(":") if e]


def _tunable_value() -> str | None:
  """This module's tunable's value in GLIBC_TUNABLES, or None when it is not there."""
  values = [e.split("=", 1) for e in _tunable_entries()]
  return next((v[1] if len(v) == 2 else "" for v in values if v[0] == TUNABLE), None)


def _tunables_with(on: bool) -> str:
  """GLIBC_TUNABLES with this module's entry set (on) or removed (off)."""
  entries = [e for e in _tunable_entries() if e.split("=", 1)[0] != TUNABLE]
  if on:
    entries.append(f"{TUNABLE}=1")
  return ":".join(entries)


def _backend_initialised() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  probe = getattr(bridge, "backends_are_initialized", None)
  return bool(probe and probe())


def status() -> str:
  """Whether this process's large buffers get huge pages: "on", or "off (why)"."""
  if _tunable_value() == "1" and available():
    return "on"
  if thp_mode() == "always":
    return "on (kernel transparent huge pages: always)"
  return f"off ({_reason_off()})"


def _reason_off() -> str:
  if not _glibc_with_tunable():
    return "needs glibc 2.35 or later on Linux"
  mode = thp_mode()
  if mode != "madvise":
    return f"kernel transparent huge pages: {mode or 'unknown'}"
  if choice() == "off":
    return f"{ENV}=off"
  if _backend_initialised():
    return "JAX was already running when vmsjax could have set it"
  plugin = _plugin_in_the_way()
  if plugin:
    return f"accelerator plugin {plugin}; {ENV}=on forces it"
  return "not set up: start through the vmsjax command or set GLIBC_TUNABLES"


def _plugin_in_the_way() -> str | None:
  if choice() == "on" or os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return None
  return accelerator_plugin()


def wanted() -> bool:
  """Whether this process should run with the tunable (see the module docstring)."""
  return choice() != "off" and available() and _plugin_in_the_way() is None


def reexec_with_huge_pages() -> None:
  """Restarts this process with GLIBC_TUNABLES set as `wanted()` says, if it is not yet.

  Call it first thing in a program's entry point, before any computation: it does not
  return when it restarts the process. It never restarts a process whose JAX client is
  running, and restarts at most once (the restarted process finds the setting in place).
  """
  if _backend_initialised() or not sys.executable or len(sys.orig_argv) < 2:
    return  # running, or no command line to restart with (an embedded interpreter)
  has = _tunable_value() is not None
  want = wanted()
  if want and not has:
    env = dict(os.environ, GLIBC_TUNABLES=_tunables_with(True), **{ADDED_MARK: "1"})
  elif not want and has and os.environ.get(ADDED_MARK) == "1":
    env = dict(os.environ, GLIBC_TUNABLES=_tunables_with(False))  # ours, not the user's
    env.pop(ADDED_MARK)
    if not env["GLIBC_TUNABLES"]:
      env.pop("GLIBC_TUNABLES")
  else:
    return
  if want:  # announced, never silent: the process is about to be replaced
    print(
      f"vmsjax: restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} (huge pages for XLA:CPU's "
      f"buffers, docs/speed.md; {ENV}=off to start without)",
      file=sys.stderr,
    )
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return  # keep running as we are: slower on CPU, nothing else changes
