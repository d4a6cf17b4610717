"""fp16 ONNX: float16 weights, float32 input/output, runs in ONNX Runtime CPU."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from kidedge.export.fp16 import convert_fp16
from kidedge.export.onnx_export import compare_logits, export_onnx, ort_session, run_onnx

from .conftest import TinyUNet


def test_fp16_keeps_float32_io_and_runs_on_cpu(tmp_path):
    torch.manual_seed(0)
    x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    export_onnx(TinyUNet().eval(), tmp_path / "fp32.onnx", x[:1])
    info = convert_fp16(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx")
    assert info["keep_io_types"]
    m = onnx.load(str(tmp_path / "fp16.onnx"))
    f32 = onnx.TensorProto.FLOAT
    assert m.graph.input[0].type.tensor_type.elem_type == f32
    assert m.graph.output[0].type.tensor_type.elem_type == f32
    weight_types = {i.data_type for i in m.graph.initializer if len(i.dims) == 4}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    ref = run_onnx(ort_session(tmp_path / "fp32.onnx"), x)
    got = run_onnx(ort_session(tmp_path / "fp16.onnx"), x)
    assert got.dtype == np.float32
    cmp = compare_logits(ref, got)
    assert 0 < cmp["max_abs_diff"] < 0.05  # fp16 rounding: non-zero, small
    assert cmp["argmax_agreement"] > 0.99
