"""int8 calibration data: CT slices through the stage's own preprocessing.

Kidneys and tumours fill a few percent of an abdominal CT, so uniform sampling would set
activation ranges from fat, bone and air. Slices are drawn per case with weights by
content (:data:`CATEGORY_WEIGHTS`: slices with a tumour or cyst 4x, with kidney 2x,
others 1x, relative to their counts), so the ranges see the tissue the model is for.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from kidedge.export.held_out import CTVolume
from kidedge.export.onnx_export import INPUT_NAME
from kidedge.export.stage_inputs import (
    BACKGROUND,
    KIDNEY,
    MASS,
    block_input,
    slice_categories,
    slice_inputs,
)

CATEGORY_WEIGHTS = {BACKGROUND: 1.0, KIDNEY: 2.0, MASS: 4.0}


def pick_slices(categories: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct slice indices (sorted), drawn with :data:`CATEGORY_WEIGHTS`."""
    n = min(n, len(categories))
    w = np.array([CATEGORY_WEIGHTS[int(c)] for c in categories], np.float64)
    return np.sort(rng.choice(len(categories), size=n, replace=False, p=w / w.sum()))


def calibration_inputs(volumes: Iterable[CTVolume], stage: dict, dimensionality: str = "2d",
                       slices_per_case: int = 8, depth: int = 16, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Network inputs for calibrating ``stage``, and a summary for the manifest.

    Args:
        volumes: CT volumes (consumed one at a time).
        stage: the stage dict (its ``preprocess`` spec and ``roi`` are used).
        dimensionality: ``"2d"`` (one input per slice) or ``"3d"`` (one block of ``depth``
            slices per case, centred on the kidneys when labels are known).
        slices_per_case: 2D slices drawn per case.
        seed: sampling seed.

    Returns:
        ``(inputs, summary)``: float32 ``(N, C, h, w)`` (3D: ``(N, C, D, h, w)``), and
        ``{"cases", "inputs", "slices_by_category", "sources"}`` (+ ``"cropped_to"`` when
        cases of different sizes were centre-cropped to a common one).
    """
    rng = np.random.default_rng(seed)
    inputs, sources = [], []
    counts = {"background": 0, "kidney": 0, "tumour_or_cyst": 0}
    names = {BACKGROUND: "background", KIDNEY: "kidney", MASS: "tumour_or_cyst"}
    for vol in volumes:
        cats = slice_categories(vol)
        if dimensionality == "3d":
            d = min(depth, len(cats))
            centre = int(np.median(np.nonzero(cats)[0])) if cats.any() else len(cats) // 2
            start = int(np.clip(centre - d // 2, 0, len(cats) - d))
            x = block_input(vol, stage, start, d)
            for c in cats[start:start + d]:
                counts[names[int(c)]] += 1
        else:
            idx = pick_slices(cats, slices_per_case, rng)
            x = slice_inputs(vol, stage, idx)
            for c in cats[idx]:
                counts[names[int(c)]] += 1
        inputs.append(x)
        sources.append(vol.source)
    summary = {"cases": len(inputs), "inputs": int(sum(len(x) for x in inputs)),
               "slices_by_category": counts, "sources": sources}
    if len({x.shape[2:] for x in inputs}) > 1:
        # A cascade's segment stage sees each case's kidney box, and in_plane "native" or
        # "spacing" keeps scan sizes, so cases differ in size. ONNX Runtime's histogram
        # calibrators (percentile, entropy) stack every input's activations and need one
        # size: centre-crop all to the smallest (still a pad_multiple, still inside the
        # real region, no artificial padding values in the ranges).
        size = tuple(min(x.shape[d] for x in inputs) for d in range(2, inputs[0].ndim))
        inputs = [_centre_crop(x, size) for x in inputs]
        summary["cropped_to"] = list(size)
    return np.concatenate(inputs), summary


def _centre_crop(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Centre crop of the trailing axes of ``x`` (axes 2, ...) to ``size``."""
    sl = [slice(None), slice(None)]
    for n, want in zip(x.shape[2:], size, strict=True):
        a = (n - want) // 2
        sl.append(slice(a, a + want))
    return np.ascontiguousarray(x[tuple(sl)])


class SliceCalibrationReader(CalibrationDataReader):
    """Feeds calibration inputs to ONNX Runtime's calibrator one at a time.

    Args:
        inputs: an array ``(N, ...)`` or a list of such arrays (per-case sizes).
    """

    def __init__(self, inputs) -> None:
        arrays = inputs if isinstance(inputs, list) else [inputs]
        self._items = [a[i:i + 1] for a in arrays for i in range(len(a))]
        self._pos = 0

    def get_next(self) -> dict | None:
        if self._pos >= len(self._items):
            return None
        item = self._items[self._pos]
        self._pos += 1
        return {INPUT_NAME: np.ascontiguousarray(item, np.float32)}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self._items)
