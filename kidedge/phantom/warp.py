"""Spatial augmentation of a real body: scaling, small rotations, smooth elastic bending.

One body label map becomes many bodies: every case maps its output grid into the source
map with its own transform, ``src = M (out - out_centre) + src_centre + elastic(out)``, in
mm, and samples the source's organ codes by nearest neighbour (labels are never
interpolated). ``M`` combines a random scale per axis (body size and habitus) and small
rotations (patient position on the table); the elastic part is a smooth random
displacement field (a few mm, ~5 cm correlation), so organ outlines bend the way they
differ between patients without tearing.

Sampling works on a whole slice or on a box of the output grid with the same formula, so
a kidney box sampled in 3D agrees voxel for voxel with the slices painted one by one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kidedge.phantom.fields import SmoothField


@dataclasses.dataclass(frozen=True)
class Grid:
    """The output (fine) grid of a case: (n_slices, rows, cols) and spacing in mm.

    Output mm coordinates are ``(s, y, x) = (slice * dz, row * dy, col * dx)``: s grows
    inferiorly, y posteriorly, x towards the patient's left (canonical orientation).
    """

    shape: tuple
    spacing: tuple


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation of (s, y, x) vectors: yaw about the s axis (in the axial plane), pitch
    about x (tilting s towards y), roll about y (tilting s towards x); radians."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    axial = np.array([[1, 0, 0], [0, cy, -sy], [0, sy, cy]])
    tilt_y = np.array([[cp, -sp, 0], [sp, cp, 0], [0, 0, 1]])
    tilt_x = np.array([[cr, 0, -sr], [0, 1, 0], [sr, 0, cr]])
    return axial @ tilt_y @ tilt_x


class BodyWarp:
    """Output grid -> source map, and nearest-neighbour sampling of the source.

    Args:
        rng: numpy Generator (draws the elastic field).
        grid: the output :class:`Grid`.
        source_shape, source_spacing: the source array's shape and (s, y, x) spacing.
        src_centre: (s, y, x) mm point of the source that lands at ``out_centre``.
        out_centre: (s, y, x) mm point of the output grid.
        scale: (s, y, x) factors; > 1 makes the body bigger in the output.
        rotation: 3x3 rotation (see :func:`rotation_matrix`).
        elastic_mm: std of the elastic displacement (mm); 0 turns it off.
    """

    def __init__(self, rng, grid: Grid, source_shape, source_spacing, src_centre, out_centre,
                 scale=(1.0, 1.0, 1.0), rotation=None, elastic_mm: float = 0.0):
        self.grid = grid
        self.source_shape = tuple(int(v) for v in source_shape)
        self.source_spacing = np.asarray(source_spacing, np.float64)
        rot = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
        self.M = rot @ np.diag(1.0 / np.asarray(scale, np.float64))
        self.src_centre = np.asarray(src_centre, np.float64)
        self.out_centre = np.asarray(out_centre, np.float64)
        self.elastic_mm = float(elastic_mm)
        self.field = None
        if self.elastic_mm > 0:
            self.field = SmoothField(rng, grid.shape, grid.spacing, grid_mm=25.0,
                                     sigma_cells=1.0, channels=3)
        dz, dy, dx = grid.spacing
        self._y = (np.arange(grid.shape[1]) * dy - self.out_centre[1]).astype(np.float32)
        self._x = (np.arange(grid.shape[2]) * dx - self.out_centre[2]).astype(np.float32)

    def to_output_mm(self, src_mm) -> np.ndarray:
        """Approximate inverse (without the elastic part): source mm -> output mm."""
        src = np.atleast_2d(np.asarray(src_mm, np.float64))
        out = (np.linalg.inv(self.M) @ (src - self.src_centre).T).T + self.out_centre
        return out[0] if np.ndim(src_mm) == 1 else out

    def to_source_mm(self, out_mm) -> np.ndarray:
        """Source mm of output mm points (elastic part included on grid slices only as
        the affine part; used for planning, not sampling)."""
        out = np.atleast_2d(np.asarray(out_mm, np.float64))
        src = (self.M @ (out - self.out_centre).T).T + self.src_centre
        return src[0] if np.ndim(out_mm) == 1 else src

    def source_index(self, k: int, rows: slice = slice(None), cols: slice = slice(None),
                     s_mm: float | None = None):
        """Integer source indices (i, j, l) and a validity mask for output slice ``k``
        inside ``rows`` x ``cols``. ``s_mm`` overrides the slice's s coordinate."""
        s = (k * self.grid.spacing[0] if s_mm is None else s_mm) - self.out_centre[0]
        y = self._y[rows][:, None]
        x = self._x[cols][None, :]
        M, c = self.M.astype(np.float32), self.src_centre
        disp = None
        if self.field is not None and s_mm is None:
            disp = self.field.slice(k, rows=rows, cols=cols) * np.float32(self.elastic_mm)
        out = []
        for a in range(3):
            v = M[a, 1] * y + M[a, 2] * x
            v += np.float32(M[a, 0] * s + c[a])
            if disp is not None:
                v += disp[a]
            v *= np.float32(1.0 / self.source_spacing[a])
            out.append(np.rint(v).astype(np.int32))
        i, j, c = out
        ok = ((i >= 0) & (i < self.source_shape[0]) & (j >= 0) & (j < self.source_shape[1])
              & (c >= 0) & (c < self.source_shape[2]))
        return i, j, c, ok

    def sample_slice(self, source: np.ndarray, k: int, rows: slice = slice(None),
                     cols: slice = slice(None)) -> np.ndarray:
        """Nearest-neighbour source values on output slice ``k`` (0 outside the source)."""
        i, j, c, ok = self.source_index(k, rows, cols)
        n0, n1, n2 = self.source_shape
        flat = i * np.int32(n1)
        flat += j
        flat *= np.int32(n2)
        flat += c
        flat[~ok] = 0
        out = np.take(np.ascontiguousarray(source).reshape(-1), flat)
        out[~ok] = 0
        return out

    def sample_into(self, source: np.ndarray, k: int, box) -> np.ndarray:
        """Full output slice ``k``: the source sampled inside ``box`` (rows, cols), 0 outside."""
        out = np.zeros(self.grid.shape[1:], source.dtype)
        if box is not None:
            out[box] = self.sample_slice(source, k, box[0], box[1])
        return out

    def sample_box(self, source: np.ndarray, box) -> np.ndarray:
        """Nearest-neighbour source values on a box (tuple of three slices) of the grid."""
        ks = range(*box[0].indices(self.grid.shape[0]))
        return np.stack([self.sample_slice(source, k, box[1], box[2]) for k in ks])
