"""torch -> ONNX: checker, dynamic axes, parity vs PyTorch on real preprocessed slices."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from kidedge.errors import KidedgeError
from kidedge.export.held_out import phantom_volume
from kidedge.export.onnx_export import (
    FP32_TOLERANCE,
    check_parity,
    compare_logits,
    export_onnx,
    load_stage_model,
    ort_session,
    run_onnx,
    run_torch,
)
from kidedge.export.stage_inputs import slice_inputs

from .conftest import SPACING, SPEC, VOLUME_SHAPE, TinyUNet, tiny_factory

STAGE = {"name": "seg", "preprocess": SPEC.to_dict(), "output": {"activation": "softmax", "labels": [0, 1, 2, 3]}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(1)
    model = TinyUNet().eval()
    x = slice_inputs(phantom_volume(3, VOLUME_SHAPE, SPACING), STAGE, range(4, 9))
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    info = export_onnx(model, path, x[:1])
    return model, path, x, info


def test_export_passes_checker_with_named_dynamic_io(exported):
    model, path, x, info = exported
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert info["opset"] >= 17 and m.opset_import[0].version >= 17
    assert [i.name for i in m.graph.input] == ["image"] and [o.name for o in m.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    assert info["op_types"]["Conv"] == 4


def test_parity_on_real_slices_and_other_sizes(exported):
    model, path, x, _ = exported
    sess = ort_session(path)
    r = check_parity(run_torch(model, x), run_onnx(sess, x), FP32_TOLERANCE, "test")
    assert r["max_abs_diff"] < FP32_TOLERANCE and r["argmax_agreement"] > 0.999
    # Dynamic batch and spatial size: a batch of 3 at 64 x 32.
    y = np.ascontiguousarray(x[:3, :, :64, :32])
    got = run_onnx(sess, y, batch=3)
    assert got.shape == (3, 4, 64, 32)
    assert np.abs(got - run_torch(model, y)).max() < FP32_TOLERANCE


def test_parity_fails_loudly_past_tolerance():
    ref = np.zeros((1, 2, 4, 4), np.float32)
    bad = ref.copy()
    bad[0, 1, 0, 0] = 0.5
    assert compare_logits(ref, bad)["max_abs_diff"] == pytest.approx(0.5)
    with pytest.raises(KidedgeError, match="differs from PyTorch by 0.5"):
        check_parity(ref, bad, 1e-3, "m.onnx")
    nan = ref.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(KidedgeError):
        check_parity(ref, nan, 1e-3, "m.onnx")


def test_load_stage_model_errors(tmp_path):
    stage = {"name": "seg", "arch": "tiny_unet", "model_kwargs": {}, "checkpoint": "seg/best.pt"}
    with pytest.raises(KidedgeError, match="checkpoint of stage 'seg' is missing"):
        load_stage_model(tmp_path, stage, tiny_factory)
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg/best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(KidedgeError, match="not a readable checkpoint"):
        load_stage_model(tmp_path, stage, tiny_factory)
    torch.save(TinyUNet(width=4).state_dict(), tmp_path / "seg/best.pt")
    with pytest.raises(KidedgeError, match="does not fit model 'tiny_unet'"):
        load_stage_model(tmp_path, stage, tiny_factory)
    torch.save(TinyUNet().state_dict(), tmp_path / "seg/best.pt")
    assert not load_stage_model(tmp_path, stage, tiny_factory).training
