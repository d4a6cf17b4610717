"""save_segmentation: the input's geometry, atomic, never a partial or overwritten file."""

from __future__ import annotations

import errno

import nibabel as nib
import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import load_scan, save_segmentation
from kidedge.io import writer as writer_module
from tests.io.conftest import kits19_affine, random_volume, ras_affine, write_nifti


@pytest.fixture
def scan(tmp_path):
    return load_scan(write_nifti(tmp_path / "scan.nii.gz", random_volume((10, 12, 7)), ras_affine()))


def _disk_full_save(img, filename):
    with open(filename, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_write_leaves_nothing_behind(tmp_path, scan, monkeypatch):
    monkeypatch.setattr(writer_module.nib, "save", _disk_full_save)
    out = tmp_path / "out" / "seg.nii.gz"
    with pytest.raises(KidedgeError, match="No space left") as info:
        save_segmentation(np.zeros(scan.shape, np.uint8), scan, out)
    assert str(out) in str(info.value)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary file left either


def test_failed_write_keeps_the_previous_output(tmp_path, scan, monkeypatch):
    out = tmp_path / "seg.nii.gz"
    save_segmentation(np.ones(scan.shape, np.uint8), scan, out)
    before = out.read_bytes()
    monkeypatch.setattr(writer_module.nib, "save", _disk_full_save)
    with pytest.raises(KidedgeError):
        save_segmentation(np.zeros(scan.shape, np.uint8), scan, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "seg.nii.gz"]


def test_shape_mismatch_is_refused_before_writing(tmp_path, scan):
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(KidedgeError, match="do not match"):
        save_segmentation(np.zeros((7, 12, 9), np.uint8), scan, out)
    # native-order labels are a mistake too (shape (10, 12, 7) is not canonical here)
    with pytest.raises(KidedgeError, match="do not match"):
        save_segmentation(np.zeros(scan.native_shape, np.uint8), scan, out)
    assert not out.exists()


def test_bad_labels_are_refused(tmp_path, scan):
    with pytest.raises(KidedgeError, match="integers"):
        save_segmentation(np.zeros(scan.shape, np.float32), scan, tmp_path / "a.nii.gz")
    with pytest.raises(KidedgeError, match="0..255"):
        save_segmentation(np.full(scan.shape, 300, np.int64), scan, tmp_path / "b.nii.gz")
    with pytest.raises(KidedgeError, match=".nii or .nii.gz"):
        save_segmentation(np.zeros(scan.shape, np.uint8), scan, tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_int64_labels_are_written_as_uint8(tmp_path, scan):
    labels = (np.arange(np.prod(scan.shape)) % 4).reshape(scan.shape)
    out = save_segmentation(labels, scan, tmp_path / "seg.nii")
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(load_scan(out).array, labels)


def test_kits19_header_codes_survive(tmp_path):
    # KiTS19 files carry sform_code 2 and qform_code 0
    img = nib.Nifti1Image(random_volume((7, 12, 10)), kits19_affine())
    src = tmp_path / "imaging.nii.gz"
    nib.save(img, str(src))
    hdr = nib.load(src).header
    scan = load_scan(src)
    out = save_segmentation(np.zeros(scan.shape, np.uint8), scan, tmp_path / "seg.nii.gz")
    new = nib.load(out).header
    assert (int(new["sform_code"]), int(new["qform_code"])) == (int(hdr["sform_code"]), int(hdr["qform_code"]))
    np.testing.assert_array_equal(new.get_best_affine(), hdr.get_best_affine())
