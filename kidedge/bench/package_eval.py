"""``kidedge evaluate --package``: a finished model package scored on held-out labelled
cases, through the lean runtime.

Export's own fidelity report compares precisions with each other on a few phantoms; this
module answers the user's question instead: how well does *the shipped artefact* segment
cases it never saw? Each case goes through :meth:`kidedge.runtime.engine.Segmenter.segment`,
the call ``kidedge infer`` makes (streaming, cascade gating, post-processing), for each
precision asked; every case is scored with :func:`kidedge.metrics.kits_scores`, and the
result can be recorded in the package manifest under ``provenance.evaluation`` (the
manifest is not itself hashed, so the model files and their hashes stay as export wrote
them).

    kidedge evaluate --package PACKAGE --data DIR [--split RUN/split.json] [--part test]
        [--precision int8 --precision fp32] [--record] [--out FILE]

The cases are the ``--part`` of a training run's ``split.json`` (the patient-level split
the trainer saved), or every labelled case under ``--data`` without ``--split``.
No torch: this runs where the runtime runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io import discover_cases, load_scan
from kidedge.io.writer import write_json_atomic
from kidedge.metrics import kits_scores, summarise_values
from kidedge.package import MANIFEST_NAME, ModelPackage
from kidedge.runtime.backends.registry import select_backend
from kidedge.runtime.engine import Segmenter

#: Scores reported per case and aggregated (KiTS21 hierarchical classes + KiTS19 view).
SCORE_KEYS = ("kidney_dice", "masses_dice", "tumour_dice", "kidney_sd", "masses_sd", "tumour_sd",
              "kits19_kidney_dice", "kits19_tumour_dice", "kits19_score", "dice_multi")


def _select_cases(data, split: str | None, part: str):
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
            out[key] = summarise_values(vals)
    return out


def evaluate_package(package_path, data, split: str | None = None, part: str = "test",
                     precisions=("int8",), backend: str = "onnxruntime", gate: bool = True,
                     progress: bool = True) -> dict:
    """Segment the selected cases with the package and score them.

    Returns a JSON-ready dict: ``{"cases": [...ids], "data", "split", "part", "backend",
    "gate", "by_precision": {precision: {"mean": {...}, "per_case": {...}, "seconds"}}}``.
    """
    from tqdm import tqdm

    package = ModelPackage.load(package_path)
    cases = _select_cases(data, split, part)
    if not cases:
        raise KidedgeError(f"{data}: no labelled cases to evaluate on")
    result = {"package": package.name, "data": str(data), "split": None if split is None else str(split), "part": part,
              "backend": backend, "gate": gate, "cases": [c.case_id for c in cases], "by_precision": {}}
    for precision in precisions:
        choice = select_backend(package, backend, precision)
        per_case, t0 = {}, time.perf_counter()
        with Segmenter(package, choice) as segmenter:
            for case in tqdm(cases, desc=f"{package.name} {precision}", unit="case", disable=not progress,
                             file=sys.stderr):
                scan = load_scan(case.image)
                labels = segmenter.segment(scan, gate=gate).labels.to_dense()
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


def evaluate_package_command(package, data, split=None, part="test", precisions=(), gate=True, record=False,
                             out=None) -> int:
    """``kidedge evaluate --package``: score, print the table, optionally record and save."""
    ev = evaluate_package(package, data, split, part, tuple(precisions) or ("int8",), gate=gate)
    if out:
        write_json_atomic(out, ev)
    if record:
        record_in_manifest(package, ev)
    print(format_table(ev))
    return 0
