"""The anatomical phantoms on the real label maps of ../shared/data (skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

from kidedge.phantom import anatomy as A
from kidedge.phantom import tissues as T
from kidedge.phantom.anatomical import make_anatomical_phantom
from kidedge.phantom.training_set import kidney_files, plan_cases

pytestmark = pytest.mark.shared_data


def test_real_bodies_are_read_in_canonical_orientation(shared_data):
    btcv = A.load_body(shared_data / "btcv-labels" / "label0001.nii.gz")
    # The BTCV copies' affines say 'P' for an axis that runs anteriorly: fixed and said.
    assert btcv.fixes and "rows flipped" in btcv.fixes[0]
    assert btcv.has == {A.LIVER, A.SPLEEN, A.KIDNEY_R, A.KIDNEY_L, A.GALLBLADDER, A.STOMACH,
                        A.AORTA, A.PANCREAS}
    ts = A.load_body(shared_data / "anatomy-labels" / "totalsegmentator_s0011.nii.gz")
    assert ts.fixes == () and {A.VERTEBRA, A.RIB, A.PELVIC_BONE, A.ILIOPSOAS, A.LUNG, A.COLON} <= ts.has
    for body in (btcv, ts):
        liver, spleen, aorta = (body.centroid_mm(c) for c in (A.LIVER, A.SPLEEN, A.AORTA))
        kid = body.centroid_mm(A.KIDNEY_R)
        assert liver[2] < aorta[2] < spleen[2]      # right ... left
        assert liver[1] < aorta[1] < kid[1] + 20     # liver in front, kidney behind
        assert liver[0] < kid[0]                     # liver above the kidney


def test_real_case_end_to_end(shared_data):
    from kidedge.phantom.transplant import load_kidney_source

    body = A.load_body(shared_data / "btcv-labels" / "label0002.nii.gz")
    kits = load_kidney_source(shared_data / "kits23-labels" / "case_00257" / "segmentation.nii.gz", "kits23/case_00257")
    ph = make_anatomical_phantom(3, body, kits, phase="corticomedullary")
    kidney = np.isin(ph.tissues, [T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.KIDNEY_DEEP, T.TUMOUR,
                                  T.TUMOUR_NECROSIS, T.CYST])
    assert np.array_equal(kidney, ph.labels > 0)
    assert set(np.unique(ph.labels)) == {0, 1, 2, 3}  # this KiTS23 case has a tumour and a cyst
    voxel_ml = float(np.prod(ph.spacing)) / 1000
    src_ml = sum(p.counts["cyst"] for p in kits.pieces) * float(np.prod(kits.pieces[0].spacing)) / 1000
    assert 0.6 * src_ml < (ph.labels == 3).sum() * voxel_ml < 1.5 * src_ml  # same size, resampled
    assert ph.hu.shape[1:] == (512, 512) and 0.6 <= ph.spacing[1] <= 1.0
    lung_rows = np.flatnonzero((ph.tissues == T.LUNG).any(axis=(1, 2)))
    kid_rows = np.flatnonzero(ph.labels.any(axis=(1, 2)))
    assert lung_rows[0] == 0 and (ph.hu.shape[0] - kid_rows[-1]) * ph.spacing[0] > 60


def test_the_default_split_on_the_real_maps_is_grouped(shared_data):
    bodies = A.find_body_files([shared_data / "btcv-labels", shared_data / "anatomy-labels"])
    kidneys = kidney_files([shared_data / "kits19-labels", shared_data / "kits23-labels"])
    assert len(bodies) == 32 and len(kidneys) == 350
    jobs, split = plan_cases(bodies, kidneys, 400, seed=0)
    parts = {p: split["sources"][p] for p in ("train", "val", "test")}
    for kind in ("bodies", "kidneys"):
        sets = [set(parts[p][kind]) for p in parts]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert "totalsegmentator/totalsegmentator_s0011" in parts["train"]["bodies"]
    assert {len(split[p]) for p in ("val", "test")} == {40}
