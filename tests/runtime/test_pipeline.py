import dataclasses
import threading
import time

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import load_scan
from kidedge.package import Stage, StageInput, StageOutput
from kidedge.preprocess import PreprocessSpec
from kidedge.runtime.backends.base import Backend
from kidedge.runtime.gating import RegionOfInterest
from kidedge.runtime.pipeline import iter_slabs, run_stage
from kidedge.runtime.profiling import Profiler

from .synthetic import kits_affine, write_nifti

STAGE = Stage("s", "segment", PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range"),
              StageInput("image", 1), StageOutput("softmax", (0, 1)), files={})


class Threshold(Backend):
    """Two-class logits: class 1 where the input exceeds 0.5; optionally fails."""

    name = "threshold"

    def __init__(self, fail_at=None):
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at
        self.shapes = []
        self.inputs = []

    def _activate(self):
        pass

    def _infer(self, x):
        self.calls += 1
        self.shapes.append(x.shape)
        self.inputs.append(x.copy())
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("engine failure")
        mid = x[:, x.shape[1] // 2:x.shape[1] // 2 + 1]  # the slice itself (2.5D: the middle channel)
        return np.concatenate([np.full_like(mid, 0.5), mid], axis=1)


@pytest.fixture
def scan(tmp_path):
    hu = np.zeros((21, 16, 24), np.int16)
    hu[:, 4:8, 10:20] = 300
    hu[::2] -= 50
    return load_scan(write_nifti(tmp_path / "s.nii.gz", hu, kits_affine())), hu


def test_run_stage_streams_every_slice_once_in_order(scan):
    s, hu = scan
    got, seen = np.zeros(s.shape, np.uint8), []
    with Threshold() as b, Profiler(gpu=False, power=False) as prof:
        n = run_stage(s, b, STAGE, lambda a, z, lab: (seen.append((a, z)), got.__setitem__(slice(a, z), lab)),
                      prof, batch=3, slab_size=8)
    assert n == 21
    assert seen[0][0] == 0 and seen[-1][1] == 21
    assert all(p[1] == q[0] for p, q in zip(seen, seen[1:], strict=False))
    assert max(sh[0] for sh in b.shapes) == 3
    np.testing.assert_array_equal(got, ((hu + 100) / 500 > 0.5).astype(np.uint8))
    assert prof.result(21)["latency_ms"]["n"] == 21


class SideBySide(Threshold):
    """Threshold with calls side by side: each sleeps so that later calls often finish
    first; records how many ran at once."""

    def __init__(self, calls, fail_at=None):
        super().__init__(fail_at)
        self.parallel_calls = calls
        self.lock = threading.Lock()
        self.running = self.most = 0

    def _infer(self, x):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            out = super()._infer(x)
            delay = 0.02 if self.calls % 2 else 0.0  # odd calls finish after the next one
        time.sleep(delay)
        with self.lock:
            self.running -= 1
        return out


def test_parallel_calls_give_the_same_labels_in_slice_order(scan):
    s, hu = scan
    got, seen = np.zeros(s.shape, np.uint8), []
    with SideBySide(3) as b, Profiler(gpu=False, power=False) as prof:
        n = run_stage(s, b, STAGE, lambda a, z, lab: (seen.append((a, z)), got.__setitem__(slice(a, z), lab)),
                      prof, batch=2, slab_size=4)
    assert n == 21 and b.calls == 11
    assert b.most > 1  # calls did run side by side ...
    assert seen[0][0] == 0 and seen[-1][1] == 21  # ... and the sink still got them in order
    assert all(p[1] == q[0] for p, q in zip(seen, seen[1:], strict=False))
    np.testing.assert_array_equal(got, ((hu + 100) / 500 > 0.5).astype(np.uint8))
    assert prof.result(21)["latency_ms"]["n"] == 21


def test_parallel_call_error_propagates_and_threads_end(scan):
    s, _ = scan
    before = threading.active_count()
    with SideBySide(2, fail_at=3) as b, Profiler(gpu=False, power=False) as prof:
        with pytest.raises(RuntimeError, match="engine failure"):
            run_stage(s, b, STAGE, lambda *a: None, prof, batch=2, slab_size=2)
    assert threading.active_count() <= before


def test_run_stage_on_a_region(scan):
    s, hu = scan
    roi = RegionOfInterest(5, 12, 2, 10, 8, 22)
    got = np.zeros(s.shape, np.uint8)

    def sink(a, z, lab):
        got[a:z, 2:10, 8:22] = lab

    with Threshold() as b, Profiler(gpu=False, power=False) as prof:
        assert run_stage(s, b, STAGE, sink, prof, region=roi, batch=4, slab_size=4) == 7
    assert all(sh[2:] == (8, 14) for sh in b.shapes)
    expect = np.zeros_like(got)
    expect[5:12, 2:10, 8:22] = ((hu[5:12, 2:10, 8:22] + 100) / 500 > 0.5)
    np.testing.assert_array_equal(got, expect)


def test_engine_error_propagates_and_threads_end(scan):
    s, _ = scan
    before = threading.active_count()
    with Threshold(fail_at=2) as b, Profiler(gpu=False, power=False) as prof:
        with pytest.raises(RuntimeError, match="engine failure"):
            run_stage(s, b, STAGE, lambda *a: None, prof, batch=2, slab_size=2)
    assert threading.active_count() <= before


def test_sink_error_propagates(scan):
    s, _ = scan

    def sink(a, z, lab):
        raise KidedgeError("disk full")

    with Threshold() as b, Profiler(gpu=False, power=False) as prof:
        with pytest.raises(KidedgeError, match="disk full"):
            run_stage(s, b, STAGE, sink, prof, batch=2, slab_size=2)


def test_fixed_size_model_that_does_not_fit_is_refused(scan):
    s, _ = scan
    stage = dataclasses.replace(STAGE, input=StageInput("image", 1, height=32, width=32))
    with Threshold() as b, Profiler(gpu=False, power=False) as prof:
        with pytest.raises(KidedgeError, match="takes 32x32"):
            run_stage(s, b, stage, lambda *a: None, prof)


def test_iter_slabs_range_and_context(scan):
    s, hu = scan
    slabs = list(iter_slabs(s, 4, 1, 3, 10))
    assert [(a, b) for a, b, _ in slabs] == [(3, 7), (7, 10)]
    np.testing.assert_array_equal(slabs[0][2], hu[2:8])
    np.testing.assert_array_equal(slabs[1][2], hu[6:11])
    assert list(iter_slabs(s, 4, 0, 5, 5)) == []


@pytest.mark.parametrize("context", [0, 1])
def test_run_stage_on_every_kth_slice(scan, context):
    s, hu = scan
    stage = dataclasses.replace(STAGE, preprocess=STAGE.preprocess.replace(context=context),
                                input=StageInput("image", 2 * context + 1))
    seen = []

    def sink(a, z, lab):
        ks = list(range(a, z, 3))
        assert len(ks) == lab.shape[0]
        seen.extend(ks)
        for k, plane in zip(ks, lab, strict=True):
            np.testing.assert_array_equal(plane, ((hu[k] + 100) / 500 > 0.5).astype(np.uint8))

    with Threshold() as b, Profiler(gpu=False, power=False) as prof:
        assert run_stage(s, b, stage, sink, prof, region=RegionOfInterest(2, 21, 0, 16, 0, 24),
                         batch=2, slab_size=4, slice_step=3) == 7
    assert seen == list(range(2, 21, 3))
    assert all(sh[1] == 2 * context + 1 for sh in b.shapes)
    if context:  # the neighbour channels are the slices above and below (clipped at the end)
        x = np.concatenate(b.inputs)
        for i, k in enumerate(range(2, 21, 3)):
            for j, kk in enumerate((k - 1, k, min(k + 1, 20))):
                np.testing.assert_allclose(x[i, j], (hu[kk] + 100) / 500, atol=1e-6)
