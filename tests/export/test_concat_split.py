"""Conv(Concat) split per branch: exact in float, only where the branch ranges differ."""

from __future__ import annotations

import numpy as np
import onnx

from kidedge.export.concat_split import split_concat_convs
from kidedge.export.onnx_export import export_onnx, ort_session, run_onnx
from kidedge.export.quantize import prepare_for_quantization

from .conftest import TinyUNet


def _prepared(tmp_path):
    import torch

    torch.manual_seed(0)
    model = TinyUNet().eval()
    x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    export_onnx(model, tmp_path / "fp32.onnx", x[:1], "2d", dynamic_hw=True)
    prepared = prepare_for_quantization(tmp_path / "fp32.onnx", tmp_path / "prepared.onnx")
    m = onnx.load(str(prepared))
    cat = next(n for n in m.graph.node if n.op_type == "Concat")
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[0] == cat.output[0])
    return prepared, x, cat, conv


def test_split_is_exact_in_float(tmp_path):
    prepared, x, cat, conv = _prepared(tmp_path)
    ranges = {cat.input[0]: (0.0, 1.0), cat.input[1]: (-0.2, 8.0)}  # 8x apart
    done = split_concat_convs(prepared, tmp_path / "split.onnx", ranges)
    assert done == [{"conv": conv.name, "branches": list(cat.input), "range_ratio": 8.0}]
    m = onnx.load(str(tmp_path / "split.onnx"))
    assert not any(n.op_type == "Concat" for n in m.graph.node)  # its only consumer was split
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 1 + sum(
        n.op_type == "Conv" for n in onnx.load(str(prepared)).graph.node)
    ref = run_onnx(ort_session(prepared, 1), x)
    got = run_onnx(ort_session(tmp_path / "split.onnx", 1), x)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5


def test_similar_ranges_stay_one_convolution(tmp_path):
    prepared, _, cat, _ = _prepared(tmp_path)
    ranges = {cat.input[0]: (0.0, 3.0), cat.input[1]: (-1.0, 4.0)}  # 1.33x: not split
    assert split_concat_convs(prepared, tmp_path / "same.onnx", ranges) == []
    assert split_concat_convs(prepared, tmp_path / "unknown.onnx", {}) == []  # no ranges: not split
