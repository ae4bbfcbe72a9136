"""What a run ran on: enough to tell, months later, why a number moved.

WORKDIR/environment.json (`record`, `write`) holds the package versions, the backend
and its devices, the CPU and its features, the whitelisted environment variables
(XLA_FLAGS, JAX_*, thread counts ...), the JAX settings that change numbers, the
dataset's fingerprint and the frozen trunk's checksum. `differences` compares two
records, leaving out what cannot change a result (time, pid, host, cache folders);
`warn_if_changed` says on stderr, in one line, when a workdir is resumed or evaluated
under another environment. docs/reproducibility.md says what each difference means.

`tree_checksum` identifies a parameter tree by value (the frozen trunk, for one), the
same on any machine for the same numbers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vmsjax.errors import VMSError


def tree_checksum(tree: Any) -> str:
  """sha256 (hex) of a pytree's leaves: their paths, dtypes, shapes and bytes, in path order.

  Two trees have the same checksum exactly when they hold the same arrays under the same
  names; where they live (host, devices, shardings) does not matter.
  """
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)  # a replicated array of a multi-process job
    a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


# What a run's numbers can depend on besides its config and data: recorded in the
# workdir's environment.json when it trains, compared when it is resumed, evaluated or
# reproduced.
FILE = "environment.json"
FORMAT = 1

# Environment variables are recorded only under these prefixes (or with these exact
# names): a whitelist, so that tokens and passwords in the environment never reach a
# workdir that may be shared.
# TensorFlow's own variables only: a bare "TF_" would take in Terraform's (TF_VAR_*).
ENV_PREFIXES = (
  "JAX_",
  "XLA_",
  "TF_CPP_",
  "TF_XLA_",
  "TF_GPU_",
  "TF_ENABLE_",
  "TF_FORCE_",
  "TF_CUDNN_",
  "TF_DETERMINISTIC",
  "CUDA_",
  "NCCL_",
  "TPU_",
  "LIBTPU_",
  "ROCR_",
  "HIP_",
)
ENV_NAMES = (
  "OMP_NUM_THREADS",
  "MKL_NUM_THREADS",
  "OPENBLAS_NUM_THREADS",
  "NVIDIA_VISIBLE_DEVICES",
)
# ... and never a name that looks like a secret, even under a whitelisted prefix.
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "KEY", "AUTH")

# JAX settings that change the numbers a program computes (random bits, precision).
JAX_SETTINGS = (
  "jax_enable_x64",
  "jax_default_matmul_precision",
  "jax_default_prng_impl",
  "jax_threefry_partitionable",
  "jax_numpy_rank_promotion",
)

# CPU features that change what XLA:CPU generates (vector width, fused multiply-add):
# two CPUs with the same features run the same machine code.
CPU_FEATURES = (
  "sse4_1",
  "sse4_2",
  "avx",
  "avx2",
  "fma",
  "f16c",
  "avx512f",
  "avx512bw",
  "avx512dq",
  "avx512vl",
  "avx512_bf16",
  "avx512_fp16",
  "avx512_vnni",
  "amx_bf16",
  "amx_tile",
  "asimd",
  "sve",
  "sve2",
)

# Keys (dotted, as `differences` names them) that do not change what a run computes:
# when and where it ran, where the caches and data live, and speed-only settings.
IGNORED = (
  "time",
  "pid",
  "host",
  "argv",
  "format",
  "packages.huge_pages",  # speed only (vmsjax/hostmem.py)
  "dataset.data_dir",
  "env.JAX_COMPILATION_CACHE_DIR",
  "env.JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
  "env.JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
  "env.TF_CPP_MIN_LOG_LEVEL",
  "env.XLA_PYTHON_CLIENT_PREALLOCATE",
  "env.XLA_PYTHON_CLIENT_MEM_FRACTION",
)


DATASET_KEYS = ("name", "version", "config", "fingerprint", "data_dir")


def record(config: Any, dataset: dict | None, enc_params: Any) -> dict:
  """What this process runs on, for a run with `config`, `dataset` and trunk `enc_params`.

  Args:
    config: the run's config (its encoder settings are recorded beside the checksum).
    dataset: `vmsjax.data.catalogue.dataset_record` of the run's data, or None where
      it is not at hand (predicting images in the wild): the record then has no
      "dataset" section, and `differences` does not compare one.
    enc_params: the frozen trunk's parameters (any placement).

  Returns:
    A JSON-serialisable dict: "packages" (`records.package_versions`), "backend"
    (platform, its version, device kind and counts, process count), "cpu" (model,
    cores, features), "os", "env" (whitelisted variables), "jax_config", "dataset"
    (name, version, fingerprint), "encoder" (weights file, preprocessing, checksum),
    and "time", "pid", "host", "argv" (recorded, never compared).
  """
  import os
  import platform
  import socket
  import sys
  import time

  from vmsjax import records

  devices = jax.devices()
  first = devices[0]
  encoder = config.model.encoder
  out = {
    "format": FORMAT,
    "packages": records.package_versions(),
    "backend": {
      "platform": jax.default_backend(),
      "platform_version": str(getattr(first.client, "platform_version", "unknown")),
      "device_kind": str(first.device_kind),
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
    },
    "cpu": cpu_info(),
    "os": {"system": platform.system(), "release": platform.release()},
    "env": environment_variables(os.environ),
    "jax_config": {name: _jax_setting(name) for name in JAX_SETTINGS},
    "encoder": {
      "weights": str(encoder.weights) or "random",
      "preprocessing": str(encoder.preprocessing),
      "checksum": tree_checksum(enc_params),
    },
    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "argv": list(sys.argv),
  }
  if dataset is not None:
    out["dataset"] = {k: dataset.get(k) for k in DATASET_KEYS}
  return out


def _jax_setting(name: str) -> Any:
  try:
    value = getattr(jax.config, name)
  except AttributeError:  # a setting this jax does not have
    return "<absent>"
  return value if isinstance(value, bool | int | float | type(None)) else str(value)


def environment_variables(environ: Any) -> dict[str, str]:
  """The whitelisted variables of `environ` (ENV_PREFIXES, ENV_NAMES), secrets left out."""
  out = {}
  for name, value in environ.items():
    if not (name.startswith(ENV_PREFIXES) or name in ENV_NAMES):
      continue
    if any(word in name.upper() for word in SECRET_WORDS):
      continue
    out[name] = value
  return dict(sorted(out.items()))


def cpu_info() -> dict:
  """The CPU's model name, core counts and the features XLA:CPU's code depends on.

  Read from /proc/cpuinfo (Linux), else `lscpu`, else the `platform` module.
  """
  import os
  import platform

  model, flags = "", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not model and key in ("model name", "hardware", "cpu model", "processor name"):
          model = value.strip()
        elif not flags and key in ("flags", "features"):
          flags = set(value.split())
  except OSError:
    pass
  if not model:
    model = _lscpu_model() or platform.processor() or platform.machine() or "unknown"
  try:
    usable = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # not Linux
    usable = os.cpu_count()
  return {
    "model": model,
    "machine": platform.machine(),
    "cores": os.cpu_count(),
    "usable_cores": usable,
    "features": sorted(flags & set(CPU_FEATURES)),
  }


def _lscpu_model() -> str:
  import subprocess

  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return ""
  for line in out.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "Model name":
      return value.strip()
  return ""


def write(workdir: str | Path, env: dict) -> None:
  """Writes `env` (from `record`) to WORKDIR/environment.json, atomically."""
  from vmsjax import records

  records.write_json(Path(workdir) / FILE, records.json_safe(env))


def read(workdir: str | Path) -> dict | None:
  """WORKDIR/environment.json, or None when the run did not write one.

  Raises:
    VMSError: the file is not valid JSON.
  """
  path = Path(workdir) / FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise VMSError(
      f"{path} is not valid JSON ({e.msg}); delete it (the run's environment is then "
      "unknown) or restore it from a copy"
    ) from e


def recorded(workdir: str | Path) -> dict | None:
  """The environment a workdir's run recorded: environment.json, or for a run made
  before it existed what versions.json and dataset.json tell (packages and dataset
  only), or None when it has neither."""
  env = read(workdir)
  if env is not None:
    return env
  out: dict = {}
  for name, section in (("versions.json", "packages"), ("dataset.json", "dataset")):
    path = Path(workdir) / name
    try:
      out[section] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
      continue
  if "dataset" in out:  # dataset.json holds more than the environment keeps
    out["dataset"] = {k: out["dataset"].get(k) for k in DATASET_KEYS}
  return out or None


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} for every leaf of a nested dict (lists are leaves)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _label(key: str) -> str:
  # Package versions read best by the package's name alone: "jax: 0.4.30 -> 0.4.31".
  return key[len("packages.") :] if key.startswith("packages.") else key


def _shown(value: Any) -> str:
  if isinstance(value, list):
    return ",".join(str(v) for v in value) or "none"
  if isinstance(value, str) and (not value or " " in value):
    return repr(value)
  return str(value)


def differences(saved: dict | None, current: dict | None) -> list[str]:
  """What differs between two environment records, as short "key: a -> b" strings.

  Only the sections both records have are compared (a record written by an older vmsjax
  lacks some: that is no change); inside a section a key one side lacks shows as
  <absent>. Keys in IGNORED (time, pid, host, cache folders ...) are left out.

  Returns:
    e.g. ["jax: 0.4.30 -> 0.4.31", "env.XLA_FLAGS: <absent> -> '--xla_cpu_...'"], in
    the records' key order (packages first); [] when they agree or one is None.
  """
  if not saved or not current:
    return []
  sections = [k for k in saved if k in current]
  a = flat({k: saved[k] for k in sections})
  b = flat({k: current[k] for k in sections})
  out = []
  for key in list(a) + [k for k in b if k not in a]:
    if key in IGNORED:
      continue
    old, new = a.get(key, "<absent>"), b.get(key, "<absent>")
    if old != new:
      out.append(f"{_label(key)}: {_shown(old)} -> {_shown(new)}")
  return out


def table(a: dict | None, b: dict | None, headings: tuple[str, str]) -> list[str]:
  """Two records side by side as the lines of a Markdown table, one row per key."""
  fa, fb = flat(a or {}), flat(b or {})
  lines = [f"| key | {headings[0]} | {headings[1]} |", "| --- | --- | --- |"]
  for key in list(fa) + [k for k in fb if k not in fa]:
    cells = [_shown(side[key]) if key in side else "" for side in (fa, fb)]
    lines.append(f"| {key} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return lines


def summary(diffs: list[str], limit: int = 6) -> str:
  """`diffs` on one line: the first `limit`, then how many more."""
  shown = "; ".join(diffs[:limit])
  return shown + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def warn_if_changed(workdir: str | Path, current: dict) -> list[str]:
  """Prints one warning line on stderr when `workdir`'s run recorded another environment.

  Args:
    workdir: a training workdir (environment.json, or versions.json for older runs).
    current: `record(...)` of this process.

  Returns:
    The differences (`differences`); [] (and nothing printed) when there are none or
    the workdir recorded no environment.
  """
  import sys

  diffs = differences(recorded(workdir), current)
  if diffs:
    print(
      f"vmsjax: warning: {workdir} was recorded under another environment: {summary(diffs)}",
      file=sys.stderr,
    )
  return diffs
