"""Score a finished model package on held-out labelled cases, through the lean runtime.

Export's own fidelity report compares precisions with each other on a few phantoms; this
module answers the user's question instead: how well does *the shipped artefact* segment
cases it never saw? It runs exactly what ``kidedge infer`` runs (ONNX Runtime, streaming,
cascade gating, post-processing) for each precision asked, scores every case with
:func:`kidedge.metrics.kits_scores` and can record the result in the package manifest
under ``provenance.evaluation`` (the manifest is not itself hashed, so the model files and
their hashes stay as export wrote them).

    python -m kidedge.bench.package_eval PACKAGE --data DIR [--split RUN/split.json]
        [--part test] [--precision int8 --precision fp32] [--record] [--out FILE]

The cases are the ``--part`` of a training run's ``split.json`` (the patient-level split
the trainer saved), or every labelled case under ``--data`` without ``--split``.
No torch: this runs where the runtime runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError

#: Scores reported per case and aggregated (KiTS21 hierarchical classes + KiTS19 view).
SCORE_KEYS = ("kidney_dice", "masses_dice", "tumour_dice", "kidney_sd", "masses_sd", "tumour_sd",
              "kits19_kidney_dice", "kits19_tumour_dice", "kits19_score", "dice_multi")


def _select_cases(data, split: str | None, part: str):
    from kidedge.io import discover_cases

    cases = [c for c in discover_cases(data) if c.label is not None and c.image is not None]
    if split is None:
        return cases
    try:
        wanted = json.loads(Path(split).read_text())[part]
    except (OSError, ValueError, KeyError) as exc:
        raise KidedgeError(f"{split}: not a split.json with a '{part}' list ({type(exc).__name__})") from None
    by_id = {c.case_id: c for c in cases}
    missing = [cid for cid in wanted if cid not in by_id]
    if missing:
        raise KidedgeError(f"{split}: cases {missing[:3]} are not labelled cases under {data}")
    return [by_id[cid] for cid in wanted]


def _aggregate(per_case: dict[str, dict]) -> dict:
    out = {}
    for key in SCORE_KEYS:
        vals = [s[key] for s in per_case.values() if key in s and s[key] is not None]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "median": float(statistics.median(vals)),
                        "std": float(np.std(vals)), "min": float(np.min(vals))}
    return out


def evaluate_package(package_path, data, split: str | None = None, part: str = "test",
                     precisions=("int8",), backend: str = "onnxruntime", gate: bool = True,
                     progress: bool = True) -> dict:
    """Segment the selected cases with the package and score them.

    Returns a JSON-ready dict: ``{"cases": [...ids], "data", "split", "part", "backend",
    "gate", "by_precision": {precision: {"mean": {...}, "per_case": {...}, "seconds"}}}``.
    """
    from tqdm import tqdm

    from kidedge.io import load_scan
    from kidedge.metrics import kits_scores
    from kidedge.package import ModelPackage
    from kidedge.postprocess import postprocess_labels
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter
    from kidedge.runtime.profiling import Profiler

    package = ModelPackage.load(package_path)
    cases = _select_cases(data, split, part)
    if not cases:
        raise KidedgeError(f"{data}: no labelled cases to evaluate on")
    result = {"package": package.name, "data": str(Path(data).resolve()), "split": split, "part": part,
              "backend": backend, "gate": gate, "cases": [c.case_id for c in cases], "by_precision": {}}
    for precision in precisions:
        choice = select_backend(package, backend, precision)
        per_case, t0 = {}, time.perf_counter()
        with Segmenter(package, choice) as segmenter:
            for case in tqdm(cases, desc=f"{package.name} {precision}", unit="case", disable=not progress,
                             file=sys.stderr):
                scan = load_scan(case.image)
                labels, _, box = segmenter.segment(scan, Profiler(), gate=gate)
                fg = box.slices()
                if fg is not None:
                    labels[fg] = postprocess_labels(labels[fg], scan.spacing)
                truth, _ = case.load_label()
                per_case[case.case_id] = kits_scores(labels, np.asarray(truth), scan.spacing)
                scan.release()
        result["by_precision"][precision] = {
            "files": choice.files, "seconds": time.perf_counter() - t0,
            "mean": {k: v["mean"] for k, v in _aggregate(per_case).items()},
            "summary": _aggregate(per_case), "per_case": per_case}
    return result


def record_in_manifest(package_dir, evaluation: dict) -> None:
    """Store ``evaluation`` (without per-case detail) as ``provenance.evaluation``."""
    from kidedge.io.writer import write_json_atomic
    from kidedge.package import MANIFEST_NAME

    path = Path(package_dir) / MANIFEST_NAME
    if not path.is_file():
        raise KidedgeError(f"{package_dir}: --record needs a package directory (not a zip)")
    manifest = json.loads(path.read_text())
    slim = {k: v for k, v in evaluation.items() if k != "by_precision"}
    slim["by_precision"] = {p: {k: v for k, v in r.items() if k != "per_case"}
                            for p, r in evaluation["by_precision"].items()}
    manifest.setdefault("provenance", {})["evaluation"] = slim
    write_json_atomic(path, manifest)


def format_table(evaluation: dict) -> str:
    cols = ("kidney_dice", "masses_dice", "tumour_dice", "kidney_sd", "masses_sd", "tumour_sd", "kits19_score")
    lines = [f"{len(evaluation['cases'])} cases ({evaluation['part']} split), mean:",
             f"{'precision':10s} " + " ".join(f"{c:>12s}" for c in cols)]
    for p, r in evaluation["by_precision"].items():
        lines.append(f"{p:10s} " + " ".join(f"{r['mean'].get(c, float('nan')):12.3f}" for c in cols))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kidedge.bench.package_eval", description=__doc__.split("\n")[0])
    ap.add_argument("package")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split")
    ap.add_argument("--part", default="test", choices=("train", "val", "test"))
    ap.add_argument("--precision", action="append", choices=("fp32", "fp16", "int8"))
    ap.add_argument("--no-gate", action="store_true")
    ap.add_argument("--record", action="store_true", help="write the means into the manifest's provenance")
    ap.add_argument("--out", help="write the full result (per case) as JSON")
    args = ap.parse_args(argv)
    try:
        ev = evaluate_package(args.package, args.data, args.split, args.part, tuple(args.precision or ("int8",)),
                              gate=not args.no_gate)
        if args.out:
            from kidedge.io.writer import write_json_atomic

            write_json_atomic(args.out, ev)
        if args.record:
            record_in_manifest(args.package, ev)
    except KidedgeError as exc:
        print(f"kidedge: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(ev))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
