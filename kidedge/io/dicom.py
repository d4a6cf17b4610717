"""DICOM series folders (needs ``pip install kidedge[dicom]``: pydicom, imported lazily).

One folder holds one series. Slices are ordered by ImagePositionPatient projected on the
slice normal (the cross product of ImageOrientationPatient's row and column cosines),
spacing comes from PixelSpacing and those positions (SliceThickness is not the spacing:
overlapping reconstructions have thickness > spacing), and the affine maps LPS (DICOM)
to RAS+ (NIfTI) as nibabel and dcm2niix do. The native array is (slice, row, column) in
that order, so for an axial series canonical orientation is at most a flip of the slice
axis (a view).

Voxels: with one RescaleSlope of 1 and an integer RescaleIntercept (every CT scanner),
the array holds Hounsfield units as int16 (slope 1, intercept 0); otherwise the stored
integers are kept with the series' slope and intercept; if the slope or intercept
differs between slices, HU are computed per slice into float32 (documented cost: 2x an
int16 volume).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.scan import Scan, check_geometry, check_rescale

# Slice gaps may differ from the median by this fraction (floating point in positions).
_SPACING_TOLERANCE = 0.1


@dataclass(frozen=True)
class DicomSeries:
    """Where each native slice of a DICOM scan came from (``Scan.dicom``), so results can
    be written back against the source instances (a DICOM SEG, :mod:`kidedge.io.dicom_seg`).

    ``files``, ``sop_instance_uids`` and ``positions`` (ImagePositionPatient, mm) are in
    native slice order: native slice ``k`` is the image in ``files[k]``. UIDs the files
    leave empty are ``""`` (checked by the writers that need them, not here).
    """

    files: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    positions: tuple[tuple[float, float, float], ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str


def _pydicom():
    try:
        import pydicom
    except ModuleNotFoundError as exc:
        raise KidedgeError("reading DICOM needs pydicom: pip install 'kidedge[dicom]'") from exc
    return pydicom


def _read_headers(folder: Path):
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    headers = []
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise KidedgeError(f"{folder}: empty folder (no DICOM files)")
    for p in files:
        if p.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError):
            continue  # not DICOM: notes, thumbnails, NIfTI outputs beside the series
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue  # not an image slice (structured report, presentation state...)
        headers.append((p, ds))
    if not headers:
        raise KidedgeError(f"{folder}: no DICOM image slices found (not a NIfTI file or DICOM series)")
    return headers


def _check_one_series(folder: Path, headers) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise KidedgeError(
            f"{folder}: {len(series)} DICOM series in one folder; put each series in its own folder"
        )
    for key in ("Rows", "Columns"):
        values = {int(ds.get(key, 0)) for _, ds in headers}
        if len(values) > 1:
            raise KidedgeError(f"{folder}: slices of different sizes ({key} {sorted(values)}): more than one series")
    orients = {tuple(round(float(v), 4) for v in ds.ImageOrientationPatient) for _, ds in headers}
    if len(orients) > 1:
        raise KidedgeError(f"{folder}: slices with different orientations: more than one series")


def load_dicom_series(folder: Path) -> Scan:
    """Read one DICOM series folder into a :class:`Scan` (whole volume, native integers)."""
    folder = Path(folder)
    headers = _read_headers(folder)
    _check_one_series(folder, headers)
    if len(headers) < 2:
        raise KidedgeError(f"{folder}: a single DICOM slice; a CT volume needs at least 2 slices")
    first = headers[0][1]
    if int(first.get("SamplesPerPixel", 1)) != 1:
        raise KidedgeError(f"{folder}: colour DICOM images, not a CT")

    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise KidedgeError(f"{folder}: invalid ImageOrientationPatient {iop.tolist()}")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]

    gaps = np.diff(along)
    if np.any(gaps <= 1e-6):
        raise KidedgeError(f"{folder}: two slices at the same position (zero slice spacing)")
    step = float(np.median(gaps))
    if np.any(np.abs(gaps - step) > _SPACING_TOLERANCE * step):
        raise KidedgeError(
            f"{folder}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm): missing slices?"
        )
    try:
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    except (AttributeError, TypeError, ValueError) as exc:
        raise KidedgeError(f"{folder}: no PixelSpacing") from exc

    # voxel (k, i, j) = (slice, row, column) -> LPS, then LPS -> RAS (negate x and y)
    slice_vec = (positions[-1] - positions[0]) / (len(headers) - 1)
    lps = np.eye(4)
    lps[:3, 0] = slice_vec
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = row_cos * col_spacing
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    check_geometry(folder, affine)

    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for _, ds in headers])
    inters = np.array([float(ds.get("RescaleIntercept", 0) or 0) for _, ds in headers])
    for s, i in zip(slopes, inters, strict=True):
        check_rescale(folder, s, i)
    rows, cols = int(first.Rows), int(first.Columns)
    volume, slope, intercept = _read_pixels(folder, headers, rows, cols, slopes, inters)
    scan = Scan(
        source=folder,
        affine=affine,
        native_shape=volume.shape,
        dtype=volume.dtype,
        slope=slope,
        intercept=intercept,
        loader=lambda: volume,
        format="dicom",
        header=None,
    )
    scan.dicom = DicomSeries(
        files=tuple(str(p) for p, _ in headers),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "") or "") for _, ds in headers),
        positions=tuple(tuple(float(v) for v in pos) for pos in positions),
        study_instance_uid=str(first.get("StudyInstanceUID", "") or ""),
        series_instance_uid=str(first.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
    )
    return scan


def _read_pixels(folder, headers, rows, cols, slopes, inters):
    pydicom = _pydicom()
    uniform = np.all(slopes == slopes[0]) and np.all(inters == inters[0])
    hu_int16 = uniform and slopes[0] == 1.0 and float(inters[0]).is_integer()
    out_dtype = np.int16 if hu_int16 else (None if uniform else np.float32)
    volume = None
    for k, (p, _) in enumerate(headers):
        try:
            pixels = pydicom.dcmread(str(p)).pixel_array
        except Exception as exc:  # decoder missing, corrupt pixel data
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise KidedgeError(f"{p}: cannot decode DICOM pixel data ({msg[:160]})") from exc
        if pixels.shape != (rows, cols):
            raise KidedgeError(f"{p}: pixel data of shape {pixels.shape}, expected {(rows, cols)}")
        if volume is None:
            volume = np.empty((len(headers), rows, cols), dtype=out_dtype or pixels.dtype)
        if hu_int16:
            hu = pixels.astype(np.int32) + int(inters[0])
            if hu.min() < -32768 or hu.max() > 32767:
                raise KidedgeError(f"{p}: Hounsfield units outside the int16 range")
            volume[k] = hu
        elif out_dtype is np.float32:
            volume[k] = pixels * np.float32(slopes[k]) + np.float32(inters[k])
        else:
            volume[k] = pixels
    if hu_int16 or out_dtype is np.float32:
        return volume, 1.0, 0.0
    return volume, float(slopes[0]), float(inters[0])
