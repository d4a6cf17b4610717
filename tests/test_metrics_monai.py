"""kidedge.metrics against an independent implementation, MONAI (a test-only dependency),
on real KiTS19 label maps with controlled perturbations (erosion, dilation, shift).

What is compared, and why the tolerances are what they are:

* Dice: MONAI's ``compute_dice`` on one-hot tensors. Both count voxels; MONAI returns
  float32, so agreement is to float32 rounding: 1e-6.
* Surface Dice: MONAI's ``compute_surface_dice(..., use_subvoxels=False)`` defines the
  surface exactly as kidedge does (mask XOR its scipy ``binary_erosion`` with the default
  6-connected structure, border counted as outside, each surface voxel weight 1) and
  measures Euclidean distances in mm between voxel centres with the given spacing
  (kidedge: ``distance_transform_edt``; MONAI on CPU: a KD-tree). The thresholds here
  never fall exactly on a voxel-to-voxel distance, so the only difference left is
  MONAI's float32 result: 1e-6.
* With ``use_subvoxels=True`` MONAI follows DeepMind's surfels (the KiTS21 official
  code's convention: marching-cubes faces weighted by area). That is a different
  definition; the last test records how it differs on real 5 mm-slice kidneys (close for
  in-plane shifts, much higher for errors that move the slab's top and bottom faces,
  which count per voxel here but by their small area there).

The perturbation comparisons run on the kidney's bounding box plus a 6-voxel margin
(larger than any perturbation), which changes neither implementation's answer and keeps
MONAI's cost down; one comparison runs on the full 512x512 scan.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kidedge.metrics import KITS21_CLASSES, dice, kits_scores, surface_dice

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = ["case_00061", "case_00038"]  # two of the shortest scans (29 and 32 slices, 5 mm)


@pytest.fixture(scope="module")
def kits19_labels():
    folder = SHARED / "kits19-labels"
    if not all((folder / c / "segmentation.nii.gz").is_file() for c in CASES):
        pytest.skip(f"{folder} not available")
    torch.set_num_threads(2)
    out = {}
    for c in CASES:
        img = nib.load(str(folder / c / "segmentation.nii.gz"))
        out[c] = (np.asarray(img.dataobj).astype(np.uint8), tuple(float(z) for z in img.header.get_zooms()))
    return out


def crop_to_foreground(labels, margin=6):
    box = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(labels > 0, axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, hit[0] - margin), hit[-1] + 1 + margin))
    return labels[tuple(box)]


def perturbations(gt_mask):
    ball = ndimage.generate_binary_structure(3, 1)
    return {
        "erode1": ndimage.binary_erosion(gt_mask, ball, iterations=1),
        "dilate2": ndimage.binary_dilation(gt_mask, ball, iterations=2),
        "shift_rows3": np.roll(gt_mask, 3, axis=1),
        "shift_slice1_cols-2": np.roll(np.roll(gt_mask, 1, axis=0), -2, axis=2),
    }


def one_hot(mask):
    return torch.from_numpy(np.stack([~mask, mask])[None].copy())


def monai_dice(pred, gt):
    return float(monai_metrics.compute_dice(one_hot(pred).float(), one_hot(gt).float(), include_background=False).item())


def monai_nsd(pred, gt, spacing, tol, subvoxels=False):
    return float(monai_metrics.compute_surface_dice(
        one_hot(pred), one_hot(gt), [tol], spacing=list(spacing), use_subvoxels=subvoxels).item())


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("case", CASES)
def test_dice_and_surface_dice_agree_with_monai(kits19_labels, case):
    labels, spacing = kits19_labels[case]
    labels = crop_to_foreground(labels)
    assert spacing[0] == 5.0  # thresholds below are chosen off the voxel distances of these scans
    compared = 0
    seen = []
    for cls, values in KITS21_CLASSES.items():
        gt = np.isin(labels, values)
        if not gt.any() or any(np.array_equal(gt, s) for s in seen):
            continue  # KiTS19 has no cysts: masses == tumour, compared once
        seen.append(gt)
        for name, pred in perturbations(gt).items():
            assert dice(pred, gt) == pytest.approx(monai_dice(pred, gt), abs=1e-6), (cls, name)
            for tol in (1.3, 2.0 + 1e-4):
                ours = surface_dice(pred, gt, spacing, tol)
                assert ours == pytest.approx(monai_nsd(pred, gt, spacing, tol), abs=1e-6), (cls, name, tol)
                compared += 1
    assert compared == 16  # kidney and tumour, 4 perturbations, 2 tolerances


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_kits_scores_agree_with_monai_per_class(kits19_labels):
    labels, spacing = kits19_labels["case_00061"]
    # a prediction with a shifted kidney and an eroded tumour
    pred = np.roll(np.where(labels == 2, 1, labels), 2, axis=2).astype(np.uint8)
    pred[ndimage.binary_erosion(labels == 2)] = 2
    scores = kits_scores(pred, labels, spacing, 2.0 + 1e-4)
    for cls, values in KITS21_CLASSES.items():
        p, g = np.isin(pred, values), np.isin(labels, values)
        assert scores[f"{cls}_dice"] == pytest.approx(monai_dice(p, g), abs=1e-6)
        assert scores[f"{cls}_sd"] == pytest.approx(monai_nsd(p, g, spacing, 2.0 + 1e-4), abs=1e-6)
    assert 0.0 < scores["tumour_dice"] < scores["kidney_dice"] < 1.0


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_voxel_surface_dice_versus_deepmind_surfels_on_real_kidneys(kits19_labels):
    labels, spacing = kits19_labels["case_00038"]
    gt = crop_to_foreground(labels) > 0
    ours, surfels = {}, {}
    for name, pred in perturbations(gt).items():
        ours[name] = surface_dice(pred, gt, spacing, 2.0)
        surfels[name] = monai_nsd(pred, gt, spacing, 2.0, subvoxels=True)
    # an in-plane shift moves side faces only: the two definitions nearly agree
    assert abs(ours["shift_rows3"] - surfels["shift_rows3"]) < 0.02
    # errors that move the 5 mm slab faces count per voxel here, per (small) area there
    for name in ("erode1", "dilate2", "shift_slice1_cols-2"):
        assert surfels[name] - ours[name] > 0.1, (name, ours[name], surfels[name])
