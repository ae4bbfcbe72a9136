"""vmsjax.hostmem: transparent huge pages for XLA:CPU's per-step buffers."""

import json
import os
import subprocess
import sys

import pytest

from vmsjax import hostmem

HUGE_PAGES_POSSIBLE = hostmem.available()

# Runs as a program: restarts itself as the vmsjax command does, then runs a jitted
# gradient step whose (8192, 2048) activations (64 MB) are temporaries, and counts the
# minor page faults of three calls after the warm-up one.
PROBE = """
import json, os, resource
from vmsjax import hostmem
hostmem.reexec_with_huge_pages()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jax.grad(lambda w: (jnp.tanh(x @ w) ** 2).sum())(w))
x, w = jnp.ones((8192, 256)), jnp.ones((256, 2048))
f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(x, w).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
hostmem.reexec_with_huge_pages()  # a second call never restarts
print(json.dumps({"status": hostmem.status(), "faults": faults, "pid": os.getpid(),
                  "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
"""


def _run(code: str, **env) -> subprocess.CompletedProcess:
  env = {k: v for k, v in dict(os.environ, JAX_PLATFORMS="cpu", **env).items() if v is not None}
  return subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
  )


def _probe(**env) -> dict:
  out = _run(PROBE, **env)
  assert out.returncode == 0, out.stderr
  return dict(json.loads(out.stdout.strip().splitlines()[-1]), stderr=out.stderr)


@pytest.mark.skipif(not HUGE_PAGES_POSSIBLE, reason="needs glibc >= 2.35 and THP 'madvise'")
def test_restart_with_huge_pages_cuts_the_per_step_page_faults():
  on = _probe(VMSJAX_HUGE_PAGES="auto", GLIBC_TUNABLES=None, VMSJAX_HUGE_PAGES_ADDED=None)
  off = _probe(VMSJAX_HUGE_PAGES="off", GLIBC_TUNABLES=None, VMSJAX_HUGE_PAGES_ADDED=None)
  assert on["status"] == "on" and on["tunables"] == "glibc.malloc.hugetlb=1"
  assert off["status"] == "off (VMSJAX_HUGE_PAGES=off)" and off["tunables"] == ""
  # The restart is announced, once, naming the setting and how to turn it off.
  announced = [ln for ln in on["stderr"].splitlines() if "restarting with GLIBC_TUNABLES" in ln]
  assert len(announced) == 1 and "VMSJAX_HUGE_PAGES=off" in announced[0]
  assert "restarting" not in off["stderr"]
  # 4 KiB pages: the temporaries are faulted in afresh each call (~17k faults here);
  # 2 MiB pages: ~1k.
  assert off["faults"] > 3 * 5000, off
  assert on["faults"] < off["faults"] / 5, (on, off)


@pytest.mark.skipif(not HUGE_PAGES_POSSIBLE, reason="needs glibc >= 2.35 and THP 'madvise'")
def test_restart_keeps_other_tunables_and_off_removes_only_what_vmsjax_added():
  on = _probe(GLIBC_TUNABLES="glibc.malloc.tcache_count=16", VMSJAX_HUGE_PAGES_ADDED=None)
  assert on["tunables"] == "glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1"
  # A process started by vmsjax with the tunable, asked for off: the tunable goes.
  added = "glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1"
  off = _probe(VMSJAX_HUGE_PAGES="off", GLIBC_TUNABLES=added, VMSJAX_HUGE_PAGES_ADDED="1")
  assert off["tunables"] == "glibc.malloc.tcache_count=16"
  # The user's own setting is left alone, even when off.
  user = _probe(VMSJAX_HUGE_PAGES="off", GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
  assert user["tunables"] == "glibc.malloc.hugetlb=1"


def test_no_restart_once_jax_is_running():
  code = """
import json, os, jax.numpy as jnp
jnp.ones(2).block_until_ready()
from vmsjax import hostmem
hostmem.reexec_with_huge_pages()
print(json.dumps({"status": hostmem.status(), "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
"""
  out = _run(code, VMSJAX_HUGE_PAGES="on", GLIBC_TUNABLES=None)
  assert out.returncode == 0, out.stderr
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["tunables"] == "" and got["status"].startswith("off")
  if HUGE_PAGES_POSSIBLE:
    assert "already running" in got["status"]


def test_unknown_setting_is_a_clear_error_naming_the_variable(tmp_path):
  out = _run(
    "import sys; from vmsjax import cli; sys.argv = ['vmsjax', 'data', 'info', 'synthetic', "
    f"'--data_dir', {str(tmp_path)!r}]; sys.exit(cli.main())",
    VMSJAX_HUGE_PAGES="fast",
  )
  assert out.returncode == 2, out.stderr
  assert "VMSJAX_HUGE_PAGES='fast'" in out.stderr and "auto, on, off" in out.stderr


def test_accelerator_plugin_detection_finds_a_jax_plugins_module(tmp_path, monkeypatch):
  assert hostmem.accelerator_plugin() is None  # this CPU-only environment
  pkg = tmp_path / "jax_plugins" / "xla_fake"
  pkg.mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert hostmem.accelerator_plugin() == "jax_plugins.xla_fake"
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setenv("VMSJAX_HUGE_PAGES", "auto")
  assert not hostmem.wanted()  # a GPU/TPU host: left alone
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert hostmem.wanted() == HUGE_PAGES_POSSIBLE
