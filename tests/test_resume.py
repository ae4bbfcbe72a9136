"""Checkpoints: a run killed with SIGKILL and rerun ends bit-identical to one never stopped."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import restored, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir, data_dir, kill_after=None, extra=()):
  env = dict(os.environ)
  # The killed run is `vmsjax train` with a fault-injection hook in its loop.
  entry = ["vmsjax.cli", "train"] if kill_after is None else ["tests.killed_run", str(kill_after)]
  cmd = [
    sys.executable,
    "-m",
    *entry,
    "--config",
    "configs/synthetic.py:tiny",
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    *extra,
  ]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


_final_state = restored


def test_sigkill_and_rerun_is_bit_identical(tmp_path, synthetic_data_dir):
  config = tiny_config()  # 12 steps, checkpoint every 4
  # The straight run decodes on the host; the killed and resumed one keeps the split on
  # the device: both must end with the same bits.
  host, device = ["--config.data.placement=host"], ["--config.data.placement=device"]
  straight = _train(tmp_path / "straight", synthetic_data_dir, extra=host)
  assert straight.returncode == 0, straight.stderr[-2000:]

  killed = _train(tmp_path / "resumed", synthetic_data_dir, kill_after=10, extra=device)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  steps = sorted(
    int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir() if p.name.isdigit()
  )
  assert steps == [4, 8], steps  # steps 9 and 10 were lost with the process

  rerun = _train(tmp_path / "resumed", synthetic_data_dir, extra=device)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "resuming from checkpoint 8" in rerun.stderr

  a, meta_a = _final_state(tmp_path / "straight", config)
  b, meta_b = _final_state(tmp_path / "resumed", config)
  assert int(a.step) == int(b.step) == 12
  assert meta_a["next_batch"] == meta_b["next_batch"] == 12
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)

  # The metrics log has each step once, with the same numbers as the straight run.
  def losses(w):
    import json

    recs = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["split"] == "train"]

  assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


def test_workdir_with_another_config_is_refused(tmp_path, synthetic_data_dir):
  first = _train(tmp_path / "w", synthetic_data_dir, extra=["--config.train.steps_per_epoch=4"])
  assert first.returncode == 0, first.stderr[-2000:]
  other = _train(tmp_path / "w", synthetic_data_dir, extra=["--config.model.latent=6"])
  assert other.returncode == 2
  msg = [ln for ln in other.stderr.splitlines() if ln.startswith("vmsjax: error:")]
  assert msg and "different config" in msg[0] and "model.latent: 4 -> 6" in msg[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_checkpoint_damaged_throughout_is_moved_aside_and_the_run_redone(
  tmp_path, synthetic_data_dir, damage
):
  """Every file of the only checkpoint damaged: the rerun names it, moves it aside (never
  deletes it) and trains again from scratch, to the same bits."""
  extra = ["--config.train.steps_per_epoch=4"]
  first = _train(tmp_path / "w", synthetic_data_dir, extra=extra)
  assert first.returncode == 0, first.stderr[-2000:]
  config = tiny_config(**{"train.steps_per_epoch": 4})
  before, _ = _final_state(tmp_path / "w", config)
  ckpt = tmp_path / "w" / "checkpoints" / "4" / "state"
  files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.stat().st_size > 0)
  assert files
  for f in files:
    if damage == "truncate":
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    else:
      f.write_bytes(b"\x00garbage" * 10)
  rerun = _train(tmp_path / "w", synthetic_data_dir, extra=extra)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "skipping checkpoint 4 in" in rerun.stderr and ": damaged (" in rerun.stderr
  assert f"moved to {tmp_path / 'w' / 'damaged' / '4'}" in rerun.stderr
  assert "starting from scratch" in rerun.stderr and "Traceback" not in rerun.stderr
  assert (tmp_path / "w" / "damaged" / "4" / "state").is_dir()  # kept, to look at
  after, _ = _final_state(tmp_path / "w", config)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
    np.testing.assert_array_equal(x, y)
