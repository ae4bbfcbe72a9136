"""A full disk (real ENOSPC on a small tmpfs) during a save, during metric writing and at
start-up is one line naming the workdir and the last good checkpoint; after space is
freed the same command resumes and ends bit-identical to a run that never failed.

The small filesystem is a tmpfs mounted in a user namespace (`unshare --user
--map-root-user --mount`), which needs no privileges where the kernel allows
unprivileged user namespaces; elsewhere the test is skipped, saying why.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import restored, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _can_mount_tmpfs(tmp_path) -> bool:
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(
    [
      "unshare",
      "--user",
      "--map-root-user",
      "--mount",
      "sh",
      "-c",
      f"mount -t tmpfs -o size=1m none {tmp_path}",
    ],
    capture_output=True,
  )
  return probe.returncode == 0


def test_full_disk_is_one_line_and_resumes(tmp_path, synthetic_data_dir, trained_workdir):
  mount = tmp_path / "fs"
  mount.mkdir()
  if not _can_mount_tmpfs(mount):
    pytest.skip("no unprivileged user namespaces here to mount a small tmpfs")
  out = tmp_path / "copied"
  run_phase = (
    f"{sys.executable} -m tests.full_disk_run {{}} {mount / 'w'} {out} "
    f"--config.data.data_dir={synthetic_data_dir} --config.log.progress=false"
  )
  script = f"mount -t tmpfs -o size=8m none {mount}" + "".join(
    f" && {run_phase.format(phase)}" for phase in ("save", "metrics", "start", "resume")
  )
  run = subprocess.run(
    ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  said = {}
  for line in run.stdout.strip().splitlines():
    if line.startswith("{"):
      said.update(json.loads(line))
  work = mount / "w"
  for phase, last in (("save", "step 4"), ("metrics", "step 4")):
    line = said[phase]
    assert line and line.startswith(f"no space left on the device writing to {work}"), said
    assert f"the last good checkpoint is {last} in {work}" in line
    assert "free space and rerun the same command to resume" in line
  assert said["start"].startswith(f"workdir {work} is not writable: no space left"), said
  assert said["probes_left"] == []  # the failed probe left no empty file behind
  assert said["resume"] is None
  # Orbax's and asyncio's own reports of the failure stay off the terminal.
  for noise in ("Traceback", "ERROR:absl", "Future exception", "Exception ignored"):
    assert noise not in run.stderr, run.stderr[-3000:]

  config = tiny_config(**{"data.data_dir": synthetic_data_dir})
  a, b = restored(out, config)[0], restored(trained_workdir, config)[0]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 13))
