"""The :class:`Scan`: voxels in their native integer dtype, geometry, and the canonical view.

``load_scan(path)`` reads a NIfTI file (.nii, .nii.gz) or a DICOM series folder. The
voxel array is never converted to float: ``Scan.array`` is the canonical (slice, row,
column) view of the native-dtype data, and Hounsfield units are
``array * slope + intercept``.

NIfTI voxels are read lazily: ``load_scan`` checks the header, the geometry and the gzip
trailer (cheap); the data is read on first access to ``array``/``native``, or slab by
slab with :class:`kidedge.io.SlabReader` without ever holding the whole volume. Float
NIfTI files are the exception: they are read (and checked for NaN) at load, and held as
int16 when every value is a whole number in int16's range (lossless).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.orientation import Orientation, voxel_sizes

# Voxel sizes outside this range are not a CT in millimetres (a file written in metres
# has 0.0008; a broken header 0 or 1e6).
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0


class Scan:
    """One CT volume (or label map) and its geometry.

    Args:
        source: the file or DICOM folder it was read from.
        affine: 4x4 voxel->RAS+ (mm) affine of the native array (the input's own).
        native_shape: shape of the native 3D array.
        dtype: native voxel dtype (numpy, native byte order).
        slope, intercept: Hounsfield units (or label values) = stored * slope + intercept.
        loader: callable returning the native 3D array; called once, on first use.
        format: "nifti" or "dicom".
        header: the NIfTI header (for writing results with the same header), or None.
        file_shape: the shape as stored in the file (e.g. (x, y, z, 1) squeezed to 3D).
        layout: where the voxels sit in the file (kidedge.io.nifti.NiftiLayout) for
            streaming, or None.
    """

    def __init__(
        self,
        *,
        source: Path,
        affine: np.ndarray,
        native_shape: tuple[int, int, int],
        dtype: np.dtype,
        slope: float,
        intercept: float,
        loader: Callable[[], np.ndarray],
        format: str,
        header=None,
        file_shape: tuple[int, ...] | None = None,
        layout=None,
    ) -> None:
        self.source = Path(source)
        self.affine = np.array(affine, dtype=np.float64)
        self.native_shape = tuple(int(s) for s in native_shape)
        self.dtype = np.dtype(dtype)
        self.slope = float(slope)
        self.intercept = float(intercept)
        self.format = format
        self.header = header
        self.file_shape = tuple(file_shape) if file_shape is not None else self.native_shape
        self.layout = layout
        self.orientation = Orientation.from_affine(self.affine, self.native_shape)
        self.canonical_affine = self.orientation.canonical_affine(self.affine)
        self.spacing = tuple(float(v) for v in voxel_sizes(self.canonical_affine))
        self._loader = loader
        self._native: np.ndarray | None = None
        # what SlabReader learns about the file (gzip restart points), kept for later passes
        self.stream_state: dict = {}

    def __repr__(self) -> str:
        return (
            f"Scan({str(self.source)!r}, shape={self.shape}, dtype={self.dtype}, "
            f"spacing={tuple(round(s, 4) for s in self.spacing)})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical shape (slices, rows, columns)."""
        return self.orientation.canonical_shape

    @property
    def is_loaded(self) -> bool:
        """Whether the whole volume is in memory."""
        return self._native is not None

    @property
    def native(self) -> np.ndarray:
        """The voxels in the file's own axis order, native dtype (read on first use)."""
        if self._native is None:
            native = self._loader()
            if native.shape != self.native_shape:
                raise KidedgeError(f"{self.source}: read {native.shape} voxels, header says {self.native_shape}")
            self._native = native
        return self._native

    @property
    def array(self) -> np.ndarray:
        """Canonical (slice, row, column) view of :attr:`native`: no copy."""
        return self.orientation.canonical(self.native)

    def to_canonical(self, native: np.ndarray) -> np.ndarray:
        """A canonical view of any array in this scan's native axis order."""
        return self.orientation.canonical(native)

    def from_canonical(self, canonical: np.ndarray) -> np.ndarray:
        """The exact inverse of :attr:`array`: a native-order view of a canonical array.

        Raises KidedgeError when ``canonical`` does not have this scan's canonical shape.
        """
        if tuple(canonical.shape) != self.shape:
            raise KidedgeError(
                f"{self.source}: array of shape {tuple(canonical.shape)} does not match the "
                f"scan's canonical shape {self.shape}"
            )
        return self.orientation.native(canonical)

    def release(self) -> None:
        """Drop the in-memory volume (it is read again on next use)."""
        self._native = None


def check_geometry(source: Path, affine: np.ndarray) -> None:
    """Refuse an affine that is not finite or whose voxel sizes are zero, negative or absurd."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise KidedgeError(f"{source}: the voxel-to-world affine is not finite")
    sizes = voxel_sizes(affine)
    if np.any(sizes <= 0) or abs(np.linalg.det(affine[:3, :3])) <= 0:
        raise KidedgeError(f"{source}: zero voxel spacing (the affine is singular: {np.round(sizes, 6).tolist()} mm)")
    bad = [s for s in sizes if not (MIN_SPACING_MM <= s <= MAX_SPACING_MM)]
    if bad:
        raise KidedgeError(
            f"{source}: voxel spacing {np.round(sizes, 6).tolist()} mm is outside "
            f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm (not a CT in millimetres)"
        )


def check_rescale(source: Path, slope: float, intercept: float) -> None:
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise KidedgeError(f"{source}: invalid rescale slope/intercept ({slope}, {intercept})")


def load_scan(path: str | Path) -> Scan:
    """Read a CT scan (or label map): a .nii / .nii.gz file or a DICOM series folder.

    Args:
        path: NIfTI file, or a folder holding one DICOM series (needs ``kidedge[dicom]``).

    Raises KidedgeError (one line naming the file and the problem) for anything that is
    not a readable single 3D volume with a sane geometry.
    """
    path = Path(path)
    if not path.exists():
        raise KidedgeError(f"{path}: no such file or folder")
    if path.is_dir():
        from kidedge.io.dicom import load_dicom_series

        return load_dicom_series(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from kidedge.io.nifti import load_nifti

        return load_nifti(path)
    if path.stat().st_size == 0:
        raise KidedgeError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        raise KidedgeError(
            f"{path}: a single DICOM file; give the folder that holds the whole series"
        )
    raise KidedgeError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
