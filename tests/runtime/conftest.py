import numpy as np
import pytest

from .synthetic import kits_affine, make_cascade_package, make_ct, make_single_package, write_nifti


@pytest.fixture
def ct_case(tmp_path):
    """A small KiTS-layout CT (24 x 64 x 64, 2 mm slices) with known truth labels."""
    hu, truth = make_ct()
    path = write_nifti(tmp_path / "case_a.nii.gz", hu, kits_affine())
    return path, hu, truth


@pytest.fixture
def single_package(tmp_path):
    return make_single_package(tmp_path / "pkg_single")


@pytest.fixture
def cascade_package(tmp_path):
    return make_cascade_package(tmp_path / "pkg_cascade")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def shared_data():
    """../shared/data beside the project root; the test is skipped when it is absent."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip("../shared/data is not available")
    return root
