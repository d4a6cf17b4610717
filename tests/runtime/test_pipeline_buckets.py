"""The pipeline pads each crop to the smallest input bucket of an engine with fixed shapes
(TensorRT profiles), gives the same labels as without buckets, and refuses a crop larger
than every bucket in one line; engines without buckets keep the multiple-of-32 padding."""

from __future__ import annotations

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import load_scan
from kidedge.package import Stage, StageInput, StageOutput
from kidedge.preprocess import PreprocessSpec
from kidedge.runtime.backends.base import Backend
from kidedge.runtime.gating import RegionOfInterest
from kidedge.runtime.pipeline import run_stage
from kidedge.runtime.profiling import Profiler

from .synthetic import kits_affine, write_nifti

SPEC = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range", in_plane="spacing", spacing_mm=1.0,
                      pad_multiple=8)
STAGE = Stage("seg", "segment", SPEC, StageInput("image", 1), StageOutput("softmax", (0, 1)), files={})


class PixelThreshold(Backend):
    """Per-pixel logits (class 1 where the input exceeds 0.5): padding cannot change the
    labels of the content, so bucketed and plain runs must agree exactly."""

    name = "fixed-shapes"

    def __init__(self, buckets=None):
        super().__init__()
        self.input_buckets = buckets
        self.shapes = []

    def _activate(self):
        pass

    def _infer(self, x):
        self.shapes.append(x.shape[-2:])
        if self.input_buckets is not None:
            assert tuple(x.shape[-2:]) in self.input_buckets
        return np.concatenate([np.full_like(x, 0.5), x], axis=1)


@pytest.fixture
def scan(tmp_path):
    hu = np.full((6, 40, 56), -200, np.int16)
    hu[:, 10:22, 15:45] = 300
    return load_scan(write_nifti(tmp_path / "s.nii.gz", hu, kits_affine((2.0, 1.0, 1.0))))


def _labels(scan, backend, region):
    got = {}
    with backend, Profiler(gpu=False, power=False) as prof:
        run_stage(scan, backend, STAGE, lambda a, b, lab: got.__setitem__(a, lab.copy()), prof, region=region,
                  batch=4, slab_size=4)
    return np.concatenate([got[k] for k in sorted(got)])


def test_crop_runs_padded_to_its_bucket_with_unchanged_labels(scan):
    roi = RegionOfInterest(1, 5, 5, 30, 8, 50)  # a 25 x 42 crop at 1 mm
    plain = PixelThreshold()
    ref = _labels(scan, plain, roi)
    assert set(plain.shapes) == {(32, 48)}  # multiple of 8
    bucketed = PixelThreshold(buckets=[(32, 32), (32, 64), (64, 64)])
    got = _labels(scan, bucketed, roi)
    assert set(bucketed.shapes) == {(32, 64)}
    np.testing.assert_array_equal(got, ref)
    assert got.shape == (4, 25, 42) and got.any()


def test_crop_larger_than_every_bucket_is_refused_in_one_line(scan):
    with pytest.raises(KidedgeError, match=r"needs a 40x56 input, larger than every input bucket .* \(32x32, 32x64\)") as exc:
        _labels(scan, PixelThreshold(buckets=[(32, 32), (32, 64)]), None)
    assert "\n" not in str(exc.value)
