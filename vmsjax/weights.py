"""Loading ImageNet VGG-16 trunk weights (Keras .h5, torchvision .pth) -- not built yet.

Until it is, configs that need real weights refuse to start with a message saying so,
and the synthetic default trains on a random frozen trunk.
"""

from __future__ import annotations

from vmsjax.errors import VMSError


def load_trunk(path: str, preprocessing: str):
  """Loads VGG-16 trunk params from `path`. Not available in this version."""
  raise VMSError(
    f"cannot load VGG-16 weights from {path}: loading .h5/.pth weights is not part of this "
    "vmsjax version yet; leave model.encoder.weights empty and set "
    "model.encoder.allow_random=true to train on a random frozen trunk"
  )
