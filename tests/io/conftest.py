"""Fixtures for the io tests: tiny NIfTI volumes in the orientations kidedge meets."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project root; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def kits19_affine(spacing=(2.5, 0.8, 0.8)) -> np.ndarray:
    """KiTS19's affine: array axes (slice, row, col) -> (I, P, L)."""
    s, r, c = spacing
    return np.array([[0, 0, -c, 0], [0, -r, 0, 0], [-s, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def ras_affine(spacing=(0.8, 0.8, 2.5), origin=(-100.0, -120.0, -300.0)) -> np.ndarray:
    """dcm2niix-like (x, y, z) RAS+ affine."""
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def lps_affine(spacing=(0.8, 0.8, 2.5)) -> np.ndarray:
    """(x, y, z) stored as LPS (ITK-style): x->L, y->P, z->S."""
    a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    a[:3, 3] = (150.0, 170.0, -300.0)
    return a


def random_volume(shape, dtype=np.int16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 2000, size=shape).astype(dtype)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, **header) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    for k, v in header.items():
        img.header[k] = v
    nib.save(img, str(path))
    return path
