"""vmsjax: Visual Memory Schema maps from a VGG-16 variational autoencoder, in JAX/Flax."""

from vmsjax.errors import VMSError

__all__ = ["VMSError"]
__version__ = "0.1.0"
