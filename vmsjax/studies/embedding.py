"""Latent means projected to 2-D: PCA (numpy), t-SNE (scikit-learn), UMAP (umap-learn)."""

from __future__ import annotations

import numpy as np

from vmsjax.errors import VMSError

METHODS: tuple[str, ...] = ("pca", "tsne", "umap")


def pca(x: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Principal-component projection with numpy's SVD.

  Args:
    x: (N, m) points.
    dims: output dimensions (<= min(N, m)).

  Returns:
    coords (N, dims) and the explained-variance ratio of each axis (dims,). Each
    axis' sign makes its largest-magnitude loading positive, so the result does not
    depend on the SVD routine's sign choice.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or dims > min(x.shape):
    raise VMSError(f"PCA to {dims} dimensions needs at least {dims} points of {dims}+ values")
  centred = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (k, m)
  axes = vt[:dims]
  signs = np.sign(axes[np.arange(dims), np.argmax(np.abs(axes), axis=1)])
  axes = axes * signs[:, None]
  total = float(np.sum(s**2))
  ratio = (s[:dims] ** 2) / total if total > 0 else np.zeros(dims)
  return centred @ axes.T, ratio  # (N, dims)


def check_method(method: str) -> None:
  """Raises VMSError unless `method` is one of `METHODS`."""
  if method not in METHODS:
    raise VMSError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")


def embed(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, dict]:
  """Projects latent means to 2-D.

  Args:
    x: (N, m) latent means.
    method: "pca" (built in), "tsne" (needs scikit-learn) or "umap" (needs umap-learn).
    seed: the random state of t-SNE and UMAP.

  Returns:
    coords (N, 2) and a dict describing the projection.
  """
  check_method(method)
  x = np.asarray(x, np.float64)
  if method == "pca":
    coords, ratio = pca(x, 2)
    return coords, {"method": "pca", "explained_variance_ratio": ratio.tolist()}
  if method == "tsne":
    try:
      from sklearn.manifold import TSNE
    except ImportError as e:
      raise VMSError(
        "--method tsne needs scikit-learn: `pip install scikit-learn` (or use --method pca)"
      ) from e
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return np.asarray(coords, np.float64), {"method": "tsne", "perplexity": perplexity}
  try:
    import umap
  except ImportError as e:
    raise VMSError(
      "--method umap needs umap-learn: `pip install umap-learn` (or use --method pca)"
    ) from e
  neighbours = int(min(15, max(2, len(x) - 1)))
  coords = umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed).fit_transform(x)
  return np.asarray(coords, np.float64), {"method": "umap", "n_neighbors": neighbours}
