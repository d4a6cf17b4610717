"""Everything kidedge writes goes through here: atomically, and label maps in the input's
exact geometry.

Atomic writing: :func:`atomic_target` yields a hidden temporary name beside the target;
when the block succeeds the file is fsynced and renamed into place, on any failure it is
removed, so a reader never sees a partial file and a failed run never replaces a previous
result. :func:`atomic_directory` does the same for a folder. The small writers
(:func:`write_json_atomic`, :func:`write_text_atomic`, :func:`save_png_atomic`,
:func:`save_volume`) and the label-map writers are built on them; every other module that
writes a file calls one of these.

Label maps (:func:`save_segmentation` for a dense array, :func:`save_segmentation_planes`
for labels held sparsely and written plane by plane) have the input's shape (as stored,
4D singleton included) and affine, and for NIfTI input a copy of its header (so
qform/sform codes and units match) with the voxel type set to uint8 and no scaling: they
overlay the input in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

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
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary name beside ``path`` to write to; on success it is fsynced
    and renamed onto ``path``, on any failure removed (never a partial ``path``). The
    temporary name keeps ``path``'s suffix (``.nii.gz``, ``.png``, ``.npy``), so writers
    that choose a format by suffix do the right thing. Missing parent folders are made.
    OSError becomes a one-line KidedgeError."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path`` to fill; on success it is renamed
    onto ``path`` (which must not exist, or be an empty folder), on failure removed.

    Args:
        keep_existing: when ``path`` appeared meanwhile with content (another process
            made the same folder), keep it and drop ours instead of failing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        publish_directory(tmp, path, keep_existing)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_directory(tmp: str | os.PathLike, path: str | os.PathLike, keep_existing: bool = False) -> Path:
    """Rename the finished folder ``tmp`` (beside ``path``) onto ``path``, which must not
    exist or be an empty folder: readers see the whole folder or nothing.

    Args:
        keep_existing: when ``path`` appeared meanwhile with content (another process
            made the same folder), keep it instead of failing.
    """
    path = Path(path)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        if not (keep_existing and path.is_dir() and any(path.iterdir())):
            raise KidedgeError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_texts_atomic(files: dict[str | os.PathLike, str]) -> None:
    """Several text files, all or none: nothing is renamed into place until every one of
    them is fully written (e.g. a report's JSON and its CSV)."""
    with contextlib.ExitStack() as stack:
        for path, text in files.items():
            stack.enter_context(atomic_target(path)).write_bytes(text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: object, default=None) -> Path:
    """Write ``data`` as indented JSON (and a final newline) to ``path`` atomically.

    Args:
        default: JSON fallback for other objects (e.g. ``float`` for numpy scalars).
    """
    return write_text_atomic(path, json.dumps(data, indent=2, default=default) + "\n")


def save_png_atomic(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically (never a partial picture)."""
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def save_volume(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a volume as given (a synthetic scan, a truth label map) as NIfTI, atomically,
    with qform and sform set to ``affine`` (scanner coordinates)."""
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    atomic_save(img, Path(path))
    return Path(path)


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


class BoxedLabels(Protocol):
    """Canonical labels held as their bounding box (e.g.
    :class:`kidedge.runtime.labelmap.SparseLabels`): ``shape`` is the canonical (slice,
    row, column) shape, ``box()`` the index slices of the labels' bounding box (None when
    all is background) and ``dense_box(box)`` the labels inside it as a uint8 array."""

    shape: tuple[int, int, int]

    def box(self) -> tuple[slice, slice, slice] | None: ...

    def dense_box(self, box: tuple[slice, slice, slice]) -> np.ndarray: ...


def _label_header(like: Scan):
    """The header :func:`save_segmentation` gives a label map of ``like`` (same steps, on
    a zero-cost broadcast array of the file's shape)."""
    img = label_image(np.broadcast_to(np.zeros((), np.uint8), like.file_shape), like)
    img.update_header()
    return img.header


def save_segmentation_planes(labels: BoxedLabels, like: Scan, path: str | Path) -> Path:
    """Write canonical ``labels`` as a uint8 NIfTI in the geometry of the scan ``like``,
    one native plane at a time: no whole-scan array exists while writing.

    The data goes out in the file's (Fortran) order, one plane of the slowest native axis
    at a time, each built in one reused buffer from the labels' bounding box; the file is
    the one :func:`save_segmentation` writes for the same labels as a dense array (same
    header, same bytes after decompression). Atomic, as every writer here.

    Raises:
        KidedgeError: the labels do not fit the scan, or the path is the input, not a
            NIfTI name, or not writable.
    """
    from nibabel.openers import Opener
    from nibabel.volumeutils import seek_tell

    from kidedge.io.gzip_stream import open_gzip_writer

    path = check_output_path(path, like)
    if tuple(labels.shape) != like.shape:
        raise KidedgeError(f"{path}: labels of shape {tuple(labels.shape)} do not match the scan's canonical "
                           f"shape {like.shape} ({like.source})")
    header = _label_header(like)
    n0, n1, n2 = like.native_shape[:3]  # trailing singleton axes of file_shape add no bytes
    box = labels.box()
    if box is not None:
        # The box in native order, transposed once so that native axis 0 runs fastest, as
        # in the file: each native plane's box is then one contiguous block. (Copying
        # whole planes in Fortran order read the array one byte per cache line: 0.11 s of
        # the 0.17 s write of a 602-slice label map.)
        in_file_order = np.ascontiguousarray(like.orientation.native(labels.dense_box(box)).T)
        (a0, b0), (a1, b1), (a2, b2) = _native_ranges(box, like)
    plane = np.zeros((n1, n0), np.uint8)  # one native plane, native axis 0 fastest
    with atomic_target(path) as tmp:
        gz = tmp.name.lower().endswith(".gz")
        with (open_gzip_writer(tmp) if gz else Opener(str(tmp), "wb")) as f:
            header.write_to(f)
            seek_tell(f, header.get_data_offset(), write0=True)
            for j in range(n2):
                if box is not None and a2 <= j < b2:  # the box part of every such plane is rewritten
                    plane[a1:b1, a0:b0] = in_file_order[j - a2]
                elif box is not None and j == b2:
                    plane[a1:b1, a0:b0] = 0
                f.write(plane.data)
    return path


def _native_ranges(box: tuple[slice, slice, slice], like: Scan) -> list[tuple[int, int]]:
    """``[start, stop)`` of the canonical ``box`` along each native axis of ``like``."""
    out = []
    for canon_axis, sign in like.orientation.to_canonical[:3]:
        s, size = box[int(canon_axis)], like.shape[int(canon_axis)]
        out.append((s.start, s.stop) if sign > 0 else (size - s.stop, size - s.start))
    return out
