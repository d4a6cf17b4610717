"""How much the cascade segmenter's labels move with its in-plane box.

A segmenter trained with everything outside its (jittered) region-of-interest box set to the
window floor (``roi.context = "floor"``, as the runtime pads a crop) sees the box's edges; one
trained seeing the scan around its box (``"scan"``) gets its box grown to fill its padded
input and should not care. This measures it: on each scan the localiser runs on every slice
and gives the region as the runtime computes it; then that box is grown or shrunk by a few mm
on every in-plane side (the slices unchanged; for a ``"scan"`` segmenter the moved box is then
grown to fill its input, as the runtime's gate would), the segmenter runs on it, and its
post-processed labels are compared with the unchanged box's (agreement) and with the
phantom's truth. A segmenter that did not care about its box would agree 1.0 at every offset;
the 4 mm localiser step moves the box by about one such offset (README, "Cascade gating").

    nice -n 5 python benchmarks/bench_box_sensitivity.py SCAN.nii.gz [SCAN ...] [--mm -8,-4,4,8]

Writes benchmarks/results/<machine>/box_sensitivity.json and .md (onnxruntime fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="+", help="imaging.nii.gz files with segmentation.nii.gz beside them")
    ap.add_argument("--mm", default="-8,-4,4,8", help="box offsets in mm on every in-plane side, comma-separated")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from kidedge.bench.cascade_steps import localise_every_slice, segment_box
    from kidedge.bench.summary import hierarchical_dice  # rounded to 4 digits
    from kidedge.environment import machine_label
    from kidedge.io import load_label_map, load_scan
    from kidedge.package import ModelPackage
    from kidedge.preprocess import grid_filling_box
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter
    from kidedge.runtime.gating import CascadeGate, RegionOfInterest
    from kidedge.runtime.profiling import Profiler

    out = args.out or Path(__file__).resolve().parent / "results" / machine_label()
    offsets = [0.0] + [float(v) for v in args.mm.split(",") if float(v) != 0.0]
    package = ModelPackage.load(None)
    rows = []
    with Segmenter(package, select_backend(package, "onnxruntime", args.precision)) as seg:
        segm = seg.segmenter
        for path in args.scans:
            scan = load_scan(path)
            truth, _ = load_label_map(Path(path).with_name("segmentation.nii.gz"))
            n, h, w = scan.shape
            with Profiler(gpu=False, power=False) as prof:
                gate = CascadeGate.for_stage(segm, scan.shape, scan.spacing)
                fill, gate.fill_grid = gate.fill_grid, None  # move the localiser's box, then fill
                localise_every_slice(seg, scan, gate, prof)
                roi = gate.region()
                if roi is None:
                    print(f"{path}: the localiser found no kidney", file=sys.stderr)
                    continue
                base = None
                for mm in offsets:
                    dr, dc = (int(round(mm / scan.spacing[1])), int(round(mm / scan.spacing[2])))
                    rr = slice(max(0, roi.row_start - dr), min(h, roi.row_stop + dr))
                    cc = slice(max(0, roi.col_start - dc), min(w, roi.col_stop + dc))
                    if fill is not None:
                        rr, cc = grid_filling_box(fill, rr, cc, (h, w), scan.spacing[1:])
                    box = RegionOfInterest(roi.slice_start, roi.slice_stop, rr.start, rr.stop, cc.start, cc.stop)
                    dense = segment_box(seg, scan, box, prof)
                    base = dense if mm == 0.0 else base
                    row = {"scan": Path(path).parent.name, "slice_mm": round(scan.spacing[0], 3), "offset_mm": mm,
                           "box_rows_cols": [box.row_stop - box.row_start, box.col_stop - box.col_start],
                           "dice_vs_truth": hierarchical_dice(dense, truth),
                           "agreement_with_box": hierarchical_dice(dense, base)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "box_sensitivity.json").write_text(json.dumps({"rows": rows, "precision": args.precision,
                                                         "offsets_mm": offsets}, indent=1) + "\n")
    lines = ["# The cascade segmenter's labels against its in-plane box", "",
             f"Built-in package ({package.manifest.name}, segmenter context: "
             f"{segm.roi.extra.get('context', 'floor')}), onnxruntime {args.precision}; localiser on every slice, "
             "the runtime's region; then the segmenter on that region with its in-plane box grown (+) or shrunk "
             "(-) by the offset on every side (then filled to its input size when it sees the scan), "
             "post-processed as `kidedge infer` does. Phantoms on KiTS19 label geometry (the bench's "
             "scans). Agreement: KiTS kidney / masses Dice against the unchanged box's labels.", "",
             "| scan | slice mm | offset mm | box rows x cols (as run) | kidney Dice vs truth | masses Dice vs truth "
             "| kidney / masses agreement with offset 0 |",
             "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in rows:
        d, a = r["dice_vs_truth"], r["agreement_with_box"]
        lines.append(f"| {r['scan']} | {r['slice_mm']} | {r['offset_mm']:+g} | {r['box_rows_cols'][0]} x "
                     f"{r['box_rows_cols'][1]} | {d.get('kidney')} | {d.get('masses')} | {a.get('kidney')} / "
                     f"{a.get('masses')} |")
    lines += ["", f"Command: `nice -n 5 python benchmarks/bench_box_sensitivity.py SCANS --mm {args.mm}`."]
    (out / "box_sensitivity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
