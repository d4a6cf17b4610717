"""CT slices -> a stage's network input, through kidedge.preprocess (never a copy of it).

Used for parity (ONNX vs PyTorch on real preprocessed slices), calibration and fidelity.
A cascade's segment stage sees the region of interest around the labelled kidneys (grown
by the stage's ``roi.margin_mm``), as the runtime gives it the region stage 1 found.
"""

from __future__ import annotations

import numpy as np

from kidedge.export.held_out import CTVolume
from kidedge.preprocess import (
    PreprocessSpec,
    context_indices,
    grid_filling_box,
    output_size,
    padded_size,
    preprocess_slices,
    resize_labels_nearest,
)
from kidedge.regions import ROI_LABELS, bounding_box, grow_box, margin_voxels, region_mask

#: Per-slice categories for calibration sampling.
BACKGROUND, KIDNEY, MASS = 0, 1, 2


def stage_spec(stage: dict) -> PreprocessSpec:
    return PreprocessSpec.from_dict(stage["preprocess"])


def roi_box(volume: CTVolume, stage: dict) -> tuple[slice, slice]:
    """In-plane (rows, cols) box a stage sees: everything, or for a stage with ``roi`` the
    box around the ROI labels of the whole volume grown by ``margin_mm`` (and, for a
    segmenter that sees the scan around its box, grown to fill its padded input, as the
    runtime's gate does)."""
    full = (slice(0, volume.array.shape[1]), slice(0, volume.array.shape[2]))
    roi = stage.get("roi")
    if not roi or volume.labels is None:
        return full
    mask = region_mask(volume.labels, roi.get("labels", ROI_LABELS)).any(axis=0)
    box = bounding_box(mask)
    if box is None:
        return full
    rows, cols = grow_box(box, mask.shape, margin_voxels(volume.pixel_spacing, float(roi.get("margin_mm", 0.0))))
    if roi.get("context", "floor") == "scan":
        rows, cols = grid_filling_box(stage_spec(stage), rows, cols, mask.shape, volume.pixel_spacing)
    return rows, cols


def slice_inputs(volume: CTVolume, stage: dict, indices) -> np.ndarray:
    """2D network input ``(len(indices), C, h, w)`` float32 for the given slice indices.

    Runs of consecutive indices are preprocessed together; each slice gets its ``context``
    neighbours (edge slices repeated at the volume's ends).
    """
    spec = stage_spec(stage)
    rows, cols = roi_box(volume, stage)
    n = volume.array.shape[0]
    indices = np.asarray(list(indices), dtype=np.int64)
    if indices.size == 0:
        raise ValueError("no slices selected")
    parts = []
    start = 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            a, b = int(indices[start]), int(indices[k - 1]) + 1
            idx = context_indices(a, b, spec.context, n)
            parts.append(preprocess_slices(volume.array[idx][:, rows, cols], spec, volume.pixel_spacing,
                                           volume.slope, volume.intercept))
            start = k
    return np.ascontiguousarray(np.concatenate(parts)) if len(parts) > 1 else parts[0]


def slice_truth(volume: CTVolume, stage: dict, indices) -> np.ndarray | None:
    """The labels of the given slices on the stage's network grid ``(len(indices), h, w)``
    uint8 (the same box, resampling and padding as :func:`slice_inputs`; nearest neighbour,
    padding is background), or None for a volume without labels.

    Export scores each precision against it (fidelity against the truth, the int8 gate).
    """
    if volume.labels is None:
        return None
    spec = stage_spec(stage)
    rows, cols = roi_box(volume, stage)
    lab = volume.labels[np.asarray(list(indices), dtype=np.int64)][:, rows, cols]
    size = output_size(spec, lab.shape[1:], volume.pixel_spacing)
    ph, pw = padded_size(spec, size)
    out = np.zeros((lab.shape[0], ph, pw), np.uint8)
    out[:, : size[0], : size[1]] = resize_labels_nearest(lab, size)
    return out


def block_input(volume: CTVolume, stage: dict, start: int, depth: int) -> np.ndarray:
    """3D network input ``(1, C, depth, h, w)``: ``depth`` consecutive slices from ``start``."""
    x = slice_inputs(volume, stage, range(start, start + depth))  # (D, C, h, w)
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3)[None])


def slice_categories(volume: CTVolume) -> np.ndarray:
    """Per slice: :data:`MASS` (tumour or cyst present), :data:`KIDNEY`, or :data:`BACKGROUND`."""
    n = volume.array.shape[0]
    if volume.labels is None:
        return np.zeros(n, np.int64)
    lab = volume.labels.reshape(n, -1)
    cat = np.where((lab == 1).any(axis=1), KIDNEY, BACKGROUND)
    return np.where(((lab == 2) | (lab == 3)).any(axis=1), MASS, cat)
