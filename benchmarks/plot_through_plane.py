"""Plot kidney and tumour Dice against the through-plane sigma, one line per report of
``bench_through_plane.py`` (benchmarks/results/through_plane*.json).

    python benchmarks/plot_through_plane.py benchmarks/results/through_plane.json \\
        benchmarks/results/through_plane_val_1.25mm.json ... --out benchmarks/results/through_plane.png \\
        --labels "validation, 2.5-5 mm" "validation at 1.25 mm" ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="through_plane*.json files")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--labels", nargs="+", help="a legend label per report (default: its data folder's name)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_k, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    if args.labels and len(args.labels) != len(args.reports):
        ap.error("--labels needs one label per report")
    for i, path in enumerate(args.reports):
        rep = json.loads(Path(path).read_text())
        rows = sorted(rep["rows"], key=lambda r: r["sigma_mm"])
        label = f"{args.labels[i] if args.labels else rep['data']} ({rows[0]['cases']} cases)"
        sig = [r["sigma_mm"] for r in rows]
        ax_k.plot(sig, [r["kidney_dice"] for r in rows], "o-", label=label)
        ax_t.plot(sig, [r["tumour_dice_cases_with_tumour"] for r in rows], "o-", label=label)
    for ax, title in ((ax_k, "kidney Dice (KiTS: kidney + masses)"), (ax_t, "tumour Dice, cases with a tumour")):
        ax.set_xlabel("through-plane sigma (mm); 0 = each slice alone")
        ax.set_title(title)
        ax.axvline(4.0, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    ax_k.legend(fontsize=7)
    fig.suptitle("Built-in segmenter, int8, end to end (phantoms); dotted: the shipped 4 mm")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
