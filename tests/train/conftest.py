"""Fixtures for the training tests: a tiny phantom dataset in the KiTS layout.

Cases are 24 x 96 x 96 voxels at 5 x 3 x 3 mm (kidneys fill most slices), small enough
that a whole CPU training epoch of a slimmed model takes seconds on 2 cores.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from kidedge.phantom import canonical_affine, make_phantom

SHAPE = (24, 96, 96)
SPACING = (5.0, 3.0, 3.0)


def write_tiny_phantoms(out_dir, cases: int, seed: int = 0):
    """``cases`` phantoms as ``out_dir/case_XXXXX/{imaging,segmentation}.nii.gz``."""
    affine = canonical_affine(SPACING)
    for i in range(cases):
        ph = make_phantom(seed * 1000 + i, shape=SHAPE, spacing=SPACING)
        d = out_dir / f"case_{i:05d}"
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(ph.hu.astype(np.int16), affine), str(d / "imaging.nii.gz"))
        nib.save(nib.Nifti1Image(ph.labels.astype(np.uint8), affine), str(d / "segmentation.nii.gz"))
    return out_dir


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory):
    """10 tiny phantom cases (split 8 / 1 / 1 by the recipes' 80/10/10)."""
    return write_tiny_phantoms(tmp_path_factory.mktemp("train_phantoms"), cases=10)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: the 2-core CI machine is shared, and oversubscribed torch
    threads make tiny CPU trainings many times slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
