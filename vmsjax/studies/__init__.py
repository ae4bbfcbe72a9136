"""Memorability studies on VMS maps (paper §5.4-5.5) and 2-D embeddings of the latent space.

Definitions (docs/studies.md gives them with the commands):

- **Memorability score** of an image: the mean over pixels of its true VMS map (channel
  0), in [0, 1]; **false-memorability score**: the mean of its false VMS map (channel 1).
  The mean is the share of the image covered by the schema, weighted by intensity, so
  it is comparable between maps of different sizes (a predicted 64x64 map and a stored
  224x224 one) and between images.
- **Per-category score**: the mean of the per-image scores of a category's images.
- **Rank correlation**: Spearman's rho with its two-sided p-value
  (`scipy.stats.spearmanr`), NaN (null in JSON) when fewer than 3 pairs or a constant
  vector make it undefined.
- **Seeded subset**: the split's records sorted by id, then `size` of them drawn
  without replacement by `numpy.random.default_rng(seed)`; a pure function of
  (ids, size, seed).
- **PCA**: the centred latent means projected on their first principal axes (numpy
  SVD); each axis' sign is fixed so that its largest-magnitude loading is positive.

Everything here takes random-access sources (a `catalogue.SplitSource`, or any
sequence of record dicts with an `id`), so tests and notebooks can pass records built
in memory.

Modules, one job each:

  stats.py      per-image scores of maps, Spearman, per-category means, normalisation
  sources.py    sources: ids, views, concatenation, seeded subsets, DATASET:SPLIT specs
  collection.py one pass over a source: the per-image values the studies need
  reference.py  reference scores read from a CSV of `id,score` lines
  ranks.py      the studies' numbers: per-category ranks, scores against a reference
  embedding.py  latent means to 2-D: PCA, t-SNE, UMAP
  report.py     writing a study: JSON, Markdown, CSV
  runners.py    a study end to end (collect, compute, write), and reusing a done one
"""
