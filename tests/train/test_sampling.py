"""Epoch draws of a segment stage: inside the kidney box, and the "outside" share that
shows stage 2 the organs a misfiring stage 1 boxes on real scans."""

from __future__ import annotations

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.preprocess import PreprocessSpec
from kidedge.train.data import CachedCase
from kidedge.train.datasets import SliceDataset, pick_centre
from kidedge.train.recipes import load_recipe
from kidedge.train.roi import bounding_box, label_box
from kidedge.train.sampling import allowed_slices, draw_epoch

ROI = {"source_stage": "localise", "labels": [1, 2, 3], "margin_mm": 10.0, "jitter_mm": 0.0}


def _case(n=40, kidney=(15, 20)) -> CachedCase:
    """A body (soft tissue in a disc, air around it) with a kidney on slices 15-19 only."""
    hu = np.full((n, 64, 64), -1000, np.int16)
    rr, cc = np.mgrid[:64, :64]
    hu[:, (rr - 32) ** 2 + (cc - 32) ** 2 < 28 ** 2] = 40
    labels = np.zeros(hu.shape, np.uint8)
    labels[kidney[0]:kidney[1], 30:40, 10:20] = 1
    counts = np.stack([np.bincount(s.ravel(), minlength=4) for s in labels]).astype(np.int64)
    return CachedCase("case_00000", hu, labels, (5.0, 3.0, 3.0), counts)


def test_without_outside_draws_stay_in_the_kidney_slab():
    case = _case()
    z0, z1 = allowed_slices(case, ROI)
    draws = draw_epoch([case], 400, np.random.default_rng(0), 0.5, 0.0, ROI)
    assert all(z0 <= d.z < z1 for d in draws)
    assert {d.category for d in draws} <= {"kidney", "any"}


def test_outside_draws_reach_every_slice_in_their_share():
    case = _case()
    z0, z1 = allowed_slices(case, ROI)
    draws = draw_epoch([case], 2000, np.random.default_rng(0), 0.4, 0.0, ROI, outside_fraction=0.3)
    outside = [d for d in draws if d.category == "outside"]
    assert 0.25 < len(outside) / len(draws) < 0.35
    zs = {d.z for d in outside}
    assert any(z < z0 or z >= z1 for z in zs)  # far from the kidneys too
    assert min(zs) == 0 and max(zs) == case.n_slices - 1


def test_outside_fraction_zero_keeps_the_old_random_stream():
    case = _case()
    a = draw_epoch([case], 50, np.random.default_rng(3), 0.5, 0.1, ROI)
    b = draw_epoch([case], 50, np.random.default_rng(3), 0.5, 0.1, ROI, outside_fraction=0.0)
    assert a == b


def test_outside_sample_is_unmasked_and_centred_in_the_body():
    case = _case()
    rng = np.random.default_rng(1)
    for _ in range(50):
        r, c = pick_centre(case, np.array([2]), "outside", None, rng)
        assert case.hu[2, r, c] > -300
    spec = PreprocessSpec.from_dict({"hu_window": [-200.0, 400.0], "normalisation": "range",
                                     "in_plane": "spacing", "spacing_mm": 3.0, "context": 0,
                                     "pad_multiple": 16})
    box = label_box(case.labels, [1, 2, 3], case.spacing, 10.0)
    core = bounding_box(case.labels > 0)
    draws = [d for d in draw_epoch([case], 200, np.random.default_rng(2), 0.0, 0.0, ROI, 1.0)]
    ds = SliceDataset([case], draws, spec, (32, 32), ROI, [box], [core])
    x, y = ds[0]
    assert x.shape == (1, 32, 32)
    # no box mask: the body's soft tissue is visible (a masked crop would be all window bottom)
    assert float(x.max()) > 0.3


def test_recipe_checks_outside_fraction():
    r = load_recipe("kidedge_default", ["segment.sampling.outside_fraction=0.05"])
    assert r["stages"][1]["sampling"]["outside_fraction"] == 0.05
    with pytest.raises(KidedgeError, match="outside_fraction is for a segment stage"):
        load_recipe("kidedge_default", ["localise.sampling.outside_fraction=0.2"])
    with pytest.raises(KidedgeError, match="must be in"):
        load_recipe("kidedge_default", ["segment.sampling.outside_fraction=0.9"])


def test_val_max_cases_limits_an_epochs_validation(monkeypatch, tmp_path):
    import torch

    from kidedge.train import stage_trainer as st

    seen = []

    def fake_predict(model, case, *args, **kwargs):
        seen.append(case.case_id)
        return np.zeros(case.labels.shape, np.uint8), 0.0, 0

    monkeypatch.setattr(st, "predict_case_2d", fake_predict)
    cases = []
    for i in range(5):
        c = _case()
        cases.append(CachedCase(f"case_{i:05d}", c.hu, c.labels, c.spacing, c.slice_counts))
    recipe = load_recipe("kidedge_default", ["localise.train.val_max_cases=2"])
    trainer = st.StageTrainer(tmp_path, recipe, 0, cases, cases, torch.device("cpu"), None, None)
    trainer.validate(torch.nn.Identity(), None, None)
    assert seen == ["case_00000", "case_00001"]
    seen.clear()
    recipe = load_recipe("kidedge_default", [])
    st.StageTrainer(tmp_path, recipe, 0, cases, cases, torch.device("cpu"), None, None).validate(
        torch.nn.Identity(), None, None)
    assert len(seen) == 5


@pytest.mark.parametrize("context", ["floor", "scan"])
def test_a_kidney_crop_blanks_outside_its_box_only_with_the_floor_context(context):
    """roi.context = "floor": the crop is the window's bottom outside the (jittered) box;
    "scan": the scan stays around the box (the runtime then shows it too)."""
    case = _case()
    spec = PreprocessSpec.from_dict({"hu_window": [-200.0, 400.0], "normalisation": "range",
                                     "in_plane": "spacing", "spacing_mm": 3.0, "context": 0,
                                     "pad_multiple": 16})
    roi = {**ROI, "margin_mm": 0.0, "context": context}
    box = label_box(case.labels, [1, 2, 3], case.spacing, 0.0)  # the kidney itself: 10 x 10 pixels
    core = bounding_box(case.labels > 0)
    draws = [d for d in draw_epoch([case], 50, np.random.default_rng(4), 1.0, 0.0, roi) if d.category == "kidney"]
    ds = SliceDataset([case], draws, spec, (32, 32), roi, [box], [core])
    x, _ = ds[0]
    bottom = float(x.min())
    lit = float((x > bottom + 0.1).float().mean())  # soft tissue of the body disc
    # 32 x 32 output pixels of 3 mm around a 10 x 10 kidney: most of the crop lies outside it
    assert (lit > 0.5) if context == "scan" else (lit < 0.15)


def test_recipe_checks_the_roi_context():
    r = load_recipe("kidedge_default", ["segment.roi.context=scan"])
    assert r["stages"][1]["roi"]["context"] == "scan"
    assert load_recipe("kidedge_default")["stages"][1]["roi"]["context"] in ("floor", "scan")
    with pytest.raises(KidedgeError, match="roi.context must be one of"):
        load_recipe("kidedge_default", ["segment.roi.context=zeros"])
    with pytest.raises(KidedgeError, match="for 2D cascades"):
        load_recipe("cascade3d_kits21", ["masses.roi.context=scan"])
