"""The montage PNG of a phantom set: axial slices through the kidneys, labels outlined.

It exists so a person can judge the phantoms' realism by eye: one row per case (up to
``MAX_CASES``), the slice with the most kidney and the slice with the most tumour, in a
soft-tissue window, kidney outlined green, tumour red, cyst cyan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_CASES = 12
WINDOW = (-160.0, 240.0)
_COLOURS = {1: "lime", 2: "red", 3: "cyan"}


def pick_slices(phantom) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(slice index, HU slice, label slice) for the most-kidney and most-tumour slices."""
    lab = phantom.labels
    kidney_area = (lab > 0).sum(axis=(1, 2))
    tumour_area = (lab == 2).sum(axis=(1, 2))
    picks = [int(kidney_area.argmax()) if kidney_area.any() else lab.shape[0] // 2]
    if tumour_area.any():
        k = int(tumour_area.argmax())
        if k != picks[0]:
            picks.append(k)
    if len(picks) == 1:
        picks.append(min(lab.shape[0] - 1, picks[0] + max(1, lab.shape[0] // 8)))
    return [(k, phantom.hu[k].copy(), lab[k].copy()) for k in picks]


def write_montage(shown, path) -> Path:
    """Write the montage atomically.

    Args:
        shown: list of (case name, source case id or None, contrast phase, pick_slices()).
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = shown[:MAX_CASES]
    ncols = max(len(s[3]) for s in shown)
    fig, axes = plt.subplots(len(shown), ncols, figsize=(3.2 * ncols, 3.3 * len(shown)),
                             squeeze=False)
    for row, (name, source, phase, slices) in enumerate(shown):
        for col in range(ncols):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(slices):
                continue
            k, hu, lab = slices[col]
            ax.imshow(hu, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
            _outline(ax, lab, 0.6)
            title = f"{name} k={k} {phase}"
            if source:
                title += f"\nlabels: {source}"
            ax.set_title(title, fontsize=7)
    fig.suptitle("kidedge phantoms (window -160..240 HU; kidney green, tumour red, cyst cyan)",
                 fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=80)


def write_comparison(real, phantoms, path, real_title="real CT") -> Path:
    """Real CT slices beside phantom slices, one window, label contours on the phantoms.

    Args:
        real: list of (title, HU slice) of a real scan (first column).
        phantoms: list of (title, HU slice, label slice) (the other columns, row by row).
        path: the PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrows = max(len(real), 1)
    per_row = -(-len(phantoms) // nrows)
    fig, axes = plt.subplots(nrows, per_row + 1, figsize=(3.0 * (per_row + 1), 3.15 * nrows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (title, hu) in enumerate(real):
        axes[r, 0].imshow(hu, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="bilinear")
        axes[r, 0].set_title(f"{real_title}\n{title}", fontsize=7)
    for n, (title, hu, lab) in enumerate(phantoms):
        ax = axes[n // per_row, 1 + n % per_row]
        ax.imshow(hu, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="bilinear")
        _outline(ax, lab, 0.5)
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"left: {real_title}; right: kidedge anatomical phantoms (window "
                 f"{WINDOW[0]:.0f}..{WINDOW[1]:.0f} HU; kidney green, tumour red, cyst cyan)",
                 fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def _outline(ax, lab, linewidth: float) -> None:
    """Contour each label class present in ``lab`` in its colour."""
    for value, colour in _COLOURS.items():
        mask = lab == value
        if mask.any():
            ax.contour(mask.astype(np.uint8), levels=[0.5], colors=colour, linewidths=linewidth)


def _save(fig, path, dpi: int) -> Path:
    """Write the figure atomically (kidedge.io.writer) and free it."""
    import matplotlib.pyplot as plt

    from kidedge.io.writer import save_png_atomic

    try:
        return save_png_atomic(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
