"""The built-in package's two stages built into real TensorRT plans (one profile per shape
bucket) and run by the TensorRT backend, against ONNX Runtime fp32 on the same inputs.

Runs only where TensorRT, pycuda and a CUDA GPU exist (marked ``tensorrt``); it has not
run on the machine this project is developed on (no GPU there).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from kidedge.preprocess import output_size, preprocess_slices
from kidedge.shape_buckets import bucket_for, stage_buckets


def _have_tensorrt_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return False
    from kidedge.runtime.backends.tensorrt_backend import gpu_name

    return gpu_name() is not None


pytestmark = [pytest.mark.tensorrt,
              pytest.mark.skipif(not _have_tensorrt_gpu(), reason="needs TensorRT, pycuda and a CUDA GPU")]


@pytest.mark.parametrize("ranged", [False, True])
@pytest.mark.parametrize("stage_name", ["localise", "segment"])
def test_default_package_plans_agree_with_onnxruntime_fp32(tmp_path, stage_name, ranged):
    """Fixed-size profiles (inputs padded to the bucket) and, as export builds GPU 2D plans,
    profiles admitting every size up to the bucket (inputs padded to a multiple of 32)."""
    import onnxruntime as ort

    from kidedge.export.tensorrt_build import build_stage_plans, stage_build_settings
    from kidedge.package import ModelPackage
    from kidedge.phantom.generate import make_phantom
    from kidedge.runtime.backends.tensorrt_backend import TensorRTBackend

    pkg = ModelPackage.load(None)
    spec = pkg.preprocess_spec(stage_name)
    fp32 = pkg.file_path(stage_name, "fp32")
    buckets = stage_buckets(spec)
    ph = make_phantom(5, shape=(6, 256, 320), spacing=(3.0, 0.8, 0.8))
    # a gate-like crop (and, for the localiser, the whole slice)
    crops = [ph.hu[:, 40:210, 20:300]] if spec.in_plane == "spacing" else [ph.hu]
    used = sorted({bucket_for(buckets, output_size(spec, c.shape[1:], (0.8, 0.8))) for c in crops})
    extra = {"min_side": spec.pad_multiple} if ranged else {}
    entries = build_stage_plans(tmp_path, stage_name, {"fp16": fp32},
                                stage_build_settings(1, used, batch=4, **extra))
    (key, entry), = entries.items()
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    with TensorRTBackend(tmp_path / f"{key}.plan", max_batch=4, buckets=used) as be:
        assert be.input_buckets == [] if ranged else set(used) <= set(be.input_buckets)
        for crop in crops:
            content = output_size(spec, crop.shape[1:], (0.8, 0.8))
            x = preprocess_slices(crop, spec, (0.8, 0.8), pad_to=None if ranged else bucket_for(buckets, content))
            got = be.infer(x)[..., :content[0], :content[1]]
            ref = session.run(None, {session.get_inputs()[0].name: x})[0][..., :content[0], :content[1]]
            agree = float((got.argmax(1) == ref.argmax(1)).mean())
            assert agree >= 0.99, agree
            assert float(np.abs(got - ref).max()) < 0.5
