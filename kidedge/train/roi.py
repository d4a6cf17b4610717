"""Regions of interest for the segment stage of a cascade.

The runtime crops stage 2's input to the bounding box of the stage-1 kidney region grown
by ``margin_mm``; training crops around the ground-truth region the same way (with a
random jitter, so stage 2 learns to tolerate a stage-1 box that is a little off).
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int, int, int]  # z0, z1, r0, r1, c0, c1 (stop exclusive)


def bounding_box(mask: np.ndarray) -> Box | None:
    """Bounding box of a boolean ``(slices, rows, cols)`` mask, or None if it is empty."""
    if not mask.any():
        return None
    idx = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        idx += [int(hit[0]), int(hit[-1]) + 1]
    return tuple(idx)


def grow_box(box: Box, spacing, margin_mm, shape) -> Box:
    """Grow ``box`` by ``margin_mm`` (a number, or one per axis) and clip to ``shape``."""
    m = np.broadcast_to(np.asarray(margin_mm, dtype=float), (3,))
    out = []
    for axis in range(3):
        pad = int(np.ceil(m[axis] / float(spacing[axis])))
        out += [max(0, box[2 * axis] - pad), min(int(shape[axis]), box[2 * axis + 1] + pad)]
    return tuple(out)


def label_box(labels: np.ndarray, roi_labels, spacing, margin_mm) -> Box | None:
    """The ROI of a label volume: box of the ``roi_labels`` voxels grown by ``margin_mm``."""
    box = bounding_box(np.isin(labels, np.asarray(roi_labels)))
    return None if box is None else grow_box(box, spacing, margin_mm, labels.shape)
