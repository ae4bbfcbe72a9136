"""Two JAX processes (2 simulated CPU devices each) train like one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import tiny_config
from vmsjax import distributed, inference, train
from vmsjax.errors import VMSError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _overrides(data_dir: str) -> list[str]:
  return [
    f"--config.data.data_dir={data_dir}",
    f"--config.train.steps_per_epoch={STEPS}",
    "--config.log.progress=False",
  ]


def test_two_processes_match_one_process(tmp_path, synthetic_data_dir):
  work = tmp_path / "two"
  procs = _start_pair([work, work], synthetic_data_dir)
  # Wait for both; as soon as one fails, stop the other (it would wait for its peer).
  deadline = time.monotonic() + 420
  try:
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      p.kill()
  outs = [p.communicate()[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
    assert p.returncode == 0, f"process {i} failed ({p.returncode}):\n{out[-3000:]}"

  # The same run in this process, on its 4 simulated devices.
  single = tmp_path / "one"
  config = tiny_config(
    **{"data.data_dir": synthetic_data_dir, "train.steps_per_epoch": STEPS, "log.progress": False}
  )
  train.train_and_evaluate(config, single)

  a, b = inference.load(work), inference.load(single)
  assert a.step == b.step == STEPS
  flat_a = dict(_leaves(a.state.params))
  flat_b = dict(_leaves(b.state.params))
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    # Gradients are summed across processes by gloo rather than inside one XLA
    # program, so the order of additions (and the last bits) may differ.
    np.testing.assert_allclose(value, flat_b[key], rtol=1e-4, atol=1e-6, err_msg=key)
  # Records are written once, by process 0, and match the single-process run's.
  rec_a = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
  rec_b = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rec_a] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r["loss"] for r in rec_a], [r["loss"] for r in rec_b], rtol=1e-4)


def _start_pair(workdirs, data_dir: str) -> list[subprocess.Popen]:
  """Starts `vmsjax train` as processes 0 and 1 of a job, 2 CPU devices each."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  return [
    subprocess.Popen(
      [
        *(sys.executable, "-m", "vmsjax.cli", "train", "--config", "configs/synthetic.py:tiny"),
        *("--workdir", str(workdir), "--coordinator_address", f"127.0.0.1:{port}"),
        *("--num_processes", "2", "--process_id", str(i)),
        *_overrides(data_dir),
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i, workdir in enumerate(workdirs)
  ]


def test_a_failing_process_exits_instead_of_hanging(tmp_path, synthetic_data_dir):
  """Process 0 stops on a user error after joining: it must exit, not wait for process 1
  in JAX's shutdown barrier while process 1 waits for it."""
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  procs = _start_pair([blocker / "run", tmp_path / "good"], synthetic_data_dir)
  try:
    out, _ = procs[0].communicate(timeout=240)
  finally:
    for p in procs:
      p.kill()
    procs[1].communicate()
  assert procs[0].returncode == 2, out[-3000:]
  assert "not writable" in out and "a_file" in out


def _leaves(tree):
  import jax

  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    yield jax.tree_util.keystr(path), np.asarray(leaf)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(mode="sometimes"), "--distributed must be one of"),
    (dict(coordinator_address="127.0.0.1:1"), "give all three"),
    (dict(mode="off", coordinator_address="h:1", num_processes=2, process_id=0), "contradicts"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"not in \[0, 2\)"),
  ],
)
def test_bad_distributed_options(kwargs, match):
  with pytest.raises(VMSError, match=match):
    distributed.initialize(**kwargs)


def test_single_process_is_default(monkeypatch):
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    monkeypatch.delenv(key, raising=False)
  assert distributed.initialize() is False
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert distributed.initialize() is False
