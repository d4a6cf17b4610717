"""DICOM series folders: ordering, spacing, rescale, affine, one series per folder."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from kidedge.errors import KidedgeError  # noqa: E402
from kidedge.io import CANONICAL_AXCODES, load_scan, save_segmentation  # noqa: E402

ROWS, COLS = 6, 7


def write_series(folder, n=5, step=2.0, thickness=3.0, slope=1.0, intercepts=None, series_uid=None,
                 positions=None, raw=None, seed=0):
    """Write n axial CT slices with shuffled file names; returns the raw pixels (slice order)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 3000, size=(n, ROWS, COLS), dtype=np.uint16) if raw is None else raw
    series_uid = series_uid or generate_uid()
    intercepts = intercepts if intercepts is not None else [-1024.0] * n
    zs = positions if positions is not None else [-300.0 + k * step for k in range(n)]
    names = rng.permutation(n)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = int(names[k]) + 1  # deliberately unrelated to position
        ds.ImagePositionPatient = [-100.0, -80.0, float(zs[k])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.75, 0.5]  # row spacing, column spacing
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercepts[k]
        ds.PixelData = raw[k].tobytes()
        ds.save_as(str(folder / f"IM{names[k]:04d}"), enforce_file_format=True)
    return raw


def test_series_is_sorted_by_position_with_spacing_from_positions(tmp_path):
    raw = write_series(tmp_path / "s", n=5, step=2.0, thickness=3.0)
    scan = load_scan(tmp_path / "s")
    assert scan.format == "dicom" and scan.shape == (5, ROWS, COLS)
    np.testing.assert_allclose(scan.spacing, (2.0, 0.75, 0.5))  # 2 mm apart, not the 3 mm thickness
    assert scan.array.dtype == np.int16 and (scan.slope, scan.intercept) == (1.0, 0.0)
    # canonical slice 0 is the most superior: the last position
    np.testing.assert_array_equal(scan.array, (raw.astype(np.int32) - 1024)[::-1])
    assert nib.aff2axcodes(scan.canonical_affine) == CANONICAL_AXCODES
    assert np.shares_memory(scan.array, scan.native)


def test_affine_maps_voxels_to_patient_position(tmp_path):
    write_series(tmp_path / "s", n=4, step=2.5)
    scan = load_scan(tmp_path / "s")
    # native voxel (slice k, row i, col j) at LPS (-100 + 0.5 j, -80 + 0.75 i, -300 + 2.5 k)
    k, i, j = 2, 3, 4
    lps = np.array([-100 + 0.5 * j, -80 + 0.75 * i, -300 + 2.5 * k])
    ras = scan.affine @ [k, i, j, 1]
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1])


def test_non_unit_slope_keeps_stored_integers(tmp_path):
    raw = write_series(tmp_path / "s", n=3, slope=0.5)
    scan = load_scan(tmp_path / "s")
    assert scan.array.dtype == np.uint16 and (scan.slope, scan.intercept) == (0.5, -1024.0)
    np.testing.assert_allclose(scan.array * scan.slope + scan.intercept, (raw * 0.5 - 1024)[::-1])


def test_per_slice_intercepts_become_float_hu(tmp_path):
    raw = write_series(tmp_path / "s", n=3, intercepts=[-1024.0, -1000.0, -1024.0])
    scan = load_scan(tmp_path / "s")
    assert scan.array.dtype == np.float32
    expected = raw.astype(np.float32) + np.array([-1024, -1000, -1024], np.float32)[:, None, None]
    np.testing.assert_allclose(scan.array, expected[::-1])


def test_two_series_in_one_folder(tmp_path):
    write_series(tmp_path / "s", n=3, series_uid="1.2.3.4")
    extra = tmp_path / "other"
    write_series(extra, n=3, series_uid="1.2.3.5", positions=[0.0, 2.0, 4.0])
    for p in extra.iterdir():
        p.rename(tmp_path / "s" / f"B{p.name}")
    with pytest.raises(KidedgeError, match="2 DICOM series") as info:
        load_scan(tmp_path / "s")
    assert str(tmp_path / "s") in str(info.value)


def test_missing_slice_and_duplicate_position(tmp_path):
    write_series(tmp_path / "gap", n=4, positions=[0.0, 2.0, 6.0, 8.0])
    with pytest.raises(KidedgeError, match="uneven slice spacing"):
        load_scan(tmp_path / "gap")
    write_series(tmp_path / "dup", n=3, positions=[0.0, 2.0, 2.0])
    with pytest.raises(KidedgeError, match="same position"):
        load_scan(tmp_path / "dup")


def test_single_slice_and_single_file(tmp_path):
    write_series(tmp_path / "one", n=1)
    with pytest.raises(KidedgeError, match="single DICOM slice"):
        load_scan(tmp_path / "one")
    only = next((tmp_path / "one").iterdir())
    with pytest.raises(KidedgeError, match="give the folder"):
        load_scan(only)


def test_non_dicom_files_beside_the_series_are_ignored(tmp_path):
    raw = write_series(tmp_path / "s", n=3)
    (tmp_path / "s" / "notes.txt").write_text("acquired on a Tuesday")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0\1")
    scan = load_scan(tmp_path / "s")
    assert scan.shape[0] == 3
    np.testing.assert_array_equal(scan.array, (raw.astype(np.int32) - 1024)[::-1])


def test_segmentation_of_a_dicom_series_overlays_it(tmp_path):
    write_series(tmp_path / "s", n=4)
    scan = load_scan(tmp_path / "s")
    labels = (np.arange(np.prod(scan.shape)) % 3).reshape(scan.shape).astype(np.uint8)
    out = save_segmentation(labels, scan, tmp_path / "seg.nii.gz")
    back = load_scan(out)
    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(back.canonical_affine, scan.canonical_affine, atol=1e-4)
    assert int(nib.load(out).header["sform_code"]) == 1
    with pytest.raises(KidedgeError, match="output path is the input"):
        save_segmentation(labels, scan, tmp_path / "s")


def test_missing_pydicom_is_a_clear_error(tmp_path, monkeypatch):
    write_series(tmp_path / "s", n=2)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(KidedgeError, match=r"pip install 'kidedge\[dicom\]'"):
        load_scan(tmp_path / "s")


@pytest.mark.shared_data
def test_real_ct_sample(shared_data):
    folder = shared_data / "ct-dicom-sample"
    scan = load_scan(folder)
    assert scan.shape == (20, 512, 512)
    # The files say SliceThickness 3 mm, but ImagePositionPatient is 2 mm apart (an
    # overlapping reconstruction): spacing comes from positions.
    thickness = {float(pydicom.dcmread(str(p), stop_before_pixels=True).SliceThickness) for p in folder.iterdir()}
    assert thickness == {3.0}
    np.testing.assert_allclose(scan.spacing, (2.0, 0.9765625, 0.9765625))
    hu = scan.array * scan.slope + scan.intercept
    assert -1100 <= hu.min() <= -900  # air
    assert hu.max() < 4000
    soft = np.median(hu[:, 200:312, 200:312])  # centre of the abdomen
    assert -100 <= soft <= 150
    assert nib.aff2axcodes(scan.canonical_affine) == CANONICAL_AXCODES
