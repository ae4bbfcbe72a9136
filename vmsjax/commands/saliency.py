"""`vmsjax saliency`: GBVS saliency maps for image files and folders.

  vmsjax saliency IMAGES_OR_DIRS... --out DIR [--png heat|grey|none] [--batch_size 8]

For each image, `DIR/<name>.npy` (float32 (H, W) in [0, 1], the image's own size) and
`DIR/<name>.png`. Grey files (Pillow modes L, LA, 1, I, I;16) are processed as grey,
without the colour channel, as MATLAB's gbvs does for a 2-D image. A folder
contributes its image files (by extension, not recursive); a file named on the command
line is always tried. Unreadable images are named on stderr and skipped, the others
written; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from vmsjax.errors import VMSError

NAME = "saliency"
HELP = "GBVS saliency maps (.npy and .png) for image files or folders"

# Pillow modes that MATLAB's imread returns as a 2-D (grey) array: GBVS then skips the
# colour channel, so these files are passed on as grey.
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
PNG_STYLES = ("heat", "grey", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The arguments of `vmsjax saliency`."""
  parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
  parser.add_argument("--out", required=True, help="folder for <name>.npy and <name>.png")
  parser.add_argument(
    "--png",
    choices=PNG_STYLES,
    default="heat",
    help="heat: jet colour map with a colour bar (matplotlib); grey: the map as an 8-bit "
    "grey PNG of the image's size; none: only .npy (default heat)",
  )
  parser.add_argument(
    "--batch_size", type=int, default=8, help="images of one size computed together (default 8)"
  )


def collect(inputs: list[str]) -> list[str]:
  """The image files named by `inputs`: files as given, folders' images sorted by name.

  Raises:
    VMSError: an input that does not exist, or nothing to process.
  """
  files = []
  for item in inputs:
    if os.path.isdir(item):
      names = sorted(os.listdir(item))
      files += [
        os.path.join(item, n)
        for n in names
        if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, n))
      ]
    elif os.path.exists(item):
      files.append(item)
    else:
      raise VMSError(f"{item} does not exist; give image files or folders of images")
  if not files:
    raise VMSError(
      f"no images found in {', '.join(inputs)} (extensions: {' '.join(IMAGE_EXTENSIONS)})"
    )
  return files


def output_names(files: list[str]) -> list[str]:
  """`<stem>` per file; refuses two files that would write the same outputs."""
  seen: dict[str, str] = {}
  stems = []
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    if stem in seen:
      raise VMSError(
        f"{seen[stem]} and {f} would both write {stem}.npy; rename one or run them "
        "with different --out folders"
      )
    seen[stem] = f
    stems.append(stem)
  return stems


def read_image(path: str):
  """uint8 (H, W, 3) for colour files, (H, W) for grey ones (see GREY_MODES).

  Raises:
    VMSError: as `vmsjax.data.images.read_rgb`.
  """
  from PIL import Image

  from vmsjax.data.images import read_rgb

  image = read_rgb(path)  # raises VMSError naming the file
  with Image.open(path) as f:
    grey = f.mode in GREY_MODES
  return image[:, :, 0] if grey else image


def write_png(path: str, saliency_map, style: str, title: str) -> None:
  """Writes one map as a PNG: a heat map with a colour bar, or plain grey pixels."""
  import numpy as np

  if style == "grey":
    from PIL import Image

    grey = np.round(np.clip(saliency_map, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(grey).save(path)
    return
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib.figure import Figure

  height, width = saliency_map.shape
  fig = Figure(figsize=(4.0 * width / max(height, width) + 1.0, 4.0 * height / max(height, width)))
  ax = fig.add_subplot()
  im = ax.imshow(saliency_map, cmap="jet", vmin=0.0, vmax=1.0)
  ax.set_title(title, fontsize=8)
  ax.axis("off")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.savefig(path, dpi=100, bbox_inches="tight")


def run(args: argparse.Namespace) -> int:
  """Computes and writes the maps; 2 when any image was skipped."""
  import numpy as np

  from vmsjax import saliency

  if args.batch_size < 1:
    raise VMSError(f"--batch_size must be at least 1, got {args.batch_size}")
  files = collect(args.inputs)
  stems = output_names(files)
  os.makedirs(args.out, exist_ok=True)
  skipped: list[str] = []
  written = 0

  batched_shapes: set[tuple[int, ...]] = set()

  def flush(group: list[tuple[str, str, np.ndarray]]) -> None:
    nonlocal written
    images = [image for _, _, image in group]
    shape = images[0].shape
    if len(images) == 1 and shape not in batched_shapes:
      maps = saliency.gbvs(images[0])[None]  # (1, H, W): a lone size, cheapest to compile
    else:
      # Pad a short chunk with copies of its last image: one compiled program per size.
      images += [images[-1]] * (args.batch_size - len(images))
      maps = saliency.gbvs_batch(np.stack(images), args.batch_size)  # (batch, H, W)
      batched_shapes.add(shape)
    for (f, stem, _), m in zip(group, maps, strict=False):
      np.save(os.path.join(args.out, f"{stem}.npy"), m.astype(np.float32))
      if args.png != "none":
        write_png(os.path.join(args.out, f"{stem}.png"), m, args.png, os.path.basename(f))
      written += 1

  # Images wait per size until a chunk is full, so memory stays bounded.
  pending: dict[tuple[int, ...], list[tuple[str, str, np.ndarray]]] = {}
  for f, stem in zip(files, stems, strict=True):
    try:
      image = read_image(f)
      saliency.check_images(image)  # too small for GBVS: skipped with the reason
    except VMSError as e:
      skipped.append(f)
      print(f"vmsjax saliency: skipped {f}: {' '.join(str(e).split())}", file=sys.stderr)
      continue
    group = pending.setdefault(image.shape, [])
    group.append((f, stem, image))
    if len(group) == args.batch_size:
      flush(pending.pop(image.shape))
  for group in pending.values():
    flush(group)

  summary = f"wrote {written} saliency map(s) to {args.out}"
  if skipped:
    summary += f"; skipped {len(skipped)}: {', '.join(skipped)}"
  print(summary)
  return 2 if skipped else 0
