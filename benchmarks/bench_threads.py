"""Thread settings of kidedge infer on a small CPU: one onnxruntime call at a time on 1 or 2
intra-op threads (busy-waiting between operators, "spinning", or not), against two
one-thread calls side by side (the pipeline's parallel calls, the default), on one scan.

Why: on 2 cores the engine shares the CPU with the pipeline's reader and labeller threads
(kidedge/runtime/pipeline.py); a spinning pool burns the cycles those threads need, and a
segmenter crop's convolutions are too small to split well across two threads. Each run is a
fresh child process (:func:`kidedge.bench.measure.measure`, kidedge variant, onnxruntime
int8-cpu, gated: the default); settings alternate, ``--repeats`` times each, and medians of
wall and CPU seconds are compared. Every run's labels are checked equal to the first's.

    nice -n 5 python benchmarks/bench_threads.py --image SCAN.nii.gz [--repeats 3]

Writes benchmarks/results/<machine>/threads.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

SETTINGS = {  # name: (threads, KIDEDGE_ORT_SPIN, KIDEDGE_PARALLEL_CALLS)
    "2 one-thread calls side by side (default)": (2, "0", "2"),
    "1 call at a time, 2 threads, no spinning": (2, "0", "1"),
    "1 call at a time, 2 threads, spinning": (2, "1", "1"),
    "1 call at a time, 1 thread": (1, "0", "1"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--model", help="model package (default: the built-in one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import nibabel as nib
    import numpy as np

    from kidedge.bench.measure import measure
    from kidedge.environment import machine_label
    from kidedge.package import default_package_path

    model = args.model or str(default_package_path())
    out = args.out or Path(__file__).resolve().parent / "results" / machine_label()
    load_start = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    first = None
    names = list(SETTINGS)
    for rep in range(args.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            threads, spin, calls = SETTINGS[name]
            spec = {"kind": "kidedge", "image": args.image, "out": str(out / ".threads-out.nii.gz"), "model": model,
                    "backend": "onnxruntime", "precision": "int8-cpu", "gate": True, "threads": threads}
            r = measure(spec, env={"KIDEDGE_ORT_SPIN": spin, "KIDEDGE_PARALLEL_CALLS": calls})
            if not r.get("ok"):
                print(f"{name}: failed: {r.get('error')}", file=sys.stderr)
                return 1
            labels = np.asarray(nib.load(spec["out"]).dataobj)
            if first is None:
                first = labels
            elif not np.array_equal(labels, first):
                print(f"{name}: labels differ from the first run's", file=sys.stderr)
                return 1
            runs[name].append({"scan_s": r["scan_s"], "cpu_s": r["scan_cpu_s"],
                               "infer_s": sum(v for k, v in r["stages"].items() if k.endswith(".infer"))})
            print(f"[{rep + 1}/{args.repeats}] {name}: {r['scan_s']:.2f} s, CPU {r['scan_cpu_s']:.2f} s", file=sys.stderr)
    for p in out.glob(".threads-out*"):
        p.unlink()
    load_end = os.getloadavg()[0]
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("scan_s", "cpu_s", "infer_s")} for k, v in runs.items()}
    scan = f"{Path(args.image).parent.name}/{Path(args.image).name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.json").write_text(json.dumps({"image": scan, "repeats": args.repeats, "runs": runs, "median": med,
                                                  "loadavg_1min": [load_start, load_end]}, indent=1) + "\n")
    base = med[next(n for n in names if "(default)" in n)]
    lines = ["# Thread settings of kidedge infer on the 2-core CPU", "",
             f"Scan `{scan}`; kidedge onnxruntime int8-cpu gated (the default), each setting {args.repeats} times "
             f"in fresh processes, interleaved; medians. Load average (1 min) {load_start:.1f} at start, "
             f"{load_end:.1f} at end. CPU seconds are those of all threads of the process. Every run's labels "
             "equal the first's.", "",
             "| setting | s/scan | CPU s | infer s (both stages) | s/scan vs default |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in names:
        m = med[name]
        lines.append(f"| {name} | {m['scan_s']:.2f} | {m['cpu_s']:.2f} | {m['infer_s']:.2f} | "
                     f"{m['scan_s'] / base['scan_s']:.2f}x |")
    lines += ["", "Command: `nice -n 5 python benchmarks/bench_threads.py --image SCAN --repeats "
              f"{args.repeats}`. The pipeline's own threads (one reader, one labeller) are fixed; numpy's BLAS "
              "is held at one thread (benchmarks/results/blas_threads.md). Side by side: the pipeline hands "
              "micro-batches in turn to two inference threads, each running its own onnxruntime call on one "
              "thread (`KIDEDGE_PARALLEL_CALLS`, kidedge/runtime/backends/registry.py)."]
    (out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
