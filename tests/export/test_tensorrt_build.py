"""TensorRT build logic, checked without TensorRT, and the real build where it exists.

``RecordingTensorRT`` below is a stand-in for the ``tensorrt`` module that records which
API calls the builder code makes: it tests the decisions (flags, profile shapes, DLA,
timing cache, file names), not TensorRT. The ``tensorrt``-marked test does a real build.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from kidedge.errors import KidedgeError
from kidedge.export.tensorrt_build import (
    BuildSettings,
    build_engine,
    build_stage_plans,
    network_flags,
    profile_shapes,
    require_tensorrt,
)
from kidedge.package import sha256_file


class RecordingTensorRT:
    """Records calls; build returns fixed bytes. Attribute names follow TensorRT 10."""

    __version__ = "10.0.0-recording"

    def __init__(self, parse_ok=True, num_dla=0):
        self.calls = []
        rec = self
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Cache:
            def serialize(self):
                return b"timing-cache"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                rec.calls.append(("flag", flag))

            def add_optimization_profile(self, p):
                rec.calls.append(("profile", p.shapes))

            def create_timing_cache(self, data):
                rec.calls.append(("create_timing_cache", bytes(data)))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.calls.append(("set_timing_cache", ignore_mismatch))

            def __setattr__(self, k, v):
                rec.calls.append(("set", k, v))

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                self.shapes = (name, tuple(mn), tuple(opt), tuple(mx))

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse", path))
                return parse_ok

            def get_error(self, i):
                return "unsupported operator Foo"

        class Builder:
            num_DLA_cores = num_dla

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.calls.append(("build",))
                return b"plan-bytes"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser


def test_profile_shapes_cover_runtime_batches():
    s = BuildSettings("fp16", channels=3, height=256, width=256, batches=(1, 8, 32), max_height=512, max_width=512)
    assert profile_shapes(s) == {"min": (1, 3, 256, 256), "opt": (8, 3, 256, 256), "max": (32, 3, 512, 512)}
    s3 = BuildSettings("int8", channels=1, height=128, width=128, depth=16, batches=(1, 2, 4))
    assert profile_shapes(s3)["max"] == (4, 1, 16, 128, 128)


def test_settings_validation():
    with pytest.raises(KidedgeError, match="precision"):
        BuildSettings("int4", 1, 64, 64)
    with pytest.raises(KidedgeError, match="batch profile"):
        BuildSettings("fp16", 1, 64, 64, batches=(8, 1, 32))
    with pytest.raises(KidedgeError, match="DLA runs fp16 or int8"):
        BuildSettings("fp32", 1, 64, 64, dla_core=0)


def test_strongly_typed_only_for_int8():
    trt = RecordingTensorRT()
    assert network_flags(trt, "int8") == 1
    assert network_flags(trt, "fp16") == 0


def test_fp16_build_calls(tmp_path):
    trt = RecordingTensorRT()
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    facts = build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, 64, 64), trt)
    assert (tmp_path / "m.plan").read_bytes() == b"plan-bytes"
    assert (tmp_path / "m.timing-cache").read_bytes() == b"timing-cache"
    assert ("create_network", 0) in trt.calls and ("flag", "FP16") in trt.calls
    assert ("create_timing_cache", b"") in trt.calls and ("set_timing_cache", False) in trt.calls
    assert ("profile", ("image", (1, 1, 64, 64), (8, 1, 64, 64), (32, 1, 64, 64))) in trt.calls
    assert not any(c[0] == "set" for c in trt.calls)  # no DLA settings
    assert facts["precision"] == "fp16" and not facts["strongly_typed"]
    # A second build starts from the saved timing cache.
    trt2 = RecordingTensorRT()
    build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, 64, 64), trt2)
    assert ("create_timing_cache", b"timing-cache") in trt2.calls


def test_int8_gpu_build_is_strongly_typed_without_precision_flags(tmp_path):
    trt = RecordingTensorRT()
    (tmp_path / "q.onnx").write_bytes(b"qdq")
    facts = build_engine(tmp_path / "q.onnx", tmp_path / "q.plan", BuildSettings("int8", 1, 64, 64), trt)
    assert ("create_network", 1) in trt.calls
    assert not any(c[0] == "flag" for c in trt.calls)
    assert facts["strongly_typed"] and facts["builder_flags"] == [] and not facts["gpu_fallback"]


def test_int8_dla_build_calls(tmp_path):
    trt = RecordingTensorRT(num_dla=2)
    (tmp_path / "q.onnx").write_bytes(b"qdq")
    facts = build_engine(tmp_path / "q.onnx", tmp_path / "q.plan", BuildSettings("int8", 1, 64, 64, dla_core=1), trt)
    # DLA (TensorRT <= 10.7) is built weakly typed: INT8 for the Q/DQ layers, FP16 for the rest.
    assert ("create_network", 0) in trt.calls
    assert ("flag", "INT8") in trt.calls and ("flag", "FP16") in trt.calls
    assert ("set", "default_device_type", "DLA") in trt.calls and ("set", "DLA_core", 1) in trt.calls
    assert ("flag", "GPU_FALLBACK") in trt.calls
    assert not facts["strongly_typed"] and facts["gpu_fallback"] and facts["dla_core"] == 1
    with pytest.raises(KidedgeError, match="DLA core 2 requested but this device has 2"):
        build_engine(tmp_path / "q.onnx", tmp_path / "q.plan", BuildSettings("int8", 1, 64, 64, dla_core=2), trt)


def test_parse_failure_is_one_line(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(KidedgeError, match="TensorRT cannot parse it: unsupported operator Foo"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, 64, 64), RecordingTensorRT(parse_ok=False))
    assert not (tmp_path / "m.plan").exists()


def test_stage_plans_are_keyed_by_version_gpu_precision_and_onnx(tmp_path):
    (tmp_path / "fp32.onnx").write_bytes(b"a")
    (tmp_path / "int8-trt.onnx").write_bytes(b"b")
    entries = build_stage_plans(tmp_path, "seg", {"fp16": tmp_path / "fp32.onnx", "int8": tmp_path / "int8-trt.onnx"},
                                {"channels": 1, "height": 64, "width": 64}, RecordingTensorRT(),
                                gpu=("NVIDIA Jetson AGX Orin", (8, 7)))
    sha_a = sha256_file(tmp_path / "fp32.onnx")[:12]
    key = f"trt10.0.0-recording-nvidia_jetson_agx_orin-sm87-fp16-{sha_a}"
    assert key in entries and len(entries) == 2
    assert entries[key]["path"] == f"seg/{key}.plan" and (tmp_path / f"{key}.plan").is_file()
    assert entries[key]["timing_cache"]["path"] == f"seg/{key}.timing-cache"
    assert entries[key]["compute_capability"] == "8.7"


def test_dla_plans_get_their_own_key(tmp_path):
    (tmp_path / "fp32.onnx").write_bytes(b"a")
    entries = build_stage_plans(tmp_path, "seg", {"fp16": tmp_path / "fp32.onnx"},
                                {"channels": 1, "height": 64, "width": 64, "dla_core": 0},
                                RecordingTensorRT(num_dla=2), gpu=("Orin", (8, 7)))
    (key, entry), = entries.items()
    assert "-sm87-fp16dla0-" in key and entry["dla_core"] == 0 and entry["gpu_fallback"]
    # The runtime's plan matcher must not hand a DLA plan to a GPU fp16 request.
    from kidedge.export.tensorrt_build import plan_precision_label
    from kidedge.package import tensorrt_key
    from kidedge.runtime.backends.tensorrt_backend import match_plan

    dla = tensorrt_key("10.3.0", "Orin", (8, 7), plan_precision_label("fp16", 0), "ab" * 32)
    gpu = tensorrt_key("10.3.0", "Orin", (8, 7), plan_precision_label("fp16", None), "ab" * 32)
    assert match_plan({dla: {}}, "10.3.0", "Orin") is None
    assert match_plan({dla: {}, gpu: {}}, "10.3.0", "Orin") == gpu


def test_require_tensorrt_without_tensorrt_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(KidedgeError, match="needs the TensorRT Python API") as exc:
        require_tensorrt()
    assert "\n" not in str(exc.value)


def _tensorrt_and_gpu():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs the TensorRT Python API and a CUDA GPU")
def test_real_tensorrt_build(tmp_path):
    from kidedge.export.onnx_export import export_onnx

    from .conftest import TinyUNet

    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    export_onnx(TinyUNet().eval(), tmp_path / "fp32.onnx", x)
    entries = build_stage_plans(tmp_path, "seg", {"fp16": tmp_path / "fp32.onnx"},
                                {"channels": 1, "height": 64, "width": 64, "batches": (1, 2, 4)})
    (key, entry), = entries.items()
    plan = tmp_path / f"{key}.plan"
    assert plan.stat().st_size > 1000
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
