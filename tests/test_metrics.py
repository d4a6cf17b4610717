"""kidedge.metrics on synthetic masks with known answers, and against a brute-force
surface distance (every surface voxel against every other, no EDT, no cropping)."""

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from kidedge.errors import KidedgeError
from kidedge.metrics import DiceMultiPool, dice, dice_multi, kits_scores, surface_dice


def cube(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def brute_force_surface_dice(pred, gt, spacing, tol):
    """Reference NSD: 6-connected erosion surfaces, all-pairs distances in mm."""
    s = ndimage.generate_binary_structure(3, 1)
    sp_ = pred & ~ndimage.binary_erosion(pred, s, border_value=0)
    sg_ = gt & ~ndimage.binary_erosion(gt, s, border_value=0)
    a = np.argwhere(sp_) * np.asarray(spacing)
    b = np.argwhere(sg_) * np.asarray(spacing)
    d = cdist(a, b)
    ok = np.count_nonzero(d.min(axis=1) <= tol) + np.count_nonzero(d.min(axis=0) <= tol)
    return ok / (len(a) + len(b))


# ----------------------------------------------------------------------------- dice


def test_dice_of_two_cubes_with_known_overlap():
    a = cube((30, 30, 30), (5, 5, 5), (15, 15, 15))  # 1000 voxels
    b = cube((30, 30, 30), (10, 5, 5), (20, 15, 15))  # 1000 voxels, 500 shared
    assert dice(a, b) == pytest.approx(2 * 500 / 2000)
    assert dice(a, a) == 1.0
    assert dice(a.astype(np.uint8) * 7, b) == pytest.approx(0.5)  # any nonzero is inside


def test_dice_empty_conventions_are_kits21s():
    empty = np.zeros((4, 5, 6), dtype=bool)
    full = cube((4, 5, 6), (1, 1, 1), (3, 3, 3))
    assert dice(empty, empty) == 1.0  # both empty: a correct "nothing here"
    assert dice(full, empty) == 0.0
    assert dice(empty, full) == 0.0


def test_dice_rejects_different_shapes():
    with pytest.raises(KidedgeError, match="different shapes"):
        dice(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


# ----------------------------------------------------------------------------- surface dice


def test_surface_dice_identical_and_empty_conventions():
    a = cube((20, 20, 20), (4, 4, 4), (12, 14, 10))
    empty = np.zeros_like(a)
    assert surface_dice(a, a, (1, 1, 1), 0.0) == 1.0
    assert surface_dice(empty, empty, (1, 1, 1), 2.0) == 1.0
    assert surface_dice(a, empty, (1, 1, 1), 2.0) == 0.0
    assert surface_dice(empty, a, (1, 1, 1), 2.0) == 0.0


def test_surface_dice_shift_by_one_voxel_against_tolerance():
    # a shift of one slice at 3 mm spacing moves the two end faces by exactly 3 mm
    spacing = (3.0, 0.8, 0.8)
    a = cube((20, 24, 24), (5, 5, 5), (12, 15, 15))
    b = np.roll(a, 1, axis=0)
    assert surface_dice(a, b, spacing, 3.0) == 1.0  # inclusive: every surface voxel within 3 mm
    below = surface_dice(a, b, spacing, 2.9)
    assert below < 1.0
    assert below == pytest.approx(brute_force_surface_dice(a, b, spacing, 2.9), abs=1e-12)
    # the same shift along a 0.8 mm axis is within a 1 mm tolerance everywhere
    c = np.roll(a, 1, axis=2)
    assert surface_dice(a, c, spacing, 1.0) == 1.0
    assert surface_dice(a, c, spacing, 0.7) < 1.0


def test_surface_dice_far_apart_is_zero():
    a = cube((10, 60, 60), (2, 2, 2), (8, 10, 10))
    b = cube((10, 60, 60), (2, 40, 40), (8, 50, 50))
    assert surface_dice(a, b, (1.0, 1.0, 1.0), 5.0) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_dice_matches_brute_force_on_random_blobs(seed):
    # blobs touching the array border too: the crop must not change the surfaces there
    rng = np.random.default_rng(seed)
    shape = (14, 26, 22)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    gt = noise > 0.05
    pred = ndimage.binary_dilation(gt, iterations=1) if seed == 1 else np.roll(gt, seed + 1, axis=seed % 3)
    pred[0] |= rng.random(shape[1:]) > 0.97  # specks on the border slice
    spacing = (2.5, 0.7, 0.9)
    for tol in (0.0, 0.75, 1.0, 2.0, 3.3):
        got = surface_dice(pred, gt, spacing, tol)
        assert got == pytest.approx(brute_force_surface_dice(pred, gt, spacing, tol), abs=1e-12), tol


def test_surface_dice_crop_is_exact_in_a_large_volume():
    # small objects in a big array: cropping must give the same answer as a tiny array
    small_a = cube((12, 12, 12), (3, 3, 3), (9, 8, 9))
    small_b = cube((12, 12, 12), (4, 3, 2), (9, 9, 9))
    big_a = np.zeros((60, 200, 200), dtype=bool)
    big_b = np.zeros_like(big_a)
    big_a[30:42, 100:112, 150:162] = small_a
    big_b[30:42, 100:112, 150:162] = small_b
    sp = (1.5, 0.7, 0.7)
    assert surface_dice(big_a, big_b, sp, 1.0) == pytest.approx(surface_dice(small_a, small_b, sp, 1.0), abs=1e-12)


def test_surface_dice_bad_arguments_are_user_errors():
    a = cube((5, 5, 5), (1, 1, 1), (3, 3, 3))
    with pytest.raises(KidedgeError, match="spacing"):
        surface_dice(a, a, (1, 1), 1.0)
    with pytest.raises(KidedgeError, match="spacing"):
        surface_dice(a, a, (1, 0, 1), 1.0)
    with pytest.raises(KidedgeError, match="tolerance"):
        surface_dice(a, a, (1, 1, 1), float("nan"))
    with pytest.raises(KidedgeError, match="3D"):
        surface_dice(a[0], a[0], (1, 1, 1), 1.0)


# ----------------------------------------------------------------------------- dice_multi


def test_dice_multi_by_hand():
    # two 2x3 "slices"; classes 0, 1, 2
    gt = np.array([[[0, 0, 1], [0, 1, 1]], [[0, 0, 0], [2, 2, 0]]])
    pred = np.array([[[0, 0, 1], [0, 0, 1]], [[0, 0, 0], [2, 0, 0]]])
    # class 0: gt 7, pred 9, inter 7 -> 14/16 ; class 1: gt 3, pred 2, inter 2 -> 4/5
    # class 2: gt 2, pred 1, inter 1 -> 2/3
    expect = (14 / 16 + 4 / 5 + 2 / 3) / 3
    assert dice_multi(pred, gt, 3) == pytest.approx(expect)
    # a class absent from both is NaN in fastai and left out of the mean
    assert dice_multi(pred, gt, 4) == pytest.approx(expect)


def test_dice_multi_pools_slices_not_averages_them():
    gt = np.zeros((2, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[0, :5, :5] = 1  # 25 voxels, all found
    pred[0, :5, :5] = 1
    gt[1, 0, 0] = 1  # 1 voxel, missed
    pooled = dice_multi(pred, gt, 2)
    fg = 2 * 25 / (25 + 26)
    bg = 2 * 174 / (174 + 175)
    assert pooled == pytest.approx((fg + bg) / 2)
    per_slice_mean = (dice_multi(pred[:1], gt[:1], 2) + dice_multi(pred[1:], gt[1:], 2)) / 2
    assert not math.isclose(pooled, per_slice_mean)


def test_dice_multi_inflates_a_poor_segmentation():
    # a kidney found at half its size: kidney Dice 2/3, yet dice_multi is near 0.83
    gt = np.zeros((20, 64, 64), dtype=np.uint8)
    gt[5:15, 20:40, 20:40] = 1
    pred = np.zeros_like(gt)
    pred[5:10, 20:40, 20:40] = 1
    kidney = dice(pred == 1, gt == 1)
    assert kidney == pytest.approx(2 / 3)
    assert dice_multi(pred, gt, 2) > kidney + 0.15


def test_dice_multi_pool_equals_dice_multi_of_everything():
    rng = np.random.default_rng(3)
    cases = [(rng.integers(0, 3, (3, 8, 8)), rng.integers(0, 3, (3, 8, 8))) for _ in range(4)]
    pool = DiceMultiPool(4)
    for p, g in cases:
        pool.add(p, g)
    allp = np.concatenate([p for p, _ in cases])
    allg = np.concatenate([g for _, g in cases])
    assert pool.value == pytest.approx(dice_multi(allp, allg, 4))
    assert math.isnan(pool.per_class[3])


def test_dice_multi_rejects_labels_outside_classes():
    with pytest.raises(KidedgeError, match="0..2"):
        dice_multi(np.array([[0, 3]]), np.array([[0, 1]]), 3)


# ----------------------------------------------------------------------------- kits_scores


def kidney_with_tumour(shape=(16, 48, 48)):
    lab = np.zeros(shape, dtype=np.uint8)
    lab[3:13, 8:24, 6:20] = 1  # right kidney (low columns)
    lab[3:13, 8:24, 30:44] = 1  # left kidney
    lab[5:9, 10:16, 32:38] = 2  # tumour inside the left kidney
    return lab


def test_kits_scores_perfect_prediction_is_one_everywhere():
    gt = kidney_with_tumour()
    s = kits_scores(gt.copy(), gt, (3.0, 0.8, 0.8))
    assert set(s) >= {"kidney_dice", "masses_dice", "tumour_dice", "kidney_sd", "masses_sd", "tumour_sd",
                      "kits19_kidney_dice", "kits19_tumour_dice", "kits19_score", "dice_multi"}
    assert all(v == 1.0 for v in s.values()), s


def test_kits_scores_hierarchical_classes():
    gt = kidney_with_tumour()
    sp = (3.0, 0.8, 0.8)
    # tumour called kidney: kidney perfect, masses and tumour missed entirely
    pred = np.where(gt == 2, 1, gt).astype(np.uint8)
    s = kits_scores(pred, gt, sp)
    assert s["kidney_dice"] == 1.0 and s["kidney_sd"] == 1.0
    assert s["masses_dice"] == 0.0 and s["tumour_dice"] == 0.0 and s["tumour_sd"] == 0.0
    assert s["kits19_score"] == pytest.approx(0.5)
    # tumour called cyst: masses perfect, tumour missed
    pred = np.where(gt == 2, 3, gt).astype(np.uint8)
    s = kits_scores(pred, gt, sp)
    assert s["kidney_dice"] == 1.0 and s["masses_dice"] == 1.0 and s["tumour_dice"] == 0.0
    # KiTS19 kidney is labels {1, 2}: the cyst voxels are missing from it
    n_t, n_k = np.count_nonzero(gt == 2), np.count_nonzero(gt > 0)
    assert s["kits19_kidney_dice"] == pytest.approx(2 * (n_k - n_t) / (2 * n_k - n_t))
    # no tumour in either: tumour scores 1.0 (KiTS21)
    clean = np.where(gt == 2, 1, gt).astype(np.uint8)
    s = kits_scores(clean, clean, sp)
    assert s["tumour_dice"] == 1.0 and s["masses_sd"] == 1.0


def test_kits_scores_dice_multi_counts_the_background_outside_the_crop():
    gt = kidney_with_tumour((16, 48, 48))
    pred = np.where(gt == 2, 0, gt).astype(np.uint8)
    s = kits_scores(pred, gt, (1, 1, 1))
    assert s["dice_multi"] == pytest.approx(dice_multi(pred, gt, 4))


def test_kits_scores_bad_labels_are_user_errors():
    gt = kidney_with_tumour()
    bad = gt.copy()
    bad[0, 0, 5] = 7
    with pytest.raises(KidedgeError, match="0..3"):
        kits_scores(bad, gt, (1, 1, 1))
    with pytest.raises(KidedgeError, match="integers"):
        kits_scores(gt.astype(np.float32), gt, (1, 1, 1))
    with pytest.raises(KidedgeError, match="different shapes"):
        kits_scores(gt[:-1], gt, (1, 1, 1))
