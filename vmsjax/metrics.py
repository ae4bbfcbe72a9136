"""Map metrics: MSE and 2-D Pearson correlation (MATLAB `corr2`), per channel.

Channels reported: `true` (VMS channel 0), `false` (channel 1) and `all`, the sum of
the two maps. A map that is constant over the image has no defined correlation: its
rho2D is NaN, it is left out of the mean and counted under `constant`.
"""

from __future__ import annotations

import numpy as np

CHANNELS: tuple[str, ...] = ("true", "false", "all")


def split_channels(maps: np.ndarray) -> dict[str, np.ndarray]:
  """(B, H, W, 2) -> {"true": (B, H, W), "false": (B, H, W), "all": (B, H, W)}."""
  maps = np.asarray(maps, np.float64)
  return {"true": maps[..., 0], "false": maps[..., 1], "all": maps[..., 0] + maps[..., 1]}


def mse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-image mean squared error: (B, H, W) x2 -> (B,)."""
  diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  return np.mean(np.square(diff).reshape(diff.shape[0], -1), axis=1)


def rho2d(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-image 2-D Pearson correlation (MATLAB `corr2`): (B, H, W) x2 -> (B,).

  NaN where either map is constant.
  """
  a = np.asarray(pred, np.float64).reshape(len(pred), -1)
  b = np.asarray(target, np.float64).reshape(len(target), -1)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  den = np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
  # A map whose per-pixel standard deviation is below 1e-9 counts as constant: its
  # correlation would be rounding noise.
  constant = (np.std(a, axis=1) < 1e-9) | (np.std(b, axis=1) < 1e-9)
  out = np.full(len(a), np.nan)
  out[~constant] = np.sum(a * b, axis=1)[~constant] / den[~constant]
  return out


def per_image(pred: np.ndarray, target: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
  """Per-image MSE and rho2D for each channel; maps are (B, H, W, 2) in [0, 1]."""
  p, t = split_channels(pred), split_channels(target)
  return {c: {"mse": mse(p[c], t[c]), "rho2d": rho2d(p[c], t[c])} for c in CHANNELS}


def summarise(values: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
  """Means over images: mse, mse_255 (the paper's 0-255 scale), rho2d, and counts."""
  out = {}
  for c, m in values.items():
    r = m["rho2d"]
    valid = np.isfinite(r)
    out[c] = {
      "mse": float(np.mean(m["mse"])),
      "mse_255": float(np.mean(m["mse"]) * 255.0**2),
      "rho2d": float(np.mean(r[valid])) if valid.any() else float("nan"),
      "images": int(len(r)),
      "constant": int((~valid).sum()),
    }
  return out


def centre_bias(height: int, width: int, sigma: float = 0.25) -> np.ndarray:
  """A fixed isotropic Gaussian at the image centre, peak 1; sigma as a fraction of the side."""
  y = (np.arange(height) + 0.5) / height - 0.5
  x = (np.arange(width) + 0.5) / width - 0.5
  d2 = (y[:, None] ** 2 + x[None, :] ** 2) / sigma**2
  return np.exp(-0.5 * d2)
