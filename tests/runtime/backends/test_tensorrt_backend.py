"""The TensorRT backend against stand-ins of ``tensorrt`` and ``pycuda.driver`` (no GPU
here): profile selection per bucket, every call's result checked, shapes outside the
buckets refused in one line, DLA plans, fixed-batch padding, buffer reuse, out-of-memory.
The real engine runs in the ``tensorrt``-marked test at the end where TensorRT exists."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.runtime.backends.base import BackendOutOfMemory, BackendUnavailable
from kidedge.runtime.backends.tensorrt_backend import (
    EngineProfile,
    TensorRTBackend,
    check_tensorrt_version,
    profile_for,
)

from .fake_tensorrt import FakeCuda, FakeTensorRT, expected_logits, write_plan

BUCKETS = [(64, 64), (64, 96), (96, 96)]


@pytest.fixture
def fake(monkeypatch):
    """Install fake tensorrt + pycuda; returns a function to reconfigure them."""

    def install(**kwargs):
        cuda = FakeCuda(memory_limit=kwargs.pop("memory_limit", None))
        trt = FakeTensorRT(cuda, **kwargs)
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = cuda
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt, cuda

    return install


def _x(n, h, w, seed=0):
    return np.random.default_rng(seed).random((n, 1, h, w), dtype=np.float32)


def test_each_bucket_runs_on_its_profile_selected_on_the_stream(tmp_path, fake):
    trt, _ = fake()
    plan = write_plan(tmp_path / "p.plan", BUCKETS)
    with TensorRTBackend(plan, max_batch=4) as be:
        assert be.input_buckets == sorted(BUCKETS)
        assert ("create_execution_context", trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE) in trt.calls
        x = _x(3, 64, 96)
        np.testing.assert_allclose(be.infer(x), expected_logits(x))
        assert ("set_optimization_profile_async", 1, 4242) in trt.calls
        assert ("set_input_shape", "image", (3, 1, 64, 96)) in trt.calls
        y = _x(2, 96, 96, seed=1)
        np.testing.assert_allclose(be.infer(y), expected_logits(y))
        be.infer(_x(1, 96, 96))  # same bucket: no new profile switch
        switches = [c[1] for c in trt.calls if c[0] == "set_optimization_profile_async"]
        assert switches == [1, 2]
        runs = [c for c in trt.calls if c[0] == "execute_async_v3"]
        assert [r[2] for r in runs] == [1, 2, 2] and all(r[1] == 4242 for r in runs)


def test_shape_outside_the_buckets_is_refused_in_one_line(tmp_path, fake):
    fake()
    with TensorRTBackend(write_plan(tmp_path / "p.plan", BUCKETS)) as be:
        with pytest.raises(KidedgeError, match=r"no profile of the plan admits input 80x80 \(its input buckets: "
                                               r"64x64, 64x96, 96x96\); use --backend onnxruntime") as exc:
            be.infer(_x(1, 80, 80))
        assert "\n" not in str(exc.value)


def test_a_plan_whose_profiles_take_every_size_up_to_their_bucket(tmp_path, fake):
    """kidedge's GPU 2D plans: no fixed input buckets (the runtime pads to a multiple of 32
    only); each input runs in the smallest profile that admits it; larger is refused."""
    trt, _ = fake()
    with TensorRTBackend(write_plan(tmp_path / "p.plan", BUCKETS, min_side=32)) as be:
        assert be.input_buckets == []
        for shape, profile in (((32, 64), 0), ((64, 96), 1), ((96, 64), 2), ((32, 96), 1)):
            x = _x(2, *shape)
            np.testing.assert_allclose(be.infer(x), expected_logits(x))
            assert [c[1] for c in trt.calls if c[0] == "set_optimization_profile_async"][-1] == profile
            assert ("set_input_shape", "image", (2, 1, *shape)) in trt.calls
        with pytest.raises(KidedgeError, match="no profile of the plan admits input 128x96"):
            be.infer(_x(1, 128, 96))


def test_large_batches_are_split_at_the_profile_limit(tmp_path, fake):
    trt, cuda = fake()
    with TensorRTBackend(write_plan(tmp_path / "p.plan", BUCKETS, batch=(1, 4))) as be:
        x = _x(9, 64, 64)
        np.testing.assert_allclose(be.infer(x), expected_logits(x))
        shapes = [c[3][0] for c in trt.calls if c[0] == "execute_async_v3"]
        assert shapes == [4, 4, 1]
        allocs = [c for c in cuda.log if c[0] == "mem_alloc"]
        assert len(allocs) == 2  # input and output buffers, grown once and reused


def test_dla_plan_sets_the_core_before_deserialising_and_pads_fixed_batches(tmp_path, fake):
    trt, _ = fake(num_dla=2)
    plan = write_plan(tmp_path / "p.plan", BUCKETS, batch=(4, 4))
    with TensorRTBackend(plan, dla_core=1) as be:
        i = trt.calls.index(("runtime.DLA_core", 1))
        assert trt.calls[i + 1] == ("deserialize", 1)
        x = _x(3, 64, 64)
        out = be.infer(x)
        assert out.shape == (3, 2, 64, 64)
        np.testing.assert_allclose(out, expected_logits(x))
        assert [c[3] for c in trt.calls if c[0] == "execute_async_v3"] == [(4, 1, 64, 64)]
        assert "DLA core 1" in be.description


def test_dla_plan_on_a_device_without_that_core_is_unavailable(tmp_path, fake):
    fake(num_dla=0)
    with pytest.raises(BackendUnavailable, match="DLA plan for core 0, but this device has 0 DLA cores"):
        TensorRTBackend(write_plan(tmp_path / "p.plan", BUCKETS), dla_core=0).activate()


def test_every_call_result_is_checked(tmp_path, fake):
    plan = write_plan(tmp_path / "p.plan", BUCKETS)
    (tmp_path / "bad.plan").write_bytes(b"\x00not a plan")
    fake()
    with pytest.raises(BackendUnavailable, match="cannot deserialize"):
        TensorRTBackend(tmp_path / "bad.plan").activate()
    fake(context=None)
    with pytest.raises(BackendUnavailable, match="could not create an execution context"):
        TensorRTBackend(plan).activate()
    fake(set_input_shape=False)
    with TensorRTBackend(plan) as be, pytest.raises(RuntimeError, match="rejected input shape"):
        be.infer(_x(1, 64, 64))
    fake(execute=False)
    with TensorRTBackend(plan) as be, pytest.raises(RuntimeError, match="TensorRT execution failed"):
        be.infer(_x(1, 64, 64))
    fake(profile=True)
    with TensorRTBackend(plan) as be, pytest.raises(RuntimeError, match="cannot select profile 0"):
        be.infer(_x(1, 64, 64))


def test_out_of_memory_is_reported_as_backend_out_of_memory(tmp_path, fake):
    plan = write_plan(tmp_path / "p.plan", BUCKETS)
    fake(memory_limit=1000)  # pycuda.driver.MemoryError on the first buffer
    with TensorRTBackend(plan) as be, pytest.raises(BackendOutOfMemory, match="micro-batch 2"):
        be.infer(_x(2, 64, 64))
    fake(oom_on_execute=True)  # execute_async_v3 -> False with an out-of-memory error logged
    with TensorRTBackend(plan) as be, pytest.raises(BackendOutOfMemory, match="out of memory"):
        be.infer(_x(2, 64, 64))


def test_plan_without_the_packages_buckets_is_refused(tmp_path, fake):
    fake()
    plan = write_plan(tmp_path / "p.plan", BUCKETS[:2])
    with pytest.raises(BackendUnavailable, match="no profile for input buckets 96x96"):
        TensorRTBackend(plan, buckets=BUCKETS).activate()
    TensorRTBackend(plan, buckets=BUCKETS[:2]).activate().deactivate()


def test_old_tensorrt_is_refused_in_one_line(tmp_path, fake):
    fake(version="8.6.1")
    with pytest.raises(KidedgeError, match="TensorRT 8.6.1 is too old: kidedge uses the TensorRT 10 API") as exc:
        TensorRTBackend(write_plan(tmp_path / "p.plan", BUCKETS)).activate()
    assert "\n" not in str(exc.value)
    check_tensorrt_version("10.0.1.6")
    check_tensorrt_version("10.3.0")
    with pytest.raises(KidedgeError, match="not a version number"):
        check_tensorrt_version("ten")


def test_profile_for_prefers_the_exact_bucket():
    exact = EngineProfile(1, (1, 1, 96, 96), (4, 1, 96, 96))
    ranged = EngineProfile(0, (1, 1, 32, 32), (4, 1, 512, 512))  # an older, dynamic-size plan
    assert profile_for([ranged, exact], (1, 96, 96)) is exact
    assert profile_for([ranged, exact], (1, 64, 80)) is ranged
    assert profile_for([exact], (1, 64, 80)) is None
    assert profile_for([exact], (3, 96, 96)) is None  # wrong channels
