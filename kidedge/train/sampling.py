"""Which slices (2D) or patch centres (3D) an epoch trains on.

Kidneys fill a few percent of a CT's slices and tumours fewer, so uniform sampling would
train mostly on empty slices. Each draw first picks a category with the recipe's
``tumour_fraction`` (slices with tumour or cyst), ``kidney_fraction`` (slices with any
kidney label) and the rest uniform over the allowed slices, then a case (uniformly, so big
scans do not dominate), then a slice of that category in that case.

A segment stage of a cascade trains inside the ground-truth kidney box, so on its own it
never sees the spleen's upper pole, the liver dome, stomach or pelvic bowel at full
resolution; on a real scan stage 1 sometimes boxes exactly those. ``outside_fraction``
draws that share of the epoch from any slice of the case ("outside" draws: no box, a
patch centred in the body), so stage 2 learns to say "background" there too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kidedge.train.data import CachedCase
from kidedge.train.roi import label_box


@dataclasses.dataclass(frozen=True)
class Draw:
    """One training sample: case index, slice index, category and a seed for its crop."""

    case: int
    z: int
    category: str  # "tumour" | "kidney" | "any" | "outside"
    seed: int


def allowed_slices(case: CachedCase, roi: dict | None) -> tuple[int, int]:
    """Slice range [z0, z1) a stage trains on: all slices, or the ground-truth ROI's."""
    if roi is None:
        return 0, case.n_slices
    fg = case.slice_counts[:, list(roi["labels"])].sum(1) > 0
    if not fg.any():
        return 0, 0
    hit = np.flatnonzero(fg)
    pad = int(np.ceil(float(roi["margin_mm"]) / case.spacing[0]))
    return max(0, int(hit[0]) - pad), min(case.n_slices, int(hit[-1]) + 1 + pad)


def draw_epoch(cases: list[CachedCase], n: int, rng: np.random.Generator,
               kidney_fraction: float, tumour_fraction: float, roi: dict | None = None,
               outside_fraction: float = 0.0) -> list[Draw]:
    """``n`` draws for one epoch (see module docstring)."""
    pools = {"tumour": [], "kidney": [], "any": [], "outside": []}
    for ci, c in enumerate(cases):
        z0, z1 = allowed_slices(c, roi)
        zs = np.arange(z0, z1)
        if zs.size == 0:
            continue
        counts = c.slice_counts[z0:z1]
        pools["any"].append((ci, zs))
        pools["outside"].append((ci, np.arange(c.n_slices)))
        k = zs[counts[:, 1:].sum(1) > 0]
        if k.size:
            pools["kidney"].append((ci, k))
        t = zs[counts[:, 2:].sum(1) > 0]
        if t.size:
            pools["tumour"].append((ci, t))
    if not pools["any"]:
        raise ValueError("no training slices (every case lacks the ROI labels)")
    names = ("tumour", "kidney", "any", "outside")
    if outside_fraction > 0:
        rest = 1.0 - tumour_fraction - kidney_fraction - outside_fraction
        cats = rng.choice(4, size=n, p=[tumour_fraction, kidney_fraction, rest, outside_fraction])
    else:  # the same random stream as before outside draws existed
        cats = rng.choice(3, size=n, p=[tumour_fraction, kidney_fraction, 1.0 - tumour_fraction - kidney_fraction])
    draws = []
    seeds = rng.integers(0, 2**31 - 1, size=n)
    for i, ci in enumerate(cats):
        name = names[ci]
        pool = pools[name] or pools["kidney"] or pools["any"]
        name = name if pools[name] else ("kidney" if pools["kidney"] else "any")
        case_i, zs = pool[rng.integers(len(pool))]
        draws.append(Draw(int(case_i), int(zs[rng.integers(zs.size)]), name, int(seeds[i])))
    return draws


def case_roi_box(case: CachedCase, roi: dict):
    """Ground-truth ROI box of a case for a segment stage (None when it has no kidney)."""
    return label_box(case.labels, roi["labels"], case.spacing, roi["margin_mm"])
