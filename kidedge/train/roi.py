"""Regions of interest for the segment stage of a cascade, in training's box format.

The rule (the box of the ROI labels grown by ``margin_mm``, clipped to the volume) is
:mod:`kidedge.regions`', the same the runtime's cascade gate applies to what stage 1 found;
training crops around the ground-truth region that way (with a random jitter, so stage 2
learns to tolerate a stage-1 box that is a little off). Training code passes boxes around
as six integers, ``(z0, z1, r0, r1, c0, c1)`` with exclusive stops.
"""

from __future__ import annotations

import numpy as np

from kidedge import regions

Box = tuple[int, int, int, int, int, int]  # z0, z1, r0, r1, c0, c1 (stop exclusive)


def _as_ints(box: regions.Box) -> Box:
    return tuple(int(v) for s in box for v in (s.start, s.stop))


def _as_slices(box: Box) -> regions.Box:
    return tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(3))


def bounding_box(mask: np.ndarray) -> Box | None:
    """Bounding box of a boolean ``(slices, rows, cols)`` mask, or None if it is empty."""
    box = regions.bounding_box(mask)
    return None if box is None else _as_ints(box)


def grow_box(box: Box, spacing, margin_mm, shape) -> Box:
    """Grow ``box`` by ``margin_mm`` (a number, or one per axis) and clip to ``shape``."""
    return _as_ints(regions.grow_box(_as_slices(box), shape, regions.margin_voxels(spacing, margin_mm)))


def label_box(labels: np.ndarray, roi_labels, spacing, margin_mm) -> Box | None:
    """The ROI of a label volume: box of the ``roi_labels`` voxels grown by ``margin_mm``."""
    box = regions.roi_box(np.asarray(labels), roi_labels, spacing, margin_mm)
    return None if box is None else _as_ints(box)
