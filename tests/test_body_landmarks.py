"""kidedge.body_landmarks: body outline and spine found in synthetic CT slices (and real CT,
shared data)."""

import numpy as np
import pytest

from kidedge.body_landmarks import (
    BodyLandmarks,
    estimate_body_landmarks,
    measure_slice,
    strided_affine,
)

PIXEL_MM = (3.0, 3.0)


def disc(img, centre, radius, value):
    r, c = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= radius ** 2] = value


def abdomen_slice(spine_col=64):
    """128 x 128 pixels of 3 mm: a body (rows 29-99, columns 9-119), a vertebra at (85,
    spine_col), a contrast-filled aorta in front of it, two ribs, and the scanner table."""
    img = np.full((128, 128), -1000.0)
    r, c = np.ogrid[:128, :128]
    img[((r - 64) / 35.0) ** 2 + ((c - 64) / 55.0) ** 2 <= 1] = -100.0  # fat
    disc(img, (60, 64), 20, 40.0)  # organs
    disc(img, (50, 40), 6, -900.0)  # bowel gas inside the body
    disc(img, (85, spine_col), 8, 600.0)  # vertebra, ~18 cm^2
    disc(img, (70, spine_col + 8), 4, 300.0)  # aorta, ~4.5 cm^2: bright but smaller
    disc(img, (64, 12), 2, 700.0)  # ribs
    disc(img, (64, 116), 2, 700.0)
    img[108:112, 10:118] = 300.0  # the table: dense, but apart from the body
    return img


def test_body_box_and_spine_of_one_slice():
    body, spine = measure_slice(abdomen_slice(), PIXEL_MM)
    np.testing.assert_allclose(body, [29, 99, 9, 119])  # the table below is ignored
    np.testing.assert_allclose(spine, [85, 64], atol=0.5)
    _, off_centre = measure_slice(abdomen_slice(spine_col=70), PIXEL_MM)
    np.testing.assert_allclose(off_centre, [85, 70], atol=0.5)


def test_no_body_or_no_spine():
    body, spine = measure_slice(np.full((64, 64), -1000.0), PIXEL_MM)
    assert np.isnan(body).all() and np.isnan(spine).all()
    no_bone = abdomen_slice()
    no_bone[no_bone > 200] = 40.0
    body, spine = measure_slice(no_bone, PIXEL_MM)
    assert np.isfinite(body).all() and np.isnan(spine).all()
    tiny = np.full((64, 64), -1000.0)
    disc(tiny, (30, 30), 5, 40.0)  # 7 cm^2: an arm, not a trunk
    assert np.isnan(measure_slice(tiny, PIXEL_MM)[0]).all()


def test_volume_landmarks_with_a_stride_and_their_geometry():
    vol = np.stack([abdomen_slice()] * 5 + [np.full((128, 128), -1000.0)])
    # full-resolution canonical grid: 1.5 mm pixels (the slices above are 3 mm: stride 2)
    full = np.repeat(np.repeat(vol, 2, axis=1), 2, axis=2)
    affine = np.array([[0, 0, -1.5, 0], [0, -1.5, 0, 0], [-2.5, 0, 0, 0], [0, 0, 0, 1]], float)
    # stored values with slope 1, intercept -1024 (as many scanners write them)
    marks = estimate_body_landmarks((full + 1024).astype(np.int16), affine, stride=2, slope=1.0, intercept=-1024.0)
    np.testing.assert_allclose(marks.affine, strided_affine(affine, 2))
    np.testing.assert_allclose(marks.spacing, [2.5, 3.0, 3.0])
    assert marks.slices_with_spine == 5 and np.isnan(marks.body[5]).all()
    assert marks.midline_col() == pytest.approx(64, abs=0.5)
    # world -> grid: the vertebra's centre on slice 2
    world = marks.affine @ np.array([2, 85, 64, 1.0])
    np.testing.assert_allclose(marks.to_voxel(world[:3]), [[2, 85, 64]], atol=1e-9)
    assert marks.nearest_slice(5.2) == 4 and marks.nearest_slice(9, max_distance=2) is None
    assert marks.to_dict()["slices_with_body"] == 5


def test_midline_falls_back_to_the_body_centre():
    body = np.tile([10.0, 90.0, 20.0, 100.0], (3, 1))
    marks = BodyLandmarks(np.eye(4), body, np.full((3, 2), np.nan))
    assert marks.midline_col() == 60.0
    assert BodyLandmarks(np.eye(4), np.full((3, 4), np.nan), np.full((3, 2), np.nan)).midline_col() is None


@pytest.mark.shared_data
def test_real_ct_spine_is_found_near_the_middle():
    from pathlib import Path

    from kidedge.io import load_scan

    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-dicom-sample"
    if not folder.is_dir():
        pytest.skip("../shared/data/ct-dicom-sample is not available")
    scan = load_scan(folder)
    marks = estimate_body_landmarks(scan.array, scan.canonical_affine, slope=scan.slope, intercept=scan.intercept)
    assert marks.slices_with_spine >= 0.8 * scan.shape[0]
    # the spine lies in the posterior half of the body and within 3 cm of the image's centre line
    mid_mm = (marks.midline_col() - (scan.shape[2] / 4 - 1) / 2) * marks.spacing[2]  # stride 4 grid
    assert abs(mid_mm) < 30
    found = np.isfinite(marks.spine[:, 0])
    depth = (marks.spine[found, 0] - marks.body[found, 0]) / (marks.body[found, 1] - marks.body[found, 0])
    assert np.all((depth > 0.5) & (depth < 0.95))
