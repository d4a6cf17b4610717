"""int8-cpu with 8-bit (full-range) against 7-bit (ORT's reduce_range) weights, end to end.

One training run is exported twice, identical but for ``--int8-cpu-weight-bits``. Each
package then segments, through the runtime as ``kidedge infer`` runs it (each run a fresh
process, :func:`kidedge.bench.measure.measure`), the bench's cached phantom scans in int8
and fp32 (Dice against the phantom's truth, int8 minus fp32, and the scan's seconds); and
``kidedge evaluate --package`` scores both precisions on a held-out part of the run's split.
The int8 timings alternate between the packages, repeat by repeat, so that host noise
falls on both alike. Phantom data, not real CT.

    nice -n 5 .venv/bin/python benchmarks/bench_int8_weight_bits.py --run runs/v7 \\
        --data data/anatomy_v2 --split runs/v4/split_val_every4.json --part test SCAN ...

SCAN: the bench's cached scans (``imaging.nii.gz`` with ``segmentation.nii.gz`` beside it,
under ``~/.cache/kidedge/bench/scans``).

Writes benchmarks/results/int8_weight_bits.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REGIONS = ("kidney", "masses")


def _labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def scan_rows(packages: dict[str, Path], scans: list[Path], repeats: int, work: Path) -> list[dict]:
    """Per scan and package: int8 and fp32 Dice against the truth, int8 scan seconds."""
    from kidedge.bench.measure import measure
    from kidedge.bench.summary import hierarchical_dice

    rows = []
    for image in scans:
        truth = _labels(image.with_name("segmentation.nii.gz"))
        name = image.parent.name
        seconds = {label: [] for label in packages}
        dice = {}
        for rep in range(repeats):
            for label, pkg in packages.items():
                for precision in ("int8", "fp32") if rep == 0 else ("int8",):
                    out = work / f"{name}-{label}-{precision}.nii.gz"
                    r = measure({"kind": "kidedge", "image": str(image), "out": str(out), "model": str(pkg),
                                 "backend": "onnxruntime", "precision": precision, "gate": True, "threads": 2,
                                 "region": None})
                    if not r.get("ok"):
                        raise RuntimeError(f"{name} {label} {precision}: {r.get('error')}")
                    if precision == "int8":
                        seconds[label].append(r["scan_s"])
                    if rep == 0:
                        dice[(label, precision)] = hierarchical_dice(_labels(out), truth)
                    out.unlink(missing_ok=True)
        for label in packages:
            i8, f32 = dice[(label, "int8")], dice[(label, "fp32")]
            rows.append({"scan": name, "slices": int(truth.shape[0]), "package": label, "fp32_vs_truth": f32,
                         "int8_vs_truth": i8,
                         "int8_minus_fp32": {k: None if i8[k] is None or f32[k] is None else round(i8[k] - f32[k], 4)
                                             for k in REGIONS},
                         "int8_scan_s": [round(s, 3) for s in seconds[label]],
                         "int8_scan_median_s": round(statistics.median(seconds[label]), 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def phantom_rows(packages: dict[str, Path], data: str, split: str, part: str) -> list[dict]:
    from kidedge.bench.package_eval import evaluate_package

    rows = []
    for name, pkg in packages.items():
        ev = evaluate_package(pkg, data, split, part, ("int8", "fp32"), backend="onnxruntime", progress=False)
        m8, m32 = ev["by_precision"]["int8"]["mean"], ev["by_precision"]["fp32"]["mean"]
        rows.append({"package": name, "cases": ev["cases"],
                     "fp32": {k: round(m32[f"{k}_dice"], 4) for k in ("kidney", "tumour")},
                     "int8_minus_fp32": {k: round(m8[f"{k}_dice"] - m32[f"{k}_dice"], 4) for k in ("kidney", "tumour")}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def write_report(result: dict, out: Path) -> None:
    lines = ["# int8-cpu weights: 8-bit (full range) against 7-bit (reduce_range)", "",
             f"Run `{result['run']}` exported twice, identical but for `--int8-cpu-weight-bits` "
             f"(calibration: {result['calibration']}). Measured {result['created']} on {result['machine']} "
             f"(instruction sets: {', '.join(result['instruction_sets'])}). Phantom data, not real CT.", "",
             f"    {result['command']}", "",
             "## Bench scans (the bench's cached phantoms), through the runtime", "",
             "Dice against the phantom's truth (KiTS hierarchical regions); int8 seconds: median of "
             f"{result['repeats']} fresh-process runs of the whole scan, alternating between the packages.", "",
             "| scan | slices | weights | fp32 kidney | int8 - fp32 kidney | int8 - fp32 masses | int8 s (median) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["scans"]:
        lines.append(f"| {r['scan']} | {r['slices']} | {r['package']} | {r['fp32_vs_truth']['kidney']:.4f} | "
                     f"{_fmt(r['int8_minus_fp32']['kidney'])} | {_fmt(r['int8_minus_fp32']['masses'])} | "
                     f"{r['int8_scan_median_s']:.2f} |")
    lines += ["", f"## Held-out phantoms: `kidedge evaluate --package`, part `{result['part']}` of "
              f"`{result['split']}` ({len(result['phantoms'][0]['cases'])} cases)", "",
              "| weights | fp32 kidney | fp32 tumour | int8 - fp32 kidney | int8 - fp32 tumour |", "|---|---|---|---|---|"]
    for r in result["phantoms"]:
        lines.append(f"| {r['package']} | {r['fp32']['kidney']:.4f} | {r['fp32']['tumour']:.4f} | "
                     f"{_fmt(r['int8_minus_fp32']['kidney'])} | {_fmt(r['int8_minus_fp32']['tumour'])} |")
    lines += ["", "Which weights keep int8 closer to fp32 is read from the rows above, scan by scan (the masses "
              "Dice of a scan whose fp32 masses Dice is a few hundredths moves with a handful of voxels). "
              "On an x86 CPU with AVX2 but no VNNI, ONNX Runtime's uint8 x int8 kernel adds pairs of "
              "products in 16 bits and can saturate with full-range weights: there the runtime's `auto` takes "
              "fp32 for an 8-bit package (and `--precision int8` warns); export with `--int8-cpu-weight-bits 7` "
              "for such CPUs. That saturation was not measured here (this CPU has VNNI).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a kidedge train run directory (2D cascade)")
    ap.add_argument("--data", required=True, help="the run's dataset")
    ap.add_argument("--split", required=True, help="a split.json whose --part holds the phantoms to score")
    ap.add_argument("--part", default="test")
    ap.add_argument("--calib-method", default="percentile")
    ap.add_argument("scans", nargs="+", type=Path, help="imaging.nii.gz files with segmentation.nii.gz beside them")
    ap.add_argument("--repeats", type=int, default=3, help="int8 timing runs per scan and package")
    ap.add_argument("--out", default=str(RESULTS / "int8_weight_bits.json"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from an existing --out .json")
    args = ap.parse_args()
    if args.report_only:
        write_report(json.loads(Path(args.out).read_text()), Path(args.out))
        return 0

    from kidedge.environment import cpu_description, describe, machine_label
    from kidedge.export.package_writer import export_run

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kidedge_bits_") as tmp:
        packages = {}
        for bits in (8, 7):
            packages[f"{bits}-bit"] = Path(tmp) / f"bits{bits}"
            print(f"exporting {args.run} with {bits}-bit int8-cpu weights", flush=True)
            export_run(args.run, packages[f"{bits}-bit"], int8=True, calib_method=args.calib_method, quiet=True,
                       allow_int8_fidelity_loss=True, int8_cpu_weight_bits=bits)
        work = Path(tmp) / "out"
        work.mkdir()
        rows = scan_rows(packages, args.scans, args.repeats, work)
        phantoms = phantom_rows(packages, args.data, args.split, args.part)
    cpu = cpu_description()
    result = {"run": args.run, "calibration": f"{args.calib_method}, the export's defaults",
              "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_label(describe()), "instruction_sets": cpu["instruction_sets"],
              "command": "nice -n 5 .venv/bin/python benchmarks/bench_int8_weight_bits.py --run " + args.run
                         + f" --data {args.data} --split {args.split} --part {args.part} "
                         + " ".join(f"~/.cache/kidedge/bench/scans/{p.parent.name}/{p.name}" for p in args.scans),
              "repeats": args.repeats, "split": args.split, "part": args.part, "scans": rows, "phantoms": phantoms,
              "wall_s": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    write_report(result, out)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
