"""Dice, surface Dice, dice_multi and the KiTS scores of label maps (numpy and scipy
only; see :mod:`kidedge.metrics` for the conventions)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from kidedge.errors import KidedgeError
from kidedge.regions import (
    KITS19_REGIONS,
    KITS21_REGIONS,
    bounding_box,
    grow_box,
    region_mask,
    union_box,
)

#: KiTS21 hierarchical evaluation classes and the KiTS19 view: name -> label values
#: (:mod:`kidedge.regions`).
KITS21_CLASSES = KITS21_REGIONS
KITS19_CLASSES = KITS19_REGIONS
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
    box = union_box(bounding_box(p), bounding_box(g))
    if box is None:
        return 1.0
    box = grow_box(box, p.shape, 1)
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
    box = union_box(bounding_box(p > 0), bounding_box(g > 0))
    if box is None:
        pc = gc = np.zeros((1, 1, 1), dtype=np.uint8)
        outside = p.size - 1
    else:
        box = grow_box(box, p.shape, 1)
        pc, gc = p[box], g[box]
        outside = p.size - pc.size
    conf = _confusion(pc, gc, N_LABEL_CLASSES)  # also checks values lie in 0..3
    conf[0, 0] += outside
    if confusion_out is not None:
        confusion_out.append(conf.copy())

    out: dict[str, float] = {}
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, values in {**KITS21_CLASSES, "kits19_kidney": KITS19_CLASSES["kits19_kidney"]}.items():
        pm, gm = region_mask(pc, values), region_mask(gc, values)
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
    return {k: out[k] for k in SCORE_ORDER}


SCORE_ORDER = (
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


def hierarchical_dice(pred_labels, gt_labels, empty: float | None = 1.0) -> dict[str, float | None]:
    """Dice of each KiTS21 hierarchical region (``kidney``, ``masses``, ``tumour``).

    Args:
        pred_labels, gt_labels: label maps (0..3) of the same shape.
        empty: the score of a region absent from both (KiTS21's convention is 1.0; None
            leaves it undefined, for reports that should not count it).
    """
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_same_shape(p, g)
    out: dict[str, float | None] = {}
    for name, values in KITS21_REGIONS.items():
        pm, gm = region_mask(p, values), region_mask(g, values)
        out[name] = empty if not (pm.any() or gm.any()) else dice(pm, gm)
    return out


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
