"""Real kidneys, tumours and cysts (KiTS label maps) moved into a body.

A KiTS19/KiTS23 label map (0 background, 1 kidney, 2 tumour, 3 cyst) is split into its
two sides at the widest empty gap between labelled columns (the midline); each side (a
kidney with its tumours and cysts) is a :class:`KidneyPiece`, cropped to its box. A piece
is placed where a body's own kidney was: its kidney centroid on that kidney's centroid,
its long axis turned towards that kidney's long axis (at most ``MAX_TURN_DEG``), mirrored
when it comes from the other side, and sampled by nearest neighbour onto the body's grid
(labels are never interpolated). With no turn, no mirror, equal spacing and an integer
shift, the placed voxels are an exact copy of the source's.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError

MAX_TURN_DEG = 30.0
_MIN_PIECE_ML = 15.0   # smaller islands are fragments, not a kidney


@dataclasses.dataclass
class KidneyPiece:
    """One side of a KiTS label map.

    Attributes:
        side: -1 the patient's right (low columns), +1 the left.
        labels: uint8 (slice, row, col) crop, values 0..3.
        spacing: (s, y, x) mm.
        centroid: (s, y, x) mm of its kidney voxels (label 1; all labels if none), in the crop.
        axis: unit (s, y, x) long axis of its kidney voxels, pointing inferiorly.
    """

    side: int
    labels: np.ndarray
    spacing: tuple
    centroid: np.ndarray
    axis: np.ndarray

    @property
    def counts(self) -> dict:
        c = np.bincount(self.labels.reshape(-1), minlength=4)
        return {"kidney": int(c[1]), "tumour": int(c[2]), "cyst": int(c[3])}


@dataclasses.dataclass
class KidneySource:
    """A KiTS label map as its kidney pieces (one or two)."""

    name: str
    path: Path
    pieces: list


def shape_axes(mask_idx: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (mm) and unit long axis (first principal axis, pointing to +s) of voxels."""
    pts = mask_idx.astype(np.float64) * np.asarray(spacing, np.float64)
    if len(pts) > 60_000:
        pts = pts[:: len(pts) // 60_000 + 1]
    c = pts.mean(0)
    cov = np.cov((pts - c).T) if len(pts) > 3 else np.eye(3)
    w, v = np.linalg.eigh(cov)
    axis = v[:, int(np.argmax(w))]
    if axis[0] < 0:
        axis = -axis
    return c, axis


def split_sides(labels: np.ndarray, spacing) -> list[tuple[int, tuple]]:
    """[(side, box)] of the labelled groups of columns (one or two), see module docstring."""
    col_counts = labels.astype(bool).sum(axis=(0, 1))
    occupied = col_counts > 0
    if not occupied.any():
        return []
    cols = np.flatnonzero(occupied)
    gaps = np.diff(cols)
    groups = [cols]
    if gaps.size and gaps.max() * spacing[2] >= 15.0:
        cut = int(np.argmax(gaps))
        groups = [cols[: cut + 1], cols[cut + 1:]]
    out = []
    for i, g in enumerate(groups):
        sub = labels[:, :, g[0]: g[-1] + 1]
        zs = np.flatnonzero(sub.any(axis=(1, 2)))
        rs = np.flatnonzero(sub.any(axis=(0, 2)))
        box = (slice(int(zs[0]), int(zs[-1]) + 1), slice(int(rs[0]), int(rs[-1]) + 1),
               slice(int(g[0]), int(g[-1]) + 1))
        if len(groups) == 2:
            side = -1 if i == 0 else 1
        else:
            side = -1 if (g[0] + g[-1]) / 2 < labels.shape[2] / 2 else 1
        out.append((side, box))
    return out


def pieces_of(labels: np.ndarray, spacing, where: str = "labels") -> list[KidneyPiece]:
    """The kidney pieces of a canonical KiTS label map (fragments under 15 mL dropped)."""
    if labels.ndim != 3:
        raise KidedgeError(f"{where}: a KiTS label map must be 3D")
    if labels.size and labels.max() > 3:
        raise KidedgeError(f"{where}: label value {int(labels.max())} is not a KiTS label (0..3)")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pieces = []
    for side, box in split_sides(labels, spacing):
        crop = np.ascontiguousarray(labels[box], dtype=np.uint8)
        if crop.astype(bool).sum() * voxel_ml < _MIN_PIECE_ML:
            continue
        kid = np.argwhere(crop == 1)
        if len(kid) < 50:
            kid = np.argwhere(crop > 0)
        c, axis = shape_axes(kid, spacing)
        pieces.append(KidneyPiece(side, crop, tuple(float(s) for s in spacing), c, axis))
    return pieces


def load_kidney_source(path, name: str | None = None) -> KidneySource:
    """Read one KiTS label map (``case_XXXXX/segmentation.nii.gz``) as kidney pieces."""
    from kidedge.io import load_label_map

    path = Path(path)
    labels, scan = load_label_map(path)
    pieces = pieces_of(np.asarray(labels), scan.spacing, where=str(path))
    if not pieces:
        raise KidedgeError(f"{path}: no kidney of at least {_MIN_PIECE_ML:.0f} mL in this label map")
    return KidneySource(name or path.parent.name, path, pieces)


def _turn(a: np.ndarray, b: np.ndarray, max_deg: float) -> np.ndarray:
    """Rotation (3x3) turning unit vector a towards b, by at most ``max_deg``."""
    v = np.cross(a, b)
    s = float(np.linalg.norm(v))
    c = float(np.clip(np.dot(a, b), -1.0, 1.0))
    angle = min(math.atan2(s, c), math.radians(max_deg))
    if s < 1e-9 or angle < 1e-6:
        return np.eye(3)
    k = v / s
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def place_piece(piece: KidneyPiece, target_centre, target_axis, target_side: int, spacing,
                shape, roll_deg: float = 0.0, max_turn_deg: float = MAX_TURN_DEG):
    """Sample a piece onto a grid so its kidney lies at ``target_centre``.

    Args:
        piece: the source piece.
        target_centre: (s, y, x) mm on the grid; target_axis: unit long axis there.
        target_side: -1 right, +1 left (mirrored left-right when it differs from the piece's).
        spacing, shape: the grid's spacing (mm) and shape.
        roll_deg: extra turn about the long axis.

    Returns:
        (box, labels): a tuple of three slices of the grid and the uint8 labels inside it,
        or (None, None) when the piece lands outside the grid.
    """
    mirror = np.diag([1.0, 1.0, -1.0]) if piece.side != target_side else np.eye(3)
    src_axis = mirror @ piece.axis
    rot = _turn(src_axis, np.asarray(target_axis, np.float64), max_turn_deg)
    if roll_deg:
        rot = _turn_about(np.asarray(target_axis, np.float64), math.radians(roll_deg)) @ rot
    # out = t + rot @ mirror @ (src - c)  <=>  src = c + mirror @ rot.T @ (out - t)
    fwd = rot @ mirror
    inv = mirror @ rot.T
    t = np.asarray(target_centre, np.float64)
    c = piece.centroid
    sp_src = np.asarray(piece.spacing)
    ext = (np.array(piece.labels.shape) - 1) * sp_src
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * ext
    out_pts = (fwd @ (corners - c).T).T + t
    sp = np.asarray(spacing, np.float64)
    lo = np.maximum(np.floor(out_pts.min(0) / sp).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(out_pts.max(0) / sp).astype(int) + 2, np.array(shape))
    if np.any(hi <= lo):
        return None, None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    axes = [np.arange(a, b) * s - tt for a, b, s, tt in zip(lo, hi, sp, t, strict=True)]
    ds, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
    out = np.zeros(tuple(hi - lo), np.uint8)
    idx = []
    for a in range(3):
        v = inv[a, 0] * ds + inv[a, 1] * dy + inv[a, 2] * dx + c[a]
        idx.append(np.rint(v / sp_src[a]).astype(np.int32))
    i, j, k = np.broadcast_arrays(*idx)
    ok = ((i >= 0) & (i < piece.labels.shape[0]) & (j >= 0) & (j < piece.labels.shape[1])
          & (k >= 0) & (k < piece.labels.shape[2]))
    out[ok] = piece.labels[i[ok], j[ok], k[ok]]
    return box, out


def _turn_about(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
