"""Training: the papers' models, recipes and the training loop (needs the ``[train]`` extra).

This is the only part of kidedge (with ``export``) that imports torch. It turns a named
recipe (``kidedge/train/recipes/*.toml``) and a KiTS-layout dataset into a run directory
(``run.json``, checkpoints, ``metrics.csv``, curves) that ``kidedge export`` turns into a
model package.
"""
