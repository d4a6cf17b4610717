"""DICOM SEG output: every labelled voxel on the same source pixel as the NIfTI output and
as the anatomy says, segments and references as DICOM wants, bad input refused."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from kidedge.errors import KidedgeError  # noqa: E402
from kidedge.io import load_scan, save_segmentation  # noqa: E402
from kidedge.io.dicom_seg import SEGMENT_CLASSES, check_dicom_seg_source, write_dicom_seg  # noqa: E402

from .conftest import kits19_affine, write_nifti  # noqa: E402
from .seg_geometry import (  # noqa: E402
    SourceSeries,
    nifti_pixels,
    repaired_copy,
    seg_pixels_highdicom,
    seg_pixels_pydicom,
    write_ct_series,
)

ROWS, COLS = 6, 7


def pattern(shape) -> np.ndarray:
    """Canonical labels that no flip, shift or transpose maps onto themselves: every class,
    different places on the first, second and last slice, an empty slice between."""
    n, h, w = shape
    lab = np.zeros(shape, np.uint8)
    lab[0, 0, 0] = 1
    lab[0, 1, 2:4] = 2
    lab[1, 2, w - 2] = 1
    lab[1, h - 1, 0:3] = 3
    lab[n - 1, h - 1, w - 1] = 3
    lab[n - 1, h // 2, 1] = 1
    return lab


def expected_axial(lab: np.ndarray, source: SourceSeries) -> set:
    """Where canonical labels must land on an axial source, from anatomy alone: canonical
    slice 0 is the most superior image, row 0 the most anterior row, column 0 the patient's
    right-most column (LPS: +z superior, +y posterior, +x left)."""
    order = np.argsort(-source.ipp[:, 2])  # superior first
    h, w = source.shape
    rows_posterior = source.col_cos[1] > 0  # source rows advance towards posterior
    cols_left = source.row_cos[0] > 0  # source columns advance towards the patient's left
    k, r, c = np.nonzero(lab)
    sr = r if rows_posterior else h - 1 - r
    sc = c if cols_left else w - 1 - c
    return source.codes(order[k], sr, sc, lab[k, r, c])


def _write_both(scan, labels, tmp_path):
    seg = write_dicom_seg(labels, scan, tmp_path / "out" / "seg.dcm", model="test-model")
    nii = save_segmentation(labels, scan, tmp_path / "out" / "seg.nii.gz")
    return seg, nii


@pytest.mark.parametrize("case", ["axial", "axial-rotated-feet-first", "coronal"])
def test_every_label_lands_on_its_source_pixel(tmp_path, case):
    if case == "axial":
        iop, positions = (1, 0, 0, 0, 1, 0), [(-100.0, -80.0, -300.0 + 2 * k) for k in range(5)]
    elif case == "axial-rotated-feet-first":
        # rows run anterior and columns to the patient's right; positions given top-down
        iop, positions = (-1, 0, 0, 0, -1, 0), [(100.0, 80.0, 40.0 - 2.5 * k) for k in range(5)]
    else:  # coronal: the canonical slice axis is the source's row axis
        iop, positions = (1, 0, 0, 0, 0, -1), [(-100.0, -50.0 + 3 * k, 60.0) for k in range(4)]
    folder = tmp_path / "series"
    write_ct_series(folder, positions, iop=iop, shape=(ROWS, COLS))
    scan = load_scan(folder)
    labels = pattern(scan.shape)
    seg, nii = _write_both(scan, labels, tmp_path)
    source = SourceSeries(folder)
    from_seg = seg_pixels_pydicom(seg, source)
    np.testing.assert_array_equal(from_seg, nifti_pixels(nii, source))
    np.testing.assert_array_equal(from_seg, seg_pixels_highdicom(seg, source))
    assert len(np.unique(from_seg)) == int((labels > 0).sum())
    if case != "coronal":
        np.testing.assert_array_equal(from_seg, expected_axial(labels, source))
    # the runtime's sparse label store gives the same SEG (slice by slice when axial)
    from kidedge.runtime.labelmap import SparseLabels

    sparse = SparseLabels(labels.shape)
    sparse.write(0, labels)
    again = write_dicom_seg(sparse, scan, tmp_path / "sparse.dcm")
    np.testing.assert_array_equal(seg_pixels_pydicom(again, source), from_seg)


def test_frames_only_where_labels_are_and_one_segment_per_class_present(tmp_path):
    write_ct_series(tmp_path / "s", [(0.0, 0.0, 2.0 * k) for k in range(6)], shape=(ROWS, COLS))
    scan = load_scan(tmp_path / "s")
    labels = np.zeros(scan.shape, np.uint8)
    labels[1, 2, 3] = 3  # a cyst on one slice
    labels[1:4, 0, 0] = 1  # kidney on three slices; no tumour anywhere
    out = write_dicom_seg(labels, scan, tmp_path / "seg.dcm", model="m")
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    segs = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert [segs[i].SegmentLabel for i in sorted(segs)] == ["Kidney", "Kidney cyst"]
    assert segs[2].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segs[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "367643001"
    assert segs[2].AnatomicRegionSequence[0].CodeValue == "64033007"
    assert segs[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    for number, cls in ((1, SEGMENT_CLASSES[1]), (2, SEGMENT_CLASSES[3])):
        rgb = hd.color.CIELabColor.from_dicom_value(segs[number].RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, cls.rgb, atol=2)
    assert int(ds.NumberOfFrames) == 4  # 3 kidney frames + 1 cyst frame, no empty frame
    # the SEG lives in the source's study and references every source image of the series
    src = pydicom.dcmread(scan.dicom.files[0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.PatientID == "KE0001"
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == set(scan.dicom.sop_instance_uids)


def test_a_single_segment_reads_back_the_same(tmp_path):
    # with one segment highdicom may put the segment identification in the shared groups
    write_ct_series(tmp_path / "s", [(0.0, 0.0, 2.0 * k) for k in range(4)], shape=(ROWS, COLS))
    scan = load_scan(tmp_path / "s")
    labels = (pattern(scan.shape) > 0).astype(np.uint8) * 2
    seg, nii = _write_both(scan, labels, tmp_path)
    source = SourceSeries(tmp_path / "s")
    from_seg = seg_pixels_pydicom(seg, source)
    assert from_seg.size == int((labels > 0).sum())
    np.testing.assert_array_equal(from_seg, nifti_pixels(nii, source))
    np.testing.assert_array_equal(from_seg, expected_axial(labels, source))


def test_nothing_labelled_is_one_empty_kidney_frame(tmp_path):
    write_ct_series(tmp_path / "s", [(0.0, 0.0, 2.0 * k) for k in range(4)], shape=(ROWS, COLS))
    scan = load_scan(tmp_path / "s")
    ds = pydicom.dcmread(str(write_dicom_seg(np.zeros(scan.shape, np.uint8), scan, tmp_path / "e.dcm")))
    assert int(ds.NumberOfFrames) == 1 and not ds.pixel_array.any()
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Kidney"]


def _nothing_written(folder):
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("drop", ["FrameOfReferenceUID", "StudyInstanceUID", "SOPInstanceUID"])
def test_series_without_the_tags_a_seg_needs(tmp_path, drop):
    write_ct_series(tmp_path / "s", [(0.0, 0.0, 2.0 * k) for k in range(3)], shape=(ROWS, COLS), drop=[drop])
    scan = load_scan(tmp_path / "s")  # the scan itself is fine (a NIfTI can be written) ...
    with pytest.raises(KidedgeError, match=f"no {drop}") as info:  # ... a SEG cannot
        write_dicom_seg(pattern(scan.shape), scan, tmp_path / "out" / "seg.dcm")
    assert "\n" not in str(info.value)
    assert _nothing_written(tmp_path / "out")
    with pytest.raises(KidedgeError, match=drop):
        check_dicom_seg_source(scan)


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path):
    nii = write_nifti(tmp_path / "ct.nii.gz", np.zeros((3, 4, 5), np.int16), kits19_affine())
    with pytest.raises(KidedgeError, match="needs a DICOM series"):
        write_dicom_seg(np.zeros((3, 4, 5), np.uint8), load_scan(nii), tmp_path / "out" / "a.dcm")
    write_ct_series(tmp_path / "s", [(0.0, 0.0, 2.0 * k) for k in range(3)], shape=(ROWS, COLS))
    scan = load_scan(tmp_path / "s")
    good = pattern(scan.shape)
    with pytest.raises(KidedgeError, match="do not match"):
        write_dicom_seg(good[:2], scan, tmp_path / "out" / "a.dcm")
    bad = good.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(KidedgeError, match=r"\[7\] are not kidedge classes"):
        write_dicom_seg(bad, scan, tmp_path / "out" / "a.dcm")
    with pytest.raises(KidedgeError, match=".dcm file"):
        write_dicom_seg(good, scan, tmp_path / "out" / "a.nii.gz")
    with pytest.raises(KidedgeError, match="inside the source series"):
        write_dicom_seg(good, scan, tmp_path / "s" / "seg.dcm")
    assert _nothing_written(tmp_path / "out")
    assert len(list((tmp_path / "s").iterdir())) == 3


def test_a_file_replaced_since_reading_is_refused(tmp_path):
    write_ct_series(tmp_path / "s", [(0.0, 0.0, 2.0 * k) for k in range(3)], shape=(ROWS, COLS))
    scan = load_scan(tmp_path / "s")
    f = scan.dicom.files[1]
    ds = pydicom.dcmread(f)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(f)
    with pytest.raises(KidedgeError, match="changed since the scan was read"):
        write_dicom_seg(pattern(scan.shape), scan, tmp_path / "seg.dcm")


# ------------------------------------------------------------------ real series
@pytest.fixture(scope="module")
def ircadb(tmp_path_factory):
    from .conftest import SHARED_DATA

    root = SHARED_DATA / "ircadb-01"
    if not (root / "PATIENT_DICOM").is_dir():
        pytest.skip("../shared/data/ircadb-01 is not available")
    tmp = tmp_path_factory.mktemp("ircadb")
    ct = repaired_copy(root / "PATIENT_DICOM", tmp / "PATIENT_DICOM")
    with zipfile.ZipFile(root / "MASKS_DICOM.zip") as z:
        for name in z.namelist():
            if name.startswith(("MASKS_DICOM/leftkidney/", "MASKS_DICOM/rightkidney/")) and not name.endswith("/"):
                z.extract(name, tmp)
    return root, ct, tmp / "MASKS_DICOM"


@pytest.mark.shared_data
def test_real_series_without_seg_tags_are_refused(shared_data, tmp_path):
    # as distributed, both real series lack identifiers a SEG must reference
    for folder, tag in ((shared_data / "ircadb-01" / "PATIENT_DICOM", "FrameOfReferenceUID"),
                        (shared_data / "ct-dicom-sample", "StudyInstanceUID")):
        scan = load_scan(folder)
        with pytest.raises(KidedgeError, match=tag):
            write_dicom_seg(np.zeros(scan.shape, np.uint8), scan, tmp_path / "out" / "seg.dcm")
    assert _nothing_written(tmp_path / "out")


@pytest.mark.shared_data
def test_real_ircadb_kidney_masks_land_on_their_own_pixels(ircadb, tmp_path):
    """The expert kidney masks (a DICOM series aligned file for file with the CT) given as
    the prediction: left kidney class 1, right kidney class 2, so a left-right flip changes
    classes. Read back, every SEG pixel must be the mask's own pixel in the file of the same
    name, and the same as the NIfTI output's."""
    _, ct, masks = ircadb
    scan = load_scan(ct)
    left, right = load_scan(masks / "leftkidney"), load_scan(masks / "rightkidney")
    labels = np.zeros(scan.shape, np.uint8)
    labels[left.array > 0] = 1
    labels[right.array > 0] = 2
    seg, nii = _write_both(scan, labels, tmp_path)
    source = SourceSeries(ct)
    from_seg = seg_pixels_pydicom(seg, source)
    truth, frames = [], 0
    for i, f in enumerate(source.files):
        for side, value in (("leftkidney", 1), ("rightkidney", 2)):
            m = pydicom.dcmread(str(masks / side / f.name))
            assert np.allclose([float(v) for v in m.ImagePositionPatient], source.ipp[i])
            r, c = np.nonzero(m.pixel_array)
            truth.append(source.codes(np.full(r.size, i), r, c, np.full(r.size, value)))
            frames += bool(r.size)
    truth = np.sort(np.concatenate(truth))
    assert truth.size > 10000
    np.testing.assert_array_equal(from_seg, truth)
    np.testing.assert_array_equal(from_seg, nifti_pixels(nii, source))
    np.testing.assert_array_equal(from_seg, seg_pixels_highdicom(seg, source))
    ds = pydicom.dcmread(str(seg), stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == frames  # one per labelled (image, segment), no empty frame


@pytest.mark.shared_data
def test_real_ct_sample_pattern(shared_data, tmp_path):
    ct = repaired_copy(shared_data / "ct-dicom-sample", tmp_path / "ct")
    scan = load_scan(ct)
    labels = pattern(scan.shape)
    labels[5:9, 200:230, 300:340] = 2  # a block on the patient's left, below the top slices
    seg, nii = _write_both(scan, labels, tmp_path)
    source = SourceSeries(ct)
    from_seg = seg_pixels_pydicom(seg, source)
    np.testing.assert_array_equal(from_seg, expected_axial(labels, source))
    np.testing.assert_array_equal(from_seg, nifti_pixels(nii, source))
    np.testing.assert_array_equal(from_seg, seg_pixels_highdicom(seg, source))
