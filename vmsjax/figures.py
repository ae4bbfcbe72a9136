"""Figures for predictions, evaluations and studies: map panels, overlays, scatter plots,
per-category bar charts.

matplotlib is imported inside the functions (it is slow to import and the model never
needs it), and figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, not
through pyplot: no global figure state, no GUI backend, safe in any process.

Every figure has labelled axes and a colour bar wherever a map or a colour scale is
shown. Sizes are fixed (`figsize` x `DPI`, no tight bounding box), so a figure's pixel
size is known in advance: see `panel_size`.

The overlay is an image, not a figure: the blend rule is in `overlay`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 100
PANEL_INCHES = (3.6, 3.2)  # one map panel with its colour bar
STACKED_INCHES = (10.0, 7.0)  # stacked category bars: 1000 x 700 pixels
TRUE_COLOUR = (0.0, 1.0, 0.0)  # green: true VMS (paper Figs. 1 and 7)
FALSE_COLOUR = (1.0, 0.0, 0.0)  # red: false VMS
OVERLAY_OPACITY = 0.6


def panel_size(rows: int, cols: int) -> tuple[int, int]:
  """(width, height) in pixels of a figure of rows x cols panels."""
  return (round(PANEL_INCHES[0] * cols * DPI), round(PANEL_INCHES[1] * rows * DPI))


def _figure(rows: int, cols: int):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  # Constrained layout keeps labels and colour bars inside the fixed canvas.
  fig = Figure(
    figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained"
  )
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: Path) -> None:
  fig.savefig(path, dpi=DPI)


def overlay(
  image: np.ndarray, maps: np.ndarray, opacity: float = OVERLAY_OPACITY, peak: bool = False
) -> np.ndarray:
  """Paints the true VMS green and the false VMS red over an image.

  With t, f the true and false map values in [0, 1] at a pixel and o the opacity:

    out = (1 - o * max(t, f)) * image + o * 255 * (f, t, 0)

  so an empty pixel keeps the image, a pixel of one map at 1 becomes 60 % green (or
  red), and a pixel in both maps turns yellow. By default map values are used as they
  are, so overlays of different images compare; with `peak`, both maps are first
  divided by their joint maximum (the strongest pixel of either map becomes 1), which
  shows the shape of faint maps.

  Args:
    image: uint8 (H, W, 3).
    maps: (H, W, 2) in [0, 1] at the image's size.
    opacity: o above.
    peak: rescale the maps to a joint peak of 1 first.

  Returns:
    uint8 (H, W, 3).
  """
  image = np.asarray(image, np.float32)
  m = np.clip(np.asarray(maps, np.float32), 0.0, 1.0)
  if peak and m.max() > 0:
    m = m / m.max()
  t, f = m[..., 0], m[..., 1]
  alpha = opacity * np.maximum(t, f)[..., None]  # (H, W, 1)
  colour = np.stack([f, t, np.zeros_like(t)], axis=-1)  # (H, W, 3): red = false, green = true
  out = (1.0 - alpha) * image + opacity * 255.0 * colour
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_image(path: Path, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) array as a PNG of the same size."""
  from PIL import Image

  Image.fromarray(np.asarray(image, np.uint8)).save(path)


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of (S, S, C) float maps to (height, width, C), float32."""
  from PIL import Image

  maps = np.asarray(maps, np.float32)
  channels = [
    np.asarray(Image.fromarray(maps[..., c], mode="F").resize((width, height), Image.BILINEAR))
    for c in range(maps.shape[-1])
  ]
  return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def _map_axes(fig, ax, values: np.ndarray, title: str, cmap: str, vmax: float, label: str):
  im = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("x (pixels)")
  ax.set_ylabel("y (pixels)")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)


def prediction_figure(
  path: Path,
  image: np.ndarray,
  maps: np.ndarray,
  maps_full: np.ndarray,
  title: str = "",
  peak: bool = False,
) -> tuple[int, int]:
  """Three panels: the overlay, the true VMS and the false VMS (with colour bars).

  Args:
    path: the PNG to write.
    image: uint8 (H, W, 3).
    maps: (S, S, 2) the model-size prediction.
    maps_full: (H, W, 2) the prediction at the image's size (for the overlay).
    title: a figure title (e.g. the image id).
    peak: the overlay's rescaling (see `overlay`).

  Returns:
    The figure's (width, height) in pixels.
  """
  from matplotlib.patches import Patch

  fig = _figure(1, 3)
  axes = fig.subplots(1, 3)
  ax = axes[0]
  ax.imshow(overlay(image, maps_full, peak=peak))
  ax.set_title("overlay (maps scaled to peak 1)" if peak else "overlay", fontsize=9)
  ax.set_xlabel("x (pixels)")
  ax.set_ylabel("y (pixels)")
  ax.legend(
    handles=[
      Patch(color=TRUE_COLOUR, label="true VMS"),
      Patch(color=FALSE_COLOUR, label="false VMS"),
    ],
    loc="lower right",
    fontsize=7,
  )
  _map_axes(fig, axes[1], maps[..., 0], "true VMS (memorable)", "Greens", 1.0, "map value")
  _map_axes(fig, axes[2], maps[..., 1], "false VMS (falsely memorable)", "Reds", 1.0, "map value")
  if title:
    fig.suptitle(title, fontsize=10)
  _save(fig, path)
  return panel_size(1, 3)


def samples_figure(
  path: Path, mean: np.ndarray, std: np.ndarray, samples: int, title: str = ""
) -> tuple[int, int]:
  """2 x 2 panels: per-pixel mean and standard deviation of both maps over latent draws.

  Returns:
    The figure's (width, height) in pixels.
  """
  fig = _figure(2, 2)
  axes = fig.subplots(2, 2)
  smax = max(float(np.max(std)), 1e-6)  # one std scale for both maps, so they compare
  for c, (name, cmap) in enumerate((("true", "Greens"), ("false", "Reds"))):
    _map_axes(fig, axes[0, c], mean[..., c], f"{name} VMS: mean of {samples}", cmap, 1.0, "mean")
    _map_axes(fig, axes[1, c], std[..., c], f"{name} VMS: std of {samples}", "magma", smax, "std")
  if title:
    fig.suptitle(title, fontsize=10)
  _save(fig, path)
  return panel_size(2, 2)


def scatter_figure(
  path: Path,
  xy: np.ndarray,
  colours: Sequence[tuple[str, np.ndarray, str]],
  xlabel: str,
  ylabel: str,
  title: str = "",
) -> tuple[int, int]:
  """One scatter panel per colouring, each with its colour bar (the paper's Fig. 6).

  Args:
    path: the PNG to write.
    xy: (N, 2) point coordinates.
    colours: (panel title, (N,) values in [0, 1], colormap) per panel.
    xlabel, ylabel: axis labels.
    title: a figure title.

  Returns:
    The figure's (width, height) in pixels.
  """
  fig = _figure(1, len(colours))
  axes = np.atleast_1d(fig.subplots(1, len(colours)))
  size = float(np.clip(3000.0 / max(len(xy), 1), 2.0, 30.0))  # smaller points when many
  for ax, (name, values, cmap) in zip(axes, colours, strict=True):
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap=cmap, vmin=0.0, vmax=1.0, s=size)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label=f"{name} (normalised)")
  if title:
    fig.suptitle(title, fontsize=10)
  _save(fig, path)
  return panel_size(1, len(colours))


def category_bars(
  path: Path,
  categories: Sequence[str],
  panels: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
  ylabel: str,
  title: str = "",
  xlabel: str = "category",
  stacked: bool = False,
) -> tuple[int, int]:
  """Grouped bars per category: one panel per score or channel, one bar per series.

  Two layouts:

  - side by side (default, the paper's Fig. 5): panels in a row, `panel_size(1, P)`
    pixels, each with its legend above its bars and the category names slanted; the
    y axis starts at 0.
  - `stacked` (the paper's Fig. 4): panels one above the other on a `STACKED_INCHES`
    figure, sharing both axes so that they compare, a line at 0 (values may be
    negative), category names under the bottom panel only, and one legend for all
    panels below them.

  Args:
    path: the PNG to write.
    categories: the x tick labels, one per category (underscores shown as spaces).
    panels: (panel title, [(bar label, (C,) values), ...]) per panel; every panel
      has the same series. A NaN value draws no bar.
    ylabel: the y-axis label.
    title: a figure title.
    xlabel: the x-axis label.
    stacked: the layout (above).

  Returns:
    The figure's (width, height) in pixels.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if stacked:
    fig = Figure(figsize=STACKED_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, sharey=True))
  else:
    fig = _figure(1, len(panels))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
  x = np.arange(len(categories))
  names = [c.replace("_", " ") for c in categories]
  for ax, (panel, series) in zip(axes, panels, strict=True):
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
      ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_ylabel(ylabel)
    ax.set_title(panel, fontsize=10 if stacked else 9)
    if stacked:
      ax.axhline(0.0, color="black", linewidth=0.6)
      continue
    ax.set_xticks(x, names, rotation=60, fontsize=7)
    ax.set_xlabel(xlabel)
    top = np.nanmax(np.concatenate([*(np.asarray(v, np.float64) for _, v in series), [0.0]]))
    ax.set_ylim(0.0, 1.35 * top if top > 0 else 1.0)  # room for the legend above the bars
    ax.legend(fontsize=6, loc="upper center", ncols=len(series))
  if stacked:
    axes[-1].set_xticks(x, names, fontsize=8)
    axes[-1].set_xlabel(xlabel)
    # One legend for every panel, outside them so that it hides no bar.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
  if title:
    fig.suptitle(title, fontsize=11 if stacked else 10)
  _save(fig, path)
  if stacked:
    return round(STACKED_INCHES[0] * DPI), round(STACKED_INCHES[1] * DPI)
  return panel_size(1, len(panels))
