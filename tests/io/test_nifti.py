"""NIfTI reading, canonical orientation and the exact way back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from kidedge.io import CANONICAL_AXCODES, load_scan, save_segmentation
from tests.io.conftest import (
    kits19_affine,
    lps_affine,
    random_volume,
    ras_affine,
    write_nifti,
)

ORIENTATIONS = {
    "ras_xyz": ((10, 12, 7), ras_affine()),
    "lps_xyz": ((10, 12, 7), lps_affine()),
    "kits19": ((7, 12, 10), kits19_affine()),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_round_trip_identical_array_and_affine(tmp_path, name, ext):
    shape, affine = ORIENTATIONS[name]
    vol = random_volume(shape, seed=1)
    src = write_nifti(tmp_path / f"scan{ext}", vol, affine)
    scan = load_scan(src)

    assert nib.aff2axcodes(scan.canonical_affine) == CANONICAL_AXCODES
    assert scan.shape == (7, 12, 10)  # (slices, rows, cols) for every input orientation
    assert scan.array.dtype == np.int16  # native dtype, never float
    np.testing.assert_array_equal(scan.native, vol)
    np.testing.assert_allclose(scan.affine, nib.load(src).affine)
    np.testing.assert_allclose(scan.spacing, (2.5, 0.8, 0.8), rtol=1e-6)
    # the canonical affine maps canonical voxel (k, i, j) to the same world point as the
    # native voxel it views
    k, i, j = 3, 5, 2
    native_index = np.argwhere(scan.native == scan.array[k, i, j])
    world = scan.canonical_affine @ [k, i, j, 1]
    assert any(np.allclose(scan.affine @ [*idx, 1], world, atol=1e-4) for idx in native_index)

    labels = (scan.array % 4).astype(np.uint8)
    out = save_segmentation(labels, scan, tmp_path / f"seg{ext}")
    written = nib.load(out)
    assert written.shape == vol.shape
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), (vol % 4).astype(np.uint8))
    np.testing.assert_array_equal(written.affine, nib.load(src).affine)
    assert int(written.header["sform_code"]) == int(nib.load(src).header["sform_code"])
    assert int(written.header["qform_code"]) == int(nib.load(src).header["qform_code"])
    # and it reads back to the same canonical labels
    np.testing.assert_array_equal(load_scan(out).array, labels)


def test_canonical_array_is_a_view_of_the_loaded_data(tmp_path):
    for name, (shape, affine) in ORIENTATIONS.items():
        src = write_nifti(tmp_path / f"{name}.nii.gz", random_volume(shape), affine)
        scan = load_scan(src)
        assert np.shares_memory(scan.array, scan.native), name
        assert scan.array.dtype == scan.native.dtype == np.int16


def test_kits19_layout_is_canonical_as_it_is(tmp_path):
    vol = random_volume((7, 12, 10))
    scan = load_scan(write_nifti(tmp_path / "k.nii.gz", vol, kits19_affine()))
    np.testing.assert_array_equal(scan.array, vol)
    np.testing.assert_allclose(scan.canonical_affine, scan.affine)


def test_ras_file_flips_slices_rows_and_columns(tmp_path):
    vol = random_volume((10, 12, 7))  # (x, y, z) towards (R, A, S)
    scan = load_scan(write_nifti(tmp_path / "r.nii", vol, ras_affine()))
    # canonical axes run towards (I, P, L): every axis is reversed and the order swapped
    np.testing.assert_array_equal(scan.array, vol.transpose(2, 1, 0)[::-1, ::-1, ::-1])


def test_scaled_integers_keep_dtype_and_record_slope(tmp_path):
    vol = np.arange(7 * 8 * 9, dtype=np.uint16).reshape(7, 8, 9)
    img = nib.Nifti1Image(vol, kits19_affine())
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    scan = load_scan(tmp_path / "s.nii.gz")
    assert scan.array.dtype == np.uint16
    assert (scan.slope, scan.intercept) == (1.0, -1024.0)
    np.testing.assert_array_equal(scan.array * scan.slope + scan.intercept, vol - 1024.0)


def test_big_endian_file_reads_native_values(tmp_path):
    vol = random_volume((7, 8, 9))
    big = vol.astype(">i2")
    img = nib.Nifti1Image(big, kits19_affine())
    img.set_data_dtype(np.dtype(">i2"))
    nib.save(img, str(tmp_path / "be.nii"))
    scan = load_scan(tmp_path / "be.nii")
    assert scan.array.dtype.isnative
    np.testing.assert_array_equal(scan.array, vol)


def test_trailing_singleton_4d_is_squeezed_and_written_back_4d(tmp_path):
    vol = random_volume((10, 12, 7))
    src = write_nifti(tmp_path / "s4.nii.gz", vol[..., None], ras_affine())
    scan = load_scan(src)
    assert scan.shape == (7, 12, 10)
    out = save_segmentation(np.ones(scan.shape, np.uint8), scan, tmp_path / "o.nii.gz")
    assert nib.load(out).shape == (10, 12, 7, 1)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_float_file_of_whole_hu_is_held_as_int16(tmp_path, ext):
    vol = random_volume((7, 8, 9)).astype(np.float32)
    scan = load_scan(write_nifti(tmp_path / f"f{ext}", vol, kits19_affine()))
    assert scan.is_loaded and scan.array.dtype == np.int16 and scan.dtype == np.int16
    np.testing.assert_array_equal(scan.array, vol)


@pytest.mark.parametrize("change", ["fraction", "out of int16"])
def test_float_file_with_other_values_stays_float(tmp_path, change):
    vol = random_volume((7, 8, 9)).astype(np.float64)
    vol[6, 7, 8] = 0.25 if change == "fraction" else 40000.0  # the very last voxel
    scan = load_scan(write_nifti(tmp_path / "f.nii.gz", vol, kits19_affine()))
    assert scan.array.dtype == np.float64
    np.testing.assert_array_equal(scan.array, vol)


def test_integer_gzip_is_read_lazily(tmp_path):
    scan = load_scan(write_nifti(tmp_path / "l.nii.gz", random_volume((7, 8, 9)), kits19_affine()))
    assert not scan.is_loaded
    _ = scan.array
    assert scan.is_loaded


def test_multi_member_and_padded_gzip_files_load(tmp_path):
    # a legitimate .nii.gz whose trailer ISIZE does not match the header: the cheap check
    # falls back to a full decompression to decide, and the file reads correctly
    import gzip

    from kidedge.io import SlabReader

    vol = random_volume((10, 12, 7))
    plain = write_nifti(tmp_path / "plain.nii", vol, ras_affine()).read_bytes()
    cut = len(plain) // 2
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(plain[:cut]) + gzip.compress(plain[cut:]))
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(plain + b"\0" * 1000))
    for path in (multi, padded):
        scan = load_scan(path)
        np.testing.assert_array_equal(scan.native, vol)
        slabs = list(SlabReader(load_scan(path), slab_size=3, context=1))
        np.testing.assert_array_equal(np.concatenate([s.core for s in slabs]), scan.array)


def test_oblique_scan_round_trips(tmp_path):
    # a 15-degree gantry-like rotation about x: the nearest axes decide the orientation
    t = np.deg2rad(15)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.8, 2.5])
    vol = random_volume((10, 12, 7))
    src = write_nifti(tmp_path / "oblique.nii.gz", vol, affine)
    scan = load_scan(src)
    assert scan.shape == (7, 12, 10)
    np.testing.assert_allclose(scan.spacing, (2.5, 0.8, 0.8), rtol=1e-6)
    out = save_segmentation((scan.array % 3).astype(np.uint8), scan, tmp_path / "seg.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), (vol % 3).astype(np.uint8))
    np.testing.assert_allclose(nib.load(out).affine, nib.load(src).affine)


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_big_endian_float_file(tmp_path, dtype):
    vol = random_volume((7, 8, 9)).astype(np.float64)
    for name, data in (("whole", vol), ("frac", vol + 0.5)):
        img = nib.Nifti1Image(data.astype(dtype), kits19_affine())
        img.set_data_dtype(np.dtype(dtype))
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
        scan = load_scan(tmp_path / f"{name}.nii.gz")
        assert scan.array.dtype.isnative
        assert (scan.array.dtype == np.int16) == (name == "whole")
        np.testing.assert_array_equal(scan.array, data)
