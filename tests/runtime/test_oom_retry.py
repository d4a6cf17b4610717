"""GPU out-of-memory, per scan: the engine reruns the scan at half the micro-batch down to
1, then the scan fails in one line; the other scans go on and the profile is still
written. The out-of-memory error comes from a stand-in backend that raises
:class:`BackendOutOfMemory` (what TensorRT, ORT-CUDA and torch-CUDA backends raise) for
micro-batches above a limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from kidedge.cli import main
from kidedge.errors import KidedgeError
from kidedge.io import load_scan
from kidedge.package import ModelPackage
from kidedge.runtime import engine
from kidedge.runtime.backends.base import Backend, BackendOutOfMemory
from kidedge.runtime.engine import Segmenter

from .synthetic import kits_affine, make_ct, write_nifti


class OutOfMemoryAbove(Backend):
    """Wraps a real backend; micro-batches larger than ``limit`` slices run out of memory
    (``limit`` 0: every one). Records the batch sizes it was asked to run."""

    name = "oom"

    def __init__(self, inner: Backend, limit: int):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def _activate(self):
        self.inner.activate()

    def _infer(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise BackendOutOfMemory(f"GPU out of memory at micro-batch {x.shape[0]} (stand-in)")
        return self.inner.infer(x)

    def _deactivate(self):
        self.inner.deactivate()


@pytest.fixture
def limited(monkeypatch):
    """Make every backend the engine creates an OutOfMemoryAbove(limit); returns them."""
    made, limit = [], {"value": 2}
    real = engine.create_backend

    def create(*args, **kwargs):
        b = OutOfMemoryAbove(real(*args, **kwargs), limit["value"])
        made.append(b)
        return b

    monkeypatch.setattr(engine, "create_backend", create)
    return made, limit


def _scan(tmp_path, name="ct.nii.gz", seed=0):
    hu, _ = make_ct(shape=(20, 48, 48), kidney_slices=(5, 15), seed=seed)
    return write_nifti(tmp_path / name, hu, kits_affine())


def test_scan_is_rerun_at_half_the_batch_until_it_fits(tmp_path, cascade_package, limited):
    made, _ = limited
    pkg = ModelPackage.load(cascade_package)
    scan = load_scan(_scan(tmp_path))
    with Segmenter(pkg, batch=8) as seg:
        got = seg.segment(scan)
    oom = [w for w in got.warnings if w.startswith("out of GPU memory")]  # (the rest: the review's)
    assert oom == ["out of GPU memory at micro-batch 8: scan rerun at 4",
                   "out of GPU memory at micro-batch 4: scan rerun at 2"]
    assert got.profile["counters"]["oom_retries"] == 2
    assert max(s for b in made for s in b.sizes[-3:]) <= 2  # the last run fitted
    assert seg.batch == 8  # the next scan starts at the full micro-batch again
    # the same labels as a run that never ran out of memory
    made.clear()
    with Segmenter(pkg, batch=2) as seg2:
        ref = seg2.segment(scan)
    assert not [w for w in ref.warnings if w.startswith("out of GPU memory")]
    np.testing.assert_array_equal(got.labels.to_dense(), ref.labels.to_dense())
    assert ref.labels.to_dense().any()


def test_out_of_memory_at_batch_1_is_a_one_line_error(tmp_path, cascade_package, limited):
    _, limit = limited
    limit["value"] = 0
    pkg = ModelPackage.load(cascade_package)
    with Segmenter(pkg, batch=4) as seg, pytest.raises(KidedgeError, match="out of GPU memory even one slice at a time") as exc:
        seg.segment(load_scan(_scan(tmp_path)))
    assert "\n" not in str(exc.value)


def test_other_scans_go_on_and_the_profile_is_written(tmp_path, cascade_package, limited, monkeypatch):
    made, limit = limited
    big = _scan(tmp_path, "a_big.nii.gz", seed=1)
    small = _scan(tmp_path, "b_small.nii.gz", seed=2)
    # every micro-batch of the first scan runs out of memory, none of the second's
    real_segment = Segmenter.segment

    def segment(self, scan, *a, **k):
        for b in made:
            b.limit = 0 if "a_big" in str(scan.source) else 99
        return real_segment(self, scan, *a, **k)

    monkeypatch.setattr(Segmenter, "segment", segment)
    out, prof = tmp_path / "out", tmp_path / "profile.json"
    r = CliRunner().invoke(main, ["infer", str(big), str(small), "-o", str(out), "--model", str(cascade_package),
                                  "--batch", "4", "--profile", str(prof)])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("kidedge: error:")]
    assert len(errors) == 1 and "a_big.nii.gz" in errors[0] and "out of GPU memory" in errors[0]
    assert (out / "b_small_seg.nii.gz").is_file() and not (out / "a_big_seg.nii.gz").exists()
    p = json.loads(prof.read_text())
    assert [f["scan"] for f in p["failed"]] == [str(big)] and len(p["scans"]) == 1
    # a single scan that fails still writes its profile, and is the command's one-line error
    prof1 = tmp_path / "one.json"
    r = CliRunner().invoke(main, ["infer", str(big), "-o", str(tmp_path / "one.nii.gz"), "--model",
                                  str(cascade_package), "--profile", str(prof1)])
    assert r.exit_code == 2 and "out of GPU memory" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1
    assert json.loads(prof1.read_text())["failed"][0]["scan"] == str(big)
