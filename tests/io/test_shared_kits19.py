"""Real KiTS19 label maps (../shared/data/kits19-labels): canonical and back, exactly."""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
import pytest

from kidedge.io import (
    CANONICAL_AXCODES,
    discover_cases,
    load_label_map,
    load_scan,
    save_segmentation,
)

pytestmark = pytest.mark.shared_data


@functools.lru_cache(maxsize=1)
def _by_size(root):
    return sorted(root.glob("case_*/segmentation.nii.gz"),
                  key=lambda p: (int(np.prod(nib.load(p).shape)), p.name))


def _smallest_cases(shared_data, n=3):
    """The n cases with the fewest voxels (header reads only), to keep the test quick."""
    files = _by_size(shared_data / "kits19-labels")
    if len(files) < n:
        pytest.skip("kits19-labels has too few cases")
    return files[:n]


def test_discovers_the_labels_only_release(shared_data):
    root = shared_data / "kits19-labels"
    cases = discover_cases(root)
    assert len(cases) == len(list(root.glob("case_*/segmentation.nii.gz")))
    assert all(c.layout == "kits19" and c.image is None and c.label is not None for c in cases)


def test_real_label_maps_go_canonical_and_back_exactly(shared_data, tmp_path):
    for path in _smallest_cases(shared_data):
        original = nib.load(path)
        raw = np.asanyarray(original.dataobj)
        labels, scan = load_label_map(path)
        assert nib.aff2axcodes(scan.canonical_affine) == CANONICAL_AXCODES
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
        assert np.shares_memory(scan.array, scan.native)
        if scan.dtype == np.uint8:  # some KiTS19 label files are uint16
            assert np.shares_memory(labels, scan.native)  # canonical as stored: no copy
        np.testing.assert_array_equal(scan.from_canonical(labels), raw)
        out = save_segmentation(labels, scan, tmp_path / f"{path.parent.name}.nii.gz")
        back = nib.load(out)
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), raw)
        np.testing.assert_array_equal(back.affine, original.affine)
        assert back.shape == original.shape
        for code in ("sform_code", "qform_code"):
            assert int(back.header[code]) == int(original.header[code])


def test_same_data_saved_in_ras_order_reads_to_the_same_canonical_array(shared_data, tmp_path):
    for path in _smallest_cases(shared_data):
        labels, scan = load_label_map(path)
        ras = nib.as_closest_canonical(nib.load(path))  # (x, y, z) towards (R, A, S)
        assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
        ras_path = tmp_path / f"{path.parent.name}_ras.nii.gz"
        nib.save(ras, str(ras_path))
        ras_scan = load_scan(ras_path)
        assert ras_scan.native_shape != scan.native_shape  # really stored differently
        np.testing.assert_array_equal(ras_scan.array, labels)
        np.testing.assert_allclose(ras_scan.canonical_affine, scan.canonical_affine, atol=1e-4)
        np.testing.assert_allclose(ras_scan.spacing, scan.spacing, rtol=1e-6)
