"""Backend-specific choices, in one place: model code takes them as arguments.

Every choice here computes the same numbers (to float rounding) whatever it picks; it
only changes speed. Each was measured (docs/benchmarks.md); change one only with a
measurement, and record it there.

  decoder_form         the transposed-convolution form of the decoder's layers
                       (`vmsjax.models.conv_transpose.FORMS`)
  encoder_micro_batch  how many images at a time the frozen VGG-16 trunk runs on
"""

from __future__ import annotations

import jax


def backend() -> str:
  """The platform JAX computes on: "cpu", "gpu" or "tpu"."""
  return jax.default_backend()


def decoder_form(platform: str | None = None) -> str:
  """The decoder's transposed-convolution form on `platform` (default: this one).

  CPU (XLA:CPU, jax 0.10, 2-core AMD EPYC, paper decoder at batch 32): `matmul`, 1.3-1.8x
  faster than `phases` for every layer, forward plus gradients; XLA:CPU runs the kernel
  gradients of the convolution forms as whole-map-window convolutions at ~50 GFLOP/s.
  GPU/TPU: `subpixel`, one ordinary convolution per layer (not yet measured on a GPU).
  """
  return "matmul" if (platform or backend()) == "cpu" else "subpixel"


def encoder_micro_batch(batch: int, height: int, width: int, platform: str | None = None) -> int:
  """Images per trunk call for a (batch, height, width) input; `batch` means all at once.

  CPU, images of at least 128x128, a batch of more than 4 that 4 divides: 4 at a time
  (`lax.map`). At 224x224 a whole batch's block-1 activation (411 MB at batch 32) is far
  beyond the caches; measured on a 2-core CPU, trunk alone at batch 32, micro-batches
  take 0.74x the time of the whole batch at 224x224, 0.79x at 128x128, but 1.4x at 64x64.
  GPU/TPU: the whole batch (micro-batches would only serialise the work).
  """
  micro = 4
  big = height * width >= 128 * 128
  if (platform or backend()) == "cpu" and big and batch > micro and batch % micro == 0:
    return micro
  return batch
