"""Calibration data: slices drawn through the stage's preprocessing, kidney/tumour oversampled."""

from __future__ import annotations

import numpy as np

from kidedge.export.calibration import SliceCalibrationReader, calibration_inputs, pick_slices
from kidedge.export.held_out import phantom_volume
from kidedge.export.stage_inputs import BACKGROUND, KIDNEY, MASS, slice_categories, slice_inputs

from .conftest import SPACING, SPEC, VOLUME_SHAPE

STAGE = {"name": "seg", "preprocess": SPEC.to_dict()}


def test_pick_slices_oversamples_masses_and_kidney():
    cats = np.array([BACKGROUND] * 80 + [KIDNEY] * 15 + [MASS] * 5)
    rng = np.random.default_rng(0)
    picks = np.concatenate([cats[pick_slices(cats, 10, rng)] for _ in range(300)])
    assert (picks == MASS).mean() > 2 * 0.05
    assert (picks == KIDNEY).mean() > 1.3 * 0.15  # expected 30/130 = 0.23
    idx = pick_slices(cats, 10, rng)
    assert len(np.unique(idx)) == 10 and (np.diff(idx) > 0).all()


def test_calibration_inputs_use_the_stage_preprocessing():
    vols = [phantom_volume(s, VOLUME_SHAPE, SPACING) for s in (5, 6)]
    x, summary = calibration_inputs(vols, STAGE, slices_per_case=4, seed=0)
    assert x.shape == (8, 1, 96, 96) and x.dtype == np.float32
    assert summary["cases"] == 2 and sum(summary["slices_by_category"].values()) == 8
    # Range normalisation of the spec keeps values in [0, 1].
    assert 0.0 <= x.min() and x.max() <= 1.0
    # Every calibration slice equals a slice of the volume preprocessed directly.
    all0 = slice_inputs(vols[0], STAGE, range(VOLUME_SHAPE[0]))
    for row in x[:4]:
        assert np.min(np.abs(all0 - row).reshape(len(all0), -1).max(1)) < 1e-6


def test_slice_categories_follow_labels():
    v = phantom_volume(5, VOLUME_SHAPE, SPACING)
    cats = slice_categories(v)
    has_mass = ((v.labels == 2) | (v.labels == 3)).any(axis=(1, 2))
    assert ((cats == MASS) == has_mass).all()


def test_reader_yields_each_input_once_and_rewinds():
    x = np.arange(3 * 4, dtype=np.float32).reshape(3, 1, 2, 2)
    r = SliceCalibrationReader(x)
    got = []
    while (item := r.get_next()) is not None:
        got.append(item["image"])
    assert len(got) == 3 and all(g.shape == (1, 1, 2, 2) for g in got)
    assert r.get_next() is None
    r.rewind()
    np.testing.assert_array_equal(r.get_next()["image"], x[:1])
