"""Runs nobody watches: one run per workdir, a damaged checkpoint or dataset file, a NaN
stop followed by a rerun (issue 16). The full-disk cases are in tests/test_full_disk.py."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import restored, tiny_config
from vmsjax import cli, train
from vmsjax import workdir as workdir_lib
from vmsjax.errors import VMSError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _train_steps(path):
  import json

  lines = (path / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["step"] for line in lines]


def test_second_run_is_refused_and_the_first_is_unharmed(
  tmp_path, synthetic_data_dir, trained_workdir
):
  config = tiny_config(**{"data.data_dir": synthetic_data_dir})
  work = tmp_path / "w"
  refused = []

  def second_run(step, members):
    if step == 2:  # while the first run holds the workdir, another one starts in it
      with pytest.raises(VMSError) as e:
        train.train_and_evaluate(
          tiny_config(**{"data.data_dir": synthetic_data_dir, "seed": 1}), work
        )
      refused.append(str(e.value))

  train.train_and_evaluate(config, work, hooks=[second_run])
  assert refused and f"workdir {work} is in use by pid {os.getpid()} on " in refused[0]
  assert " since " in refused[0]
  # The first run went on as if alone: the same bits as the session's tiny run, each
  # step logged once, its config kept.
  _assert_same_state(restored(work, config)[0], restored(trained_workdir, config)[0])
  assert _train_steps(work) == list(range(1, 13))
  assert '"seed": 0' in (work / "config.json").read_text()


def test_lock_of_a_killed_process_does_not_block(tmp_path):
  work = tmp_path / "w"
  work.mkdir()
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time\nfrom vmsjax import workdir\nworkdir.Lock(sys.argv[1]).acquire()\n"
      "print('locked', flush=True)\ntime.sleep(600)",
      str(work),
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(VMSError, match=f"is in use by pid {holder.pid} on "):
      workdir_lib.Lock(work).acquire()
  finally:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
  assert (work / ".lock").read_text().startswith(f"pid {holder.pid} ")  # left behind
  lock = workdir_lib.Lock(work)
  lock.acquire()  # the kernel dropped the dead process's flock
  assert (work / ".lock").read_text().startswith(f"pid {os.getpid()} ")
  lock.release()


def _damage_latest(work, step):
  files = [p for p in (work / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  with open(biggest, "r+b") as f:
    f.truncate(100)


def test_damaged_latest_checkpoint_falls_back(
  tmp_path, synthetic_data_dir, trained_workdir, capsys
):
  config = tiny_config(**{"data.data_dir": synthetic_data_dir})
  work = tmp_path / "w"
  shutil.copytree(trained_workdir, work)
  _damage_latest(work, 12)

  # evaluate (read-only) reports the step before, says why, and moves nothing.
  code = cli.main(["evaluate", "--workdir", str(work), "--baselines", "none"])
  out, err = capsys.readouterr()
  assert code == 0, err
  assert "at step 8 on synthetic/test" in out
  assert f"skipping checkpoint 12 in {work / 'checkpoints'}: damaged (" in err
  assert "Exception ignored" not in err and "pybind11" not in err and "Traceback" not in err
  assert (work / "checkpoints" / "12").is_dir()
  # Asked for the damaged step by name, it is one line.
  code = cli.main(["evaluate", "--workdir", str(work), "--step", "12", "--baselines", "none"])
  err = capsys.readouterr().err
  assert code == 2 and "checkpoint 12" in err and "cannot be restored" in err
  assert len(err.strip().splitlines()) == 1, err

  # train moves it aside (never deletes it) and redoes steps 9-12 from checkpoint 8.
  final = train.train_and_evaluate(config, work)
  err = capsys.readouterr().err
  assert f"moved to {work / 'damaged' / '12'}" in err and "resuming from checkpoint 8" in err
  assert "Exception ignored" not in err and "Traceback" not in err
  assert (work / "damaged" / "12" / "state").is_dir()
  _assert_same_state(jax.device_get(final), restored(trained_workdir, config)[0])
  _assert_same_state(restored(work, config)[0], restored(trained_workdir, config)[0])
  assert _train_steps(work) == list(range(1, 13))


def test_truncated_dataset_file_is_one_line(tmp_path, synthetic_data_dir, capsys):
  # A copy of the built dataset made of hard links, with one record file cut in half.
  data = tmp_path / "data"
  shutil.copytree(synthetic_data_dir, data, copy_function=os.link)
  victim = sorted(data.rglob("*train.array_record-00001-of-*"))[0]
  content = victim.read_bytes()
  victim.unlink()  # the hard link, not the session's file
  victim.write_bytes(content[: len(content) // 2])
  code = cli.main(
    [
      "train",
      "--config",
      "configs/synthetic.py:tiny",
      "--workdir",
      str(tmp_path / "w"),
      f"--config.data.data_dir={data}",
    ]
  )
  err = capsys.readouterr().err
  assert code == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("vmsjax: error: dataset file "), err
  assert str(victim) in lines[0] and "is damaged" in lines[0]
  assert f"vmsjax data build synthetic --data_dir {data}" in lines[0]


def test_nan_stop_then_rerun_with_a_sane_config(
  tmp_path, synthetic_data_dir, trained_workdir, capsys
):
  work = tmp_path / "w"
  with pytest.raises(VMSError, match="NaN/Inf at step 2.*no checkpoint was written"):
    train.train_and_evaluate(
      tiny_config(**{"data.data_dir": synthetic_data_dir, "optim.learning_rate": 1e6}), work
    )
  import json

  recs = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs] == [1, 2]  # the good step and the bad one
  assert recs[0]["loss"] is not None and np.isfinite(recs[0]["loss"])
  assert recs[1]["grad_norm"] is None  # not finite: written as JSON null
  capsys.readouterr()

  # The advice was to lower the learning rate: a workdir with no checkpoint takes it.
  config = tiny_config(**{"data.data_dir": synthetic_data_dir})
  final = train.train_and_evaluate(config, work)
  err = capsys.readouterr().err
  assert f"{work} has no checkpoint; this run's config replaces its config.json" in err
  assert "optim.learning_rate: 1000000.0 -> 0.001" in err
  assert _train_steps(work) == list(range(1, 13))
  _assert_same_state(jax.device_get(final), restored(trained_workdir, config)[0])
  # With a checkpoint, another config is still refused.
  with pytest.raises(VMSError, match="holds a run with a different config"):
    train.train_and_evaluate(tiny_config(**{"data.data_dir": synthetic_data_dir, "seed": 3}), work)


def test_tensorboard_shows_each_step_once_after_a_kill(tmp_path, synthetic_data_dir):
  from tensorboard.backend.event_processing import event_accumulator

  from tests.test_resume import _train

  killed = _train(
    tmp_path / "w", synthetic_data_dir, kill_after=10, extra=["--config.log.every_steps=1"]
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  time.sleep(0.01)  # event files are named by the second they were opened in
  rerun = _train(tmp_path / "w", synthetic_data_dir, extra=["--config.log.every_steps=1"])
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  acc = event_accumulator.EventAccumulator(str(tmp_path / "w" / "tb"))
  acc.Reload()
  steps = [e.step for e in acc.Scalars("train/loss")]
  assert steps == list(range(1, 13))  # 9 and 10 were logged by the killed run too
