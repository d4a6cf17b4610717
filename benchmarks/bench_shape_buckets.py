"""Shape buckets: how much padding they add, and whether ONNX Runtime on the CPU runs the
gated segmenter faster on bucketed (fixed) shapes than on per-scan shapes.

Part 1, padding (arithmetic only). The cascade gate crops each scan to its kidney box plus
the segmenter's margin; at the segmenter's 1.25 mm pixels that crop becomes a different
(h, w) for every scan. Crops are taken from real KiTS19 truth label maps
(``../shared/data/kits19-labels``: the box of the labelled voxels plus the package's
margin, i.e. the crop a perfect localiser gives; plus each scan's whole slice, the
``--no-gate`` case). For bucket lists of several ladder growths and aspect limits it
reports the number of buckets (= TensorRT profiles to build) and the pixels a bucket
adds over today's padding to a multiple of 32.

Part 2, ONNX Runtime CPU timing. One onnxruntime session per model (as the runtime keeps
one per stage for a whole batch of scans); a stream of scans, each a few micro-batches of
the same crop content (a phantom at 1.25 mm pixels cut to the scan's crop size), run once
padded to a multiple of 32 (per-scan shapes: a new shape for almost every scan) and once
padded to its bucket (shapes repeat across scans), alternating per scan, over several
rounds. Both compute the same crops; the bucketed run computes more (padding) pixels.

    nice -n 10 .venv/bin/python benchmarks/bench_shape_buckets.py [--cases 160] [--scans 12]

Writes benchmarks/results/shape_buckets.json and .md. The machine is shared: the load
average at start and end is recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kidedge.preprocess import PreprocessSpec, output_size, padded_size, preprocess_slices  # noqa: E402
from kidedge.shape_buckets import bucket_for, stage_buckets  # noqa: E402

OPTIONS = [(1.25, 2.0), (1.33, 2.0), (1.5, 1.5), (1.5, 2.0), (1.5, 3.0)]
DEFAULT_OPTION = (1.5, 2.0)


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def kits19_crops(labels_dir: Path, cases: int, margin_mm: float, spec: PreprocessSpec) -> list[dict]:
    """Crop sizes (scan pixels and segmenter content) of the truth kidney box + margin."""
    from kidedge.io import load_scan

    out = []
    for case in sorted(labels_dir.glob("case_*"))[:cases]:
        seg = case / "segmentation.nii.gz"
        if not seg.is_file():
            continue
        scan = load_scan(seg)
        lab = scan.array  # canonical (slice, row, col)
        _, rows, cols = lab.shape
        fg = lab > 0
        r = np.flatnonzero(fg.any(axis=(0, 2)))
        c = np.flatnonzero(fg.any(axis=(0, 1)))
        _, sr, sc = scan.spacing
        mr, mc = int(np.ceil(margin_mm / sr)), int(np.ceil(margin_mm / sc))
        crop = (min(rows, r[-1] + 1 + mr) - max(0, r[0] - mr), min(cols, c[-1] + 1 + mc) - max(0, c[0] - mc))
        out.append({"slice_px": [rows, cols], "spacing_mm": [round(s, 4) for s in scan.spacing],
                    "crop_px": [int(v) for v in crop],
                    "crop_content": list(output_size(spec, crop, (sr, sc))),
                    "slice_content": list(output_size(spec, (rows, cols), (sr, sc)))})
        scan.release()
        del lab, fg
    return out


def padding_table(crops: list[dict], spec: PreprocessSpec) -> list[dict]:
    rows = []
    for growth, aspect in OPTIONS:
        buckets = stage_buckets(spec, growth=growth, max_aspect=aspect)
        row = {"growth": growth, "max_aspect": aspect, "buckets": len(buckets)}
        for kind in ("crop_content", "slice_content"):
            ratios = []
            for c in crops:
                h, w = c[kind]
                b = bucket_for(buckets, (h, w))
                ph, pw = padded_size(spec, (h, w))
                ratios.append((b[0] * b[1]) / (ph * pw))
            row[kind] = {"mean_extra": round(float(np.mean(ratios)) - 1, 4),
                         "max_extra": round(float(np.max(ratios)) - 1, 4),
                         "distinct_shapes_multiple32": len({padded_size(spec, tuple(c[kind])) for c in crops}),
                         "distinct_buckets_used": len({bucket_for(buckets, tuple(c[kind])) for c in crops})}
        rows.append(row)
    return rows


def timing(crops: list[dict], spec: PreprocessSpec, model_dir: Path, scans: int, slices: int, batch: int,
           rounds: int, threads: int) -> dict:
    import onnxruntime as ort

    from kidedge.phantom.generate import make_phantom

    buckets = stage_buckets(spec, growth=DEFAULT_OPTION[0], max_aspect=DEFAULT_OPTION[1])
    # A spread of real crop sizes: every k-th of the crops sorted by area.
    ordered = sorted(crops, key=lambda c: c["crop_content"][0] * c["crop_content"][1])
    step = max(1, len(ordered) // scans)
    picked = ordered[::step][:scans]
    rng = np.random.default_rng(0)
    rng.shuffle(picked)  # a batch of scans arrives in no particular size order
    big = max(max(c["crop_content"]) for c in picked)
    ph = make_phantom(7, shape=(slices, big + 32, big + 32), spacing=(3.0, 1.25, 1.25))
    results = {}
    for variant in ("fp32", "int8-cpu"):
        path = model_dir / f"{variant}.onnx"
        if not path.is_file():
            continue
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        times = {"multiple32": [], "bucket": []}
        first_batch = {"multiple32": [], "bucket": []}
        for rnd in range(rounds):
            for i, c in enumerate(picked):
                h, w = c["crop_content"]
                hu = ph.hu[:, 16:16 + h, 16:16 + w]
                modes = ("multiple32", "bucket") if (i + rnd) % 2 == 0 else ("bucket", "multiple32")
                for mode in modes:
                    pad_to = bucket_for(buckets, (h, w)) if mode == "bucket" else None
                    x = preprocess_slices(hu, spec, (1.25, 1.25), pad_to=pad_to)
                    t0 = time.perf_counter()
                    for j in range(0, slices, batch):
                        tb = time.perf_counter()
                        sess.run(None, {name: x[j:j + batch]})
                        if j == 0:
                            first_batch[mode].append(time.perf_counter() - tb)
                    times[mode].append(time.perf_counter() - t0)
            print(f"{variant} round {rnd + 1}: multiple32 {sum(times['multiple32']):.2f} s, "
                  f"bucket {sum(times['bucket']):.2f} s", flush=True)
        m32, bk = sum(times["multiple32"]), sum(times["bucket"])
        px32 = sum(np.prod(padded_size(spec, tuple(c["crop_content"]))) for c in picked)
        pxb = sum(np.prod(bucket_for(buckets, tuple(c["crop_content"]))) for c in picked)
        results[variant] = {
            "total_s": {"multiple32": round(m32, 3), "bucket": round(bk, 3)},
            "bucket_over_multiple32": round(bk / m32, 4),
            "median_scan_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "median_first_batch_s": {k: round(statistics.median(v), 4) for k, v in first_batch.items()},
            "pixels_bucket_over_multiple32": round(float(pxb / px32), 4),
        }
    return {"scans": [c["crop_content"] for c in picked], "slices_per_scan": slices, "batch": batch,
            "rounds": rounds, "threads": threads, "buckets": [list(b) for b in buckets], "models": results}


def write_report(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "shape_buckets.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# Shape buckets: padding and ONNX Runtime CPU speed", "",
             f"Machine: {res['machine']} (shared; load average {res['loadavg_start']} at start, "
             f"{res['loadavg_end']} at end). No GPU: TensorRT is not measured here.", "",
             f"Crops: {res['crop_source']}.", "",
             "## Padding of bucket lists (segmenter at 1.25 mm, pad_multiple 32, FOV up to 800 mm)", "",
             "| growth | max aspect | buckets | gated crop: mean / max extra pixels vs multiple of 32 "
             "| whole slice: mean / max extra | distinct shapes (x32 / buckets), crops |",
             "|---|---|---|---|---|---|"]
    for r in res["padding"]:
        c, s = r["crop_content"], r["slice_content"]
        lines.append(f"| {r['growth']} | {r['max_aspect']} | {r['buckets']} | {c['mean_extra']:+.1%} / {c['max_extra']:+.1%} "
                     f"| {s['mean_extra']:+.1%} / {s['max_extra']:+.1%} | {c['distinct_shapes_multiple32']} / "
                     f"{c['distinct_buckets_used']} |")
    t = res.get("timing")
    if t:
        lines += ["", f"## ONNX Runtime CPU: {len(t['scans'])} scans x {t['slices_per_scan']} slices, batch {t['batch']}, "
                  f"{t['rounds']} rounds, {t['threads']} threads (buckets growth {DEFAULT_OPTION[0]}, aspect {DEFAULT_OPTION[1]})", "",
                  "| model | per-scan shapes (x32) s | bucketed s | bucketed / per-scan | pixels bucketed / per-scan "
                  "| median first batch x32 / bucket s |", "|---|---|---|---|---|---|"]
        for name, m in t["models"].items():
            lines.append(f"| {name} | {m['total_s']['multiple32']:.2f} | {m['total_s']['bucket']:.2f} | "
                         f"{m['bucket_over_multiple32']:.3f} | {m['pixels_bucket_over_multiple32']:.3f} | "
                         f"{m['median_first_batch_s']['multiple32']:.3f} / {m['median_first_batch_s']['bucket']:.3f} |")
        lines += ["", res.get("verdict", "")]
    (out / "shape_buckets.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, default=ROOT.parent / "shared" / "data" / "kits19-labels")
    ap.add_argument("--cases", type=int, default=160)
    ap.add_argument("--model", type=Path, default=ROOT / "kidedge" / "models" / "default")
    ap.add_argument("--scans", type=int, default=12)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    from kidedge.environment import describe, machine_label

    manifest = json.loads((args.model / "manifest.json").read_text())
    seg = next(s for s in manifest["stages"] if s.get("roi"))
    spec = PreprocessSpec.from_dict(seg["preprocess"])
    margin = float(seg["roi"].get("margin_mm", 10.0))
    res = {"machine": machine_label(describe()), "loadavg_start": loadavg(), "package": manifest["name"],
           "segmenter_spec": spec.to_dict(), "margin_mm": margin}
    if args.labels.is_dir():
        crops = kits19_crops(args.labels, args.cases, margin, spec)
        res["crop_source"] = (f"KiTS19 truth label maps ({len(crops)} cases from ../shared/data/kits19-labels): "
                              f"labelled box + {margin} mm margin, and the whole slice")
    else:
        crops = []
        rng = np.random.default_rng(1)
        for _ in range(args.cases):
            sp = float(rng.uniform(0.44, 1.0))
            crop = (int(rng.integers(100, 300)), int(rng.integers(200, 450)))
            crops.append({"crop_content": list(output_size(spec, crop, (sp, sp))),
                          "slice_content": list(output_size(spec, (512, 512), (sp, sp)))})
        res["crop_source"] = "synthetic crops (../shared/data absent): 100-300 x 200-450 px at 0.44-1.0 mm"
    res["crops"] = crops
    res["padding"] = padding_table(crops, spec)
    for r in res["padding"]:
        print(r, flush=True)
    res["timing"] = timing(crops, spec, args.model / seg["name"], args.scans, args.slices, args.batch,
                           args.rounds, args.threads)
    res["loadavg_end"] = loadavg()
    ratios = [m["bucket_over_multiple32"] for m in res["timing"]["models"].values()]
    faster = all(r < 0.97 for r in ratios)
    res["verdict"] = ("Bucketed shapes are faster for ONNX Runtime on this CPU: the runtime uses them there too."
                       if faster else
                       "Bucketed shapes are not faster for ONNX Runtime on this CPU (it has no per-shape build "
                       "step; the extra padded pixels cost time): the runtime pads to buckets only for engines "
                       "that need fixed shapes (TensorRT).")
    write_report(res, args.out)
    print(res["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
