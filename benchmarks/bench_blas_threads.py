"""kidedge infer with numpy's BLAS at one thread (the runtime's default) against BLAS left
at its default (one thread per core), side by side on the same scan.

Why: the runtime's reader thread resamples slices with matrix products while the engine's
own thread pool uses the cores; a multi-threaded OpenBLAS on top oversubscribes a small
CPU (see ``kidedge/runtime/blas_threads.py``). Each run is a fresh child process
(:func:`kidedge.bench.measure.measure`, kidedge variant, onnxruntime fp32, gated);
the two settings alternate, ``--repeats`` times each, and the medians are compared.

    python benchmarks/bench_blas_threads.py --model PACKAGE --image SCAN.nii.gz [--repeats 3]

Writes benchmarks/results/blas_threads.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    from kidedge.bench.measure import measure
    from kidedge.environment import describe, machine_label

    settings = {"blas_1_thread": {"KIDEDGE_BLAS_THREADS": "1"}, "blas_default": {"KIDEDGE_BLAS_THREADS": "0"}}
    runs = {k: [] for k in settings}
    for rep in range(args.repeats):
        for name, env in settings.items():
            spec = {"kind": "kidedge", "image": args.image, "out": str(args.out / ".blas_threads_tmp.nii.gz"),
                    "model": args.model, "backend": "onnxruntime", "precision": args.precision, "gate": True,
                    "threads": None}
            r = measure(spec, env=env)
            if not r.get("ok"):
                print(f"{name}: FAILED {r.get('error')}", file=sys.stderr)
                return 1
            runs[name].append({"scan_s": r["scan_s"], "scan_cpu_s": r["scan_cpu_s"], "stages": r.get("stages", {})})
            print(f"[{rep + 1}] {name}: {r['scan_s']:.2f} s (CPU {r['scan_cpu_s']:.2f} s)", flush=True)
    for tmp in (".blas_threads_tmp.nii.gz", ".blas_threads_tmp.volumes.json"):
        (args.out / tmp).unlink(missing_ok=True)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    def med_stage(name, stage):
        return statistics.median(r["stages"].get(stage, 0.0) for r in runs[name])

    stages = sorted({s for rs in runs.values() for r in rs for s in r["stages"]})
    machine = describe()
    res = {"benchmark": "blas_threads", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine_label": machine_label(machine), "machine": machine, "model": args.model, "image": args.image,
           "precision": args.precision, "repeats": args.repeats, "runs": runs,
           "median": {n: {"scan_s": med(n, "scan_s"), "scan_cpu_s": med(n, "scan_cpu_s"),
                          "stages": {s: med_stage(n, s) for s in stages}} for n in settings}}
    res["speedup_wall"] = res["median"]["blas_default"]["scan_s"] / res["median"]["blas_1_thread"]["scan_s"]
    res["speedup_cpu"] = res["median"]["blas_default"]["scan_cpu_s"] / res["median"]["blas_1_thread"]["scan_cpu_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "blas_threads.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["median"]
    lines = ["# kidedge infer: BLAS threads (runtime default 1) vs BLAS default (1 per core)", "",
             f"Machine `{res['machine_label']}` ({machine['cpu'].get('usable_cores')} usable cores; shared with other "
             f"jobs), {res['created']}. No GPU.",
             f"Package `{Path(args.model).name}`, onnxruntime {args.precision}, gated; scan `{args.image}`; "
             f"{args.repeats} alternating runs per setting, each in a fresh process; medians.", "",
             "| setting | s/scan | CPU s | " + " | ".join(stages) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in stages) + " |"]
    for n in settings:
        lines.append(f"| {n} | {m[n]['scan_s']:.2f} | {m[n]['scan_cpu_s']:.2f} | "
                     + " | ".join(f"{m[n]['stages'][s]:.2f}" for s in stages) + " |")
    lines += ["", f"BLAS at one thread: {res['speedup_wall']:.2f}x faster end to end (wall), "
              f"{res['speedup_cpu']:.2f}x less CPU time.", "",
              "Reproduce: `python benchmarks/bench_blas_threads.py --model PACKAGE --image SCAN`."]
    (args.out / "blas_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
