"""docs/images/phantom_montage.png: anatomical phantoms beside the real DICOM sample.

The real column is ../shared/data/ct-dicom-sample (20 slices of a contrast CT of the upper
abdomen, Apache-2.0, from the TotalSegmentator repository's test files); the phantoms are
built here from ../shared/data's body and KiTS label maps with fixed seeds, one per contrast
phase and body, at the slices through the upper abdomen (the sample's level) and the
kidneys. Same window for all. (No image of ../shared/data/ircadb-01 may be committed.)

Usage: python benchmarks/phantom_montage.py [--out docs/images/phantom_montage.png]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kidedge.io import load_scan  # noqa: E402
from kidedge.phantom import tissues as T  # noqa: E402
from kidedge.phantom.anatomical import make_anatomical_phantom  # noqa: E402
from kidedge.phantom.anatomy import load_body  # noqa: E402
from kidedge.phantom.montage import write_comparison  # noqa: E402
from kidedge.phantom.transplant import load_kidney_source  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# (body, KiTS case or None for the body's own kidneys, phase, seed)
CASES = [
    ("btcv-labels/label0001.nii.gz", "kits19-labels/case_00010", "portal_venous", 11),
    ("btcv-labels/label0005.nii.gz", "kits23-labels/case_00230", "noncontrast", 12),
    ("anatomy-labels/totalsegmentator_s0011.nii.gz", "kits19-labels/case_00061", "corticomedullary", 13),
    ("btcv-labels/label0010.nii.gz", None, "nephrographic", 14),
    ("anatomy-labels/amos_0013.nii.gz", "kits23-labels/case_00251", "excretory", 15),
    ("btcv-labels/label0022.nii.gz", "kits19-labels/case_00122", "corticomedullary", 16),
]


def _upper_slice(ph) -> int:
    """A slice through liver and spleen above the kidneys (the DICOM sample's level)."""
    both = [(ph.tissues[k] == T.LIVER).sum() + 3 * (ph.tissues[k] == T.SPLEEN).sum()
            for k in range(ph.hu.shape[0])]
    kid = np.flatnonzero(ph.labels.any(axis=(1, 2)))
    top = int(kid[0]) if kid.size else len(both)
    return int(np.argmax(both[:max(top, 1)]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "phantom_montage.png"))
    args = ap.parse_args()
    scan = load_scan(DATA / "ct-dicom-sample")
    hu = np.asarray(scan.array, np.float32) * scan.slope + scan.intercept
    real = [(f"slice {k} of {hu.shape[0]}", hu[k]) for k in (2, 10, 18)]
    shown = []
    for body_path, kits, phase, seed in CASES:
        body = load_body(DATA / body_path)
        kid = load_kidney_source(DATA / kits / "segmentation.nii.gz", kits) if kits else None
        ph = make_anatomical_phantom(seed, body, kid, phase=phase)
        area = (ph.labels > 0).sum(axis=(1, 2))
        k_kid = int(np.argmax(area + 5 * (ph.labels == 2).sum(axis=(1, 2))))
        name = f"{phase}, {body.name.split('/')[-1]}\n{kits.split('/')[-1] if kits else 'own kidneys'}"
        shown.append((f"{name} (upper)", ph.hu[_upper_slice(ph)], ph.labels[_upper_slice(ph)]))
        shown.append((f"{name} (kidneys)", ph.hu[k_kid], ph.labels[k_kid]))
        print(f"{body.name} {kits} {phase}: {ph.hu.shape} {ph.spacing[0]} mm", flush=True)
    write_comparison(real, shown, args.out, real_title="real CT: ct-dicom-sample (Apache-2.0)")
    print(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
