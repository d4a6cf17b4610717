"""``kidedge evaluate --pred DIR --gt DIR``: predictions scored against ground truth,
case by case (:func:`kidedge.metrics.kits_scores`), with a terminal table and JSON + CSV.
"""

from __future__ import annotations

import csv
import io as _stringio
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.writer import write_texts_atomic
from kidedge.metrics.scores import (
    KITS19_CLASSES,
    KITS21_CLASSES,
    N_LABEL_CLASSES,
    SCORE_ORDER,
    DiceMultiPool,
    kits_scores,
    summarise_values,
)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_PRED_FILE_NAMES = ("segmentation", "prediction")


def _strip_nifti(name: str) -> str | None:
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def find_predictions(pred_dir) -> dict[str, Path]:
    """Predicted label maps in a folder, by case id.

    Args:
        pred_dir: folder holding ``CASE.nii.gz`` files (the KiTS21 submission layout,
            ``kidedge infer -o DIR``'s output), or ``CASE/segmentation.nii.gz`` (the KiTS19
            layout), or ``CASE/prediction.nii.gz`` (``.nii`` also accepted).

    Returns:
        {case id: path}, sorted by case id. A case found twice is an error.
    """
    root = Path(pred_dir)
    if not root.is_dir():
        raise KidedgeError(f"{root}: prediction folder does not exist")
    found: dict[str, Path] = {}

    def put(case_id: str, path: Path) -> None:
        if case_id in found:
            raise KidedgeError(f"{root}: case {case_id} has two predictions: {found[case_id].name} and {path.relative_to(root)}")
        found[case_id] = path

    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden files: temporaries, macOS "._" forks
        if entry.is_file():
            stem = _strip_nifti(entry.name)
            if stem is not None:
                put(stem, entry)
        elif entry.is_dir():
            for base in _PRED_FILE_NAMES:
                for suffix in _NIFTI_SUFFIXES:
                    candidate = entry / f"{base}{suffix}"
                    if candidate.is_file():
                        put(entry.name, candidate)
    return dict(sorted(found.items()))


def _case_key(case_id: str) -> str:
    # "case_00012", "00012" and "case_12" name the same KiTS case
    m = re.fullmatch(r"(?:case_)?0*(\d+)", case_id)
    return f"case_{int(m.group(1)):05d}" if m else case_id


def _ground_truth_cases(gt_dir) -> dict:
    """{case id: kidedge.io Case} of every labelled case under ``gt_dir``."""
    from kidedge.io import discover_cases

    # flat_as="label": a flat folder of NIfTI files is a folder of label maps here
    cases = {c.case_id: c for c in discover_cases(gt_dir, flat_as="label") if c.label is not None}
    if not cases:
        raise KidedgeError(f"{gt_dir}: no ground-truth label maps found")
    return cases


def _load(source):
    """(canonical uint8 labels, canonical affine, spacing) of a label map via kidedge.io.

    ``source`` is a kidedge.io Case (its own label mapping, e.g. a Decathlon
    dataset.json, applies) or a path.
    """
    if hasattr(source, "load_label"):
        labels, scan = source.load_label()
    else:
        from kidedge.io import load_label_map

        labels, scan = load_label_map(source)
    return labels, np.asarray(scan.canonical_affine, dtype=np.float64), tuple(float(s) for s in scan.spacing)


def _same_grid(aff_a: np.ndarray, aff_b: np.ndarray) -> bool:
    # 1e-3 mm: far below any voxel size, far above float32 header rounding
    return bool(np.allclose(aff_a, aff_b, rtol=0.0, atol=1e-3))


_TABLE_COLUMNS = (
    ("kidney_dice", "kidney"),
    ("masses_dice", "masses"),
    ("tumour_dice", "tumour"),
    ("kidney_sd", "kid SD"),
    ("masses_sd", "mass SD"),
    ("tumour_sd", "tum SD"),
    ("kits19_kidney_dice", "K19 k+t"),
    ("kits19_score", "K19 score"),
    ("dice_multi", "dice_multi"),
)


def format_table(report: dict) -> str:
    """The terminal table of an :func:`evaluate_dirs` report (per case, then aggregates)."""
    name_w = max([len("case")] + [len(c["case_id"]) for c in report["cases"]] + [len("median")])
    widths = [max(len(h), 6) for _, h in _TABLE_COLUMNS]
    head = "case".ljust(name_w) + "  " + "  ".join(h.rjust(w) for (_, h), w in zip(_TABLE_COLUMNS, widths, strict=True))
    lines = [head, "-" * len(head)]
    for case in report["cases"]:
        m = case["metrics"]
        lines.append(case["case_id"].ljust(name_w) + "  " + "  ".join(f"{m[k]:.4f}".rjust(w) for (k, _), w in zip(_TABLE_COLUMNS, widths, strict=True)))
    lines.append("-" * len(head))
    for stat in ("mean", "median", "std"):
        agg = report["aggregate"]
        lines.append(stat.ljust(name_w) + "  " + "  ".join(f"{agg[k][stat]:.4f}".rjust(w) for (k, _), w in zip(_TABLE_COLUMNS, widths, strict=True)))
    pooled = report["dice_multi_pooled"]
    lines.append("")
    lines.append(
        f"Dice (3D, per case, KiTS21 classes; mean over {len(report['cases'])} cases): "
        f"kidney {report['aggregate']['kidney_dice']['mean']:.4f}, masses {report['aggregate']['masses_dice']['mean']:.4f}, "
        f"tumour {report['aggregate']['tumour_dice']['mean']:.4f}; surface Dice at {report['tolerance_mm']:g} mm."
    )
    lines.append(
        f"dice_multi (fastai DiceMulti, background included, pooled over every slice of every case, as papers/000 reports): "
        f"{pooled['value']:.4f}  [per class bg/kidney/tumour/cyst: "
        + ", ".join("n/a" if math.isnan(v) else f"{v:.4f}" for v in pooled["per_class"])
        + "]"
    )
    return "\n".join(lines)


def _csv_text(report: dict) -> str:
    keys = list(SCORE_ORDER)
    buf = _stringio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", *keys])
    for case in report["cases"]:
        writer.writerow([case["case_id"], *(f"{case['metrics'][k]:.8f}" for k in keys)])
    for stat in ("mean", "median", "std"):
        writer.writerow([stat, *(f"{report['aggregate'][k][stat]:.8f}" for k in keys)])
    return buf.getvalue()


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _output_paths(out) -> tuple[Path, Path]:
    out = Path(out)
    if out.is_dir():
        raise KidedgeError(f"{out}: --out must be a file name (.json), not a folder")
    if out.suffix.lower() == ".csv":
        return out.with_suffix(".json"), out
    return out, out.with_suffix(".csv") if out.suffix.lower() == ".json" else Path(str(out) + ".csv")


def evaluate_dirs(pred, gt, out=None, tolerance_mm: float = 2.0, *, show_progress: bool = True, echo=None) -> dict:
    """Score a folder of predictions against ground truth, as ``kidedge evaluate`` does.

    Args:
        pred: folder of predicted label maps (layouts in :func:`find_predictions`).
        gt: folder of ground truth in any layout :func:`kidedge.io.discover_cases` knows
            (e.g. KiTS19 ``case_XXXXX/segmentation.nii.gz``).
        out: optional ``.json`` file for the per-case and aggregate results; a ``.csv``
            with the same name is written beside it (given a ``.csv``, the ``.json`` goes
            beside it). Both are written atomically.
        tolerance_mm: surface Dice tolerance in mm.
        show_progress: draw a tqdm progress bar on stderr.
        echo: where the table goes (default: print to stdout); ``echo=False`` is silent.

    Returns:
        The report dict (also what the JSON file holds).

    Every ground-truth case that has a label map must have a prediction, and every
    prediction must have a ground truth: a missing or unmatched case is an error that
    names it (scoring it 0, as KiTS does for a missing submission, would silently turn a
    wrong folder into a bad score). Prediction and truth must share shape and grid (the
    canonical affine, to 1e-3 mm); each is brought to the canonical orientation by
    kidedge.io, so a prediction saved in another orientation of the same grid is fine.
    """
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise KidedgeError(f"--tolerance must be a finite number >= 0 mm, got {tolerance_mm!r}")
    out_paths = _output_paths(out) if out else None
    predictions = find_predictions(pred)
    if not predictions:
        raise KidedgeError(f"{pred}: no predictions found (expected CASE.nii.gz or CASE/segmentation.nii.gz)")
    truths = _ground_truth_cases(gt)
    pred_by_key = {_case_key(k): (k, v) for k, v in predictions.items()}
    truth_by_key = {_case_key(k): (k, v) for k, v in truths.items()}
    missing = sorted(truth_by_key[k][0] for k in truth_by_key.keys() - pred_by_key.keys())
    extra = sorted(pred_by_key[k][0] for k in pred_by_key.keys() - truth_by_key.keys())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise KidedgeError(f"{pred}: no prediction for {len(missing)} ground-truth case(s): {shown}")
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise KidedgeError(f"{gt}: no ground truth for prediction(s): {shown}")

    from tqdm import tqdm

    pool = DiceMultiPool(N_LABEL_CLASSES)
    cases = []
    keys = sorted(truth_by_key)
    for key in tqdm(keys, desc="evaluate", unit="case", disable=not show_progress, file=sys.stderr):
        case_id, gt_case = truth_by_key[key]
        gt_path = Path(gt_case.label)
        pred_path = pred_by_key[key][1]
        gt_labels, gt_affine, spacing = _load(gt_case)
        pred_labels, pred_affine, _ = _load(pred_path)
        if pred_labels.shape != gt_labels.shape:
            raise KidedgeError(f"{pred_path}: shape {pred_labels.shape} does not match the ground truth's {gt_labels.shape} ({gt_path})")
        if not _same_grid(pred_affine, gt_affine):
            raise KidedgeError(f"{pred_path}: affine does not match the ground truth's ({gt_path}); resample the prediction onto the scan's grid")
        confusions: list = []
        metrics = kits_scores(pred_labels, gt_labels, spacing, tol, confusion_out=confusions)
        pool.add_confusion(confusions[0])
        cases.append({
            "case_id": case_id,
            "pred": str(pred_path),
            "gt": str(gt_path),
            "shape": list(gt_labels.shape),
            "spacing_mm": list(spacing),
            "metrics": metrics,
        })
        del gt_labels, pred_labels

    report = {
        "kidedge_evaluation": 1,
        "pred": str(pred),
        "gt": str(gt),
        "tolerance_mm": tol,
        "conventions": {
            "classes": {**{k: list(v) for k, v in KITS21_CLASSES.items()}, **{k: list(v) for k, v in KITS19_CLASSES.items()}},
            "empty": "both empty -> 1.0, one empty -> 0.0 (KiTS21)",
            "surface": "voxels with a face neighbour outside the mask; Euclidean distances in mm between voxel centres",
            "dice_multi": "fastai DiceMulti: classes 0-3 incl. background, pooled over all slices, NaN classes ignored",
            "std": "population (ddof=0)",
        },
        "cases": cases,
        "aggregate": {k: summarise_values([c["metrics"][k] for c in cases]) for k in SCORE_ORDER},
        "dice_multi_pooled": {"value": pool.value, "per_class": pool.per_class},
    }
    if echo is None:
        import click

        echo = click.echo
    if echo:
        echo(format_table(report))
    if out_paths:
        json_path, csv_path = out_paths
        write_texts_atomic({
            json_path: json.dumps(_json_safe(report), indent=2) + "\n",
            csv_path: _csv_text(report),
        })
        if echo:
            echo(f"wrote {json_path} and {csv_path}")
    return report
