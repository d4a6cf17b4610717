"""What a TensorRT engine's fixed input buckets cost a segmenter in accuracy.

A TensorRT plan with fixed-shape optimisation profiles runs only its profiles' shapes, so the
runtime pads each crop (bottom and right, with the window's low value) to the smallest of the
package's input buckets (kidedge/shape_buckets.py; ONNX Runtime pads only to a multiple of
32). The bucket lists were chosen for how many pixels they add (benchmarks/results/
shape_buckets.md), not for what the padding does to the labels. This measures that, through
the same runtime pieces and the same localiser region on each scan: the segmenter on its
crop padded to a multiple of 32 (``any size``: ONNX Runtime, or an engine whose profile
takes a range of shapes) and padded to its bucket in lists of several ladder growths (the
export's default, 1.5, and finer ones).

TensorRT is not installed here: ONNX Runtime (CPU, ``--precision``) stands in for the engine,
fed the same padded inputs, so the numbers are the network's answer to each input, not
TensorRT's arithmetic. Labels are post-processed as ``kidedge infer`` does; Dice is the KiTS
hierarchical kidney / masses Dice against the phantom's truth and against ``any size``.
A box grown to fill its bucket with scan instead of padding (for a segmenter that sees the
scan around its box) was tried once on the 7 bench scans (fp32, the default buckets) and did
worse than the padding: mean kidney Dice 0.821 against 0.833 (any size 0.861); such a box
shows far more of the body than the training crops did. It is not in the runtime.

    nice -n 5 python benchmarks/bench_bucket_context.py SCAN.nii.gz [SCAN ...] [--growths 1.5,1.33,1.25]

Writes benchmarks/results/<machine>/bucket_context.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scans", nargs="+", help="imaging.nii.gz files with segmentation.nii.gz beside them")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--growths", default="1.5,1.33,1.25",
                    help="bucket ladder growths to compare (kidedge.shape_buckets.stage_buckets; export's default 1.5)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from kidedge.bench.cascade_steps import localise_every_slice, segment_box
    from kidedge.bench.summary import hierarchical_dice  # rounded to 4 digits
    from kidedge.environment import machine_label
    from kidedge.io import load_label_map, load_scan
    from kidedge.package import ModelPackage
    from kidedge.preprocess import output_size, padded_size
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter
    from kidedge.runtime.gating import CascadeGate
    from kidedge.runtime.profiling import Profiler
    from kidedge.shape_buckets import bucket_for, stage_buckets

    out = args.out or Path(__file__).resolve().parent / "results" / machine_label()
    package = ModelPackage.load(None)
    rows = []
    with Segmenter(package, select_backend(package, "onnxruntime", args.precision)) as seg:
        segm = seg.segmenter
        lists = {"any size": None}
        for g in (float(v) for v in args.growths.split(",")):
            b = stage_buckets(segm.preprocess, growth=g)
            lists[f"{len(b)} buckets (growth {g:g})"] = b
        engine = seg.backends[segm.name]
        for path in args.scans:
            scan = load_scan(path)
            truth, _ = load_label_map(Path(path).with_name("segmentation.nii.gz"))
            gate = CascadeGate.for_stage(segm, scan.shape, scan.spacing)
            with Profiler(gpu=False, power=False) as prof:
                localise_every_slice(seg, scan, gate, prof)
                box = gate.region()
                if box is None:
                    print(f"{path}: the localiser found no kidney", file=sys.stderr)
                    continue
                content = output_size(segm.preprocess, (box.row_stop - box.row_start, box.col_stop - box.col_start),
                                      scan.spacing[1:])
                labels_of = {}
                for mode, buckets in lists.items():
                    engine.input_buckets = buckets  # the pipeline pads to them, as for a TensorRT engine
                    try:
                        labels_of[mode] = segment_box(seg, scan, box, prof)
                    finally:
                        engine.input_buckets = None
                    net = padded_size(segm.preprocess, content) if buckets is None else bucket_for(buckets, content)
                    row = {"scan": Path(path).parent.name, "slices": scan.shape[0], "mode": mode,
                           "network_input": list(net),
                           "scan_fraction_of_input": round(content[0] * content[1] / (net[0] * net[1]), 3),
                           "dice_vs_truth": hierarchical_dice(labels_of[mode], truth),
                           "agreement_with_any_size": hierarchical_dice(labels_of[mode], labels_of["any size"])}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bucket_context.json").write_text(json.dumps({"rows": rows, "precision": args.precision,
                                                        "bucket_lists": lists}, indent=1) + "\n")
    lines = ["# What fixed input buckets cost the segmenter in accuracy", "",
             f"Built-in package ({package.manifest.name}), onnxruntime {args.precision} standing in for a TensorRT "
             "engine with fixed-shape profiles (TensorRT is not installed here): the crop padded to a multiple of "
             "32 ('any size') or to its bucket with the window's low value; the localiser on every slice, its "
             "region as the runtime computes it; labels post-processed as `kidedge infer` does. Phantoms on KiTS19 "
             "label geometry (the bench's scans), not real CT. 'scan / input': the share of the network input "
             "that is the crop.", "",
             "| scan | slices | padding | network input | scan / input | kidney Dice vs truth "
             "| masses Dice vs truth | kidney / masses agreement with any size |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        d, a = r["dice_vs_truth"], r["agreement_with_any_size"]
        lines.append(f"| {r['scan']} | {r['slices']} | {r['mode']} "
                     f"| {r['network_input'][0]} x {r['network_input'][1]} | {r['scan_fraction_of_input']} "
                     f"| {d.get('kidney')} | {d.get('masses')} | {a.get('kidney')} / {a.get('masses')} |")
    for mode in lists:
        ds = [r["dice_vs_truth"] for r in rows if r["mode"] == mode]
        if ds:
            k = [d["kidney"] for d in ds if d.get("kidney") is not None]
            m = [d["masses"] for d in ds if d.get("masses") is not None]
            lines.append(f"| mean | | {mode} | | | {sum(k) / len(k):.4f} | "
                         f"{(sum(m) / len(m)) if m else float('nan'):.4f} | |")
    lines += ["", f"Command: `nice -n 5 python benchmarks/bench_bucket_context.py SCANS --growths {args.growths}`."]
    (out / "bucket_context.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
