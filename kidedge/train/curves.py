"""RUN_DIR/metrics.csv and the loss / Dice curve PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from kidedge.io.writer import save_png_atomic, write_text_atomic


def write_metrics_csv(rows: list[dict], path) -> Path:
    """All epochs of all stages, one row each (columns: union of the rows' keys)."""
    path = Path(path)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return write_text_atomic(path, buf.getvalue())


def plot_curves(rows: list[dict], path) -> Path:
    """One column per stage: train/val loss (top) and validation Dice (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = plt.subplots(2, max(1, len(stages)), figsize=(5 * max(1, len(stages)), 6), squeeze=False)
    for j, st in enumerate(stages):
        rs = [r for r in rows if r["stage"] == st]
        ep = [r["epoch"] for r in rs]
        ax = axes[0][j]
        ax.plot(ep, [r["train_loss"] for r in rs], "o-", label="train loss")
        ax.plot(ep, [r["val_loss"] for r in rs], "s-", label="val loss")
        ax.set_title(f"stage '{st}'")
        ax.set_xlabel("epoch")
        ax.legend()
        ax = axes[1][j]
        for key in ("val_dice", "val_kidney_dice", "val_masses_dice", "val_tumour_dice"):
            if any(key in r for r in rs):
                ax.plot(ep, [r.get(key, float("nan")) for r in rs], "o-", label=key)
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    try:
        return save_png_atomic(fig, path, dpi=80)
    finally:
        plt.close(fig)
