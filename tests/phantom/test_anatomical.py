"""Anatomical phantoms on tiny real-like label maps: labels equal the kidney voxels of the
image, negatives are background, phases move kidney HU, padding, determinism, field."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from kidedge.phantom import tissues as T
from kidedge.phantom.anatomical import make_anatomical_phantom
from kidedge.phantom.anatomy import load_body
from kidedge.phantom.appearance import sample_appearance
from kidedge.phantom.transplant import KidneySource, pieces_of
from tests.phantom.conftest import BODY_SPACING, save_canonical, tiny_body, tiny_kits

ROWS = 96
KIDNEY_CODES = [T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.KIDNEY_DEEP, T.TUMOUR, T.TUMOUR_NECROSIS, T.CYST]


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    path = tmp_path_factory.mktemp("body") / "label0001.nii.gz"
    return load_body(save_canonical(tiny_body(), BODY_SPACING, path, ("L", "P", "S")))


@pytest.fixture(scope="module")
def kits():
    return KidneySource("kits/case_00001", None, pieces_of(tiny_kits(), (3.0, 3.0, 3.0)))


def _physiological(phase, start=0):
    """First seed >= start whose drawn appearance (the first thing drawn) is physiological."""
    return next(s for s in range(start, start + 200)
                if sample_appearance(np.random.default_rng(s), phase).mode == "physiological")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_are_exactly_the_kidney_voxels_of_the_image(body, kits, seed):
    ph = make_anatomical_phantom(seed, body, kits, rows=ROWS)
    assert ph.hu.dtype == np.int16 and ph.labels.dtype == np.uint8
    assert ph.hu.shape == ph.labels.shape == ph.tissues.shape and ph.hu.shape[1:] == (ROWS, ROWS)
    assert np.array_equal(np.isin(ph.tissues, KIDNEY_CODES), ph.labels > 0)
    assert np.array_equal(np.isin(ph.tissues, [T.TUMOUR, T.TUMOUR_NECROSIS]), ph.labels == 2)
    assert np.array_equal(ph.tissues == T.CYST, ph.labels == 3)
    assert (ph.labels == 2).any()  # the KiTS tumour came along
    assert nib.aff2axcodes(ph.affine) == ("I", "P", "L")
    assert ph.spacing[0] >= 2.5 and ph.record["kidneys"] == "kits/case_00001"


def test_own_kidneys_are_normal_and_both_sides(body):
    ph = make_anatomical_phantom(3, body, None, rows=ROWS)
    assert set(np.unique(ph.labels)) == {0, 1}
    cols = np.flatnonzero(ph.labels.any(axis=(0, 1)))
    assert cols.min() < ROWS / 2 < cols.max()
    assert ph.record["kidney_mode"] == "own"


def test_negatives_are_background_and_present(body, kits):
    seen = set()
    for seed in range(4):
        ph = make_anatomical_phantom(seed, body, kits, rows=ROWS)
        for code in (T.LESION_HYPO, T.LESION_HYPER, T.STONE, T.BOWEL_CONTRAST, T.BONE_CORTEX,
                     T.URINE, T.LIVER, T.SPLEEN, T.MUSCLE, T.GALLBLADDER, T.ARTERY, T.BOWEL_WALL):
            m = ph.tissues == code
            assert not (ph.labels[m] > 0).any(), T.TISSUE_NAMES[code]
            if m.any():
                seen.add(code)
    assert {T.BONE_CORTEX, T.LIVER, T.SPLEEN, T.MUSCLE, T.BOWEL_WALL, T.ARTERY} <= seen
    assert seen & {T.LESION_HYPO, T.LESION_HYPER}


def test_phases_move_kidney_hu_as_published(body, kits):
    def median(phase, code):
        seed = _physiological(phase)
        ph = make_anatomical_phantom(seed, body, kits, phase=phase, rows=ROWS)
        assert ph.appearance.phase == phase
        return float(np.median(ph.hu[ph.tissues == code]))

    assert 10 < median("noncontrast", T.KIDNEY_CORTEX) < 70
    assert median("nephrographic", T.KIDNEY_MEDULLA) > 100  # homogeneous: the medulla too
    seed = _physiological("corticomedullary")
    ph = make_anatomical_phantom(seed, body, kits, phase="corticomedullary", rows=ROWS)
    cortex = np.median(ph.hu[ph.tissues == T.KIDNEY_CORTEX])
    medulla = np.median(ph.hu[ph.tissues == T.KIDNEY_MEDULLA])
    assert cortex > medulla + 30


def test_padding_outside_the_field_of_view(body, kits):
    padded = next(s for s in range(100) if sample_appearance(np.random.default_rng(s)).padding is not None)
    ph = make_anatomical_phantom(padded, body, kits, rows=ROWS)
    value = ph.appearance.padding
    assert (ph.hu[:, 0, 0] == value).all() and (ph.hu[:, -1, -1] == value).all()
    assert (ph.tissues[:, 0, 0] == T.OUTSIDE_FOV).all()
    square = next(s for s in range(100) if sample_appearance(np.random.default_rng(s)).padding is None)
    ph = make_anatomical_phantom(square, body, kits, rows=ROWS)
    assert ph.hu.min() >= -1024 and (ph.hu[:, 0, 0] < -900).all()


def test_deterministic_for_a_seed(body, kits):
    a = make_anatomical_phantom(5, body, kits, rows=ROWS)
    b = make_anatomical_phantom(5, body, kits, rows=ROWS)
    c = make_anatomical_phantom(6, body, kits, rows=ROWS)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    assert a.record == b.record
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


def test_field_reaches_from_lung_bases_to_pelvis(body, kits):
    ph = make_anatomical_phantom(7, body, kits, rows=ROWS)
    rows_with = lambda code: np.flatnonzero((ph.tissues == code).any(axis=(1, 2)))  # noqa: E731
    kid = np.flatnonzero(ph.labels.any(axis=(1, 2)))
    lung, liver = rows_with(T.LUNG), rows_with(T.LIVER)
    assert lung.size and lung[0] == 0 and lung[0] < liver[0] < kid[0]
    # Below the kidneys: at least 6 cm of body, with pelvic bone in it.
    below = ph.hu.shape[0] - 1 - kid[-1]
    assert below * ph.spacing[0] >= 60
    assert (ph.tissues[kid[-1] + 1:] == T.BONE_CORTEX).any()
