"""Writing label maps back in the input's exact geometry, atomically.

The output has the input's shape (as stored, 4D singleton included) and affine, and for
NIfTI input a copy of its header (so qform/sform codes and units match) with the voxel
type set to uint8 and no scaling: it overlays the input in 3D Slicer or ITK-SNAP.
It is written to a temporary name in the same folder and renamed into place, so a
failure never leaves a partial or overwritten file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.scan import Scan


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: str | Path, like: Scan) -> Path:
    """Refuse an output that would overwrite the input or is not a NIfTI name."""
    path = Path(path)
    if _same_path(path, like.source):
        raise KidedgeError(f"{path}: the output path is the input scan; choose another name")
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise KidedgeError(f"{path}: output must be a .nii or .nii.gz file")
    if path.is_dir():
        raise KidedgeError(f"{path}: is a folder, not an output file name")
    return path


def _as_uint8_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == np.uint8:
        return labels
    if labels.dtype.kind not in "iub":
        raise KidedgeError(f"{path}: labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise KidedgeError(f"{path}: label values must be in 0..255")
    return labels.astype(np.uint8)


@contextlib.contextmanager
def atomic_target(path: Path):
    """Yield a hidden temporary name beside ``path`` to write to; on success it is fsynced
    and renamed onto ``path``, on any failure removed (never a partial ``path``). OSError
    becomes a one-line KidedgeError."""
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise KidedgeError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(img: nib.Nifti1Image, path: Path) -> None:
    """nibabel-save ``img`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_target(path) as tmp:
        nib.save(img, str(tmp))


def label_image(native, like: Scan):
    """A uint8 NIfTI image of ``native`` (file-shaped labels) with the geometry and header
    of the scan ``like``: its header copied (NIfTI-2 kept), or for a DICOM input a new one
    whose qform and sform are the scanner affine; no scaling, no display range."""
    if like.header is not None and isinstance(like.header, nib.Nifti1Header):
        header = like.header.copy()
        img_cls = nib.Nifti2Image if isinstance(like.header, nib.Nifti2Header) else nib.Nifti1Image
    else:
        header = nib.Nifti1Header()
        img_cls = nib.Nifti1Image
    header.set_data_dtype(np.uint8)
    img = img_cls(native, like.affine, header=header)
    if like.header is None:
        # DICOM input: the affine is in scanner coordinates
        img.set_qform(like.affine, code=1)
        img.set_sform(like.affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    return img


def save_segmentation(labels: np.ndarray, like: Scan, path: str | Path) -> Path:
    """Write canonical ``labels`` as a uint8 NIfTI in the geometry of the scan ``like``.

    Args:
        labels: (slices, rows, columns) integer labels in canonical orientation, the shape
            of ``like.array``.
        like: the scan the labels belong to (its source is never overwritten).
        path: output .nii or .nii.gz file.

    Returns the path written. Raises KidedgeError (nothing written) for a shape mismatch,
    non-integer labels, an output equal to the input, or an unwritable path.
    """
    path = check_output_path(path, like)
    labels = np.asarray(labels)
    if tuple(labels.shape) != like.shape:
        raise KidedgeError(
            f"{path}: labels of shape {tuple(labels.shape)} do not match the scan's canonical "
            f"shape {like.shape} ({like.source})"
        )
    native = like.from_canonical(_as_uint8_labels(labels, path))
    # a (x, y, z, 1) input gets a (x, y, z, 1) output
    native = native.reshape(like.file_shape, order="A") if like.file_shape != like.native_shape else native
    img = label_image(native, like)
    atomic_save(img, path)
    return path
