"""Body label maps: organ mapping, orientation (affine and anatomy), bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.phantom import anatomy as A
from tests.phantom.conftest import BODY_SPACING, save_canonical, tiny_body, write_labels_json


def _truth():
    lut = A.organ_lut(None, "btcv", 8)
    return lut[tiny_body()]


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("R", "A", "S"), ("I", "P", "L"), ("S", "R", "A")])
def test_any_orientation_reads_canonical(tmp_path, axcodes):
    path = save_canonical(tiny_body(), BODY_SPACING, tmp_path / "label0001.nii.gz", axcodes)
    body = A.load_body(path)
    assert body.name == "btcv/label0001"
    assert body.fixes == ()
    assert body.spacing == BODY_SPACING
    assert np.array_equal(body.organs, _truth())
    assert body.has == {A.LIVER, A.SPLEEN, A.KIDNEY_R, A.KIDNEY_L, A.GALLBLADDER, A.STOMACH,
                        A.AORTA, A.PANCREAS}


def test_an_affine_that_contradicts_the_anatomy_is_fixed_and_said(tmp_path):
    # Stored with rows reversed but an affine that still says 'P' (as the BTCV copies do).
    wrong = tiny_body()[:, ::-1, :]
    body = A.load_body(save_canonical(wrong, BODY_SPACING, tmp_path / "label0002.nii.gz"))
    assert len(body.fixes) == 1 and "rows flipped" in body.fixes[0]
    assert np.array_equal(body.organs, _truth())
    both = tiny_body()[::-1, :, ::-1]
    body = A.load_body(save_canonical(both, BODY_SPACING, tmp_path / "label0003.nii.gz"))
    assert {f.split(":")[0] for f in body.fixes} == {"columns flipped", "slices flipped"}
    assert np.array_equal(body.organs, _truth())


def test_totalsegmentator_names_and_amos_values(tmp_path):
    lab = tiny_body()
    names = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver",
             6: "stomach", 7: "aorta", 8: "pancreas", 9: "vertebrae_L1", 10: "rib_left_11",
             11: "iliopsoas_left", 12: "small_bowel", 13: "lung_lower_lobe_right"}
    lab[30:34, 40:44, 30:34] = 9
    lab[2:4, 10:12, 55:57] = 10
    lab[30:34, 40:44, 40:44] = 11
    lab[26:30, 10:20, 25:35] = 12
    lab[0:2, 20:40, 10:20] = 13
    path = save_canonical(lab, BODY_SPACING, tmp_path / "s0001.nii.gz", ("R", "A", "S"))
    write_labels_json(tmp_path / "s0001.labels.json", names)
    body = A.load_body(path)
    assert body.name == "totalsegmentator/s0001"
    assert {A.VERTEBRA, A.RIB, A.ILIOPSOAS, A.SMALL_BOWEL, A.LUNG} <= body.has
    assert body.organs[31, 41, 31] == A.VERTEBRA
    amos = tiny_body()
    amos[amos == 5] = 6  # AMOS: 6 liver, 7 stomach, 8 aorta
    amos[(tiny_body() == 6)] = 7
    amos[(tiny_body() == 7)] = 8
    amos[(tiny_body() == 8)] = 10
    amos[30:33, 30:33, 30:33] = 14
    body = A.load_body(save_canonical(amos, BODY_SPACING, tmp_path / "amos_0001.nii.gz"))
    assert body.name == "amos/amos_0001" and A.BLADDER in body.has and body.fixes == ()


def test_bad_bodies_are_one_line_errors(tmp_path):
    no_liver = tiny_body()
    no_liver[no_liver == 5] = 0
    with pytest.raises(KidedgeError, match="lacks liver") as err:
        A.load_body(save_canonical(no_liver, BODY_SPACING, tmp_path / "label0009.nii.gz"))
    assert "\n" not in str(err.value)
    extra = tiny_body()
    extra[0, 0, 0] = 12
    with pytest.raises(KidedgeError, match="not in the BTCV organ set"):
        A.load_body(save_canonical(extra, BODY_SPACING, tmp_path / "label0010.nii.gz"))
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(KidedgeError, match="no multi-organ label maps"):
        A.find_body_files([empty])
