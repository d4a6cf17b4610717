"""TensorRT build logic, checked without TensorRT, and the real build where it exists.

``RecordingTensorRT`` below is a stand-in for the ``tensorrt`` module that records which
API calls the builder code makes, with the TensorRT 10 Python signatures and return
conventions (``add_optimization_profile`` -> index, ``set_timing_cache`` -> bool,
``set_shape`` raising on inconsistent shapes, ``build_serialized_network`` -> None on
failure). It tests the decisions (flags, one profile per bucket, batch handling, DLA,
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
    MAX_DLA_PROFILES,
    BuildSettings,
    build_engine,
    build_stage_plans,
    network_flags,
    profile_shapes,
    require_tensorrt,
)
from kidedge.package import sha256_file

BUCKETS = ((64, 64), (64, 96), (96, 96))


class RecordingTensorRT:
    """Records calls; build returns fixed bytes. Attribute names follow TensorRT 10."""

    __version__ = "10.3.0"

    def __init__(self, parse_ok=True, num_dla=0, build_ok=True, cache_ok=True, reject_profile=None):
        self.calls = []
        rec = self
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")

        class Logger:
            WARNING = 2

            def __init__(self, min_severity):
                pass

        class Cache:
            def serialize(self):
                return b"timing-cache"

        class Config:
            def __init__(self):
                object.__setattr__(self, "profiles", [])

            def set_memory_pool_limit(self, pool, pool_size):
                rec.calls.append(("pool", pool, pool_size))

            def set_flag(self, flag):
                rec.calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                rec.calls.append(("profile", profile.shapes))
                if reject_profile is not None and profile.shapes[1][-2:] == reject_profile:
                    return -1
                self.profiles.append(profile)
                return len(self.profiles) - 1

            def create_timing_cache(self, serialized_timing_cache):
                rec.calls.append(("create_timing_cache", bytes(serialized_timing_cache)))
                cache = Cache()
                cache.from_saved = bool(serialized_timing_cache)
                return cache

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.calls.append(("set_timing_cache", ignore_mismatch))
                # cache_ok=False: a saved cache does not fit this device (a new one does)
                return cache_ok or not cache.from_saved

            def __setattr__(self, k, v):
                rec.calls.append(("set", k, v))

        class Profile:
            def set_shape(self, input, min, opt, max):  # noqa: A002 - the binding's names
                if not all(a <= b <= c for a, b, c in zip(min, opt, max, strict=True)):
                    raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
                self.shapes = (input, tuple(min), tuple(opt), tuple(max))

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, model):
                rec.calls.append(("parse", model))
                return parse_ok

            def get_error(self, index):
                return "unsupported operator Foo"

        class Builder:
            num_DLA_cores = num_dla

            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                rec.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.calls.append(("build", len(config.profiles)))
                return b"plan-bytes" if build_ok else None

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser

    def profiles(self):
        return [c[1] for c in self.calls if c[0] == "profile"]


def test_one_profile_per_bucket_with_dynamic_batch_on_gpu():
    s = BuildSettings("fp16", channels=3, buckets=BUCKETS, batch=16)
    shapes = profile_shapes(s)
    assert [p["bucket"] for p in shapes] == list(BUCKETS)
    # spatial size fixed per profile; batch 1..16, tuned for 16
    assert shapes[1] == {"bucket": (64, 96), "min": (1, 3, 64, 96), "opt": (16, 3, 64, 96), "max": (16, 3, 64, 96)}


def test_gpu_2d_profiles_admit_every_size_up_to_their_bucket():
    """min_side (the stage's pad_multiple): the runtime then pads crops to a multiple of 32
    only, not to a bucket; DLA and 3D plans keep fixed sizes."""
    s = BuildSettings("int8", channels=1, buckets=BUCKETS, batch=16, min_side=32)
    for p in profile_shapes(s):
        assert p["min"] == (1, 1, 32, 32) and p["opt"] == p["max"] == (16, 1, *p["bucket"])
    dla = BuildSettings("int8", channels=1, buckets=BUCKETS, batch=4, dla_core=0, min_side=32)
    assert all(p["min"] == p["max"] for p in profile_shapes(dla))
    three_d = BuildSettings("fp16", channels=1, buckets=((128, 128),), batch=2, depth=16, min_side=32)
    assert profile_shapes(three_d)[0]["min"] == (1, 1, 16, 128, 128)
    with pytest.raises(KidedgeError, match="smallest side"):
        BuildSettings("fp16", channels=1, buckets=BUCKETS, min_side=96)


def test_dla_profiles_are_fully_fixed():
    s = BuildSettings("int8", channels=1, buckets=BUCKETS, batch=4, dla_core=0)
    for p in profile_shapes(s):
        assert p["min"] == p["opt"] == p["max"] == (4, 1, *p["bucket"])


def test_3d_profiles_carry_depth():
    s = BuildSettings("fp16", channels=1, buckets=((128, 128),), batch=2, depth=16)
    assert profile_shapes(s)[0]["max"] == (2, 1, 16, 128, 128)


def test_settings_validation():
    with pytest.raises(KidedgeError, match="precision"):
        BuildSettings("int4", 1, BUCKETS)
    with pytest.raises(KidedgeError, match="batch must be >= 1"):
        BuildSettings("fp16", 1, BUCKETS, batch=0)
    with pytest.raises(KidedgeError, match="distinct positive input buckets"):
        BuildSettings("fp16", 1, ((64, 64), (64, 64)))
    with pytest.raises(KidedgeError, match="distinct positive input buckets"):
        BuildSettings("fp16", 1, ())
    with pytest.raises(KidedgeError, match="DLA runs fp16 or int8"):
        BuildSettings("fp32", 1, BUCKETS, dla_core=0)
    many = tuple((32 * (i + 1), 32) for i in range(MAX_DLA_PROFILES + 1))
    BuildSettings("fp16", 1, many)  # fine on a GPU
    with pytest.raises(KidedgeError, match="DLA core holds 16"):
        BuildSettings("fp16", 1, many, dla_core=0)


def test_strongly_typed_only_for_int8():
    trt = RecordingTensorRT()
    assert network_flags(trt, "int8") == 1
    assert network_flags(trt, "fp16") == 0
    assert network_flags(trt, "int8", dla=True) == 0


def test_fp16_build_calls(tmp_path):
    trt = RecordingTensorRT()
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    facts = build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, BUCKETS, batch=8), trt)
    assert (tmp_path / "m.plan").read_bytes() == b"plan-bytes"
    assert (tmp_path / "m.timing-cache").read_bytes() == b"timing-cache"
    assert ("create_network", 0) in trt.calls and ("flag", "FP16") in trt.calls
    assert ("create_timing_cache", b"") in trt.calls and ("set_timing_cache", False) in trt.calls
    assert trt.profiles() == [("image", (1, 1, h, w), (8, 1, h, w), (8, 1, h, w)) for h, w in BUCKETS]
    assert ("build", 3) in trt.calls  # all three profiles were in the config at build time
    assert not any(c[0] == "set" for c in trt.calls)  # no DLA settings
    assert facts["precision"] == "fp16" and not facts["strongly_typed"]
    assert facts["buckets"] == [list(b) for b in BUCKETS] and facts["batch"] == {"max": 8, "fixed": False}
    # A second build starts from the saved timing cache.
    trt2 = RecordingTensorRT()
    build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, BUCKETS), trt2)
    assert ("create_timing_cache", b"timing-cache") in trt2.calls


def test_timing_cache_that_does_not_fit_is_replaced(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "m.timing-cache").write_bytes(b"timing-cache")  # from another GPU, say
    trt = RecordingTensorRT(cache_ok=False)
    build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, BUCKETS), trt)
    creates = [c for c in trt.calls if c[0] == "create_timing_cache"]
    assert creates == [("create_timing_cache", b"timing-cache"), ("create_timing_cache", b"")]
    assert "does not fit" in capsys.readouterr().out


def test_rejected_profile_is_one_line(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(KidedgeError, match="refused the optimisation profile of input bucket 64x96") as exc:
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, BUCKETS),
                     RecordingTensorRT(reject_profile=(64, 96)))
    assert "\n" not in str(exc.value) and not (tmp_path / "m.plan").exists()


def test_failed_build_is_one_line(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(KidedgeError, match="engine build failed .fp16, buckets 64x64, 64x96, 96x96"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, BUCKETS),
                     RecordingTensorRT(build_ok=False))
    assert not (tmp_path / "m.plan").exists()


def test_int8_gpu_build_is_strongly_typed_without_precision_flags(tmp_path):
    trt = RecordingTensorRT()
    (tmp_path / "q.onnx").write_bytes(b"qdq")
    facts = build_engine(tmp_path / "q.onnx", tmp_path / "q.plan", BuildSettings("int8", 1, BUCKETS), trt)
    assert ("create_network", 1) in trt.calls
    assert not any(c[0] == "flag" for c in trt.calls)
    assert facts["strongly_typed"] and facts["builder_flags"] == [] and not facts["gpu_fallback"]


def test_int8_dla_build_calls(tmp_path):
    trt = RecordingTensorRT(num_dla=2)
    (tmp_path / "q.onnx").write_bytes(b"qdq")
    s = BuildSettings("int8", 1, BUCKETS, batch=4, dla_core=1)
    facts = build_engine(tmp_path / "q.onnx", tmp_path / "q.plan", s, trt)
    # DLA (TensorRT <= 10.7) is built weakly typed: INT8 for the Q/DQ layers, FP16 for the rest.
    assert ("create_network", 0) in trt.calls
    assert ("flag", "INT8") in trt.calls and ("flag", "FP16") in trt.calls
    assert ("set", "default_device_type", "DLA") in trt.calls and ("set", "DLA_core", 1) in trt.calls
    assert ("flag", "GPU_FALLBACK") in trt.calls
    assert trt.profiles() == [("image", (4, 1, h, w), (4, 1, h, w), (4, 1, h, w)) for h, w in BUCKETS]
    assert not facts["strongly_typed"] and facts["gpu_fallback"] and facts["dla_core"] == 1
    assert facts["batch"] == {"max": 4, "fixed": True}
    with pytest.raises(KidedgeError, match="DLA core 2 requested but this device has 2"):
        build_engine(tmp_path / "q.onnx", tmp_path / "q.plan", BuildSettings("int8", 1, BUCKETS, dla_core=2), trt)


def test_parse_failure_is_one_line(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(KidedgeError, match="TensorRT cannot parse it: unsupported operator Foo"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", BuildSettings("fp16", 1, BUCKETS),
                     RecordingTensorRT(parse_ok=False))
    assert not (tmp_path / "m.plan").exists()


def test_stage_plans_are_keyed_by_version_gpu_precision_and_onnx(tmp_path):
    (tmp_path / "fp32.onnx").write_bytes(b"a")
    (tmp_path / "int8-trt.onnx").write_bytes(b"b")
    entries = build_stage_plans(tmp_path, "seg", {"fp16": tmp_path / "fp32.onnx", "int8": tmp_path / "int8-trt.onnx"},
                                {"channels": 1, "buckets": BUCKETS}, RecordingTensorRT(),
                                gpu=("NVIDIA Jetson AGX Orin", (8, 7)))
    sha_a = sha256_file(tmp_path / "fp32.onnx")[:12]
    key = f"trt10.3.0-nvidia_jetson_agx_orin-sm87-fp16-{sha_a}"
    assert key in entries and len(entries) == 2
    assert entries[key]["path"] == f"seg/{key}.plan" and (tmp_path / f"{key}.plan").is_file()
    assert entries[key]["timing_cache"]["path"] == f"seg/{key}.timing-cache"
    assert entries[key]["compute_capability"] == "8.7"
    assert entries[key]["buckets"] == [list(b) for b in BUCKETS]


def test_dla_core_builds_gpu_and_dla_plans_with_their_own_keys(tmp_path):
    (tmp_path / "fp32.onnx").write_bytes(b"a")
    entries = build_stage_plans(tmp_path, "seg", {"fp16": tmp_path / "fp32.onnx"},
                                {"channels": 1, "buckets": BUCKETS, "dla_core": 0},
                                RecordingTensorRT(num_dla=2), gpu=("Orin", (8, 7)))
    assert len(entries) == 2
    (dla_key, dla), = [(k, e) for k, e in entries.items() if e["dla_core"] == 0]
    (gpu_key, gpu), = [(k, e) for k, e in entries.items() if e["dla_core"] is None]
    assert "-sm87-fp16dla0-" in dla_key and dla["gpu_fallback"] and dla["batch"]["fixed"]
    assert "-sm87-fp16-" in gpu_key and not gpu["gpu_fallback"] and not gpu["batch"]["fixed"]
    # The runtime's plan matcher never hands a DLA plan to a GPU request, nor the reverse.
    from kidedge.runtime.backends.tensorrt_backend import match_plan

    ver = "10.3.0"
    assert match_plan(entries, ver, "Orin") == gpu_key
    assert match_plan(entries, ver, "Orin", dla_core=0) == dla_key
    assert match_plan(entries, ver, "Orin", dla_core=1) is None
    assert match_plan({dla_key: {}}, ver, "Orin") is None


def test_require_tensorrt_without_tensorrt_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(KidedgeError, match="needs the TensorRT Python API") as exc:
        require_tensorrt()
    assert "\n" not in str(exc.value)


def test_require_tensorrt_refuses_tensorrt_8_and_11(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(KidedgeError, match="TensorRT 8.6.1 is too old") as exc:
        require_tensorrt()
    assert "\n" not in str(exc.value)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    with pytest.raises(KidedgeError, match="TensorRT 11 removed; build the plans with TensorRT 10.x"):
        require_tensorrt()


def _tensorrt_and_gpu():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs the TensorRT Python API and a CUDA GPU")
def test_real_tensorrt_build_has_one_profile_per_bucket(tmp_path):
    from kidedge.export.onnx_export import export_onnx

    from .conftest import TinyUNet

    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    export_onnx(TinyUNet().eval(), tmp_path / "fp32.onnx", x)
    entries = build_stage_plans(tmp_path, "seg", {"fp16": tmp_path / "fp32.onnx"},
                                {"channels": 1, "buckets": ((64, 64), (64, 96)), "batch": 4})
    (key, entry), = entries.items()
    plan = tmp_path / f"{key}.plan"
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2 and engine.num_optimization_profiles == 2
    mn, opt, mx = engine.get_tensor_profile_shape("image", 1)
    assert tuple(mn) == (1, 1, 64, 96) and tuple(mx) == (4, 1, 64, 96)


def test_export_records_buckets_and_builds_one_profile_per_bucket(tmp_path, run_dir, monkeypatch):
    """export_run --tensorrt against the recording stand-in: the manifest lists the stage's
    buckets and every plan has one profile per bucket, GPU and DLA alike (the GPU plan's
    admitting every size up to its bucket)."""
    from kidedge.export import tensorrt_build
    from kidedge.export.package_writer import export_run
    from kidedge.package import ModelPackage

    from .conftest import EXPORT_KW

    trt = RecordingTensorRT(num_dla=2)
    monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_build, "gpu_identity", lambda device=0: ("Orin", (8, 7)))
    out = tmp_path / "pkg"
    export_run(run_dir, out, tensorrt=True, tensorrt_settings={"buckets": [[64, 64], [96, 96]], "batch": 4,
                                                                "dla_core": 0}, **EXPORT_KW)
    stage = ModelPackage.load(out).stage("seg")
    assert stage.input.buckets == ((64, 64), (96, 96))
    plans = stage.plans
    assert len(plans) == 2 and {e.extra["dla_core"] for e in plans.values()} == {None, 0}
    pad = stage.preprocess.pad_multiple
    for entry in plans.values():
        assert [list(p["bucket"]) for p in entry.extra["profiles"]] == [[64, 64], [96, 96]]
        assert (out / entry.path).read_bytes() == b"plan-bytes"
        mins = [list(p["min"][-2:]) for p in entry.extra["profiles"]]
        # the GPU plan's profiles take every size from pad_multiple up; DLA's only the bucket
        assert mins == ([[pad, pad]] * 2 if entry.extra["dla_core"] is None else [[64, 64], [96, 96]])
    assert len(trt.profiles()) == 4  # two plans x two buckets
    # Without --tensorrt the stage's default buckets are still recorded (a 96x96 stage: one).
    out2 = tmp_path / "pkg2"
    export_run(run_dir, out2, **EXPORT_KW)
    assert ModelPackage.load(out2).stage("seg").input.buckets == ((96, 96),)


def test_export_refuses_buckets_that_break_the_pooling(tmp_path, run_dir, monkeypatch):
    from kidedge.export import tensorrt_build
    from kidedge.export.package_writer import export_run

    from .conftest import EXPORT_KW

    monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda: RecordingTensorRT())
    monkeypatch.setattr(tensorrt_build, "gpu_identity", lambda device=0: ("Orin", (8, 7)))
    with pytest.raises(KidedgeError, match="TensorRT buckets: bucket \\[64, 0\\]"):
        export_run(run_dir, tmp_path / "pkg", tensorrt=True, tensorrt_settings={"buckets": [[64, 0]]}, **EXPORT_KW)
    assert not (tmp_path / "pkg").exists()
