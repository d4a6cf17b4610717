"""A quick-look PNG: a few axial slices through the kidneys, labels drawn over the CT."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kidedge.io.writer import save_png_atomic

#: RGBA per label (kidney green, tumour red, cyst blue), drawn at partial opacity.
LABEL_COLOURS = {1: (0.1, 0.85, 0.2, 0.45), 2: (0.95, 0.1, 0.1, 0.6), 3: (0.2, 0.4, 1.0, 0.55)}
CT_WINDOW_HU = (-160.0, 240.0)  # an abdominal soft-tissue window


def pick_slices(labels: np.ndarray, n: int = 4) -> list[int]:
    """``n`` slice indices spread through the slices that contain any label (the middle of
    the scan when nothing was segmented), so the picture shows the kidneys."""
    per_slice = labels.reshape(labels.shape[0], -1).any(axis=1)
    hit = np.flatnonzero(per_slice)
    pool = hit if hit.size else np.arange(labels.shape[0])
    q = np.linspace(0, 1, n + 2)[1:-1] if pool.size > n else np.linspace(0, 1, min(n, pool.size))
    picks = sorted({int(pool[int(round(x * (pool.size - 1)))]) for x in q})
    return picks


def write_overlay(
    hu_slices: np.ndarray,
    labels: np.ndarray,
    slice_indices: list[int],
    path: str | os.PathLike,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    title: str = "",
) -> Path:
    """Write a PNG with one panel per slice: CT in grey, labels in colour.

    Args:
        hu_slices: ``(len(slice_indices), rows, cols)`` canonical slices in HU.
        labels: uint8 canonical label slices of the same shape.
        slice_indices: the slice numbers shown (panel titles).
        path: the PNG to write (atomically).
        pixel_spacing: (row, col) mm, so the panels have the true aspect ratio.
        title: figure title (e.g. the scan's name).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    n = len(slice_indices)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for ax, k, ct, lab in zip(axes[0], slice_indices, hu_slices, labels, strict=True):
        ax.imshow(np.clip(ct, *CT_WINDOW_HU), cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1],
                  aspect=pixel_spacing[0] / pixel_spacing[1], interpolation="nearest")
        rgba = np.zeros(lab.shape + (4,), np.float32)
        for value, colour in LABEL_COLOURS.items():
            rgba[lab == value] = colour
        ax.imshow(rgba, aspect=pixel_spacing[0] / pixel_spacing[1], interpolation="nearest")
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.01, "green kidney, red tumour, blue cyst (radiological view: patient's right on the left)",
             ha="center", fontsize=7)
    path = Path(path)
    try:
        save_png_atomic(fig, path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _hu_slices(scan, indices: list[int]) -> np.ndarray:
    """HU of a few canonical slices, read by streaming (the scan is never loaded whole)."""
    from kidedge.runtime.pipeline import iter_slabs

    got = {}
    for a, b, arr in iter_slabs(scan, 16, 0, min(indices), max(indices) + 1):
        for k in indices:
            if a <= k < b:
                got[k] = arr[k - a].astype(np.float32) * np.float32(scan.slope) + np.float32(scan.intercept)
    return np.stack([got[k] for k in indices])


def write_scan_overlay(scan, labels, path: str | os.PathLike, title: str = "") -> Path:
    """The overlay of a segmented scan: four slices through the labelled region.

    Args:
        scan: the :class:`kidedge.io.Scan` that was segmented.
        labels: its canonical labels as :class:`kidedge.runtime.labelmap.SparseLabels`.
        path: the PNG to write (atomically; its folder is made).
        title: figure title (e.g. the scan's name).
    """
    picks = pick_slices(labels.nonempty()[:, None, None], 4)
    return write_overlay(_hu_slices(scan, picks), np.stack([labels.slice(k) for k in picks]), picks, path,
                         pixel_spacing=scan.spacing[1:], title=title)
