"""Fidelity of each exported precision against fp32, on held-out phantom cases.

Every precision segments the same held-out volumes through the stage's own preprocessing;
the label maps (at network resolution, read from the logits exactly as the runtime reads
them, :func:`kidedge.runtime.labels.logits_to_labels`) are compared with fp32's by the
KiTS hierarchical Dice (kidney = labels 1-3, masses = 2-3, tumour = 2) of
:func:`kidedge.metrics.dice`. This measures what quantisation changes, not how good the
model is: fp32 is the reference, not the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kidedge.export.held_out import CTVolume
from kidedge.export.stage_inputs import block_input, slice_inputs

#: Slices preprocessed and run together (bounded memory on 512x512 volumes).
CHUNK = 16


def labels_from_logits(logits: np.ndarray, output: dict) -> np.ndarray:
    """uint8 labels ``(n, h, w)`` (3D logits ``(1, K, D, h, w)`` give ``(D, h, w)``)."""
    from kidedge.runtime.labels import logits_to_labels

    if logits.ndim == 5:
        logits = logits[0].transpose(1, 0, 2, 3)
    size = logits.shape[-2:]
    return logits_to_labels(np.ascontiguousarray(logits, np.float32), output, size, size)


def segment_volume(run: Callable[[np.ndarray], np.ndarray], volume: CTVolume, stage: dict,
                   dimensionality: str = "2d", depth: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels of a whole volume at network resolution, and the logits chunk by chunk.

    Args:
        run: maps a network input batch to logits (ORT session or torch model wrapper).
        depth: slices per 3D block (3D stages).
    """
    n = volume.array.shape[0]
    labels, logits = [], []
    step = depth if dimensionality == "3d" else CHUNK
    for start in range(0, n, step):
        stop = min(n, start + step)
        if dimensionality == "3d":
            s = max(0, min(start, n - depth))
            x = block_input(volume, stage, s, min(depth, n))
            z = run(x)
            lab = labels_from_logits(z, stage["output"])[start - s:stop - s]
        else:
            x = slice_inputs(volume, stage, range(start, stop))
            z = run(x)
            lab = labels_from_logits(z, stage["output"])
        labels.append(lab)
        logits.append(z)
    return np.concatenate(labels), logits


def region_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """KiTS hierarchical Dice of ``pred`` against ``ref`` (both uint8 label maps)."""
    from kidedge.metrics import hierarchical_dice

    return {f"{name}_dice": float(d) for name, d in hierarchical_dice(pred, ref).items()}


def fidelity_report(runners: dict[str, Callable[[np.ndarray], np.ndarray]], volumes: list[CTVolume],
                    stage: dict, dimensionality: str = "2d") -> dict:
    """Dice, argmax agreement and logit differences of every precision against ``"fp32"``.

    Args:
        runners: precision -> callable giving logits for an input batch; must hold "fp32".
        volumes: held-out volumes.
        stage: the stage dict.

    Returns:
        ``{precision: {"kidney_dice", "masses_dice", "tumour_dice" (means over cases),
        "min_kidney_dice", "pixel_agreement", "max_abs_logit_diff", "cases"}}`` for every
        precision other than fp32.
    """
    if "fp32" not in runners:
        raise ValueError("fidelity needs the fp32 runner as reference")
    ref = [segment_volume(runners["fp32"], v, stage, dimensionality) for v in volumes]
    report = {}
    for precision, run in runners.items():
        if precision == "fp32":
            continue
        per_case, agree, max_diff = [], [], 0.0
        for v, (ref_labels, ref_logits) in zip(volumes, ref, strict=True):
            labels, logits = segment_volume(run, v, stage, dimensionality)
            per_case.append({"case": v.source, **region_dice(labels, ref_labels)})
            agree.append(float((labels == ref_labels).mean()))
            for a, b in zip(ref_logits, logits, strict=True):
                max_diff = max(max_diff, float(np.abs(a - b).max()))
        report[precision] = {
            **{k: float(np.mean([c[k] for c in per_case])) for k in per_case[0] if k != "case"},
            "min_kidney_dice": float(min(c["kidney_dice"] for c in per_case)),
            "pixel_agreement": float(np.mean(agree)),
            "max_abs_logit_diff": max_diff,
            "cases": per_case,
        }
    return report
