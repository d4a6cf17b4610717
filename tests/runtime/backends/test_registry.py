import shutil

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.package import ModelPackage, tensorrt_key, write_manifest
from kidedge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from kidedge.runtime.backends.registry import create_backend, select_backend
from kidedge.runtime.backends.tensorrt_backend import match_plan

from ..synthetic import SEG_BIAS, SEG_WEIGHTS, make_single_package


def test_auto_on_this_machine_is_onnxruntime_cpu_fp32(tmp_path):
    pkg = ModelPackage.load(make_single_package(tmp_path / "p"))
    choice = select_backend(pkg)
    assert (choice.backend, choice.device, choice.precision) == ("onnxruntime", "cpu", "fp32")
    assert choice.files == {"segment": "fp32"}
    assert choice.reason.startswith("auto")


def test_auto_prefers_int8_on_cpu_when_packaged(tmp_path):
    d = make_single_package(tmp_path / "p")
    shutil.copy(d / "segment.fp32.onnx", d / "segment.int8-cpu.onnx")
    import json

    m = json.loads((d / "manifest.json").read_text())
    m["stages"][0]["files"]["int8-cpu"] = {"path": "segment.int8-cpu.onnx"}
    write_manifest(d, m)
    pkg = ModelPackage.load(d)
    assert select_backend(pkg).files == {"segment": "int8-cpu"}
    assert select_backend(pkg, precision="fp32").files == {"segment": "fp32"}
    assert select_backend(pkg, precision="int8").precision == "int8"


def test_missing_precision_and_unavailable_backend_are_one_line_errors(tmp_path):
    pkg = ModelPackage.load(make_single_package(tmp_path / "p"))
    with pytest.raises(KidedgeError, match="no fp16 ONNX model"):
        select_backend(pkg, "onnxruntime", "fp16")
    with pytest.raises(KidedgeError, match="--backend tensorrt"):
        select_backend(pkg, "tensorrt")
    with pytest.raises(KidedgeError, match="precision"):
        select_backend(pkg, precision="int4")


def test_backend_lifecycle_and_inference(tmp_path):
    pkg = ModelPackage.load(make_single_package(tmp_path / "p"))
    backend = create_backend(select_backend(pkg), pkg, pkg.stages[0])
    assert isinstance(backend, OnnxRuntimeBackend) and not backend.is_active
    x = np.linspace(0, 1, 2 * 5 * 7, dtype=np.float32).reshape(2, 1, 5, 7)
    with pytest.raises(RuntimeError, match="activated"):
        backend.infer(x)
    with backend as b:
        assert b.is_active and "CPU" in b.description
        y = b.infer(x)
    assert not backend.is_active
    expect = SEG_WEIGHTS[:, 0][None, :, None, None] * x + SEG_BIAS[None, :, None, None]
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_match_plan_needs_same_tensorrt_version_and_gpu():
    sha = "ab" * 32
    plans = {tensorrt_key("10.3.0", "NVIDIA Orin", (8, 7), p, sha): {} for p in ("fp32", "fp16", "int8")}
    plans[tensorrt_key("10.7.0", "NVIDIA H100 80GB HBM3", (9, 0), "fp16", sha)] = {}
    assert match_plan(plans, "10.3.0", "NVIDIA Orin").startswith("trt10.3.0-nvidia_orin-sm87-fp16")
    assert "-int8-" in match_plan(plans, "10.3.0.26", "NVIDIA Orin", ("int8",))
    assert match_plan(plans, "10.7.0", "NVIDIA H100 80GB HBM3", ("fp32",)) is None
    assert match_plan(plans, "10.4.0", "NVIDIA Orin") is None
    assert match_plan(plans, "10.3.0", "NVIDIA A100") is None
    assert match_plan({}, "10.3.0", "NVIDIA Orin") is None
    assert match_plan(plans, None, None) is None


def test_tensorrt_backend_without_tensorrt_says_what_to_install(tmp_path):
    import importlib.util

    from kidedge.runtime.backends.base import BackendUnavailable
    from kidedge.runtime.backends.tensorrt_backend import TensorRTBackend

    if importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None:
        pytest.skip("TensorRT is installed here")
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(BackendUnavailable, match="kidedge\\[tensorrt\\]"):
        TensorRTBackend(plan).activate()


def test_torch_fp16_needs_cuda(tmp_path):
    pytest.importorskip("torch")
    from kidedge.runtime.backends.base import BackendUnavailable
    from kidedge.runtime.backends.torch_backend import TorchBackend

    b = TorchBackend("squeezenet_unet", {"classes": 4}, tmp_path / "none.pt", device="cpu", precision="fp16")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        b.activate()
    assert not b.is_active


def test_cpu_parallel_calls(monkeypatch):
    from kidedge.runtime.backends import registry

    monkeypatch.delenv("KIDEDGE_PARALLEL_CALLS", raising=False)
    monkeypatch.setattr(registry, "usable_cores", lambda: 2)
    # default: two calls side by side, the threads shared; one call where there is one thread
    assert registry.cpu_parallel_calls(None) == (2, 1)
    assert registry.cpu_parallel_calls(2) == (2, 1)
    assert registry.cpu_parallel_calls(1) == (1, 1)
    monkeypatch.setattr(registry, "usable_cores", lambda: 1)
    assert registry.cpu_parallel_calls(None) == (1, None)
    monkeypatch.setattr(registry, "usable_cores", lambda: 2)
    monkeypatch.setenv("KIDEDGE_PARALLEL_CALLS", "1")  # one call at a time on all the threads
    assert registry.cpu_parallel_calls(None) == (1, None)
    assert registry.cpu_parallel_calls(2) == (1, 2)
    monkeypatch.setenv("KIDEDGE_PARALLEL_CALLS", "auto")
    assert registry.cpu_parallel_calls(None) == (2, 1)  # one one-thread call per core
    assert registry.cpu_parallel_calls(3) == (3, 1)
    monkeypatch.setattr(registry, "usable_cores", lambda: 16)
    assert registry.cpu_parallel_calls(None) == (4, 4)  # at most 4 calls, the cores shared
    monkeypatch.setenv("KIDEDGE_PARALLEL_CALLS", "2")
    assert registry.cpu_parallel_calls(None) == (2, 8)
    monkeypatch.delenv("KIDEDGE_PARALLEL_CALLS")
    assert registry.cpu_parallel_calls(None) == (2, 8)  # the default on 16 cores
    assert registry.cpu_parallel_calls(2) == (2, 1)


def test_side_by_side_calls_give_the_labels_of_one_call_at_a_time(tmp_path, monkeypatch, ct_case, cascade_package):
    from kidedge.io import load_scan
    from kidedge.runtime.engine import Segmenter

    path, _, truth = ct_case
    pkg = ModelPackage.load(cascade_package)
    out = {}
    for calls in ("1", "2"):
        monkeypatch.setenv("KIDEDGE_PARALLEL_CALLS", calls)
        with Segmenter(pkg, select_backend(pkg, "onnxruntime")) as seg:
            assert {b.parallel_calls for b in seg.backends.values()} == {int(calls)}
            out[calls] = seg.segment(load_scan(path)).labels.to_dense()
    np.testing.assert_array_equal(out["1"], out["2"])
    np.testing.assert_array_equal(out["2"], truth)


@pytest.mark.parametrize("bits", [8, 7, None])
def test_full_range_int8_is_not_auto_where_int8_pairs_saturate(tmp_path, monkeypatch, bits):
    import json

    from kidedge.runtime.backends import registry

    d = make_single_package(tmp_path / "p")
    shutil.copy(d / "segment.fp32.onnx", d / "segment.int8-cpu.onnx")
    m = json.loads((d / "manifest.json").read_text())
    m["stages"][0]["files"]["int8-cpu"] = {"path": "segment.int8-cpu.onnx", **({"weight_bits": bits} if bits else {})}
    write_manifest(d, m)
    pkg = ModelPackage.load(d)
    monkeypatch.setattr(registry, "int8_pairs_saturate", lambda: True)  # an AVX2 CPU without VNNI
    auto, forced = select_backend(pkg), select_backend(pkg, precision="int8")
    assert forced.files == {"segment": "int8-cpu"}
    if bits == 8:
        assert auto.files == {"segment": "fp32"} and "stage segment runs fp32, not int8" in auto.reason
        assert "warning: stage segment runs int8" in forced.reason and "--int8-cpu-weight-bits 7" in forced.reason
    else:  # 7-bit weights (a package without weight_bits has them) cannot saturate
        assert auto.files == {"segment": "int8-cpu"} and "warning" not in forced.reason
    monkeypatch.setattr(registry, "int8_pairs_saturate", lambda: False)  # VNNI, AMX or Arm
    assert select_backend(pkg).files == {"segment": "int8-cpu"}


def test_int8_runs_a_float_localiser_in_fp32(tmp_path):
    # export keeps a cascade's localiser float by default: int8 (asked or auto) runs it in fp32
    # beside the int8 segmenter; with no int8 anywhere, --precision int8 is still refused
    import json

    from ..synthetic import make_cascade_package

    d = make_cascade_package(tmp_path / "c")
    pkg = ModelPackage.load(d)
    with pytest.raises(KidedgeError, match="no int8"):
        select_backend(pkg, "onnxruntime", "int8")
    shutil.copy(d / "segment.fp32.onnx", d / "segment.int8-cpu.onnx")
    m = json.loads((d / "manifest.json").read_text())
    m["stages"][1]["files"]["int8-cpu"] = {"path": "segment.int8-cpu.onnx", "weight_bits": 8}
    write_manifest(d, m)
    pkg = ModelPackage.load(d)
    for precision in ("int8", "auto"):
        choice = select_backend(pkg, "onnxruntime", precision)
        assert choice.files == {"localise": "fp32", "segment": "int8-cpu"} and choice.precision == "int8"
    assert all("localiser float" in select_backend(pkg, "onnxruntime", p).reason for p in ("int8", "auto"))
    assert "localiser float" not in select_backend(pkg, "onnxruntime", "fp32").reason
    assert select_backend(pkg, "onnxruntime", "fp32").files == {"localise": "fp32", "segment": "fp32"}
