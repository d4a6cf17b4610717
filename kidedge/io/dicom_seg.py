"""Label maps as DICOM Segmentation objects (SEG), placed on the source series' own pixels.

Needs ``pip install 'kidedge[dicom]'`` (pydicom and highdicom, imported lazily).

What is written: one multi-frame SEG instance (BINARY, 1 bit per pixel, Explicit VR
Little Endian) in the source's study, referencing the source series (Study, Series and
SOP Instance UIDs, Frame of Reference), with one segment per class present in the labels
(kidney, kidney tumour, kidney cyst: SNOMED CT codes and a recommended CIELab display
colour) and frames only where a segment has pixels. When nothing is labelled the SEG still
describes the kidney segment, with a single empty frame (an object of zero frames is not
valid DICOM): "no kidney found" is a result a reading workflow must see.

Geometry, why it cannot drift: kidedge segments in its canonical orientation (array axes
(slice, row, column), nibabel axis codes I, P, L). :meth:`kidedge.io.Scan.from_canonical`
is the exact inverse transpose/flip back to the native array of a DICOM scan, and the
native array of a DICOM series is, by construction of the reader, the source images'
pixel arrays stacked in the order of ImagePositionPatient along the slice normal
(:class:`kidedge.io.dicom.DicomSeries` records which file each native slice is). So native
slice ``k``, row ``r``, column ``c`` *is* pixel ``(r, c)`` of ``files[k]``. Each SEG frame
is such a native slice, given the ImagePositionPatient of its source image (highdicom then
matches it to that image for the DerivationImageSequence), with the shared orientation and
pixel spacing of the source. Nothing is resampled, so a frame's pixels are the source's.

Bad input is a one-line :class:`KidedgeError` and nothing is written: a NIfTI scan (a SEG
must reference DICOM instances), a series whose files lack what a SEG must copy or point
to (SOP Class/Instance UID, Study/Series Instance UID, Frame of Reference UID, Modality,
position, orientation, spacing: anonymisers often blank them), files changed since the
scan was read, labels of the wrong shape or unknown classes. The file is written to a
hidden temporary name beside the target and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.scan import Scan

SEG_SUFFIX = ".dcm"
#: Series number given to SEG series (viewers sort by it; sources rarely go this high).
SEG_SERIES_NUMBER = 1000


@dataclass(frozen=True)
class SegmentClass:
    """How one kidedge class is described in a SEG: its label, the SNOMED CT category and
    type (DICOM CID 7150 / 7151), the anatomic region for masses, and a display colour
    (sRGB 0-255, stored as CIELab as DICOM asks; the hues of kidedge's overlay PNG)."""

    label: str
    category: str  # keyword of pydicom.sr.codedict codes.SCT
    property_type: str
    region: str | None
    rgb: tuple[int, int, int]


#: kidedge's classes (KiTS convention) as SEG segments.
SEGMENT_CLASSES: dict[int, SegmentClass] = {
    1: SegmentClass("Kidney", "AnatomicalStructure", "Kidney", None, (26, 217, 51)),
    2: SegmentClass("Kidney tumour", "MorphologicallyAbnormalStructure", "Neoplasm", "Kidney",
                    (242, 26, 26)),
    3: SegmentClass("Kidney cyst", "MorphologicallyAbnormalStructure", "Cyst", "Kidney",
                    (51, 102, 255)),
}

#: Attributes a SEG copies or points to: absent or empty in a source file is an error.
REQUIRED_SOURCE_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Modality", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns",
)
#: Patient and study attributes a SEG copies (DICOM type 2: present, possibly empty).
_TYPE2_COPIED = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def _highdicom():
    try:
        import highdicom
        import pydicom  # noqa: F401
    except ModuleNotFoundError as exc:
        raise KidedgeError(
            f"DICOM SEG output needs {exc.name}: pip install 'kidedge[dicom]'") from exc
    return highdicom


def check_seg_output_path(path: str | Path, scan: Scan) -> Path:
    """Refuse a SEG output name that is not ``.dcm``, is a folder, or lies inside the
    source series' folder (it would become a second series there)."""
    path = Path(path)
    if not path.name.lower().endswith(SEG_SUFFIX):
        raise KidedgeError(f"{path}: a DICOM SEG output must be a {SEG_SUFFIX} file")
    if path.is_dir():
        raise KidedgeError(f"{path}: is a folder, not an output file name")
    src = Path(scan.source).resolve()
    if src.is_dir() and path.resolve().parent == src:
        raise KidedgeError(f"{path}: inside the source series' folder; write the SEG elsewhere")
    return path


def _series_of(scan: Scan):
    series = getattr(scan, "dicom", None)
    if scan.format != "dicom" or series is None:
        raise KidedgeError(
            f"{scan.source}: --format dicom-seg needs a DICOM series as input "
            f"(this is {scan.format}); use --format nifti")
    return series


def source_headers(scan: Scan) -> list:
    """The source images' headers (no pixel data) in native slice order, checked for what
    a SEG needs. Raises KidedgeError naming the first file and attribute that fails."""
    _highdicom()
    import pydicom
    from pydicom.errors import InvalidDicomError

    series = _series_of(scan)
    headers = []
    for k, (name, uid) in enumerate(zip(series.files, series.sop_instance_uids, strict=True)):
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise KidedgeError(f"{name}: cannot be read again for the SEG ({exc})") from exc
        missing = [t for t in REQUIRED_SOURCE_TAGS if t not in ds or ds[t].value in (None, "", [])]
        if missing:
            raise KidedgeError(
                f"{name}: no {', '.join(missing)} (a DICOM SEG must reference them; anonymised?); "
                "use --format nifti")
        if str(ds.SOPInstanceUID) != uid:
            raise KidedgeError(f"{name}: changed since the scan was read (slice {k})")
        headers.append(ds)
    for t in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if len({str(ds[t].value) for ds in headers}) > 1:
            raise KidedgeError(f"{scan.source}: slices with different {t}: not one series")
    if len({str(ds.SOPInstanceUID) for ds in headers}) != len(headers):
        raise KidedgeError(f"{scan.source}: two files with the same SOPInstanceUID")
    return headers


def check_dicom_seg_source(scan: Scan) -> None:
    """Fail early (before any segmentation work) when ``scan`` cannot get a SEG."""
    source_headers(scan)


def _labelled_native_slices(labels, scan: Scan) -> tuple[np.ndarray, np.ndarray | None]:
    """The native (source) slices that hold labels: their indices, and their labels stacked
    ``(k, rows, columns)`` (None when nothing is labelled).

    ``labels`` is canonical: a dense array, or a sparse store (``nonempty()``, ``slice(k)``,
    e.g. :class:`kidedge.runtime.labelmap.SparseLabels`). When the source's slices are the
    canonical slices (an axial series), a sparse store is read slice by slice, so only the
    labelled slices are ever dense; otherwise the labels are made dense first.
    """
    orient = scan.orientation
    sparse = not isinstance(labels, np.ndarray) and hasattr(labels, "nonempty") and hasattr(labels, "slice")
    if sparse and orient.slice_axis == 0:
        n = scan.shape[0]
        canon = np.flatnonzero(labels.nonempty())
        if canon.size == 0:
            return canon, None
        # a canonical slice is a native one, flipped and transposed in-plane as the whole is
        planes = {(n - 1 - k if orient.slice_flipped else k): orient.native(labels.slice(int(k))[None])[0]
                  for k in canon}
        order = np.array(sorted(planes))
        return order, np.stack([planes[k] for k in order]).astype(np.uint8, copy=False)
    if sparse:
        labels = labels.to_dense()
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise KidedgeError(f"{scan.source}: labels must be integers, got {labels.dtype}")
    native = scan.from_canonical(labels)
    labelled = np.flatnonzero(native.any(axis=(1, 2)))
    return labelled, (np.ascontiguousarray(native[labelled]) if labelled.size else None)


def _segment_description(hd, number: int, cls: SegmentClass, model: str, version: str):
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=cls.label,
        segmented_property_category=getattr(codes.SCT, cls.category),
        segmented_property_type=getattr(codes.SCT, cls.property_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"kidedge {model}"[:64], family=codes.cid7162.ArtificialIntelligence,
            version=version[:64]),
        anatomic_regions=[getattr(codes.SCT, cls.region)] if cls.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*cls.rgb),
    )


def _with_type2(ds):
    """The header (our own fresh read) with absent type-2 patient/study attributes present
    and empty: what the SEG copies; nothing is invented."""
    for t in _TYPE2_COPIED:
        if t not in ds:
            setattr(ds, t, None)
    return ds


def write_dicom_seg(labels, scan: Scan, path: str | Path, *, model: str = "model",
                    series_description: str | None = None) -> Path:
    """Write canonical ``labels`` of a DICOM ``scan`` as a DICOM SEG file.

    Args:
        labels: (slices, rows, columns) integer labels in canonical orientation (the shape
            of ``scan.array``), values 0..3; or a sparse store (``nonempty()``, ``slice(k)``,
            ``to_dense()``), as the runtime's result holds them.
        scan: the DICOM series the labels belong to (:func:`kidedge.io.load_scan` of a
            folder; its ``dicom`` record names the source files).
        path: the ``.dcm`` file to write (not inside the source series' folder).
        model: the model package's name (algorithm identification, series description).
        series_description: default ``"kidedge kidney segmentation (<model>)"``.

    Returns the path written. Raises KidedgeError (nothing written) for a NIfTI scan, a
    source series without the attributes a SEG needs, labels of another shape, or label
    values outside kidedge's classes.
    """
    hd = _highdicom()
    from pydicom.uid import generate_uid

    from kidedge import __version__
    from kidedge.io.writer import atomic_target

    path = check_seg_output_path(path, scan)
    headers = source_headers(scan)
    if tuple(np.shape(labels)) != scan.shape:
        raise KidedgeError(
            f"{path}: labels of shape {tuple(np.shape(labels))} do not match the scan's canonical "
            f"shape {scan.shape} ({scan.source})")
    native_shape = scan.native_shape
    if native_shape != (len(headers), int(headers[0].Rows), int(headers[0].Columns)):
        raise KidedgeError(f"{scan.source}: the scan's native shape {native_shape} is not its "
                           f"{len(headers)} source images of {headers[0].Rows}x{headers[0].Columns}")
    n = native_shape[0]
    # the labelled source slices, and the classes present in them
    labelled, sub = _labelled_native_slices(labels, scan)
    present = [int(v) for v in np.unique(sub) if v != 0] if sub is not None else []
    unknown = [v for v in present if v not in SEGMENT_CLASSES]
    if unknown:
        raise KidedgeError(f"{path}: label values {unknown} are not kidedge classes "
                           f"{sorted(SEGMENT_CLASSES)}")
    if sub is None:  # nothing found: one empty frame of the kidney segment, mid-series
        present, labelled = [1], np.array([n // 2])
        sub = np.zeros((1, *native_shape[1:]), np.uint8)
    # segment numbers must run 1..k: class values present -> 1..k (label-map style array)
    lut = np.zeros(256, np.uint8)
    for number, value in enumerate(present, start=1):
        lut[value] = number
    frames = lut[sub.astype(np.uint8, copy=False)]

    version = f"kidedge {__version__}"
    descriptions = [_segment_description(hd, i, SEGMENT_CLASSES[v], model, version)
                    for i, v in enumerate(present, start=1)]
    positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                          [float(x) for x in headers[k].ImagePositionPatient])
                 for k in labelled]
    try:
        seg = hd.seg.Segmentation(
            source_images=[_with_type2(ds) for ds in headers],
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="kidedge",
            manufacturer_model_name=model[:64],
            software_versions=version,
            device_serial_number="none",
            plane_positions=positions,
            omit_empty_frames=not (len(present) == 1 and not frames.any()),
            content_label="KIDNEYS",
            content_description="kidneys, kidney tumours and cysts",
            series_description=series_description or f"kidedge kidney segmentation ({model})"[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's own checks of the source
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KidedgeError(f"{scan.source}: cannot make a DICOM SEG of this series ({msg[:200]})") from exc
    with atomic_target(path) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return path
