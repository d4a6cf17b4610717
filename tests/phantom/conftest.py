"""Fixtures for the phantom tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project root; the test is skipped when it is absent."""
    if not (SHARED_DATA / "kits19-labels").is_dir():
        pytest.skip(f"{SHARED_DATA / 'kits19-labels'} not present")
    return SHARED_DATA


# -- tiny real-like label maps, made in the tests ---------------------------------------
import json  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from kidedge.phantom.generate import canonical_affine  # noqa: E402

BODY_SHAPE = (40, 64, 64)      # canonical (slice, row, col): I, P, L
BODY_SPACING = (5.0, 5.0, 5.0)


def ellipsoid(shape, centre, radii):
    """bool mask of an axis-aligned ellipsoid (voxel units)."""
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0


def tiny_body() -> np.ndarray:
    """A 40 x 64 x 64 canonical body in BTCV codes (1 spleen, 2 right kidney, 3 left
    kidney, 4 gallbladder, 5 liver, 6 stomach, 7 aorta, 8 pancreas) at 5 mm: organs where
    a patient has them (liver on the right = low columns, stomach in front)."""
    b = np.zeros(BODY_SHAPE, np.uint8)
    s = BODY_SHAPE
    b[ellipsoid(s, (12, 24, 19), (8, 10, 11))] = 5
    b[ellipsoid(s, (11, 36, 49), (5, 6, 5))] = 1
    b[ellipsoid(s, (10, 20, 40), (4, 6, 6))] = 6
    b[ellipsoid(s, (17, 20, 24), (2, 2, 2))] = 4
    b[ellipsoid(s, (15, 29, 36), (1.5, 2, 8))] = 8
    b[ellipsoid(s, (20, 40, 20), (6, 4, 4))] = 2
    b[ellipsoid(s, (18, 40, 44), (6, 4, 4))] = 3
    aorta = ellipsoid((1, 64, 64), (0, 34, 34), (1, 2, 2))[0]
    b[:34][:, aorta] = 7
    return b


def tiny_kits(with_cyst: bool = True, one_side: bool = False) -> np.ndarray:
    """A 36 x 64 x 64 canonical KiTS label map at 3 mm: two kidneys (right one with a
    tumour, left one with a cyst), or only the right one."""
    lab = np.zeros((36, 64, 64), np.uint8)
    lab[ellipsoid(lab.shape, (18, 40, 16), (10, 6, 4))] = 1
    lab[ellipsoid(lab.shape, (14, 41, 13), (3, 3, 3))] = 2
    if not one_side:
        lab[ellipsoid(lab.shape, (17, 40, 47), (10, 6, 4))] = 1
        if with_cyst:
            lab[ellipsoid(lab.shape, (22, 40, 50), (2, 2, 2))] = 3
    return lab


def save_canonical(array, spacing, path, axcodes=("I", "P", "L")):
    """Write a canonical array as NIfTI in another orientation (``axcodes``), with an
    affine that says so, so that reading it back tests the orientation handling."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    aff = canonical_affine(spacing)
    ornt = ornt_transform(axcodes2ornt(("I", "P", "L")), axcodes2ornt(axcodes))
    native = apply_orientation(array, ornt)
    affine = aff @ inv_ornt_aff(ornt, array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(native), affine), str(path))
    return path


@pytest.fixture
def tiny_sources(tmp_path):
    """(bodies folder with 3 BTCV-like maps, kidneys folder with 3 KiTS-like cases)."""
    bodies = tmp_path / "bodies"
    for i, codes in enumerate((("L", "P", "S"), ("R", "A", "S"), ("I", "P", "L"))):
        body = tiny_body()
        if i == 1:
            body = np.roll(body, 2, axis=2)
        save_canonical(body, BODY_SPACING, bodies / f"label{i:04d}.nii.gz", codes)
    kidneys = tmp_path / "kits"
    for i in range(3):
        lab = tiny_kits(with_cyst=i != 0, one_side=i == 2)
        save_canonical(lab, (3.0, 3.0, 3.0), kidneys / f"case_{i:05d}" / "segmentation.nii.gz")
    return bodies, kidneys


def write_labels_json(path, names: dict):
    path.write_text(json.dumps({str(k): v for k, v in names.items()}))
