"""What export does differently for 3D stages (papers 002 and 003).

A 3D stage runs on fixed patches by sliding windows (:mod:`kidedge.runtime.sliding_window`),
so export works on patches too:

* the stage's ``window`` (patch and overlap) comes from the recipe's sampling: the patch,
  and the overlap ``1 - stride / patch`` where the recipe states the paper's stride (paper
  003's 96x96x64 patches with stride 48x48x32: overlap 0.5), else 0.5 (nnU-Net's step);
* the ONNX input is the patch, batch the only dynamic axis, and the TensorRT shape bucket
  is that one patch (:data:`TRT_BATCHES` windows per call);
* parity and int8 calibration use patch-shaped windows of real CT through the stage's own
  preprocessing (windows with tumour or cyst drawn 4x, with kidney 2x, the 2D weights of
  :mod:`kidedge.export.calibration`); a segment stage's windows come from the kidney box
  grown by its ``roi.margin_mm``, as the runtime gives it;
* fidelity segments held-out volumes through the runtime's own sliding window (Gaussian
  blending and all) with each precision, and compares the labels with fp32's by Dice;
* int8: :mod:`kidedge.export.int8_3d` (ONNX Runtime's per-layer float fallback, and the
  layers kept float so that int8 stays within the Dice target of fp32).
"""

from __future__ import annotations

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.export.calibration import CATEGORY_WEIGHTS
from kidedge.export.held_out import CTVolume
from kidedge.export.stage_inputs import BACKGROUND, KIDNEY, MASS
from kidedge.preprocess import preprocess_slices, resize_labels_nearest
from kidedge.runtime.sliding_window import SlabBlender, WindowGrid, WindowSpec
from kidedge.runtime.stage3d import Stage3D

#: (min, opt, max) windows per inference call of a 3D stage's TensorRT profile.
TRT_BATCHES = (1, 2, 4)


def window_of(run_stage: dict) -> WindowSpec:
    """The sliding-window settings of a run's 3D stage (its recipe sampling)."""
    sampling = run_stage.get("sampling") or {}
    if not sampling.get("patch"):
        raise KidedgeError(f"3D stage {run_stage.get('name')!r} of the run has no sampling patch; "
                           "a 3D stage runs on patches and export needs their size")
    return WindowSpec.from_stride(sampling["patch"], sampling.get("stride"))


def stage_view(run_stage: dict) -> Stage3D:
    """The runtime's view of a run's stage, with its window (as the manifest will hold it)."""
    return Stage3D.of({**run_stage, "window": window_of(run_stage).to_dict()})


def stage_box(volume: CTVolume, run_stage: dict) -> tuple[int, int, int, int, int, int]:
    """The part of ``volume`` a stage sees: all of it, or for a segment stage the box of
    its ROI labels grown by ``roi.margin_mm`` (all of it when the labels are unknown)."""
    from kidedge.train.roi import label_box

    n, h, w = volume.array.shape
    roi = run_stage.get("roi")
    if roi and volume.labels is not None:
        box = label_box(volume.labels, roi.get("labels", [1, 2, 3]), volume.spacing, roi.get("margin_mm", 0.0))
        if box is not None:
            return box
    return 0, n, 0, h, 0, w


def grid_volume(volume: CTVolume, stage: Stage3D, box) -> tuple[np.ndarray, np.ndarray | None]:
    """The stage's grid over ``box`` of ``volume``: float32 input ``(Z, h, w)`` and the
    labels resampled to it (nearest), or None when unknown."""
    z0, z1, r0, r1, c0, c1 = box
    x = preprocess_slices(volume.array[z0:z1, r0:r1, c0:c1], stage.spec, volume.pixel_spacing,
                          volume.slope, volume.intercept)[:, 0]
    labels = None
    if volume.labels is not None:
        labels = resize_labels_nearest(np.asarray(volume.labels[z0:z1, r0:r1, c0:c1]), x.shape[1:])
    return x, labels


def _windows(x: np.ndarray, labels: np.ndarray | None, stage: Stage3D):
    """Every window of the grid: (patch arrays as views of the padded grid, categories)."""
    grid = WindowGrid(x.shape, stage.window)
    pad = [p for p in grid.padding]
    xp = np.pad(x, pad, constant_values=np.float32(stage.pad_value))
    lp = np.pad(labels, pad) if labels is not None else None
    pd, ph, pw = stage.window.patch
    patches, cats = [], []
    for z in grid.starts[0]:
        for r in grid.starts[1]:
            for c in grid.starts[2]:
                patches.append(xp[z:z + pd, r:r + ph, c:c + pw])
                if lp is None:
                    cats.append(BACKGROUND)
                    continue
                lab = lp[z:z + pd, r:r + ph, c:c + pw]
                cats.append(MASS if ((lab == 2) | (lab == 3)).any() else KIDNEY if (lab == 1).any() else BACKGROUND)
    return patches, np.asarray(cats)


def draw_windows(volume: CTVolume, run_stage: dict, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` patch-shaped network inputs ``(n, 1, *patch)`` from ``volume`` drawn with
    :data:`kidedge.export.calibration.CATEGORY_WEIGHTS`, and their categories."""
    stage = stage_view(run_stage)
    x, labels = grid_volume(volume, stage, stage_box(volume, run_stage))
    patches, cats = _windows(x, labels, stage)
    n = min(n, len(patches))
    w = np.array([CATEGORY_WEIGHTS[int(c)] for c in cats], np.float64)
    pick = np.sort(np.random.default_rng(seed).choice(len(patches), size=n, replace=False, p=w / w.sum()))
    return np.ascontiguousarray(np.stack([patches[i] for i in pick])[:, None]), cats[pick]


def parity_windows(volume: CTVolume, run_stage: dict, n: int = 2) -> np.ndarray:
    """Windows for the ONNX-vs-PyTorch parity check (kidney windows favoured)."""
    return draw_windows(volume, run_stage, n)[0]


def calibration_windows(volumes, run_stage: dict, windows_per_case: int = 4, seed: int = 0) -> tuple[np.ndarray, dict]:
    """int8 calibration inputs ``(N, 1, *patch)`` and the summary the manifest records."""
    inputs, sources = [], []
    counts = {"background": 0, "kidney": 0, "tumour_or_cyst": 0}
    names = {BACKGROUND: "background", KIDNEY: "kidney", MASS: "tumour_or_cyst"}
    for i, vol in enumerate(volumes):
        x, cats = draw_windows(vol, run_stage, windows_per_case, seed + i)
        inputs.append(x)
        sources.append(vol.source)
        for c in cats:
            counts[names[int(c)]] += 1
    if not inputs:
        raise KidedgeError(f"stage {run_stage.get('name')!r}: no calibration volumes")
    x = np.concatenate(inputs)
    return x, {"cases": len(inputs), "inputs": int(len(x)), "windows_by_category": counts, "sources": sources,
               "patch": list(x.shape[2:])}


def segment_grid(run, x: np.ndarray, stage: Stage3D, batch: int = 2) -> tuple[np.ndarray, float]:
    """Labels of a whole grid through the runtime's sliding window with ``run`` as the
    network, and the max |blended logit| (for the logit-difference report)."""
    from kidedge.runtime.labels import logits_to_labels

    blender = SlabBlender(WindowGrid(x.shape, stage.window), run, stage.pad_value, batch)
    labels = np.empty(x.shape, np.uint8)
    logits = []
    for z0, z1, part in blender.push(x) + blender.close():
        logits.append(part)
        labels[z0:z1] = logits_to_labels(part.transpose(1, 0, 2, 3), stage.output, x.shape[1:], x.shape[1:])
    return labels, np.concatenate(logits, axis=1)


def fidelity_3d(runners: dict, volumes: list[CTVolume], run_stage: dict) -> dict:
    """Dice, voxel agreement and logit differences of every precision against fp32, each
    segmenting the held-out volumes by the runtime's sliding window (same structure as
    :func:`kidedge.export.fidelity.fidelity_report`)."""
    from kidedge.export.fidelity import region_dice

    if "fp32" not in runners:
        raise ValueError("fidelity needs the fp32 runner as reference")
    stage = stage_view(run_stage)
    grids = [grid_volume(v, stage, stage_box(v, run_stage))[0] for v in volumes]
    ref = [segment_grid(runners["fp32"], x, stage) for x in grids]
    report = {}
    for precision, run in runners.items():
        if precision == "fp32":
            continue
        per_case, agree, max_diff = [], [], 0.0
        for v, x, (ref_labels, ref_logits) in zip(volumes, grids, ref, strict=True):
            labels, logits = segment_grid(run, x, stage)
            per_case.append({"case": v.source, **region_dice(labels, ref_labels)})
            agree.append(float((labels == ref_labels).mean()))
            max_diff = max(max_diff, float(np.abs(logits - ref_logits).max()))
        report[precision] = {
            **{k: float(np.mean([c[k] for c in per_case])) for k in per_case[0] if k != "case"},
            "min_kidney_dice": float(min(c["kidney_dice"] for c in per_case)),
            "pixel_agreement": float(np.mean(agree)),
            "max_abs_logit_diff": max_diff,
            "through": "the runtime's Gaussian-blended sliding window over each case's stage grid",
            "cases": per_case,
        }
    return report
