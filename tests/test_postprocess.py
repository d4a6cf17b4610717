"""kidedge.postprocess on synthetic label maps with known components and volumes."""

import nibabel as nib
import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.postprocess import (
    class_volumes_ml,
    keep_largest_kidneys,
    postprocess_labels,
    restrict_masses_to_kidney,
)

# KiTS19's affine: (slice, row, col) -> axis codes ('I', 'P', 'L'); x = -0.8 * col
KITS19_AFFINE = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def box(lab, value, lo, hi):
    lab[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value


def two_kidneys(shape=(20, 64, 128)):
    lab = np.zeros(shape, dtype=np.uint8)
    box(lab, 1, (4, 20, 10), (16, 40, 30))  # patient's right (low columns): 12*20*20 = 4800
    box(lab, 1, (4, 20, 90), (16, 40, 108))  # patient's left: 12*20*18 = 4320
    return lab


# ----------------------------------------------------------------------------- components


def test_keeps_two_kidneys_and_drops_specks():
    lab = two_kidneys()
    box(lab, 2, (6, 24, 12), (9, 28, 16))  # tumour inside the right kidney
    speck = lab.copy()
    box(speck, 1, (0, 0, 60), (2, 2, 62))  # 8 voxels far away
    box(speck, 2, (18, 60, 60), (20, 62, 62))  # a lone "tumour"
    out = keep_largest_kidneys(speck)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, lab)
    assert speck[0, 0, 60] == 1  # input untouched


def test_single_kidney_scan_keeps_one():
    lab = np.zeros((20, 64, 128), dtype=np.uint8)
    box(lab, 1, (4, 20, 10), (16, 40, 30))  # 4800 voxels
    box(lab, 1, (4, 20, 90), (8, 26, 106))  # 384 voxels = 8 % of the first: a false positive
    out = keep_largest_kidneys(lab, min_fraction=0.1)
    assert np.count_nonzero(out) == 4800 and out[5, 21, 95] == 0
    kept = keep_largest_kidneys(lab, min_fraction=0.05)
    np.testing.assert_array_equal(kept, lab)
    only = keep_largest_kidneys(two_kidneys(), max_kidneys=1)
    assert np.count_nonzero(only) == 4800


def test_components_connect_through_corners():
    # thick slices: a kidney touching the next slice only diagonally is still one piece
    lab = np.zeros((6, 20, 20), dtype=np.uint8)
    box(lab, 1, (0, 0, 0), (3, 5, 5))  # 75 voxels
    box(lab, 1, (3, 5, 5), (6, 10, 10))  # 75, touches only at the corner (2,4,4)-(3,5,5)
    box(lab, 1, (0, 15, 15), (1, 17, 17))  # 4-voxel speck
    out = keep_largest_kidneys(lab, max_kidneys=1)
    assert np.count_nonzero(out) == 150


def test_empty_and_bad_inputs():
    empty = np.zeros((3, 4, 5), dtype=np.uint8)
    np.testing.assert_array_equal(postprocess_labels(empty), empty)
    with pytest.raises(KidedgeError, match="3D"):
        keep_largest_kidneys(np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(KidedgeError, match="integers"):
        keep_largest_kidneys(np.zeros((2, 4, 5), dtype=np.float32))
    with pytest.raises(KidedgeError, match="max_kidneys"):
        keep_largest_kidneys(empty, max_kidneys=0)


def test_masses_must_touch_kidney():
    lab = two_kidneys()
    box(lab, 2, (6, 24, 12), (9, 28, 16))  # inside the right kidney
    box(lab, 2, (6, 40, 92), (10, 46, 98))  # exophytic: touches the left kidney's face (row 40)
    box(lab, 3, (10, 40, 92), (12, 44, 96))  # cyst touching that tumour only
    box(lab, 3, (2, 16, 12), (4, 20, 16))  # cyst touching the right kidney diagonally only
    expected = lab.copy()
    box(lab, 2, (6, 55, 60), (10, 60, 66))  # floating tumour: removed
    box(lab, 3, (0, 0, 0), (2, 3, 3))  # floating cyst: removed
    out = restrict_masses_to_kidney(lab)
    np.testing.assert_array_equal(out, expected)


def test_postprocess_labels_does_both_and_drops_small_masses_by_volume():
    lab = two_kidneys()
    box(lab, 1, (0, 0, 60), (2, 2, 62))  # speck
    box(lab, 2, (6, 55, 60), (10, 60, 66))  # floating tumour
    box(lab, 2, (6, 24, 12), (9, 28, 16))  # 48 voxels inside: 48 * 3*0.8*0.8 mm3 = 0.09216 mL
    clean = postprocess_labels(lab)
    assert np.count_nonzero(clean == 2) == 48 and clean[0, 0, 60] == 0
    assert np.count_nonzero(postprocess_labels(lab, (3, 0.8, 0.8), min_mass_ml=0.09)) == 9120
    assert np.count_nonzero(postprocess_labels(lab, (3, 0.8, 0.8), min_mass_ml=0.1) == 2) == 0
    with pytest.raises(KidedgeError, match="spacing"):
        postprocess_labels(lab, min_mass_ml=0.1)


# ----------------------------------------------------------------------------- volumes


def test_volumes_of_known_cubes():
    lab = np.zeros((30, 40, 40), dtype=np.uint8)
    box(lab, 1, (0, 0, 0), (10, 10, 10))  # 1000 voxels
    box(lab, 2, (0, 0, 0), (5, 10, 10))  # 500 of them tumour
    box(lab, 3, (0, 0, 0), (1, 10, 10))  # 100 of those cyst
    v = class_volumes_ml(lab, (2.0, 0.5, 0.5))  # 0.5 mm3 per voxel
    assert v["voxel_ml"] == pytest.approx(0.0005)
    c = v["classes"]
    assert c["kidney_ml"] == pytest.approx(0.5)
    assert c["parenchyma_ml"] == pytest.approx(0.25)
    assert c["tumour_ml"] == pytest.approx(0.2)
    assert c["cyst_ml"] == pytest.approx(0.05)
    assert c["masses_ml"] == pytest.approx(0.25)
    # the affine gives the same spacing
    same = class_volumes_ml(lab, np.diag([2.0, 0.5, 0.5, 1.0]))
    assert same["classes"] == c


def test_kits19_affine_columns_point_to_the_patients_left():
    # the ground the side logic stands on, checked with nibabel itself
    assert nib.aff2axcodes(KITS19_AFFINE) == ("I", "P", "L")


def test_sides_from_the_affine():
    lab = two_kidneys()
    box(lab, 2, (6, 24, 92), (9, 28, 96))  # tumour in the high-column (patient's left) kidney
    v = class_volumes_ml(lab, (3.0, 0.8, 0.8), affine=KITS19_AFFINE)
    voxel = 3.0 * 0.8 * 0.8 / 1000
    assert v["side_from"] == "affine"
    assert v["sides"]["right"]["kidney_ml"] == pytest.approx(4800 * voxel)
    assert v["sides"]["left"]["kidney_ml"] == pytest.approx(4320 * voxel)
    assert v["sides"]["left"]["tumour_ml"] == pytest.approx(48 * voxel)
    assert v["sides"]["right"]["tumour_ml"] == 0.0
    assert v["sides"]["left"]["components"] == v["sides"]["right"]["components"] == 1
    # an affine whose columns run toward the patient's right swaps the sides
    mirrored = KITS19_AFFINE.copy()
    mirrored[0, 2] = +0.8
    assert nib.aff2axcodes(mirrored)[2] == "R"
    w = class_volumes_ml(lab, (3.0, 0.8, 0.8), affine=mirrored)
    assert w["sides"]["right"]["kidney_ml"] == pytest.approx(4320 * voxel)
    # no affine: the canonical columns (growing toward the left) decide, same answer
    u = class_volumes_ml(lab, (3.0, 0.8, 0.8))
    assert u["side_from"] == "columns" and u["sides"] == v["sides"]


def test_single_kidney_side_from_the_field_of_view_centre():
    lab = np.zeros((20, 64, 128), dtype=np.uint8)
    box(lab, 1, (4, 20, 90), (16, 40, 108))  # right of the centre column in the array
    v = class_volumes_ml(lab, affine=KITS19_AFFINE)
    assert v["sides"]["left"]["components"] == 1 and v["sides"]["right"]["kidney_ml"] == 0.0


def test_off_centre_patient_and_split_kidney():
    # both kidneys left of the field-of-view centre, 56 columns = 45 mm apart: still a pair
    lab = np.zeros((20, 64, 256), dtype=np.uint8)
    box(lab, 1, (4, 20, 140), (16, 40, 160))
    box(lab, 1, (4, 20, 196), (16, 40, 214))
    v = class_volumes_ml(lab, affine=KITS19_AFFINE)
    assert v["sides"]["left"]["components"] == 1 and v["sides"]["right"]["components"] == 1
    # one kidney in two pieces 10 columns (8 mm) apart: both on the same side
    split = np.zeros((20, 64, 256), dtype=np.uint8)
    box(split, 1, (4, 20, 180), (9, 40, 200))
    box(split, 1, (11, 20, 190), (16, 40, 210))
    w = class_volumes_ml(split, affine=KITS19_AFFINE)
    assert w["sides"]["left"]["components"] == 2 and w["sides"]["right"]["components"] == 0


def test_volume_errors():
    lab = two_kidneys()
    with pytest.raises(KidedgeError, match="spacing or the affine"):
        class_volumes_ml(lab)
    with pytest.raises(KidedgeError, match="positive"):
        class_volumes_ml(lab, (0, 1, 1))
    bad = lab.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(KidedgeError, match="0..3"):
        class_volumes_ml(bad, (1, 1, 1))


def test_dilate26_equals_binary_dilation_with_the_full_cube():
    from scipy import ndimage

    from kidedge.components import _CONNECTIVITY
    from kidedge.postprocess import _dilate26

    rng = np.random.default_rng(3)
    for shape in ((1, 1, 1), (2, 5, 3), (9, 11, 7)):
        mask = rng.random(shape) < 0.08
        mask.flat[0] = mask.flat[-1] = True  # corners: the shifts must stop at the edges
        np.testing.assert_array_equal(_dilate26(mask), ndimage.binary_dilation(mask, structure=_CONNECTIVITY))


def test_sides_split_voxel_by_voxel_at_a_given_midline():
    # a horseshoe-like bar across the middle: whole components would all go to one side
    lab = np.zeros((10, 20, 100), dtype=np.uint8)
    box(lab, 1, (2, 5, 20), (8, 15, 80))  # columns 20-79: 6*10*60 = 3600 voxels
    box(lab, 2, (2, 5, 70), (8, 15, 80))  # tumour in columns 70-79 (patient's left)
    voxel = 3.0 * 0.8 * 0.8 / 1000
    whole = class_volumes_ml(lab, (3.0, 0.8, 0.8), affine=KITS19_AFFINE)
    assert {whole["sides"][s]["components"] for s in ("left", "right")} == {0, 1}
    # midline at column 50 (x = -40 mm, leftness 40 mm): columns 51.. are left of it
    split = class_volumes_ml(lab, (3.0, 0.8, 0.8), affine=KITS19_AFFINE, divide_leftness_mm=40.0)
    assert split["sides"]["left"]["kidney_ml"] == pytest.approx(6 * 10 * 29 * voxel)
    assert split["sides"]["right"]["kidney_ml"] == pytest.approx(6 * 10 * 31 * voxel)
    assert split["sides"]["left"]["tumour_ml"] == pytest.approx(600 * voxel) and split["sides"]["right"]["tumour_ml"] == 0
    assert split["sides"]["left"]["components"] == split["sides"]["right"]["components"] == 1
    assert split["classes"] == whole["classes"]


def test_label26_agrees_with_scipy_with_and_without_cc3d(monkeypatch):
    """The fast path (cc3d, when installed) and scipy's 26-connected labelling give the
    same components; KIDEDGE_CC=scipy forces scipy."""
    from scipy import ndimage

    from kidedge.components import label26

    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((30, 40, 50)) > 0.55)  # many blobs, some touching by corners
    mask[0, 0, 0] = mask[1, 1, 1] = True  # a corner-only contact
    ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    assert n_ref > 20
    for forced in ("", "scipy"):
        monkeypatch.setenv("KIDEDGE_CC", forced)
        ids, n = label26(mask)
        assert n == n_ref
        # same partition: each scipy component maps to exactly one id and back
        pairs = np.unique(np.stack([ref[mask], ids[mask]]), axis=1)
        assert pairs.shape[1] == n and len(set(pairs[0])) == n and len(set(pairs[1])) == n
        assert not ids[~mask].any()
    assert label26(np.zeros((0, 4, 4), bool))[1] == 0


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_component_boxes_equal_find_objects_split_or_not(monkeypatch, threads):
    """Boxes found on slabs of the first axis by several threads and merged are
    find_objects' boxes: components across the cut, absent ids (None), one-slice shapes."""
    from scipy import ndimage

    import kidedge.components as pp

    monkeypatch.setattr(pp, "_PARALLEL_BOXES_FROM", 0)  # split even small arrays
    rng = np.random.default_rng(5)
    ids = (ndimage.label(rng.random((17, 30, 40)) > 0.7)[0]).astype(np.uint32)
    ids[ids == 7] = 0  # an absent id in the middle
    ids[0:17, 3, 5] = 500  # one component through every slab
    count = int(ids.max()) + 2  # and absent ids at the end
    assert pp.component_boxes(ids, count, threads=threads) == ndimage.find_objects(ids, max_label=count)
    flat = ids[:1]  # fewer slices than slabs: not split
    assert pp.component_boxes(flat, count, threads=threads) == ndimage.find_objects(flat, max_label=count)
