"""Segmentation metrics as the KiTS challenges compute them: Dice and surface Dice (NSD).

numpy and scipy only (no torch: DESIGN.md, "Dependency direction").

Classes
-------
KiTS21 scores three hierarchical evaluation classes (HECs) built from the label map
(0 background, 1 kidney, 2 tumour, 3 cyst):

* ``kidney``  = labels {1, 2, 3} (the whole kidney with its masses),
* ``masses``  = labels {2, 3},
* ``tumour``  = label {2}.

KiTS19 had no cyst label and scored "kidney" = kidney+tumour = labels {1, 2} and tumour =
{2}; the KiTS19 leaderboard score was the mean of the two. :func:`kits_scores` reports
both views (on KiTS19 data, where label 3 never occurs, KiTS19 kidney == KiTS21 kidney).

Empty masks
-----------
The conventions are those of the official KiTS21 evaluation (``kits21/evaluation/
metrics.py``, ``compute_metrics_for_label``): when the class is absent from both the
prediction and the truth, Dice and surface Dice are **1.0** (a correct "nothing here");
when it is absent from exactly one of them, both are **0.0**. Scores are therefore
never NaN, and a case whose truth has no tumour still counts in the mean.

Surface Dice
------------
Normalised surface distance (Nikolov et al. 2021, "Clinically applicable segmentation of
head and neck anatomy for radiotherapy", the metric of DeepMind's ``surface-distance``
package and of KiTS21): the fraction of the two surfaces that lies within
``tolerance_mm`` of the other surface. Here a surface is the set of mask voxels with at
least one face neighbour (6-connectivity, ``generate_binary_structure(3, 1)``) outside
the mask, voxels on the array border included (erosion with ``border_value=0``); every
surface voxel weighs the same, and distances are Euclidean in millimetres between voxel
centres (``distance_transform_edt`` with ``sampling=spacing``). This is exactly MONAI's
``compute_surface_dice(..., use_subvoxels=False)``. The official KiTS21 code uses
DeepMind's surfels instead (marching-cubes faces weighted by their area, distances from
surfel centres). The two agree closely for in-plane errors, but on thick slices they do
not: a voxel on a slab's top or bottom face counts as much as one on its side, while a
surfel there has a fraction of the area. Measured on real KiTS19 kidneys at 5 mm slices
(tests/test_metrics_monai.py, MONAI's surfel version as the reference), an in-plane
shift of 3 voxels scores 0.907 here vs 0.916 with surfels, but a one-voxel erosion
scores 0.545 vs 0.754. So kidedge's surface Dice is stricter than KiTS21's on
anisotropic scans; compare it with KiTS21 leaderboard numbers only with that in mind.
KiTS21 also used a different tolerance per class (about 1-2 mm), whereas kidedge uses
one tolerance (default 2 mm) for every class.

dice_multi
----------
The "dice_multi" of the SqueezeNet U-Net paper (papers/000) is fastai's ``DiceMulti``:
for each class **including background** it sums intersections and |pred|+|truth| over
every 2D slice the metric sees (the whole validation set), takes the Dice of each class
from the pooled sums (NaN for a class absent from both, then ignored), and averages over
classes. Because background fills >99 % of a CT its Dice is ~1.0 and it pulls the mean
up; :func:`dice_multi` reproduces it so users can set it beside the per-case 3D Dice.
"""

from __future__ import annotations

import csv
import io as _stringio
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from kidedge.errors import KidedgeError

__all__ = [
    "KITS21_CLASSES",
    "KITS19_CLASSES",
    "dice",
    "surface_dice",
    "dice_multi",
    "DiceMultiPool",
    "kits_scores",
    "evaluate_dirs",
    "find_predictions",
]

#: KiTS21 hierarchical evaluation classes: name -> label values.
KITS21_CLASSES: dict[str, tuple[int, ...]] = {
    "kidney": (1, 2, 3),
    "masses": (2, 3),
    "tumour": (2,),
}
#: KiTS19 view (no cyst label): name -> label values.
KITS19_CLASSES: dict[str, tuple[int, ...]] = {
    "kits19_kidney": (1, 2),
    "kits19_tumour": (2,),
}
#: Classes of the label maps (0 bg, 1 kidney, 2 tumour, 3 cyst): dice_multi's n_classes.
N_LABEL_CLASSES = 4

# 6-connectivity: a voxel is on the surface when one of its face neighbours is outside.
_SURFACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


# --------------------------------------------------------------------------- basics


def _as_bool(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    return arr if arr.dtype == bool else arr != 0


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "prediction and truth") -> None:
    if a.shape != b.shape:
        raise KidedgeError(f"{what} have different shapes: {a.shape} vs {b.shape}")


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise KidedgeError(f"spacing must be {ndim} numbers (mm), got {spacing!r}") from exc
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise KidedgeError(f"spacing must be {ndim} positive finite numbers (mm), got {spacing!r}")
    return sp


def dice(pred_mask, gt_mask) -> float:
    """Dice coefficient 2|P∩G| / (|P|+|G|) of two binary masks of the same shape.

    Args:
        pred_mask: predicted mask, any shape; nonzero = inside.
        gt_mask: reference mask of the same shape.

    Returns:
        Dice in [0, 1]. Both masks empty -> 1.0 (KiTS21 convention); exactly one empty
        -> 0.0.
    """
    p = _as_bool(pred_mask, "prediction")
    g = _as_bool(gt_mask, "truth")
    _check_same_shape(p, g)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    if total == 0:
        return 1.0
    inter = int(np.count_nonzero(p & g))
    return 2.0 * inter / total


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of a mask's nonzero voxels as slices, None when empty.

    Reduces along each axis pair instead of calling ``np.nonzero`` on the full volume,
    which would allocate index arrays as large as the mask's foreground.
    """
    out = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others) if others else mask)
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def _grow(box: Sequence[slice], shape: Sequence[int], margin: int) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, shape, strict=True)
    )


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    ba, bb = _bbox(a), _bbox(b)
    if ba is None:
        return bb
    if bb is None:
        return ba
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(ba, bb, strict=True))


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: a mask touching the array edge has a surface there (as MONAI has).
    return mask & ~ndimage.binary_erosion(mask, structure=_SURFACE_STRUCTURE, border_value=0)


def surface_dice(pred_mask, gt_mask, spacing, tolerance_mm: float) -> float:
    """Normalised surface distance (surface Dice) of two 3D binary masks.

    Args:
        pred_mask: predicted mask (slice, row, col); nonzero = inside.
        gt_mask: reference mask of the same shape.
        spacing: voxel size in mm along the same three axes, e.g. ``Scan.spacing``.
        tolerance_mm: a surface voxel counts as correct when the other surface is within
            this distance (inclusive).

    Returns:
        (|S_P within tol of S_G| + |S_G within tol of S_P|) / (|S_P| + |S_G|), in [0, 1].
        Both empty -> 1.0, exactly one empty -> 0.0 (KiTS21 conventions). Surfaces and
        distances are defined in the module docstring.

    Both masks are cropped to the bounding box of their union (plus one voxel, so the
    erosion sees the same neighbourhood as on the full array) before the distance
    transforms. That is exact, not an approximation: every surface voxel of either mask
    lies inside the union's box, so the nearest surface voxel to any point of the box
    is found inside the box too. On a 512x512x600 scan it turns two full-volume EDTs into
    two EDTs over the kidney region.
    """
    p = _as_bool(pred_mask, "prediction")
    g = _as_bool(gt_mask, "truth")
    _check_same_shape(p, g)
    if p.ndim != 3:
        raise KidedgeError(f"surface_dice needs 3D masks, got {p.ndim} dimensions")
    sp = _check_spacing(spacing, 3)
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise KidedgeError(f"surface Dice tolerance must be a finite number >= 0 mm, got {tolerance_mm!r}")
    box = _union_box(p, g)
    if box is None:
        return 1.0
    box = _grow(box, p.shape, 1)
    p, g = p[box], g[box]
    if not p.any() or not g.any():
        return 0.0
    sp_surf, gt_surf = _surface(p), _surface(g)
    # distance of every voxel to the nearest surface voxel of the other mask
    to_gt = ndimage.distance_transform_edt(~gt_surf, sampling=sp)
    to_pred = ndimage.distance_transform_edt(~sp_surf, sampling=sp)
    ok = int(np.count_nonzero(to_gt[sp_surf] <= tol)) + int(np.count_nonzero(to_pred[gt_surf] <= tol))
    total = int(np.count_nonzero(sp_surf)) + int(np.count_nonzero(gt_surf))
    return ok / total


# --------------------------------------------------------------------------- dice_multi


def _confusion(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = truth, columns = prediction.

    Counted in chunks of slices, so a 512x512x1000 volume never needs a full-size int64
    index array.
    """
    _check_same_shape(pred, gt)
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    if pred.size == 0:
        return conf
    p2 = pred.reshape(pred.shape[0], -1) if pred.ndim > 1 else pred.reshape(1, -1)
    g2 = gt.reshape(p2.shape)
    per_row = max(1, p2.shape[1])
    step = max(1, (1 << 23) // per_row)
    for start in range(0, p2.shape[0], step):
        pc = p2[start : start + step]
        gc = g2[start : start + step]
        hi = max(int(pc.max()), int(gc.max()))
        lo = min(int(pc.min()), int(gc.min()))
        if lo < 0 or hi >= n_classes:
            raise KidedgeError(f"label values must lie in 0..{n_classes - 1}, found {lo if lo < 0 else hi}")
        idx = gc.astype(np.int32) * n_classes + pc.astype(np.int32)
        conf += np.bincount(idx.ravel(), minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    return conf


def _dice_multi_from_confusion(conf: np.ndarray) -> tuple[float, list[float]]:
    inter = np.diag(conf).astype(np.float64)
    sums = conf.sum(axis=0).astype(np.float64) + conf.sum(axis=1).astype(np.float64)
    per_class = [2.0 * i / s if s > 0 else float("nan") for i, s in zip(inter, sums, strict=True)]
    present = [d for d in per_class if not math.isnan(d)]
    return (float(np.mean(present)) if present else float("nan")), per_class


def dice_multi(pred_labels, gt_labels, n_classes: int = N_LABEL_CLASSES) -> float:
    """fastai's ``DiceMulti`` (the "dice_multi" of papers/000) of label maps.

    Args:
        pred_labels: predicted labels, a stack of 2D slices or a 3D volume (any shape).
        gt_labels: reference labels of the same shape.
        n_classes: classes 0..n_classes-1, background included. A class absent from both
            maps is NaN and left out of the mean, as fastai does, so ``n_classes=4`` on
            KiTS19 data (no cyst) equals the 3-class value.

    Returns:
        Mean over classes (background included) of the Dice of each class, with
        intersections and sizes pooled over all slices. Pooling over slices makes it the
        per-class Dice over all voxels given; see :class:`DiceMultiPool` for pooling over
        many cases, as fastai pools over a whole validation set.
    """
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    return _dice_multi_from_confusion(_confusion(p, g, int(n_classes)))[0]


class DiceMultiPool:
    """fastai ``DiceMulti`` pooled over many label maps (e.g. every case of a dataset).

    Args:
        n_classes: classes including background (default 4: bg, kidney, tumour, cyst).

    ``add(pred, gt)`` accumulates a pair, ``value`` is the pooled dice_multi and
    ``per_class`` the pooled Dice of each class (NaN when absent everywhere).
    """

    def __init__(self, n_classes: int = N_LABEL_CLASSES):
        self.n_classes = int(n_classes)
        self.confusion = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)

    def add(self, pred_labels, gt_labels) -> None:
        self.confusion += _confusion(np.asarray(pred_labels), np.asarray(gt_labels), self.n_classes)

    def add_confusion(self, confusion: np.ndarray) -> None:
        self.confusion += np.asarray(confusion, dtype=np.int64)

    @property
    def value(self) -> float:
        return _dice_multi_from_confusion(self.confusion)[0]

    @property
    def per_class(self) -> list[float]:
        return _dice_multi_from_confusion(self.confusion)[1]


# --------------------------------------------------------------------------- KiTS scores


def _class_mask(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    if values == (1, 2, 3):
        return labels > 0  # labels are checked to lie in 0..3
    if values == (2, 3):
        return labels >= 2
    if len(values) == 1:
        return labels == values[0]
    return np.isin(labels, values)


def kits_scores(pred_labels, gt_labels, spacing, tolerance_mm: float = 2.0, *, confusion_out: list | None = None) -> dict:
    """Per-case KiTS scores of a predicted label map against the truth.

    Args:
        pred_labels: predicted labels (slice, row, col), values 0 bg, 1 kidney,
            2 tumour, 3 cyst.
        gt_labels: reference labels, same shape and grid.
        spacing: voxel size in mm along (slice, row, col).
        tolerance_mm: surface Dice tolerance, the same for every class.
        confusion_out: optional list; the case's 4x4 confusion matrix (rows truth,
            columns prediction, whole volume) is appended, for pooling dice_multi over
            cases with :class:`DiceMultiPool`.

    Returns:
        A JSON-ready dict of floats: ``kidney_dice``, ``masses_dice``, ``tumour_dice``,
        ``kidney_sd``, ``masses_sd``, ``tumour_sd`` (KiTS21 HECs; ``_sd`` = surface Dice),
        ``kits21_mean_dice`` and ``kits21_mean_sd`` (means over the three HECs),
        ``kits19_kidney_dice`` / ``kits19_kidney_sd`` (labels {1,2}),
        ``kits19_tumour_dice`` (= tumour), ``kits19_score`` (mean of KiTS19 kidney and
        tumour Dice, the KiTS19 leaderboard score), and ``dice_multi`` (fastai's, over
        classes 0..3 including background).
    """
    p = np.asarray(pred_labels)
    g = np.asarray(gt_labels)
    _check_same_shape(p, g)
    if p.ndim != 3:
        raise KidedgeError(f"label maps must be 3D (slice, row, col), got {p.ndim} dimensions")
    sp = _check_spacing(spacing, 3)
    for arr, name in ((p, "prediction"), (g, "truth")):
        if not np.issubdtype(arr.dtype, np.integer):
            raise KidedgeError(f"{name} labels must be integers, got {arr.dtype}")
    # Every class lives inside the union of both foregrounds: crop once to its box (plus
    # one voxel for the surface erosion) and work on the small block.
    box = _union_box(p > 0, g > 0)
    if box is None:
        pc = gc = np.zeros((1, 1, 1), dtype=np.uint8)
        outside = p.size - 1
    else:
        box = _grow(box, p.shape, 1)
        pc, gc = p[box], g[box]
        outside = p.size - pc.size
    conf = _confusion(pc, gc, N_LABEL_CLASSES)  # also checks values lie in 0..3
    conf[0, 0] += outside
    if confusion_out is not None:
        confusion_out.append(conf.copy())

    out: dict[str, float] = {}
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, values in {**KITS21_CLASSES, "kits19_kidney": KITS19_CLASSES["kits19_kidney"]}.items():
        pm, gm = _class_mask(pc, values), _class_mask(gc, values)
        if name == "kits19_kidney" and not conf[3].any() and not conf[:, 3].any():
            # no cyst anywhere: KiTS19 kidney is the KiTS21 kidney; skip a second EDT
            out["kits19_kidney_dice"] = out["kidney_dice"]
            out["kits19_kidney_sd"] = out["kidney_sd"]
            continue
        masks[name] = (pm, gm)
        out[f"{name}_dice"] = dice(pm, gm)
        out[f"{name}_sd"] = surface_dice(pm, gm, sp, tolerance_mm)
    out["kits19_tumour_dice"] = out["tumour_dice"]
    out["kits21_mean_dice"] = float(np.mean([out[f"{c}_dice"] for c in KITS21_CLASSES]))
    out["kits21_mean_sd"] = float(np.mean([out[f"{c}_sd"] for c in KITS21_CLASSES]))
    out["kits19_score"] = 0.5 * (out["kits19_kidney_dice"] + out["tumour_dice"])
    out["dice_multi"] = _dice_multi_from_confusion(conf)[0]
    return {k: out[k] for k in _SCORE_ORDER}


_SCORE_ORDER = (
    "kidney_dice",
    "masses_dice",
    "tumour_dice",
    "kidney_sd",
    "masses_sd",
    "tumour_sd",
    "kits21_mean_dice",
    "kits21_mean_sd",
    "kits19_kidney_dice",
    "kits19_kidney_sd",
    "kits19_tumour_dice",
    "kits19_score",
    "dice_multi",
)


# --------------------------------------------------------------------------- evaluate

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


def summarise_values(values: list[float]) -> dict[str, float]:
    """mean, median, std (population), min, max and n of a list of scores."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "std": float(arr.std()),  # population std (ddof=0)
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


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
    keys = list(_SCORE_ORDER)
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


def _write_atomically(files: dict[Path, str]) -> None:
    """Write every file to a temporary name beside it, then rename them all.

    Nothing is renamed until every file is fully written, so a failure leaves the old
    outputs (if any) untouched and no partial file behind.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


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
        "aggregate": {k: summarise_values([c["metrics"][k] for c in cases]) for k in _SCORE_ORDER},
        "dice_multi_pooled": {"value": pool.value, "per_class": pool.per_class},
    }
    if echo is None:
        import click

        echo = click.echo
    if echo:
        echo(format_table(report))
    if out_paths:
        json_path, csv_path = out_paths
        _write_atomically({
            json_path: json.dumps(_json_safe(report), indent=2) + "\n",
            csv_path: _csv_text(report),
        })
        if echo:
            echo(f"wrote {json_path} and {csv_path}")
    return report
