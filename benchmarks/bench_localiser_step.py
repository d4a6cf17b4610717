"""The cascade localiser's slice step: what it saves and what it costs, on phantoms of KiTS19
label geometry (thin and thick slices), through ``Segmenter.segment`` (fp32, onnxruntime).

For each scan and each step (0 = every slice, and the given mm): the slices the localiser
ran on, the region stage 2 ran on, the share of the truth's kidney voxels inside that
region, the Dice of the post-processed labels against the phantom's truth, their agreement
with the every-slice labels, and the localiser's time. One process, steps interleaved.

    nice -n 5 python benchmarks/bench_localiser_step.py SCAN.nii.gz [SCAN ...] [--steps 0,4,8]

Writes benchmarks/results/<machine>/localiser_step.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="+", help="imaging.nii.gz files with segmentation.nii.gz beside them")
    ap.add_argument("--steps", default="0,4,8", help="localiser steps in mm, comma-separated (0: every slice)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from kidedge.bench.summary import hierarchical_dice  # rounded to 4 digits
    from kidedge.environment import machine_label
    from kidedge.io import load_label_map, load_scan
    from kidedge.package import ModelPackage
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter

    out = args.out or Path(__file__).resolve().parent / "results" / machine_label()
    steps = [float(s) for s in args.steps.split(",")]
    package = ModelPackage.load(None)
    load_start = os.getloadavg()[0]
    rows = []
    for path in args.scans:
        truth, _ = load_label_map(Path(path).with_name("segmentation.nii.gz"))
        labels = {}
        for step in steps:
            with Segmenter(package, select_backend(package, "onnxruntime", args.precision),
                           localiser_step_mm=step) as seg:
                scan = load_scan(path)
                t = time.perf_counter()
                result = seg.segment(scan)
                secs = time.perf_counter() - t
            dense = result.labels.to_dense()
            labels[step] = dense
            roi = result.gating.get("roi")
            inside = 1.0
            if roi:
                box = np.zeros(truth.shape, bool)
                box[roi["slice_start"]:roi["slice_stop"], roi["row_start"]:roi["row_stop"],
                    roi["col_start"]:roi["col_stop"]] = True
                inside = float((box & (truth > 0)).sum() / max(1, (truth > 0).sum()))
            stages = result.profile["stages_s"]
            rows.append({"scan": f"{Path(path).parent.name}", "slices": scan.shape[0],
                         "slice_mm": round(scan.spacing[0], 3), "step_mm": step,
                         "localiser_slices": result.profile["counters"].get("localise_slices"),
                         "stage2_slices": result.gating.get("slices_run_stage2"),
                         "truth_inside_region": round(inside, 5),
                         "dice_vs_truth": hierarchical_dice(dense, truth),
                         "agreement_with_every_slice": hierarchical_dice(dense, labels[steps[0]]),
                         "localise_s": round(sum(v for k, v in stages.items() if k.startswith("localise.")), 3),
                         "seconds": round(secs, 2)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    load_end = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "localiser_step.json").write_text(json.dumps({"rows": rows, "precision": args.precision,
                                                         "loadavg_1min": [load_start, load_end]}, indent=1) + "\n")
    lines = ["# The cascade localiser's slice step", "",
             f"Built-in package, onnxruntime {args.precision}, `Segmenter.segment` (post-processed labels), phantoms "
             "on KiTS19 label geometry (the bench's scans). Step 0: the localiser on every slice. Load average "
             f"(1 min) {load_start:.1f} at start, {load_end:.1f} at end (shared machine: seconds are noisy).", "",
             "| scan | slice mm | step mm | localiser slices | stage-2 slices | truth inside region | kidney Dice vs truth "
             "| masses Dice vs truth | kidney / masses agreement with step 0 | localiser s | s/scan |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        d, a = r["dice_vs_truth"], r["agreement_with_every_slice"]
        lines.append(f"| {r['scan']} | {r['slice_mm']} | {r['step_mm']:g} | {r['localiser_slices']} | "
                     f"{r['stage2_slices']} | {r['truth_inside_region']:.4f} | {d.get('kidney')} | {d.get('masses')} | "
                     f"{a.get('kidney')} / {a.get('masses')} | {r['localise_s']:.2f} | {r['seconds']:.2f} |")
    lines += ["", f"Command: `nice -n 5 python benchmarks/bench_localiser_step.py SCANS --steps {args.steps}`."]
    (out / "localiser_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
