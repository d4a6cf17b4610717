"""Latency benchmark: kidedge against the same-work papers' way and MONAI (issues 7, 13).

A thin script over :func:`kidedge.bench.run.run_bench` (what ``kidedge bench`` runs),
with the knobs a benchmark session needs. Results go to
``benchmarks/results/<machine>/`` (bench.json, bench.md, latency.png, memory.png, curve.png).

    nice -n 5 .venv/bin/python benchmarks/run_bench.py          # full: ~60, 250, 600 slices
                                                                # + the 100..1000-slice curve
    .venv/bin/python benchmarks/run_bench.py --quick            # one small scan, < 2 min idle
    .venv/bin/python benchmarks/run_bench.py --curve none       # full, without the curve
    .venv/bin/python benchmarks/run_bench.py --untrained        # no shipped package yet: export
                                                                # kidedge_default untrained first

Without ``--model`` the package shipped in kidedge is used; ``--untrained`` exports the
kidedge_default networks with random weights instead (same work per slice, so the same
latency and memory, but meaningless Dice and cascade gating; the report says which).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small scan, few variants, one run each")
    ap.add_argument("--model", help="model package (default: the one shipped in kidedge)")
    ap.add_argument("--untrained", action="store_true",
                    help="export kidedge_default with random weights into the cache and bench that")
    ap.add_argument("--labels", help="real label maps for the phantoms (default ../shared/data/kits19-labels)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<machine>[/quick])")
    ap.add_argument("--work-dir", help="scan and output cache (default ~/.cache/kidedge/bench)")
    ap.add_argument("--targets", help="slice counts, comma-separated (default 60,250,600)")
    ap.add_argument("--repeats", type=int, help="runs per cheap variant on short scans (default 3)")
    ap.add_argument("--only", help="variant names to run, comma-separated")
    ap.add_argument("--note", action="append", help="a line for the report's notes (repeatable)")
    ap.add_argument("--curve", help="slice counts of the time-and-memory curve, comma-separated "
                                    "(default for a full run: 100,200,400,600,800,1000; 'none' skips it)")
    ap.add_argument("--curve-baseline-max", type=int, metavar="SLICES",
                    help="run the curve's baselines only on scans up to this many slices (default: all)")
    ap.add_argument("--rewrite-report", metavar="DIR",
                    help="re-render DIR/bench.md and the plots from DIR/bench.json (no measuring)")
    args = ap.parse_args()

    if args.rewrite_report:
        import json

        from kidedge.bench.report import write_report
        from kidedge.bench.scans import BenchScan
        from kidedge.bench.summary import evaluate_targets
        from kidedge.bench.variants import Variant

        folder = Path(args.rewrite_report)
        results = json.loads((folder / "bench.json").read_text())
        # the targets are re-judged from the stored measurements (the rules may have changed)
        scans = [BenchScan(d["name"], Path(d["image"]), Path(d["truth"]), d["slices"], tuple(d["shape"]),
                           tuple(d["spacing_mm"]), d["source"]) for d in results["scans"]]
        variants = [Variant(**v) for v in results["variants"]]
        results["targets"] = evaluate_targets(scans, variants, results["summary"], results.get("curve"))
        write_report(results, folder)
        return 0

    from kidedge.bench.run import run_bench
    from kidedge.bench.scans import CURVE_TARGETS
    from kidedge.errors import KidedgeError

    if args.curve:
        curve = None if args.curve == "none" else tuple(int(t) for t in args.curve.split(","))
    else:
        curve = None if args.quick or args.only or args.targets else CURVE_TARGETS

    model = args.model
    work = Path(args.work_dir or os.environ.get("KIDEDGE_BENCH_CACHE", Path.home() / ".cache" / "kidedge" / "bench"))
    try:
        if args.untrained and model is None:
            model = work / "packages" / "kidedge_default-untrained"
            if not model.exists():
                from kidedge.bench.untrained_package import export_untrained_package

                print(f"exporting kidedge_default with random weights to {model}", file=sys.stderr)
                # minmax: the percentile calibrator of onnxruntime 1.32 fails on stage-2 ROI crops of
                # differing sizes (seen 11:40 UTC); minmax handles them.
                export_untrained_package(model, int8=True, calib_method="minmax")
        return run_bench(quick=args.quick, out=args.out, model=model, labels=args.labels, work_dir=work,
                         targets=tuple(int(t) for t in args.targets.split(",")) if args.targets else None,
                         repeats=args.repeats, only=args.only.split(",") if args.only else None, notes=args.note,
                         curve=curve, curve_baseline_max=args.curve_baseline_max)
    except KidedgeError as exc:
        print(f"run_bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
