"""int8 variants: formats, symmetry, per-channel weights, layers kept float."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kidedge.errors import KidedgeError
from kidedge.export.calibration import SliceCalibrationReader
from kidedge.export.onnx_export import compare_logits, ort_session, run_onnx
from kidedge.export.quantize import (
    conv_nodes,
    float_node_rule,
    prepare_for_quantization,
    quantize_int8,
    variant_settings,
)

from .conftest import prepared_tiny_unet


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    x = np.random.default_rng(0).random((8, 1, 64, 64), dtype=np.float32)
    return d, prepared_tiny_unet(d, x), x


def _inits(path):
    m = onnx.load(str(path))
    return m, {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def test_float_rule_keeps_first_and_last_conv(prepared):
    _, prep, _ = prepared
    convs = conv_nodes(prep)
    assert len(convs) == 4
    assert float_node_rule(prep) == [convs[0], convs[-1]]


def test_int8_trt_is_symmetric_qdq_per_channel(prepared):
    d, prep, x = prepared
    out = d / "trt.onnx"
    info = quantize_int8(prep, out, SliceCalibrationReader(x), "int8-trt", "minmax", float_node_rule(prep))
    assert info["activation_type"] == "QInt8" and info["extra_options"]["ActivationSymmetric"]
    m, inits = _inits(out)
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "QLinearConv" not in ops
    zero_points = [inits[n.input[2]] for n in m.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    # int8 activations/weights, int32 biases; every zero point 0 (symmetric).
    assert zero_points and all(not z.any() for z in zero_points)
    assert {z.dtype for z in zero_points} == {np.dtype(np.int8), np.dtype(np.int32)}
    # Per-channel weights: a DequantizeLinear of an int8 4-D weight with one scale per output channel.
    per_channel = [inits[n.input[1]].size for n in m.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert per_channel and all(s > 1 for s in per_channel)
    # Kept-float convolutions still have float weights.
    float_convs = [n for n in m.graph.node if n.op_type == "Conv" and n.name in info["float_nodes"]]
    assert len(float_convs) == 2 and all(inits[n.input[1]].dtype == np.float32 for n in float_convs)
    got = run_onnx(ort_session(out), x)
    assert compare_logits(run_onnx(ort_session(prep), x), got)["argmax_agreement"] > 0.9


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_int8_cpu_uses_uint8_activations(prepared, fmt):
    d, prep, x = prepared
    out = d / f"cpu-{fmt}.onnx"
    info = quantize_int8(prep, out, SliceCalibrationReader(x), "int8-cpu", "percentile", [], cpu_format=fmt,
                         calibration_cache=d / f"cache-{fmt}.json")
    assert info["quant_format"] == fmt and not info["reduce_range"] and info["percentile"] == 99.999
    m, inits = _inits(out)
    ops = {n.op_type for n in m.graph.node}
    if fmt == "QOperator":
        assert "QLinearConv" in ops
    else:
        assert "DequantizeLinear" in ops and "QLinearConv" not in ops
    act_zero_points = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zero_points and all(z.dtype == np.uint8 for z in act_zero_points)
    assert (d / f"cache-{fmt}.json").is_file()
    assert run_onnx(ort_session(out), x).shape == (8, 4, 64, 64)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_int8_cpu_weight_bits(prepared, reduce_range):
    # 8-bit weights by default: every output channel's largest weight maps to +-127;
    # reduce_range keeps them within 7 bits (ORT's [-64, 64]) for AVX2 CPUs without VNNI.
    d, prep, x = prepared
    out = d / f"bits-{reduce_range}.onnx"
    info = quantize_int8(prep, out, SliceCalibrationReader(x), "int8-cpu", "minmax", [], reduce_range=reduce_range,
                         calibration_cache=d / "bits-cache.json")
    assert info["reduce_range"] is reduce_range
    _, inits = _inits(out)
    weights = [w for w in inits.values() if w.dtype == np.int8 and w.ndim == 4]
    assert weights
    peaks = {int(np.abs(w.astype(np.int16)).max()) for w in weights}
    assert peaks == ({64} if reduce_range else {127})


def test_calibration_cache_is_reused_without_reader(prepared):
    d, prep, x = prepared
    cache = d / "shared-cache.json"
    quantize_int8(prep, d / "a.onnx", SliceCalibrationReader(x), "int8-cpu", "minmax", calibration_cache=cache)
    # No reader: the ranges can only come from the cache.
    quantize_int8(prep, d / "b.onnx", None, "int8-trt", "minmax", calibration_cache=cache)
    assert (d / "b.onnx").is_file()


def test_bad_settings_are_user_errors(prepared):
    d, prep, x = prepared
    with pytest.raises(KidedgeError, match="calibration method"):
        quantize_int8(prep, d / "x.onnx", SliceCalibrationReader(x), "int8-cpu", "median")
    with pytest.raises(KidedgeError, match="unknown int8 variant"):
        variant_settings("int4")
    with pytest.raises(KidedgeError, match="format"):
        variant_settings("int8-cpu", cpu_format="QWhatever")


def test_entropy_is_not_silently_minmax(prepared, tmp_path):
    # ORT's entropy calibrator with its defaults (128 bins = 128 quantised bins) returns
    # the full range, i.e. min-max; kidedge computes entropy ranges with 2048 bins.
    _, path, x = prepared
    scales = {}
    for method in ("minmax", "entropy"):
        info = quantize_int8(path, tmp_path / f"{method}.onnx", SliceCalibrationReader(x), "int8-trt", method, [])
        model = onnx.load(str(tmp_path / f"{method}.onnx"))
        scales[method] = {i.name: float(numpy_helper.to_array(i).ravel()[0]) for i in model.graph.initializer
                          if i.name.endswith("_scale") and numpy_helper.to_array(i).size == 1}
    assert info["entropy_bins"] == {"num_bins": 2048, "num_quantized_bins": 128}
    common = set(scales["minmax"]) & set(scales["entropy"])
    assert common
    # Entropy clips outliers: no activation scale is larger, and some are smaller.
    assert all(scales["entropy"][k] <= scales["minmax"][k] * 1.0001 for k in common)
    assert any(scales["entropy"][k] < scales["minmax"][k] * 0.99 for k in common)


def test_prepare_leaves_no_files_in_the_working_directory(prepared, tmp_path, monkeypatch):
    # ORT's symbolic shape inference, when it gives up (as it does on this net), saves a
    # model and a uuid-named .data file into the working directory and keeps them.
    d, _, _ = prepared
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = prepare_for_quantization(Path(os.path.relpath(d / "fp32.onnx")), tmp_path / "again.onnx")
    assert out.is_file() and out.is_absolute()
    assert list(work.iterdir()) == []
    assert Path.cwd() == work


def test_layer_ranking_measures_int8_noise_not_the_folded_relu(prepared):
    """ONNX Runtime folds a Conv's ReLU into its Q/DQ pair, so the tensor before Q is the raw
    Conv output; the SQNR ranking must compare the pair with that ReLU, or it ranks layers by
    how negative their outputs are (0-6 dB) instead of by int8 noise (~40 dB at 8 bits)."""
    from kidedge.export.int8_3d import _relu_fused_tensors, sensitive_convs

    d, prep, x = prepared
    out = d / "ranked.onnx"
    quantize_int8(prep, out, SliceCalibrationReader(x), "int8-cpu", "minmax", [])
    fused = _relu_fused_tensors(onnx.load(str(out)).graph)
    assert "/enc/enc.2/Relu_output_0" in fused  # the first block's ReLU, folded
    ranked = sensitive_convs(prep, out, x[:4])
    assert len(ranked) >= 3 and all(db > 25 for _, db in ranked), ranked
