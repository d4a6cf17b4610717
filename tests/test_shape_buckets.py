"""Input shape buckets: the ladder, the bucket lists, the choice of a bucket, and a property
test that every crop the cascade gate can produce, on any CT geometry up to the covered
field of view, maps to a bucket."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kidedge.preprocess import PreprocessSpec, output_size, padded_size, preprocess_slices
from kidedge.runtime.gating import CascadeGate
from kidedge.shape_buckets import (
    MAX_FOV_MM,
    bucket_for,
    check_buckets,
    largest_content,
    pair_buckets,
    size_ladder,
    stage_buckets,
)

# The built-in package's two stages (kidedge/models/default/manifest.json).
SEGMENTER = PreprocessSpec(hu_window=(-200.0, 400.0), in_plane="spacing", spacing_mm=1.25, pad_multiple=32)
LOCALISER = PreprocessSpec(hu_window=(-200.0, 400.0), in_plane="size", size=(96, 96), pad_multiple=32)
MARGIN_MM = 15.0
LOCALISER_GRID = (96, 96)


def test_ladder_grows_geometrically_in_multiples():
    ladder = size_ladder(64, 640, 32, 1.5)
    assert ladder == [64, 96, 160, 256, 384, 640]
    assert all(v % 32 == 0 for v in ladder) and ladder == sorted(set(ladder))
    # no sliver below the top: a size within half a growth step of the top is dropped
    assert size_ladder(64, 820, 32, 1.5)[-2:] == [576, 832]
    assert size_ladder(64, 600, 32, 1.5)[-2:] == [384, 608]
    assert size_ladder(10, 20, 32) == [32]
    with pytest.raises(ValueError):
        size_ladder(64, 32, 32)


def test_pairs_keep_the_aspect_limit_and_every_square():
    pairs = pair_buckets([64, 96, 160, 256], max_aspect=2.0)
    assert all(max(b) <= 2 * min(b) for b in pairs)
    assert all((v, v) in pairs for v in (64, 96, 160, 256))
    assert (64, 160) not in pairs and (96, 160) in pairs and (160, 96) in pairs
    areas = [h * w for h, w in pairs]
    assert areas == sorted(areas)


def test_stage_buckets_by_preprocessing_mode():
    assert stage_buckets(LOCALISER) == [(96, 96)]
    seg = stage_buckets(SEGMENTER)
    assert len(seg) == 16 and max(max(b) for b in seg) == 640  # 800 mm at 1.25 mm
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in seg)
    native = stage_buckets(PreprocessSpec(in_plane="native", pad_multiple=16), max_native_pixels=1024)
    assert max(max(b) for b in native) == 1024 and all(h % 16 == 0 for h, _ in native)
    assert largest_content(SEGMENTER, max_fov_mm=500.0) == 400


def test_bucket_for_takes_the_smallest_that_holds_the_crop():
    buckets = [(64, 64), (64, 96), (96, 64), (96, 96), (96, 160)]
    assert bucket_for(buckets, (60, 70)) == (64, 96)
    assert bucket_for(buckets, (70, 60)) == (96, 64)
    assert bucket_for(buckets, (1, 1)) == (64, 64)
    assert bucket_for(buckets, (96, 96)) == (96, 96)
    assert bucket_for(buckets, (97, 10)) is None
    # equal areas: the lower bucket wins, whatever the list order
    assert bucket_for([(96, 64), (64, 96)], (10, 10)) == (64, 96)


def test_check_buckets_refuses_malformed_lists():
    assert check_buckets([[64, 96], [96, 96]], SEGMENTER) == [(64, 96), (96, 96)]
    for bad, why in (([], "non-empty"), ([[64]], "not \\[height, width\\]"), ([[64, 0]], "positive"),
                     ([[64, 96.0]], "positive integers"), ([[64, 96], [64, 96]], "repeat"),
                     ([[64, 100]], "multiple of pad_multiple 32"), ("64x64", "non-empty list")):
        with pytest.raises(ValueError, match=why):
            check_buckets(bad, SEGMENTER)


def test_padding_to_a_bucket_keeps_the_content():
    hu = np.random.default_rng(0).normal(0, 200, (2, 90, 140)).astype(np.float32)
    plain = preprocess_slices(hu, SEGMENTER, (1.25, 1.25))
    bucketed = preprocess_slices(hu, SEGMENTER, (1.25, 1.25), pad_to=(96, 160))
    assert plain.shape[-2:] == (96, 160) or plain.shape[-2:] == padded_size(SEGMENTER, (90, 140))
    assert bucketed.shape == (2, 1, 96, 160)
    np.testing.assert_array_equal(bucketed[..., :90, :140], plain[..., :90, :140])
    assert np.all(bucketed[..., 90:, :] == 0.0)  # window low end, normalised
    with pytest.raises(ValueError, match="smaller than the resampled slices"):
        preprocess_slices(hu, SEGMENTER, (1.25, 1.25), pad_to=(64, 160))


@st.composite
def scan_and_gate_crop(draw):
    """A CT geometry and the region the cascade gate gives for random stage-1 detections."""
    pixel = draw(st.floats(0.3, 2.0))                        # in-plane mm (0.4-1.0 is typical)
    slice_mm = draw(st.floats(0.4, 5.0))
    n = draw(st.integers(30, 1100))
    max_side = max(16, min(1024, math.floor(MAX_FOV_MM / pixel)))  # the covered field of view
    rows = draw(st.sampled_from([512, max_side]) | st.integers(16, max_side))
    cols = draw(st.sampled_from([512, max_side]) | st.integers(16, max_side))
    rows, cols = min(rows, max_side), min(cols, max_side)
    gh, gw = LOCALISER_GRID
    gate = CascadeGate((n, rows, cols), (slice_mm, pixel, pixel), [1, 2, 3], MARGIN_MM)
    boxes = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, gh - 1), st.integers(0, gh - 1),
                                    st.integers(0, gw - 1), st.integers(0, gw - 1)), min_size=0, max_size=4))
    for k, r0, r1, c0, c1 in boxes:
        lab = np.zeros((1, gh, gw), np.uint8)
        lab[0, min(r0, r1):max(r0, r1) + 1, min(c0, c1):max(c0, c1) + 1] = 1
        gate.add(k, lab)
    roi = gate.region()
    # no detection: the segmenter does not run, but --no-gate runs it on whole slices
    crop = (rows, cols) if roi is None else (roi.row_stop - roi.row_start, roi.col_stop - roi.col_start)
    return (rows, cols), (pixel, pixel), crop


SEG_BUCKETS = stage_buckets(SEGMENTER)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scan_and_gate_crop())
def test_every_gate_crop_maps_to_a_bucket(case):
    (rows, cols), pixel_spacing, crop = case
    for region in (crop, (rows, cols)):  # the gated crop, and the whole slice (--no-gate)
        content = output_size(SEGMENTER, region, pixel_spacing)
        b = bucket_for(SEG_BUCKETS, content)
        assert b is not None, (region, pixel_spacing, content)
        assert b[0] >= content[0] and b[1] >= content[1] and b in SEG_BUCKETS
    # the localiser sees every whole slice at 96 x 96: its single bucket
    assert bucket_for(stage_buckets(LOCALISER), output_size(LOCALISER, (rows, cols), pixel_spacing)) == (96, 96)


def test_a_slice_wider_than_the_covered_field_of_view_has_no_bucket():
    content = output_size(SEGMENTER, (1024, 1024), (1.0, 1.0))  # 1024 mm
    assert bucket_for(SEG_BUCKETS, content) is None
