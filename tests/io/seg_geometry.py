"""Independent geometry for the DICOM SEG tests: where a labelled pixel lands on the
source series, computed from the DICOM and NIfTI tags with plain numpy (no kidedge code),
and small synthetic CT series written with pydicom."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: SNOMED CT segmented property type -> kidedge class.
CLASS_OF_CODE = {"64033007": 1, "108369006": 2, "367643001": 3}


class SourceSeries:
    """The source images' own geometry: position, orientation, spacing per file."""

    def __init__(self, folder: Path) -> None:
        self.uids, self.files, ipp, iop, spacing = [], [], [], [], []
        for p in sorted(Path(folder).iterdir()):
            try:
                ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            except Exception:
                continue
            if "ImagePositionPatient" not in ds:
                continue
            self.files.append(p)
            self.uids.append(str(ds.get("SOPInstanceUID", "")))
            ipp.append([float(v) for v in ds.ImagePositionPatient])
            iop.append([float(v) for v in ds.ImageOrientationPatient])
            spacing.append([float(v) for v in ds.PixelSpacing])
            self.shape = (int(ds.Rows), int(ds.Columns))
        self.ipp, self.iop, self.spacing = np.array(ipp), np.array(iop), np.array(spacing)
        assert np.allclose(self.iop, self.iop[0]) and np.allclose(self.spacing, self.spacing[0])
        self.row_cos, self.col_cos = self.iop[0, :3], self.iop[0, 3:]
        self.normal = np.cross(self.row_cos, self.col_cos)
        self.along = self.ipp @ self.normal

    def locate(self, lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient points (n, 3) in LPS mm -> (file index, row, column); asserts each point
        lies on a source slice exactly on a pixel centre (to 1e-3 of a pixel / slice gap)."""
        d = lps @ self.normal
        order = np.argsort(self.along)
        pos = np.clip(np.searchsorted(self.along[order], d), 1, len(order) - 1)
        lo, hi = order[pos - 1], order[pos]
        idx = np.where(np.abs(d - self.along[lo]) <= np.abs(d - self.along[hi]), lo, hi)
        gap = np.min(np.diff(np.sort(self.along))) if len(self.along) > 1 else 1.0
        assert np.all(np.abs(d - self.along[idx]) < 1e-3 * gap), "a point between source slices"
        rel = lps - self.ipp[idx]
        dr, dc = self.spacing[0]
        rows, cols = rel @ self.col_cos / dr, rel @ self.row_cos / dc
        assert np.all(np.abs(rows - np.round(rows)) < 1e-3) and np.all(np.abs(cols - np.round(cols)) < 1e-3)
        rows, cols = np.round(rows).astype(int), np.round(cols).astype(int)
        assert rows.min(initial=0) >= 0 and rows.max(initial=0) < self.shape[0]
        assert cols.min(initial=0) >= 0 and cols.max(initial=0) < self.shape[1]
        return idx, rows, cols

    def codes(self, idx, rows, cols, classes) -> np.ndarray:
        """(file, row, column, class) packed one int64 each, sorted: equal arrays, equal sets."""
        h, w = self.shape
        idx, rows, cols, classes = (np.asarray(a, np.int64) for a in (idx, rows, cols, classes))
        return np.sort(((idx * h + rows) * w + cols) * 4 + classes)

    def uid_index(self, uid: str) -> int:
        return self.uids.index(str(uid))


def seg_pixels_pydicom(seg_path: Path, source: SourceSeries) -> np.ndarray:
    """(source file, row, column, class) codes of every labelled SEG pixel, by pydicom and the
    frames' own ImagePositionPatient / shared ImageOrientationPatient / PixelSpacing. Also
    asserts each frame's DerivationImageSequence names the image the geometry finds."""
    ds = pydicom.dcmread(str(seg_path))
    classes = {int(s.SegmentNumber): CLASS_OF_CODE[s.SegmentedPropertyTypeCodeSequence[0].CodeValue]
               for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    out = []
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        r, c = np.nonzero(pixels[f])
        if r.size == 0:
            continue
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        lps = ipp + np.outer(c * dc, iop[:3]) + np.outer(r * dr, iop[3:])
        idx, rows, cols = source.locate(lps)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert set(idx.tolist()) == {source.uid_index(ref)}, "frame references another image"
        # per frame, or shared by all frames when the SEG has a single segment
        ident = item if "SegmentIdentificationSequence" in item else shared
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out.append(source.codes(idx, rows, cols, np.full(r.size, classes[number])))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def seg_pixels_highdicom(seg_path: Path, source: SourceSeries) -> np.ndarray:
    """The same, read through highdicom's own frame-to-source-instance index."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    classes = {int(d.SegmentNumber): CLASS_OF_CODE[d.SegmentedPropertyTypeCodeSequence[0].CodeValue]
               for d in seg.SegmentSequence}
    refs = {uid for _, _, uid in seg.get_source_image_uids()}
    uids = [u for u in source.uids if u in refs]
    numbers = sorted(classes)
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                            ignore_spatial_locations=False)
    out = []
    for i, uid in enumerate(uids):
        for j, number in enumerate(numbers):
            r, c = np.nonzero(arr[i, :, :, j])
            out.append(source.codes(np.full(r.size, source.uid_index(uid)), r, c, np.full(r.size, classes[number])))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def nifti_pixels(nifti_path: Path, source: SourceSeries) -> np.ndarray:
    """(source file, row, column, class) codes of every labelled NIfTI voxel, through the
    NIfTI affine (RAS) and the source files' tags."""
    img = nib.load(str(nifti_path))
    data = np.asarray(img.dataobj)
    ijk = np.argwhere(data > 0)
    ras = nib.affines.apply_affine(img.affine, ijk)
    lps = ras * [-1, -1, 1]
    idx, rows, cols = source.locate(lps)
    return source.codes(idx, rows, cols, data[tuple(ijk.T)])


def write_ct_series(folder: Path, positions, iop=(1, 0, 0, 0, 1, 0), shape=(6, 7), spacing=(0.75, 0.5),
                    drop=(), seed=0, hu=None) -> list[str]:
    """A synthetic CT series (file names shuffled, InstanceNumber unrelated to position);
    ``positions`` are ImagePositionPatient triples, ``drop`` tags to leave out, ``hu`` the
    images in Hounsfield units (one 2D array per position; default random). Returns the
    SOP Instance UIDs in the order of ``positions``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    names = rng.permutation(len(positions))
    uids = []
    for k, pos in enumerate(positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Phantom^Kidney", "KE0001"
        ds.InstanceNumber = int(names[k]) + 1
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [float(v) for v in spacing]
        ds.SliceThickness = 2.0
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        pixels = rng.integers(0, 2000, size=shape) if hu is None else np.asarray(hu[k]).astype(np.int32) + 1024
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        for tag in drop:
            if tag in ds:
                delattr(ds, tag)
        ds.save_as(str(folder / f"IM{names[k]:04d}"), enforce_file_format=True)
        uids.append(str(meta.MediaStorageSOPInstanceUID))
    return uids


def repaired_copy(src: Path, dst: Path) -> Path:
    """A copy of a real series with the identifiers an anonymiser blanked filled in (SOP
    Class/Instance UID from the file meta, which by PS3.10 holds the same values; Study,
    Series and Frame of Reference UIDs made up, one per series). Pixel data, positions,
    orientation, spacing and file names are the originals'."""
    dst.mkdir(parents=True, exist_ok=True)
    made = {t: generate_uid(entropy_srcs=[src.name, t]) for t in
            ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}
    for p in sorted(src.iterdir()):
        ds = pydicom.dcmread(str(p))
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        for tag, uid in made.items():
            if not ds.get(tag):
                setattr(ds, tag, uid)
        ds.save_as(str(dst / p.name))
    return dst
