"""Tiny test data for the runtime tests, made without torch: CT volumes with two kidneys
and a tumour, and model packages whose ONNX graphs are fixed 1x1 convolutions that map
intensity to class logits (so the right answer is known exactly)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kidedge.package import write_manifest
from kidedge.preprocess import PreprocessSpec

KIDNEY_HU, TUMOUR_HU, BODY_HU, AIR_HU = 170, 320, 20, -1000
# Window [-100, 400], range normalisation: x = (HU + 100) / 500.
# Logits l0 = 0, l1 = 10x - 4, l2 = 20x - 11, l3 = -100: background below 100 HU, kidney
# 100..250 HU, tumour above 250 HU, never cyst.
SEG_WEIGHTS = np.array([[0.0], [10.0], [20.0], [0.0]], np.float32)
SEG_BIAS = np.array([0.0, -4.0, -11.0, -100.0], np.float32)
# Localiser: 2 classes, "kidney region" above 100 HU.
LOC_WEIGHTS = np.array([[0.0], [10.0]], np.float32)
LOC_BIAS = np.array([0.0, -4.0], np.float32)


def kits_affine(spacing=(2.0, 1.0, 1.0)) -> np.ndarray:
    """A KiTS19-style affine: array axes (slice, row, col) with axis codes (I, P, L)."""
    s, r, c = spacing
    return np.array([[0, 0, -c, 0], [0, -r, 0, 0], [-s, 0, 0, 0], [0, 0, 0, 1]], np.float64)


def make_ct(shape=(24, 64, 64), kidney_slices=(8, 16), seed=0):
    """Canonical int16 HU volume with a body, two kidneys (slices ``kidney_slices``) and a
    tumour in the left kidney; returns (hu, truth labels)."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    hu = np.full(shape, AIR_HU, np.int16)
    truth = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    hu[:, body] = BODY_HU
    z0, z1 = kidney_slices
    zc, zr = (z0 + z1 - 1) / 2, (z1 - z0) / 2
    for cx in (0.3 * w, 0.7 * w):
        for k in range(n):
            dz = (k - zc) / zr
            if abs(dz) >= 1:
                continue
            rad = np.sqrt(1 - dz * dz)
            m = ((yy - 0.55 * h) / (0.12 * h * rad)) ** 2 + ((xx - cx) / (0.08 * w * rad)) ** 2 <= 1
            hu[k][m] = KIDNEY_HU
            truth[k][m] = 1
    # the tumour: 0.6 mL at the default size (2 mm x 1 mm x 1 mm voxels), above the review's
    # 0.5 mL floor for a mass (kidedge.kidney_review.MASS_MIN_ML), so an exact model keeps it
    k = int(round(zc))
    m = ((yy - 0.55 * h) ** 2 + (xx - 0.7 * w) ** 2) <= (0.07 * w) ** 2
    hu[k - 2:k + 3][:, m] = TUMOUR_HU
    truth[k - 2:k + 3][:, m] = 2
    hu += rng.integers(-5, 6, size=shape).astype(np.int16)  # noise far from the thresholds
    return hu, truth


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return Path(path)


def write_ras_nifti(path: Path, hu_canonical: np.ndarray, spacing=(2.0, 1.0, 1.0)) -> Path:
    """The same volume stored as dcm2niix would: (x, y, z) with RAS axis codes."""
    img = nib.Nifti1Image(hu_canonical, kits_affine(spacing))
    ras = nib.as_closest_canonical(img)
    data = np.asarray(ras.dataobj).astype(np.int16)
    out = nib.Nifti1Image(np.ascontiguousarray(data), ras.affine)
    nib.save(out, str(path))
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    return Path(path)


def conv1x1_onnx(path: Path, weights: np.ndarray, bias: np.ndarray, in_channels: int = 1) -> Path:
    """ONNX model: input "image" (N, C, H, W) -> output "logits" = 1x1 conv (dynamic N, H, W)."""
    k = weights.shape[0]
    w = numpy_helper.from_array(weights.reshape(k, in_channels, 1, 1).astype(np.float32), "W")
    b = numpy_helper.from_array(bias.astype(np.float32), "B")
    node = helper.make_node("Conv", ["image", "W", "B"], ["logits"])
    graph = helper.make_graph(
        [node], "conv1x1",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", in_channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k, "H", "W"])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def _stage(name, role, spec, out_labels, files, roi=None, channels=1):
    st = {"name": name, "role": role, "arch": "conv1x1", "model_kwargs": {},
          "preprocess": spec.to_dict(),
          "input": {"name": "image", "channels": channels, "height": None, "width": None},
          "output": {"name": "logits", "activation": "softmax", "labels": out_labels},
          "files": files}
    if roi:
        st["roi"] = roi
    return st


def make_single_package(out: Path, name="test-single") -> Path:
    """One segment stage at native resolution, fp32 ONNX only."""
    out.mkdir(parents=True, exist_ok=True)
    conv1x1_onnx(out / "segment.fp32.onnx", SEG_WEIGHTS, SEG_BIAS)
    spec = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range")
    manifest = {"name": name, "architecture": "conv1x1", "dimensionality": "2d",
                "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
                "input_layout": "NCHW",
                "stages": [_stage("segment", "segment", spec, [0, 1, 2, 3],
                                  {"fp32": {"path": "segment.fp32.onnx"}})]}
    write_manifest(out, manifest)
    return out


def make_cascade_package(out: Path, margin_mm=4.0, name="test-cascade") -> Path:
    """Localiser on 32x32 resampled slices, then a native segment stage inside its ROI."""
    out.mkdir(parents=True, exist_ok=True)
    conv1x1_onnx(out / "localise.fp32.onnx", LOC_WEIGHTS, LOC_BIAS)
    conv1x1_onnx(out / "segment.fp32.onnx", SEG_WEIGHTS, SEG_BIAS)
    loc_spec = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range", in_plane="size", size=(32, 32))
    seg_spec = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range")
    manifest = {"name": name, "architecture": "conv1x1-cascade", "dimensionality": "2d",
                "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
                "input_layout": "NCHW",
                "stages": [
                    _stage("localise", "localise", loc_spec, [0, 1], {"fp32": {"path": "localise.fp32.onnx"}}),
                    _stage("segment", "segment", seg_spec, [0, 1, 2, 3], {"fp32": {"path": "segment.fp32.onnx"}},
                           roi={"source_stage": "localise", "labels": [1, 2, 3], "margin_mm": margin_mm}),
                ]}
    write_manifest(out, manifest)
    return out
