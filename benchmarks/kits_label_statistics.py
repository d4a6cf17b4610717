"""The real-anatomy statistics behind the post-processing review's thresholds.

Runs :func:`kidedge.postprocess.review_segmentation` (no landmarks: label maps have no CT)
on every KiTS19 and KiTS23 truth label map in ../shared/data and collects, with the
review's own formulas, for every real mass (tumour and cyst components) its volume,
contact fraction with kidney parenchyma and sphericity, and for every kidney component
(kidney with its masses) its volume, plus what the review would remove from real truth.
The thresholds in ``kidedge/kidney_review.py`` are set below these real values.

Usage: nice -n 10 .venv/bin/python benchmarks/kits_label_statistics.py [--out benchmarks/results]
Writes kits_label_statistics.json and .md (a few minutes per 100 label maps on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kidedge.io import load_label_map  # noqa: E402
from kidedge.kidney_review import (  # noqa: E402
    MASS_MIN_CONTACT_FRACTION,
    MASS_MIN_ML,
    MASS_MIN_SPHERICITY,
    MASS_ROUND_FROM_ML,
    PIECE_ML,
    review_segmentation,
)
from kidedge.metrics import dice  # noqa: E402

SETS = ("kits19-labels", "kits23-labels")


def _pct(values, qs=(0, 1, 5, 50, 95, 99, 100)) -> dict:
    v = np.asarray(values, float)
    return {f"p{q}": round(float(np.percentile(v, q)), 4) for q in qs} if v.size else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    shared = ROOT.parent / "shared" / "data"
    masses, kidneys, removed, cases = [], [], [], 0
    for name in SETS:
        for path in sorted((shared / name).glob("case_*/segmentation.nii.gz")):
            labels, scan = load_label_map(path)
            out, _, _, findings = review_segmentation(np.asarray(labels, np.uint8), scan.spacing, scan.canonical_affine)
            case = f"{name}/{path.parent.name}"
            masses += [{**m, "case": case} for m in findings["masses"]]
            kidneys += [{"ml": c["ml"], "case": case} for c in findings["components"]]
            truth = np.asarray(labels)
            removed.append({"case": case, "ml": float(np.count_nonzero(out != truth)) * float(
                np.prod(scan.spacing)) / 1000,
                # what the review costs a perfect prediction (maps with masses)
                "masses_dice": dice(out >= 2, truth >= 2) if (truth >= 2).any() else None,
                "masses_left": bool((out >= 2).any())})
            cases += 1
            print(case, flush=True)
    big = [m for m in masses if m["ml"] >= MASS_ROUND_FROM_ML]
    masses_dice = [r["masses_dice"] for r in removed if r["masses_dice"] is not None]  # maps with masses
    by_case: dict[str, list] = {}
    for c in kidneys:
        by_case.setdefault(c["case"], []).append(c["ml"])
    two = [sorted(v, reverse=True)[:2] for v in by_case.values() if len(v) >= 2]
    result = {
        "label_maps": cases, "sets": list(SETS),
        "masses": {"count": len(masses), "count_from_1ml": len(big),
                   "contact_fraction": _pct([m["contact_fraction"] for m in big]),
                   "sphericity": _pct([m["sphericity"] for m in big]),
                   "lowest_contact": sorted(big, key=lambda m: m["contact_fraction"])[:5],
                   "lowest_sphericity": sorted(big, key=lambda m: m["sphericity"])[:5]},
        "kidney_components": {"largest_two_ml": _pct([x for pair in two for x in pair]),
                              "third_or_later_max_ml": max((sorted(v, reverse=True)[2] for v in by_case.values()
                                                            if len(v) > 2), default=0.0),
                              "smaller_over_larger": _pct([b / a for a, b in two if b >= PIECE_ML])},
        "review_removes_from_truth_ml": _pct([r["ml"] for r in removed]),
        "masses_from_1ml_removed": [m for m in big if not m["kept"]],
        "masses_read_as_kidney": sum(m["became"] == "kidney" for m in masses),
        "truth_masses_dice_after_review": _pct(masses_dice),
        "truth_masses_dice_after_review_mean": round(float(np.mean(masses_dice)), 4),
        "maps_left_without_masses": [r["case"] for r in removed if r["masses_dice"] is not None and not r["masses_left"]],
        "thresholds": {"MASS_MIN_CONTACT_FRACTION": MASS_MIN_CONTACT_FRACTION,
                       "MASS_MIN_SPHERICITY": MASS_MIN_SPHERICITY, "MASS_MIN_ML": MASS_MIN_ML, "PIECE_ML": PIECE_ML},
    }
    out = Path(args.out)
    (out / "kits_label_statistics.json").write_text(json.dumps(result, indent=1))
    m, k = result["masses"], result["kidney_components"]
    md = [
        "# Real KiTS label maps: what the post-processing review's thresholds stand on", "",
        f"{cases} truth label maps ({', '.join(SETS)} in ../shared/data), measured with the review's own "
        "formulas (`benchmarks/kits_label_statistics.py`).", "",
        f"Real masses of at least {MASS_ROUND_FROM_ML:g} mL: {m['count_from_1ml']} (of {m['count']} mass components).", "",
        "| measure | lowest | 1st pct | 5th pct | median | review threshold |", "|---|---|---|---|---|---|",
        f"| contact fraction (shared face area / mass surface) | {m['contact_fraction']['p0']} | "
        f"{m['contact_fraction']['p1']} | {m['contact_fraction']['p5']} | {m['contact_fraction']['p50']} | "
        f">= {MASS_MIN_CONTACT_FRACTION} |",
        f"| sphericity (ball surface of equal volume / voxel-face surface) | {m['sphericity']['p0']} | "
        f"{m['sphericity']['p1']} | {m['sphericity']['p5']} | {m['sphericity']['p50']} | >= {MASS_MIN_SPHERICITY} |", "",
        f"Real masses from {MASS_ROUND_FROM_ML:g} mL the review would remove: {len(result['masses_from_1ml_removed'])}.", "",
        f"Real mass components under {MASS_MIN_ML:g} mL the review reads as kidney (rule 1c): "
        f"{result['masses_read_as_kidney']} of {m['count']} (most are fragments beside a larger mass). "
        "Masses Dice of the truth after the review against the truth, over the label maps with masses: "
        f"mean {result['truth_masses_dice_after_review_mean']}, lowest "
        f"{result['truth_masses_dice_after_review']['p0']}, 1st pct {result['truth_masses_dice_after_review']['p1']}; "
        f"label maps left without any mass: {len(result['maps_left_without_masses'])}.", "",
        "Kidney components (kidney with its masses), the two largest per label map: "
        f"lowest {k['largest_two_ml']['p0']} mL, 1st pct {k['largest_two_ml']['p1']}, median "
        f"{k['largest_two_ml']['p50']}, 99th pct {k['largest_two_ml']['p99']}, largest {k['largest_two_ml']['p100']} mL; "
        f"every third or later component is at most {k['third_or_later_max_ml']:.2f} mL; the smaller of two "
        f"kidneys over the larger: lowest {k['smaller_over_larger']['p0']}.", "",
        f"Voxels the review changes in real truth (mL per label map): median {result['review_removes_from_truth_ml']['p50']}, "
        f"largest {result['review_removes_from_truth_ml']['p100']}.", ""]
    (out / "kits_label_statistics.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
