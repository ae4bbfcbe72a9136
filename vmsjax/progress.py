"""The training loop's progress line on stderr."""

from __future__ import annotations

import math
import sys
import time


class Progress:
  """A one-line progress bar on a terminal, a line per log step otherwise; nothing when
  disabled (`log.progress=false`, and on every process but the first)."""

  def __init__(self, total: int, batch: int, start: int, enabled: bool):
    self.total, self.batch, self.start = total, batch, start
    self.t0 = time.perf_counter()
    self.enabled = enabled
    self.tty = enabled and sys.stderr.isatty()

  def update(self, step: int, loss: float | None, force: bool = False) -> None:
    if not self.enabled:
      return
    done = step - self.start
    dt = max(time.perf_counter() - self.t0, 1e-9)
    sps = done / dt
    eta = (self.total - step) / sps if sps > 0 else float("inf")
    eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
    loss_s = f" loss {loss:.1f}" if loss is not None else ""
    width = 24
    filled = int(width * step / max(self.total, 1))
    line = (
      f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total}"
      f" {sps:.2f} steps/s {sps * self.batch:.1f} img/s ETA {eta_s}{loss_s}"
    )
    if self.tty:
      sys.stderr.write("\r" + line)
      sys.stderr.flush()
    elif force:
      print(line, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.tty:
      sys.stderr.write("\n")
