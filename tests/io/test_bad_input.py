"""Every kind of bad input is one KidedgeError line naming the file, and nothing is written."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import load_scan, save_segmentation
from tests.io.conftest import kits19_affine, random_volume, ras_affine, write_nifti


def _raises_one_line(path, match):
    with pytest.raises(KidedgeError, match=match) as info:
        scan = load_scan(path)
        _ = scan.array  # lazily read data must fail too
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_missing_file(tmp_path):
    _raises_one_line(tmp_path / "nope.nii.gz", "no such file")


def test_empty_file(tmp_path):
    for name in ("empty.nii.gz", "empty.nii", "empty.dat"):
        p = tmp_path / name
        p.write_bytes(b"")
        _raises_one_line(p, "empty file")


def test_empty_folder(tmp_path):
    d = tmp_path / "series"
    d.mkdir()
    _raises_one_line(d, "empty folder")


def test_not_nifti_or_dicom(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    _raises_one_line(p, "not a NIfTI file")
    fake = tmp_path / "fake.nii"
    fake.write_bytes(b"x" * 400)
    _raises_one_line(fake, "NIfTI")
    fake_gz = tmp_path / "fake.nii.gz"
    fake_gz.write_bytes(b"x" * 400)  # not gzip at all
    _raises_one_line(fake_gz, "NIfTI")
    gz_text = tmp_path / "text.nii.gz"
    gz_text.write_bytes(gzip.compress(b"not a nifti header" * 50))
    _raises_one_line(gz_text, "NIfTI")


def test_folder_without_dicom(tmp_path):
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "readme.txt").write_text("not dicom")
    _raises_one_line(d, "no DICOM image slices")


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_gzip(tmp_path, keep):
    src = write_nifti(tmp_path / "full.nii.gz", random_volume((20, 32, 32)), kits19_affine())
    data = src.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: int(len(data) * keep)])
    _raises_one_line(bad, "truncated")


def test_truncated_gzip_inside_header(tmp_path):
    src = write_nifti(tmp_path / "full.nii.gz", random_volume((20, 32, 32)), kits19_affine())
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(src.read_bytes()[:40])
    _raises_one_line(bad, "truncated|corrupt|NIfTI")


def test_corrupt_gzip_crc(tmp_path):
    src = write_nifti(tmp_path / "full.nii.gz", np.zeros((20, 32, 32), np.int16), kits19_affine())
    data = bytearray(src.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32 of the trailer; ISIZE (last 4 bytes) still matches
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(data))
    _raises_one_line(bad, "corrupt")


def test_truncated_uncompressed(tmp_path):
    src = write_nifti(tmp_path / "full.nii", random_volume((20, 32, 32)), kits19_affine())
    bad = tmp_path / "cut.nii"
    bad.write_bytes(src.read_bytes()[:5000])
    _raises_one_line(bad, "truncated")


def test_2d_array(tmp_path):
    p = write_nifti(tmp_path / "flat.nii.gz", random_volume((32, 32)), np.eye(4))
    _raises_one_line(p, "2D array")


def test_4d_array(tmp_path):
    p = write_nifti(tmp_path / "series.nii.gz", random_volume((8, 8, 6, 3)), ras_affine())
    _raises_one_line(p, "4D array")


def test_nan_voxels(tmp_path):
    vol = random_volume((6, 8, 8)).astype(np.float32)
    vol[3, 4, 5] = np.nan
    p = write_nifti(tmp_path / "nan.nii.gz", vol, kits19_affine())
    _raises_one_line(p, "NaN or infinite voxels")
    vol = vol + 0.5  # fractional values (the float path)
    _raises_one_line(write_nifti(tmp_path / "nan_frac.nii", vol, kits19_affine()), "NaN or infinite voxels")


def test_infinite_voxels(tmp_path):
    vol = random_volume((6, 8, 8)).astype(np.float64)
    vol[0, 0, 0] = np.inf
    _raises_one_line(write_nifti(tmp_path / "inf.nii", vol, kits19_affine()), "infinite")


@pytest.mark.parametrize("pixdim", [0.0, -1.0, float("nan"), float("inf")])
def test_zero_negative_or_nonfinite_pixdim(tmp_path, pixdim):
    img = nib.Nifti1Image(random_volume((6, 8, 8)), None)  # affine from pixdim
    zooms = [1.0, 1.0, 1.0]
    zooms[2] = pixdim
    img.header["pixdim"][1:4] = zooms
    p = tmp_path / "pix.nii.gz"
    nib.save(img, str(p))
    _raises_one_line(p, "voxel spacing")


def test_zero_spacing_in_affine(tmp_path):
    affine = kits19_affine()
    affine[:, 0] = 0.0  # the slice axis has no extent (pixdim says 1 mm: the sform wins)
    img = nib.Nifti1Image(random_volume((6, 8, 8)), None)
    img.header.set_sform(affine, code=1)
    p = tmp_path / "zero.nii.gz"
    nib.save(img, str(p))
    _raises_one_line(p, "zero voxel spacing")


def test_absurd_spacing_in_metres(tmp_path):
    p = write_nifti(tmp_path / "metres.nii.gz", random_volume((6, 8, 8)), kits19_affine((0.0025, 0.0008, 0.0008)))
    _raises_one_line(p, "outside")


def test_output_equal_to_input_is_refused_and_input_untouched(tmp_path):
    src = write_nifti(tmp_path / "scan.nii.gz", random_volume((6, 8, 8)), kits19_affine())
    before = src.read_bytes()
    scan = load_scan(src)
    for same in (src, tmp_path / "." / "scan.nii.gz"):
        with pytest.raises(KidedgeError, match="output path is the input"):
            save_segmentation(np.zeros(scan.shape, np.uint8), scan, same)
    os.symlink(src, tmp_path / "link.nii.gz")
    with pytest.raises(KidedgeError, match="output path is the input"):
        save_segmentation(np.zeros(scan.shape, np.uint8), scan, tmp_path / "link.nii.gz")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.nii.gz", "scan.nii.gz"]
