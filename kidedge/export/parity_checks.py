"""What export checks a stage's ONNX files with: real slices to compare PyTorch and ONNX
on, a precision's file run as fidelity scores it, and a smaller input size through the
fp32 file (the 2D networks take any size that is a multiple of 32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kidedge.export.onnx_export import (
    FP32_TOLERANCE,
    compare_logits,
    ort_session,
    run_onnx,
    run_torch,
)
from kidedge.export.stage_inputs import slice_categories, slice_inputs


def parity_inputs(volume, stage: dict, dimensionality: str, n_slices: int, depth: int) -> np.ndarray:
    """Real preprocessed slices for parity: kidney/tumour slices first, then others."""
    if dimensionality == "3d":
        from kidedge.export.export3d import parity_windows

        return parity_windows(volume, stage)
    cats = slice_categories(volume)
    order = np.argsort(-cats, kind="stable")  # masses, kidney, background
    pick = np.sort(np.concatenate([order[: n_slices - 1], [int(np.argmin(cats))]]))
    return slice_inputs(volume, stage, np.unique(pick))


class OrtRunner:
    """Logits of a precision's ONNX file, run the way fidelity scores that precision
    (:func:`kidedge.export.fidelity.variant_session`: int8-trt by the TensorRT stand-in)."""

    def __init__(self, path: Path, threads: int, variant: str = "fp32"):
        from kidedge.export.fidelity import variant_session

        self.session = variant_session(path, variant, threads)

    def __call__(self, x):
        return run_onnx(self.session, x)


def check_dynamic_hw(model, onnx_path: Path, x: np.ndarray, threads: int) -> dict | None:
    """Run a smaller spatial size through ONNX and PyTorch; None if too small to try."""
    h, w = x.shape[-2:]
    if h < 96 or w < 96:
        return None
    # 32 keeps every pooling level even for the U-Nets (5 halvings).
    y = np.ascontiguousarray(x[..., : h - 32, : w - 64])
    try:
        got = run_onnx(ort_session(onnx_path, threads), y)
    except Exception as exc:  # ORT raises its own Fail/InvalidArgument types
        return {"ok": False, "error": str(exc).splitlines()[0][:200], "shape": list(y.shape)}
    ref = run_torch(model, y)
    cmp = compare_logits(ref, got)
    return {"ok": cmp["max_abs_diff"] <= FP32_TOLERANCE, "shape": list(y.shape), **cmp}
