"""How the int8 export is made, compared end to end: int8 against fp32 of the same package.

One training run (a 2D cascade) is exported three ways, identical but for:

* ``default``: the localiser stays float (no int8 files; int8 runs it in fp32) and the
  segmenter's int8-cpu weights use the full 8-bit range (today's ``kidedge export --int8``);
* ``int8-localiser``: both stages int8, 8-bit weights (``--int8-localiser``);
* ``int8-localiser-7bit``: both stages int8, 7-bit weights (``--int8-localiser
  --int8-cpu-weight-bits 7``: the export before both options existed).

The fp32 files of the three are the same, so fp32 is run once. Each int8 package is then
scored against that fp32, three ways, through the runtime as ``kidedge infer`` runs it:

1. the bench's cached phantom scans (fresh process per run, :func:`kidedge.bench.measure.measure`):
   Dice against the phantom's truth, int8 minus fp32, and the int8 scan's seconds (median of
   ``--repeats``, alternating between the packages so that host noise falls on all alike);
2. ``kidedge evaluate --package`` on a held-out part of the run's split (phantoms);
3. the real CTs (ircadb-01 and the DICOM sample, when ../shared/data is present): the raw
   network labels (before post-processing) of int8 against those of fp32 (Dice of all
   labels, and of tumour + cyst). Numbers only: nothing made from ircadb-01 is written.

    nice -n 5 .venv/bin/python benchmarks/bench_int8_variants.py --run runs/v7 \\
        --data data/anatomy_v2 --split runs/v4/split_val_every4.json --part test SCAN ...

SCAN: the bench's cached scans (``imaging.nii.gz`` with ``segmentation.nii.gz`` beside it,
under ``~/.cache/kidedge/bench/scans``). Writes benchmarks/results/int8_variants.json and .md.
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
#: label -> export_run keywords (besides int8=True and the calibration method).
VARIANTS = {
    "default": {},
    "int8-localiser": {"int8_localiser": True},
    "int8-localiser-7bit": {"int8_localiser": True, "int8_cpu_weight_bits": 7},
}


def _run(image: Path, package: Path, precision: str, out: Path) -> dict:
    from kidedge.bench.measure import measure

    r = measure({"kind": "kidedge", "image": str(image), "out": str(out), "model": str(package),
                 "backend": "onnxruntime", "precision": precision, "gate": True, "threads": 2, "region": None})
    if not r.get("ok"):
        raise RuntimeError(f"{image.parent.name} {package.name} {precision}: {r.get('error')}")
    return r


def scan_rows(packages: dict[str, Path], scans: list[Path], repeats: int, work: Path) -> list[dict]:
    """Per scan: fp32's Dice against the truth, and per package int8 - fp32 and int8 seconds."""
    from kidedge.bench.run import _load_labels as _labels
    from kidedge.bench.summary import hierarchical_dice

    rows = []
    for image in scans:
        truth = _labels(image.with_name("segmentation.nii.gz"))
        out = work / "labels.nii.gz"
        _run(image, next(iter(packages.values())), "fp32", out)
        fp32 = hierarchical_dice(_labels(out), truth)
        seconds, dice = {label: [] for label in packages}, {}
        for rep in range(repeats):
            for label, pkg in packages.items():
                seconds[label].append(_run(image, pkg, "int8", out)["scan_s"])
                if rep == 0:
                    dice[label] = hierarchical_dice(_labels(out), truth)
        out.unlink(missing_ok=True)
        row = {"scan": image.parent.name, "slices": int(truth.shape[0]), "fp32_vs_truth": fp32, "packages": {}}
        for label in packages:
            i8 = dice[label]
            row["packages"][label] = {
                "int8_vs_truth": i8,
                "int8_minus_fp32": {k: None if i8[k] is None or fp32[k] is None else round(i8[k] - fp32[k], 4)
                                    for k in REGIONS},
                "int8_scan_s": [round(s, 3) for s in seconds[label]],
                "int8_scan_median_s": round(statistics.median(seconds[label]), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def phantom_rows(packages: dict[str, Path], data: str, split: str, part: str) -> dict:
    from kidedge.bench.package_eval import evaluate_package

    def means(pkg, precision):
        ev = evaluate_package(pkg, data, split, part, (precision,), backend="onnxruntime", progress=False)
        return ev["cases"], ev["by_precision"][precision]["mean"]

    cases, m32 = means(next(iter(packages.values())), "fp32")
    out = {"cases": cases, "fp32": {k: round(m32[f"{k}_dice"], 4) for k in ("kidney", "tumour")}, "packages": {}}
    for label, pkg in packages.items():
        _, m8 = means(pkg, "int8")
        out["packages"][label] = {k: round(m8[f"{k}_dice"] - m32[f"{k}_dice"], 4) for k in ("kidney", "tumour")}
    print(json.dumps(out), flush=True)
    return out


def real_ct_rows(packages: dict[str, Path]) -> list[dict]:
    """Raw-label agreement of int8 with fp32 on the real CTs present (numbers only)."""
    from kidedge.bench.real_ct import IRCADB, SAMPLE, raw_labels

    # all labels ("kidney") and tumour + cyst ("masses"), both empty: None
    from kidedge.bench.summary import hierarchical_dice
    from kidedge.io import load_scan
    from kidedge.package import ModelPackage
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter

    def raw(pkg: Path, precision: str, scan) -> np.ndarray:
        package = ModelPackage.load(pkg)
        with Segmenter(package, select_backend(package, "onnxruntime", precision)) as seg:
            return raw_labels(seg, scan)

    rows = []
    for name, path in (("ircadb-01", IRCADB / "PATIENT_DICOM"), ("ct-dicom-sample", SAMPLE)):
        if not path.exists():
            continue
        scan = load_scan(path)
        voxel_ml = float(np.prod(scan.spacing)) / 1000.0
        ref = raw(next(iter(packages.values())), "fp32", scan)
        row = {"scan": name, "fp32_labelled_ml": round(float((ref > 0).sum()) * voxel_ml, 1), "packages": {}}
        for label, pkg in packages.items():
            lab = raw(pkg, "int8", scan)
            agree = hierarchical_dice(lab, ref)
            row["packages"][label] = {"labels_dice_vs_fp32": agree["kidney"], "masses_dice_vs_fp32": agree["masses"],
                                      "labelled_ml": round(float((lab > 0).sum()) * voxel_ml, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def write_report(result: dict, out: Path) -> None:
    labels = list(result["variants"])
    lines = ["# int8 export variants: int8 against fp32 of the same package", "",
             f"Run `{result['run']}` exported {len(labels)} ways (calibration: {result['calibration']}), "
             f"measured {result['created']} on {result['machine']} (instruction sets: "
             f"{', '.join(result['instruction_sets'])}). The fp32 files of all are the same.", ""]
    lines += [f"- `{k}`: {v}" for k, v in result["variants"].items()]
    lines += ["", f"    {result['command']}", "",
              "## Bench scans (cached phantoms, not real CT), through the runtime", "",
              "int8 Dice against the phantom's truth minus fp32's (KiTS hierarchical regions); int8 seconds: "
              f"median of {result['repeats']} fresh-process runs of the whole scan, alternating between the "
              "packages.", "",
              "| scan | slices | fp32 kidney | " + " | ".join(f"{k}: kidney / masses / s" for k in labels) + " |",
              "|---|---|---|" + "---|" * len(labels)]
    for r in result["scans"]:
        cells = [f"{_fmt(p['int8_minus_fp32']['kidney'])} / {_fmt(p['int8_minus_fp32']['masses'])} / "
                 f"{p['int8_scan_median_s']:.2f}" for p in r["packages"].values()]
        lines.append(f"| {r['scan']} | {r['slices']} | {r['fp32_vs_truth']['kidney']:.4f} | " + " | ".join(cells) + " |")
    ph = result["phantoms"]
    lines += ["", f"## Held-out phantoms: `kidedge evaluate --package`, part `{result['part']}` of "
              f"`{result['split']}` ({len(ph['cases'])} cases)", "",
              f"fp32: kidney {ph['fp32']['kidney']:.4f}, tumour {ph['fp32']['tumour']:.4f}.", "",
              "| variant | int8 - fp32 kidney | int8 - fp32 tumour |", "|---|---|---|"]
    for k, v in ph["packages"].items():
        lines.append(f"| {k} | {_fmt(v['kidney'])} | {_fmt(v['tumour'])} |")
    if result["real_ct"]:
        lines += ["", "## Real CT: raw network labels (before post-processing) of int8 against fp32", "",
                  "Dice of all labels and of tumour + cyst between int8's and fp32's raw labels; numbers only "
                  "(ircadb-01's licence allows no image).", "",
                  "| scan | fp32 labelled mL | " + " | ".join(f"{k}: all / masses / mL" for k in labels) + " |",
                  "|---|---|" + "---|" * len(labels)]
        for r in result["real_ct"]:
            cells = [f"{p['labels_dice_vs_fp32'] if p['labels_dice_vs_fp32'] is not None else 'n/a'} / "
                     f"{p['masses_dice_vs_fp32'] if p['masses_dice_vs_fp32'] is not None else 'n/a'} / "
                     f"{p['labelled_ml']}" for p in r["packages"].values()]
            lines.append(f"| {r['scan']} | {r['fp32_labelled_ml']} | " + " | ".join(cells) + " |")
    lines += ["", "On an x86 CPU with AVX2 but no VNNI, ONNX Runtime's uint8 x int8 kernel adds pairs of products "
              "in 16 bits and can saturate with full-range weights: there the runtime's `auto` takes fp32 for an "
              "8-bit package (and `--precision int8` warns); export with `--int8-cpu-weight-bits 7` for such CPUs. "
              "Not measured here: this CPU has VNNI.", ""]
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
    ap.add_argument("--out", default=str(RESULTS / "int8_variants.json"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from an existing --out .json")
    args = ap.parse_args()
    if args.report_only:
        write_report(json.loads(Path(args.out).read_text()), Path(args.out))
        return 0

    from kidedge.environment import cpu_description, describe, machine_label
    from kidedge.export.package_writer import export_run

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kidedge_int8_variants_") as tmp:
        packages = {}
        for label, kw in VARIANTS.items():
            packages[label] = Path(tmp) / label
            print(f"exporting {args.run}: {label}", flush=True)
            export_run(args.run, packages[label], int8=True, calib_method=args.calib_method, quiet=True,
                       allow_int8_fidelity_loss=True, **kw)
        work = Path(tmp) / "out"
        work.mkdir()
        rows = scan_rows(packages, args.scans, args.repeats, work)
        phantoms = phantom_rows(packages, args.data, args.split, args.part)
        real = real_ct_rows(packages)
    cpu = cpu_description()
    flags = {"int8_localiser": "--int8-localiser", "int8_cpu_weight_bits": "--int8-cpu-weight-bits"}
    result = {"run": args.run, "calibration": f"{args.calib_method}, the export's defaults",
              "variants": {k: " ".join(["kidedge export --int8", *(
                  flags[a] + ("" if v is True else f" {v}") for a, v in kw.items())]) for k, kw in VARIANTS.items()},
              "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_label(describe()), "instruction_sets": cpu["instruction_sets"],
              "command": "nice -n 5 .venv/bin/python benchmarks/bench_int8_variants.py --run " + args.run
                         + f" --data {args.data} --split {args.split} --part {args.part} "
                         + " ".join(f"~/.cache/kidedge/bench/scans/{p.parent.name}/{p.name}" for p in args.scans),
              "repeats": args.repeats, "split": args.split, "part": args.part, "scans": rows, "phantoms": phantoms,
              "real_ct": real, "wall_s": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    write_report(result, out)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
