"""The one canonical orientation (docs/architecture.md, "Geometry") and the exact way to and from it.

Canonical is KiTS19's: array axes (slice, row, column) with nibabel axis codes
('I', 'P', 'L'). Going there and back is only transposes and flips (nibabel's
``apply_orientation``), so the canonical array is a view of the native data, never a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

CANONICAL_AXCODES = ("I", "P", "L")
_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)


@dataclass(frozen=True)
class Orientation:
    """How one native array maps onto the canonical one.

    Args:
        to_canonical: nibabel orientation transform (one row per native axis: the
            canonical axis it becomes and +1/-1 for a flip).
        from_canonical: the inverse transform.
        native_shape: shape of the native 3D array.
    """

    to_canonical: np.ndarray
    from_canonical: np.ndarray
    native_shape: tuple[int, int, int]

    @classmethod
    def from_affine(cls, affine: np.ndarray, native_shape: tuple[int, ...]) -> Orientation:
        """The orientation of a 3D array whose voxel->RAS+ affine is ``affine``."""
        start = io_orientation(np.asarray(affine, dtype=np.float64))
        return cls(
            to_canonical=ornt_transform(start, _CANONICAL_ORNT),
            from_canonical=ornt_transform(_CANONICAL_ORNT, start),
            native_shape=tuple(int(s) for s in native_shape),
        )

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for native_axis, (canon_axis, _) in enumerate(self.to_canonical):
            shape[int(canon_axis)] = self.native_shape[native_axis]
        return tuple(shape)

    @property
    def slice_axis(self) -> int:
        """The native axis that becomes the canonical slice axis (0)."""
        return int(np.flatnonzero(self.to_canonical[:, 0] == 0)[0])

    @property
    def slice_flipped(self) -> bool:
        """True when native slice 0 is canonical slice n-1 (e.g. RAS files, z towards S)."""
        return bool(self.to_canonical[self.slice_axis, 1] < 0)

    def canonical(self, native: np.ndarray) -> np.ndarray:
        """A canonical view (no copy) of a native-order array."""
        return apply_orientation(native, self.to_canonical)

    def native(self, canonical: np.ndarray) -> np.ndarray:
        """A native-order view (no copy) of a canonical array: the exact inverse."""
        return apply_orientation(canonical, self.from_canonical)

    def canonical_affine(self, affine: np.ndarray) -> np.ndarray:
        """The voxel->RAS+ affine of the canonical array."""
        return np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(self.to_canonical, self.native_shape)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis: the norms of the affine's first three columns."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
