"""Small archives for the batch tests: tiny CT volumes (NIfTI and DICOM) and the tiny
1x1-convolution model package of the runtime tests (the right labels are known)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.runtime.synthetic import kits_affine, make_ct, make_single_package, write_nifti


@pytest.fixture
def package(tmp_path):
    return make_single_package(tmp_path / "pkg")


def write_case(path, seed=0, shape=(12, 32, 32)):
    hu, truth = make_ct(shape=shape, kidney_slices=(3, 9), seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, hu, kits_affine())
    return truth


@pytest.fixture
def archive(tmp_path):
    """A tree: two good NIfTI scans in a KiTS layout and a nested folder, a corrupt gzip,
    a file that is not a scan at all, and a label map that must not be taken for a scan."""
    root = tmp_path / "archive"
    truths = {
        "kits/case_00000/imaging.nii.gz": write_case(root / "kits/case_00000/imaging.nii.gz", seed=1),
        "site_b/patient_7.nii.gz": write_case(root / "site_b/patient_7.nii.gz", seed=2),
    }
    write_nifti(root / "kits/case_00000/segmentation.nii.gz", np.zeros((12, 32, 32), np.uint8), kits_affine())
    good = (root / "site_b/patient_7.nii.gz").read_bytes()
    (root / "site_b/broken.nii.gz").write_bytes(good[: len(good) // 2])  # truncated gzip
    (root / "site_b/notes.nii").write_bytes(b"not a NIfTI header at all")
    return root, truths
