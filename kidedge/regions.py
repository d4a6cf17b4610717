"""The rules every layer shares about label maps, written once.

* The KiTS label values (0 background, 1 kidney, 2 tumour, 3 cyst) and the hierarchical
  regions the KiTS challenges score: KiTS21's kidney = {1, 2, 3}, masses = {2, 3},
  tumour = {2}; KiTS19's view without cysts, kidney = {1, 2}, tumour = {2}.
* Bounding boxes of masks, as index slices, found by reducing along each axis pair (no
  index arrays as large as the foreground).
* The region of interest of a cascade's segment stage: the box of its ROI labels grown
  by ``margin_mm`` on every axis (``ceil(margin / spacing)`` voxels) and clipped to the
  volume. Training crops around the truth this way, the runtime's cascade gate around
  what stage 1 found, export's calibration around the labelled kidneys.

numpy only; every layer may import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The label values of a kidedge (KiTS) label map.
KITS_LABELS = {0: "background", 1: "kidney", 2: "tumour", 3: "cyst"}
#: KiTS21 hierarchical evaluation classes: name -> label values.
KITS21_REGIONS: dict[str, tuple[int, ...]] = {"kidney": (1, 2, 3), "masses": (2, 3), "tumour": (2,)}
#: KiTS19 view (no cyst label): name -> label values.
KITS19_REGIONS: dict[str, tuple[int, ...]] = {"kits19_kidney": (1, 2), "kits19_tumour": (2,)}
#: What a cascade's region of interest is made of when a stage does not say: the kidney
#: with its masses.
ROI_LABELS = KITS21_REGIONS["kidney"]

Box = tuple[slice, ...]


def region_mask(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Boolean mask of the voxels whose label is one of ``values``. The KiTS regions take
    comparisons instead of ``np.isin`` (labels must then lie in 0..3, as kidedge's do)."""
    values = tuple(int(v) for v in values)
    if values == (1, 2, 3):
        return labels > 0
    if values == (2, 3):
        return labels >= 2
    if len(values) == 1:
        return labels == values[0]
    return np.isin(labels, values)


def bounding_box(mask: np.ndarray) -> Box | None:
    """Bounding box of a mask's non-zero voxels as index slices, or None when it is empty."""
    out = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others) if others else mask)
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def union_box(a: Box | None, b: Box | None) -> Box | None:
    """The smallest box holding both (None counts as empty)."""
    if a is None or b is None:
        return b if a is None else a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def grow_box(box: Box, shape: Sequence[int], margin: int | Sequence[int]) -> Box:
    """``box`` grown by ``margin`` voxels (one number, or one per axis), clipped to ``shape``."""
    m = np.broadcast_to(np.asarray(margin, dtype=np.int64), (len(box),))
    return tuple(slice(max(0, s.start - int(k)), min(int(n), s.stop + int(k)))
                 for s, n, k in zip(box, shape, m, strict=True))


def margin_voxels(spacing: Sequence[float], margin_mm: float | Sequence[float]) -> tuple[int, ...]:
    """A margin in mm as whole voxels along each axis (rounded up: never less than asked)."""
    m = np.broadcast_to(np.asarray(margin_mm, dtype=float), (len(spacing),))
    return tuple(math.ceil(float(mm) / float(s)) if s > 0 else 0 for mm, s in zip(m, spacing, strict=True))


def roi_box(labels: np.ndarray, roi_labels: Sequence[int], spacing: Sequence[float],
            margin_mm: float | Sequence[float]) -> Box | None:
    """The region of interest of a label volume: the box of its ``roi_labels`` voxels grown
    by ``margin_mm``, or None when it has none."""
    box = bounding_box(region_mask(np.asarray(labels), roi_labels))
    return None if box is None else grow_box(box, labels.shape, margin_voxels(spacing, margin_mm))
