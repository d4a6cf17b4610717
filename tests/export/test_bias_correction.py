"""Empirical bias correction of int8 models: only biases change, and the mean shift int8
gives each layer's output (and so the logits) shrinks."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kidedge.export.bias_correction import correct_biases
from kidedge.export.calibration import SliceCalibrationReader
from kidedge.export.onnx_export import ort_session, run_onnx
from kidedge.export.quantize import quantize_int8

from .conftest import prepared_tiny_unet


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("biascorr")
    # structured inputs (smooth blobs), so layer means are not all near zero
    x = np.random.default_rng(0).random((24, 1, 64, 64), dtype=np.float32)
    x = (x + np.roll(x, 1, -1) + np.roll(x, 1, -2)) / 3
    prep = prepared_tiny_unet(d, x)
    quantize_int8(prep, d / "int8.onnx", SliceCalibrationReader(x), "int8-trt", "minmax", [])
    return d, prep, x


def _logit_mean_error(fp32, int8, x):
    a, b = run_onnx(ort_session(fp32), x), run_onnx(ort_session(int8), x)
    return float(np.abs(a.mean(axis=(0, 2, 3)) - b.mean(axis=(0, 2, 3))).max())


def test_only_biases_change_and_the_mean_shift_shrinks(int8_model, tmp_path):
    d, prep, x = int8_model
    corrected = tmp_path / "corrected.onnx"
    shutil.copy(d / "int8.onnx", corrected)
    record = correct_biases(prep, corrected, x)
    assert record["layers"] == 4 and record["inputs"] == len(x)  # every Conv is int8 here, the head too
    assert record["max_mean_error_after"] < record["max_mean_error_before"]
    old, new = onnx.load(str(d / "int8.onnx")), onnx.load(str(corrected))
    assert [n.op_type for n in old.graph.node] == [n.op_type for n in new.graph.node]
    changed = [i.name for i, j in zip(old.graph.initializer, new.graph.initializer, strict=True)
               if not np.array_equal(numpy_helper.to_array(i), numpy_helper.to_array(j))]
    made_by = {o: n for n in old.graph.node for o in n.output}
    biases = {made_by[n.input[2]].input[0] for n in old.graph.node if n.op_type == "Conv"}
    assert set(changed) == biases  # the int32 bias of every Conv, nothing else
    # held-out inputs: the logits' per-class means are closer to fp32's
    held = np.ascontiguousarray(x[::-1] * 0.9 + 0.05)
    assert _logit_mean_error(d / "fp32.onnx", corrected, held) < _logit_mean_error(d / "fp32.onnx", d / "int8.onnx", held)


def test_float_layers_left_alone_unless_asked(int8_model, tmp_path):
    d, prep, x = int8_model
    kept = tmp_path / "kept.onnx"
    quantize_int8(prep, kept, SliceCalibrationReader(x), "int8-cpu", "minmax", ["/head/Conv"])
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(kept)).graph.initializer}
    head_bias = next(n.input[2] for n in onnx.load(str(kept)).graph.node if n.name == "/head/Conv")
    correct_biases(prep, kept, x)
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(kept)).graph.initializer}
    assert np.array_equal(before[head_bias], after[head_bias])
    correct_biases(prep, kept, x, kinds=("int32", "float"))
    assert not np.array_equal(before[head_bias], {i.name: numpy_helper.to_array(i) for i in onnx.load(
        str(kept)).graph.initializer}[head_bias])


def test_a_split_convolution(int8_model, tmp_path):
    """After the concat split (one Conv per branch, the bias on one of them, each branch
    quantised before the Add), the biased branch is corrected; the bias-free one has nothing
    to correct and the layers after the Add take in its mean error."""
    from kidedge.export.concat_split import split_concat_convs

    d, prep, x = int8_model
    concat = next(n for n in onnx.load(str(prep)).graph.node if n.op_type == "Concat")
    ranges = {concat.input[0]: (0.0, 1.0), concat.input[1]: (0.0, 10.0)}  # 10x apart: split
    split = tmp_path / "split.onnx"
    assert split_concat_convs(prep, split, ranges)
    quantized = tmp_path / "split-int8.onnx"
    quantize_int8(split, quantized, SliceCalibrationReader(x), "int8-trt", "minmax", [])
    convs = [n for n in onnx.load(str(quantized)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 5 and sum(len(n.input) > 2 and bool(n.input[2]) for n in convs) == 4
    raw = tmp_path / "split-int8-raw.onnx"
    shutil.copy(quantized, raw)
    record = correct_biases(split, quantized, x)
    assert record["layers"] == 4 and record["max_mean_error_after"] < record["max_mean_error_before"]
    held = np.ascontiguousarray(x[::-1] * 0.9 + 0.05)
    assert _logit_mean_error(split, quantized, held) < _logit_mean_error(split, raw, held)
