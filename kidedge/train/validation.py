"""Validation on whole held-out cases: predict every slice (or the ROI), score with
kidedge's KiTS metrics, and measure the validation loss on the same forward passes.

Predictions are turned into uint8 labels chunk by chunk (never a float volume of the
scan): the model's output is decoded at its own resolution and resampled to the scan's
pixels with nearest-neighbour, as the runtime does.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from kidedge.metrics import dice, kits_scores
from kidedge.preprocess import (
    PreprocessSpec,
    context_indices,
    grid_filling_box,
    normalised_value,
    output_size,
    padded_size,
    preprocess_slices,
    resize_labels_nearest,
)
from kidedge.train.data import CachedCase
from kidedge.train.datasets import fit_last2, read_window
from kidedge.train.roi import Box, label_box


def decode(logits: torch.Tensor, output: dict) -> np.ndarray:
    """Logits ``(N, K, ...)`` -> uint8 labels ``(N, ...)``: argmax for softmax; for
    sigmoid, each channel above 0.5 writes its label, later channels on top (so a
    hierarchical kidney-then-tumour output gives tumour inside kidney)."""
    labels = torch.tensor(output["labels"], dtype=torch.uint8, device=logits.device)
    if output["activation"] == "softmax":
        return labels[logits.argmax(1)].cpu().numpy()
    out = torch.zeros((logits.shape[0],) + tuple(logits.shape[2:]), dtype=torch.uint8, device=logits.device)
    for k in range(logits.shape[1]):
        out[logits[:, k] > 0] = labels[k]
    return out.cpu().numpy()


def _forward(model, x, device, autocast, channels_last):
    x = torch.from_numpy(x).to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast:
        out = model(x)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    return out.float()


@torch.no_grad()
def predict_case_2d(model, case: CachedCase, spec: PreprocessSpec, output: dict, device,
                    batch: int = 8, box: Box | None = None, loss_fn=None, autocast=None,
                    channels_last: bool = False, fill_grid: bool = False) -> tuple[np.ndarray, float, int]:
    """Predict a whole case (or the ``box`` of it) slice by slice; ``fill_grid`` grows the
    box in-plane to fill the network's padded input with the scan, as the runtime does
    for a segmenter trained with ``roi.context = "scan"``.

    Returns (uint8 labels of the full case shape, summed loss, number of loss terms).
    """
    autocast = autocast or nullcontext()
    n, h, w = case.hu.shape
    z0, z1, r0, r1, c0, c1 = box if box is not None else (0, n, 0, h, 0, w)
    pred = np.zeros((n, h, w), np.uint8)
    pix = case.spacing[1:]
    if box is not None and fill_grid:
        rows, cols = grid_filling_box(spec, slice(r0, r1), slice(c0, c1), (h, w), pix)
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
    size = output_size(spec, (r1 - r0, c1 - c0), pix)
    loss_sum, loss_n = 0.0, 0
    for a in range(z0, z1, batch):
        b = min(z1, a + batch)
        zs = context_indices(a, b, spec.context, n)
        hu = read_window(case.hu, zs, r0, r1, c0, c1, None, np.int16(-1024))
        x = preprocess_slices(hu, spec, pix)
        logits = _forward(model, x, device, autocast, channels_last)
        if loss_fn is not None:
            lab = resize_labels_nearest(np.asarray(case.labels[a:b, r0:r1, c0:c1]), size)
            lab = fit_last2(lab, padded_size(spec, size), np.uint8(0))
            y = torch.from_numpy(lab.astype(np.int64)).to(logits.device)
            loss_sum += float(loss_fn(logits, y)) * (b - a)
            loss_n += b - a
        lab_pred = decode(logits, output)[:, : size[0], : size[1]]
        pred[a:b, r0:r1, c0:c1] = resize_labels_nearest(lab_pred, (r1 - r0, c1 - c0))
    return pred, loss_sum, loss_n


@torch.no_grad()
def predict_case_3d(model, case: CachedCase, spec: PreprocessSpec, output: dict, device,
                    patch, box: Box | None = None, loss_fn=None, autocast=None) -> tuple[np.ndarray, float, int]:
    """Predict a whole case (or the ``box``) with non-overlapping 3D tiles of ``patch``
    (edge tiles shifted inwards), slab by slab so memory stays bounded."""
    autocast = autocast or nullcontext()
    n, h, w = case.hu.shape
    z0, z1, r0, r1, c0, c1 = box if box is not None else (0, n, 0, h, 0, w)
    pd, ph, pw = patch
    pix = case.spacing[1:]
    pred = np.zeros((n, h, w), np.uint8)
    # raw in-plane tile extent that preprocesses to the patch size
    scale = (1.0, 1.0) if spec.in_plane == "native" else (spec.spacing_mm / pix[0], spec.spacing_mm / pix[1])
    rh, rw = int(math.ceil(ph * scale[0])), int(math.ceil(pw * scale[1]))

    def starts(lo, hi, step):
        if hi - lo <= step:
            return [lo]
        s = list(range(lo, hi - step, step)) + [hi - step]
        return s

    loss_sum, loss_n = 0.0, 0
    for za in starts(z0, z1, pd):
        zs = np.arange(za, za + pd)
        for ra in starts(r0, r1, rh):
            for ca in starts(c0, c1, rw):
                re, ce = min(ra + rh, r1), min(ca + rw, c1)
                hu = read_window(case.hu, zs, ra, ra + rh, ca, ca + rw, None, np.int16(-1024))
                x = preprocess_slices(hu, spec, pix)[:, 0]
                size = output_size(spec, (rh, rw), pix)
                x = fit_last2(x, (ph, pw), np.float32(normalised_value(spec.hu_window[0], spec)))
                logits = _forward(model, x[None, None], device, autocast, False)
                if loss_fn is not None:
                    lab = read_window(case.labels, zs, ra, ra + rh, ca, ca + rw, None, np.uint8(0))
                    lab = fit_last2(resize_labels_nearest(lab, size), (ph, pw), np.uint8(0))
                    y = torch.from_numpy(lab.astype(np.int64))[None].to(logits.device)
                    loss_sum += float(loss_fn(logits, y))
                    loss_n += 1
                lab_pred = decode(logits, output)[0][:, : size[0], : size[1]]
                lab_pred = resize_labels_nearest(lab_pred, (rh, rw))
                zend = min(za + pd, z1)
                pred[za:zend, ra:re, ca:ce] = lab_pred[: zend - za, : re - ra, : ce - ca]
    return pred, loss_sum, loss_n


def score_stage(pred: np.ndarray, gt: np.ndarray, spacing, output: dict, role: str) -> dict:
    """Scores of one stage on one case. A localiser is scored on its region (Dice of
    "any ROI label"), a segmenter with the full KiTS scores."""
    if role == "localise" and max(output["labels"]) <= 1:
        return {"kidney_dice": dice(pred > 0, gt > 0)}
    return kits_scores(pred, gt, spacing)


def stage_dice(scores: dict) -> float:
    """The single number "val_dice" used for best-checkpoint selection: mean of the
    KiTS21 HEC Dice scores when present, else the kidney Dice."""
    if "kits21_mean_dice" in scores:
        return float(scores["kits21_mean_dice"])
    return float(scores["kidney_dice"])


def gt_box(case: CachedCase, roi: dict) -> Box | None:
    """The ROI a segment stage is validated on: the ground-truth kidney box + margin."""
    return label_box(np.asarray(case.labels), roi["labels"], case.spacing, roi["margin_mm"])


def predict_cascade(entries, models, recipe, case, device) -> np.ndarray:
    """Run the trained stages on a case as the runtime would: a localiser's box (its
    ROI labels, grown by margin_mm) gates the segment stage; a single-stage recipe
    segments the whole case."""
    dim = recipe["dimensionality"]
    preds = {}
    final = None
    for st, e, model in zip(recipe["stages"], entries, models, strict=True):
        spec = type(recipe["stages"][0]["preprocess"]).from_dict(e["preprocess"])
        box = None
        if st["roi"] is not None:
            src = preds[st["roi"]["source_stage"]]
            box = label_box(src, st["roi"]["labels"], case.spacing, st["roi"]["margin_mm"])
            if box is None:
                final = np.zeros(case.hu.shape, np.uint8)
                preds[st["name"]] = final
                continue
        if dim == "2d":
            pred, _, _ = predict_case_2d(model, case, spec, e["output"], device, 8, box,
                                         fill_grid=(st["roi"] or {}).get("context") == "scan")
        else:
            pred, _, _ = predict_case_3d(model, case, spec, e["output"], device, st["sampling"]["patch"], box)
        preds[st["name"]] = pred
        final = pred
    return final


def evaluate_cases(entries, models, recipe, cases, device) -> dict:
    """Mean KiTS scores of the whole cascade over ``cases`` (and per case)."""
    per_case = {}
    for c in cases:
        pred = predict_cascade(entries, models, recipe, c, device)
        per_case[c.case_id] = kits_scores(pred, np.asarray(c.labels), c.spacing)
    if not per_case:
        return {"n_cases": 0}
    keys = next(iter(per_case.values())).keys()
    return {"n_cases": len(per_case),
            "mean": {k: float(np.mean([s[k] for s in per_case.values()])) for k in keys},
            "per_case": per_case}
