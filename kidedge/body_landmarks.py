"""Body outline and spine, found cheaply in CT slices: where a kidney can lie.

Post-processing (:func:`kidedge.postprocess.review_segmentation`) judges each kidney
candidate's position against the patient's own anatomy rather than the field of view:
kidneys are retroperitoneal organs, posterior in the abdomen, one on each side of the
spine. This module finds, per canonical slice and without any segmentation model:

- the **body**: voxels above -500 HU (soft tissue, fat, bone; not air or lung, which lie
  below -500), the largest 2D connected region of the slice with its holes filled (bowel
  gas and lungs inside the body count as body). A patient table or arms lying apart are
  separate, smaller regions and are ignored. Its bounding box gives the anterior,
  posterior, right and left edges.
- the **spine**: bone voxels above 200 HU (cortical bone is far above; contrast-filled
  vessels may reach it too, but are smaller than a vertebra), holes filled, 2D regions of
  at least 2 cm^2, restricted to the posterior 60 % of the body and the central 40 % of
  its width; the largest such region. Its centroid is the spine's position on that slice
  (NaN where none qualifies: above the lung apices, or slices through the intervertebral
  gap where the threshold leaves too little bone).

It works on any in-plane stride of the slices (a 512 x 512 slice read every 4th pixel,
about 3 mm, costs ~0.3 ms here), so the runtime can collect it slab by slab while it
reads the scan for stage 1: :class:`LandmarkCollector` mirrors the cascade gate's
``add(start, slab)`` interface. numpy and scipy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

#: Air and lung lie below this; fat (-100) and every tissue above (Hounsfield scale).
BODY_HU = -500.0
#: Cortical bone lies far above this, cancellous bone of the vertebral body mostly above.
BONE_HU = 200.0
#: A vertebra's cross-section (body and arch) is 10-20 cm^2; ribs and vessels are smaller.
MIN_SPINE_AREA_MM2 = 200.0
#: The spine lies in the posterior part of the body and near its left-right centre.
SPINE_MIN_AP_FRACTION = 0.4
SPINE_MAX_LR_FRACTION = 0.2
#: A body region smaller than this (25 cm^2) is not a patient's trunk (a scout, an arm).
MIN_BODY_AREA_MM2 = 2500.0


@dataclasses.dataclass(frozen=True)
class BodyLandmarks:
    """Per-slice body box and spine centre of a scan, in canonical voxel units.

    Args:
        affine: canonical voxel -> world (RAS+ mm) affine of the grid the numbers refer to
            (the scan's canonical affine, adjusted for any stride the slices were read with).
        body: ``(slices, 4)`` float: row_min, row_max, col_min, col_max of the body (NaN
            where no body was found).
        spine: ``(slices, 2)`` float: row, col of the spine's centroid (NaN where not found).
    """

    affine: np.ndarray
    body: np.ndarray
    spine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (slice, row, col) in mm."""
        return np.linalg.norm(np.asarray(self.affine, float)[:3, :3], axis=0)

    @property
    def slices_with_spine(self) -> int:
        return int(np.isfinite(self.spine[:, 0]).sum())

    def midline_col(self) -> float | None:
        """The patient's midline as a column: the median spine column over the slices where
        the spine was found, else the median body centre; None without a body."""
        cols = self.spine[:, 1][np.isfinite(self.spine[:, 1])]
        if cols.size == 0:
            found = np.isfinite(self.body[:, 2])
            if not found.any():
                return None
            cols = 0.5 * (self.body[found, 2] + self.body[found, 3])
        return float(np.median(cols))

    def to_voxel(self, world_points: np.ndarray) -> np.ndarray:
        """World (RAS+ mm) points ``(n, 3)`` -> (slice, row, col) on this grid."""
        homog = np.c_[np.atleast_2d(world_points), np.ones(len(np.atleast_2d(world_points)))]
        return (homog @ np.linalg.inv(np.asarray(self.affine, float)).T)[:, :3]

    def nearest_slice(self, k: float, max_distance: int = 8) -> int | None:
        """The slice nearest ``k`` (within ``max_distance`` slices) that has a body, or None
        (the runtime measures one slice every 4 mm: up to 8 slices apart at 0.5 mm)."""
        n = self.body.shape[0]
        k0 = int(round(k))
        for d in range(max_distance + 1):
            for kk in (k0 - d, k0 + d):
                if 0 <= kk < n and np.isfinite(self.body[kk, 0]):
                    return kk
        return None

    def to_dict(self) -> dict:
        sp = self.spacing
        return {"slices": int(self.body.shape[0]), "slices_with_body": int(np.isfinite(self.body[:, 0]).sum()),
                "slices_with_spine": self.slices_with_spine, "midline_col": self.midline_col(),
                "spacing_mm": [round(float(s), 4) for s in sp]}


def measure_slice(hu: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Body box and spine centre of one canonical slice.

    Args:
        hu: ``(rows, cols)`` Hounsfield units.
        pixel_mm: (row, col) pixel size in mm (of this possibly strided slice).

    Returns:
        ``(body, spine)``: float arrays of 4 (row_min, row_max, col_min, col_max) and 2
        (row, col), NaN where not found.
    """
    nan_body, nan_spine = np.full(4, np.nan), np.full(2, np.nan)
    px_area = float(pixel_mm[0]) * float(pixel_mm[1])
    regions, n = ndimage.label(hu > BODY_HU)
    if n == 0:
        return nan_body, nan_spine
    sizes = np.bincount(regions.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    if sizes[biggest - 1] * px_area < MIN_BODY_AREA_MM2:
        return nan_body, nan_spine
    body = ndimage.binary_fill_holes(regions == biggest)
    rows = np.flatnonzero(body.any(axis=1))
    cols = np.flatnonzero(body.any(axis=0))
    box = np.array([rows[0], rows[-1], cols[0], cols[-1]], float)
    height, width = box[1] - box[0], box[3] - box[2]
    centre_col = 0.5 * (box[2] + box[3])
    bone = ndimage.binary_fill_holes((hu > BONE_HU) & body)
    blobs, m = ndimage.label(bone)
    if m == 0:
        return box, nan_spine
    areas = np.bincount(blobs.ravel())[1:] * px_area
    centres = np.array(ndimage.center_of_mass(bone, blobs, range(1, m + 1)), float).reshape(m, 2)
    ok = ((areas >= MIN_SPINE_AREA_MM2)
          & ((centres[:, 0] - box[0]) >= SPINE_MIN_AP_FRACTION * height)
          & (np.abs(centres[:, 1] - centre_col) <= SPINE_MAX_LR_FRACTION * width))
    if not ok.any():
        return box, nan_spine
    best = int(np.argmax(np.where(ok, areas, -1.0)))
    return box, centres[best]


class LandmarkCollector:
    """Collects :func:`measure_slice` slab by slab (e.g. while the runtime reads the scan).

    Args:
        n_slices: canonical slice count of the scan.
        affine: canonical affine of the grid the slabs are given on (with the stride
            folded in: see :func:`strided_affine`).
    """

    def __init__(self, n_slices: int, affine: np.ndarray) -> None:
        self.affine = np.asarray(affine, float)
        self.body = np.full((int(n_slices), 4), np.nan)
        self.spine = np.full((int(n_slices), 2), np.nan)
        sp = np.linalg.norm(self.affine[:3, :3], axis=0)
        self._pixel_mm = (float(sp[1]), float(sp[2]))

    def add(self, start: int, hu_slab: np.ndarray) -> None:
        """Measure canonical slices ``start : start + n`` (``(n, rows, cols)`` HU)."""
        for i, sl in enumerate(np.asarray(hu_slab)):
            self.body[start + i], self.spine[start + i] = measure_slice(sl, self._pixel_mm)

    def result(self) -> BodyLandmarks:
        return BodyLandmarks(self.affine, self.body.copy(), self.spine.copy())


def strided_affine(canonical_affine: np.ndarray, stride: int) -> np.ndarray:
    """The affine of ``array[:, ::stride, ::stride]`` of a canonical volume."""
    aff = np.array(canonical_affine, float)
    aff[:3, 1:3] *= stride
    return aff


def landmarks_on_slices(hu: np.ndarray, canonical_affine: np.ndarray, slices, stride: int = 4) -> BodyLandmarks:
    """Landmarks measured on the canonical slices ``slices`` only (e.g. one every 4 mm of
    the labels' range, as ``kidedge infer`` measures them) of a canonical HU volume held
    in memory; the other slices stay NaN."""
    collector = LandmarkCollector(hu.shape[0], strided_affine(canonical_affine, stride))
    for k in slices:
        collector.add(k, np.asarray(hu[k:k + 1, ::stride, ::stride]).astype(np.float32))
    return collector.result()


def estimate_body_landmarks(volume: np.ndarray, canonical_affine: np.ndarray, stride: int = 4,
                            slope: float = 1.0, intercept: float = 0.0) -> BodyLandmarks:
    """Landmarks of a whole canonical volume, read every ``stride``-th pixel in-plane.

    Args:
        volume: canonical (slice, row, col) stored values (``Scan.array``: a view, read
            16 slices at a time here), Hounsfield units = ``volume * slope + intercept``.
        canonical_affine: its canonical affine (``Scan.canonical_affine``).
        stride: in-plane step; 4 turns 0.6-1 mm pixels into 2.5-4 mm, plenty for a body
            outline and a vertebra.
    """
    n = volume.shape[0]
    collector = LandmarkCollector(n, strided_affine(canonical_affine, stride))
    for a in range(0, n, 16):
        slab = np.asarray(volume[a:a + 16, ::stride, ::stride], dtype=np.float32)
        collector.add(a, slab * np.float32(slope) + np.float32(intercept))
    return collector.result()
