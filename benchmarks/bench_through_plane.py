"""Choose a 2D segmenter's through-plane smoothing on the validation phantoms.

For each sigma (mm), a copy of the package with ``output.through_plane_sigma_mm`` set on
its 2D softmax stages is scored end to end (``kidedge evaluate --package``: streaming
runtime, gating, review) on a split's part, the validation part by default: held-out
test phantoms and real CT are measured only for the sigma chosen here.

Tumour Dice is reported three ways because its mean hides two effects: on a case with no
tumour, KiTS scoring gives 1 for an empty prediction and 0 for any false voxel, so
smoothing that removes specks raises the mean without segmenting any tumour better.

    python benchmarks/bench_through_plane.py --data data/anatomy_v2 \\
        --split data/anatomy_v2/split.json --part val --sigmas 0,1.5,3,4,5,8,12
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kidedge.bench.package_eval import _select_cases, evaluate_package  # noqa: E402
from kidedge.io import load_scan  # noqa: E402
from kidedge.package import MANIFEST_NAME  # noqa: E402


def package_with_sigma(package: Path, sigma: float, where: Path) -> Path:
    """A copy of ``package`` whose 2D softmax stages smooth with ``sigma`` mm (0: off)."""
    dst = where / f"sigma_{sigma:g}"
    shutil.copytree(package, dst)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    for stage in manifest["stages"]:
        if stage["role"] == "segment" and stage["output"]["activation"] == "softmax":
            stage["output"].pop("through_plane_sigma_mm", None)
            if sigma:
                stage["output"]["through_plane_sigma_mm"] = sigma
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return dst


def tumour_free_cases(data, split, part) -> set[str]:
    """Cases whose truth has no tumour (label 2)."""
    free = set()
    for case in _select_cases(data, split, part):
        if not np.any(np.asarray(load_scan(case.label).array) == 2):
            free.add(case.case_id)
    return free


def summarise(per_case: dict, free: set[str]) -> dict:
    kidney = [s["kidney_dice"] for s in per_case.values()]
    tumour = [s["tumour_dice"] for s in per_case.values()]
    with_t = [s["tumour_dice"] for c, s in per_case.items() if c not in free]
    empty_right = sum(1 for c, s in per_case.items() if c in free and s["tumour_dice"] == 1.0)
    return {"kidney_dice": float(np.mean(kidney)), "tumour_dice": float(np.mean(tumour)),
            "tumour_dice_cases_with_tumour": float(np.mean(with_t)) if with_t else None,
            "tumour_free_cases_left_empty": empty_right, "tumour_free_cases": len(free)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "kidedge" / "models" / "default"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", help="a training run's split.json (default: every labelled case under --data)")
    ap.add_argument("--part", default="val", choices=("train", "val", "test"))
    ap.add_argument("--sigmas", default="0,1.5,3,4,5,8,12", help="comma-separated, mm")
    ap.add_argument("--precision", nargs="+", default=["int8"], choices=("int8", "fp32"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="through_plane", help="report file name (.md and .json)")
    args = ap.parse_args(argv)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    free = tumour_free_cases(args.data, args.split, args.part)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sigma in sigmas:
            pkg = package_with_sigma(Path(args.model), sigma, Path(tmp))
            t0 = time.perf_counter()
            ev = evaluate_package(pkg, args.data, split=args.split, part=args.part,
                                  precisions=tuple(args.precision), progress=False)
            for precision, r in ev["by_precision"].items():
                rows.append({"sigma_mm": sigma, "precision": precision, "cases": len(r["per_case"]),
                             **summarise(r["per_case"], free),
                             "per_case": {c: {k: round(s[k], 4) for k in ("kidney_dice", "tumour_dice")}
                                          for c, s in r["per_case"].items()}})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_case"}))
            shutil.rmtree(pkg)
            print(f"sigma {sigma:g} mm: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    package_name = json.loads((Path(args.model) / MANIFEST_NAME).read_text())["name"]
    report = {"kidedge_through_plane": 1, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "package": package_name, "data": Path(args.data).name, "split": Path(args.split).name if args.split else None,
              "part": args.part, "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Through-plane smoothing of the segmenter's probabilities",
        "",
        f"Package `{report['package']}`; {rows[0]['cases']} phantoms, "
        + (f"the `{args.part}` part of `{report['split']}`" if args.split else "every labelled case")
        + f" (data `{report['data']}`), scored end to end by `kidedge evaluate --package` "
        "(streaming runtime, cascade gating, kidney review) with the segmenter's class probabilities "
        "averaged over neighbouring slices by a Gaussian of sigma mm (0: each slice alone). "
        f"{len(free)} of these phantoms have no tumour: KiTS scoring gives such a case tumour Dice 1 "
        "for an empty prediction and 0 for any false voxel, so the tumour mean is also split.",
        "",
        "| sigma mm | precision | kidney Dice | tumour Dice (all) | tumour Dice (cases with tumour) | tumour-free cases left empty |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['sigma_mm']:g} | {r['precision']} | {r['kidney_dice']:.4f} | {r['tumour_dice']:.4f} | "
                     f"{r['tumour_dice_cases_with_tumour']:.4f} | {r['tumour_free_cases_left_empty']} / "
                     f"{r['tumour_free_cases']} |")
    if len(rows[0]["per_case"]) <= 12:  # a few cases: each one's kidney / tumour Dice
        lines += ["", "| case | " + " | ".join(f"sigma {r['sigma_mm']:g} {r['precision']}" for r in rows) + " |",
                  "| --- |" + " ---: |" * len(rows)]
        for c in sorted(rows[0]["per_case"]):
            lines.append(f"| {c} | " + " | ".join(f"{r['per_case'][c]['kidney_dice']:.3f} / "
                                                  f"{r['per_case'][c]['tumour_dice']:.3f}" for r in rows) + " |")
        lines += ["", "Per case: kidney / tumour Dice."]
    split_arg = f"--split SPLIT --part {args.part} " if args.split else ""
    lines += ["", f"Command: `python benchmarks/bench_through_plane.py --data DATA {split_arg}--sigmas {args.sigmas}`.", ""]
    (out / f"{args.name}.md").write_text("\n".join(lines))
    print(f"wrote {out / args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
