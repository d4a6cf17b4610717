"""Cascade gating: stage 1 finds the kidneys cheaply, stage 2 runs only there.

Stage 1 (the package's ``localise`` stage) sees one slice every few millimetres (every
slice of thick-slice scans; ``slice_step``), at low resolution (its preprocessing
resamples slices to e.g. 96x96). :class:`CascadeGate` collects, slice by
slice, where stage 1 found any of the ROI labels, maps that back to scan pixels, and turns
it into one box (slices x rows x columns) grown by the stage's ``margin_mm`` in each
direction using the scan's spacing (the ROI rule of :mod:`kidedge.regions`, which training
applies to the truth). Before boxing, stray detections are dropped: only the
largest connected regions of stage 1's low-resolution mask count (two kidneys), so a
false-positive speck far from the kidneys cannot stretch the box over the whole scan. Stage 2 then runs at full resolution on that box only;
everything outside is background. The gate counts the slices and pixels stage 2 skipped.
A segmenter trained with the scan around its box (``roi.context = "scan"``) gets the box
grown in-plane until its resampled size fills the network's padded input
(:func:`kidedge.preprocess.grid_filling_box`): real pixels instead of padding, the same
network input size.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from kidedge.package import Stage
from kidedge.preprocess import PreprocessSpec, grid_filling_box
from kidedge.regions import Box, bounding_box, grow_box, margin_voxels

#: Stage-1 regions kept for the box: the largest ones (two kidneys) ...
KEEP_REGIONS = 2
#: ... each at least this fraction of the largest (smaller ones are stray detections).
MIN_REGION_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class RegionOfInterest:
    """A box in canonical voxel indices, half-open: ``[start, stop)`` on each axis."""

    slice_start: int
    slice_stop: int
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    @property
    def slices(self) -> int:
        return self.slice_stop - self.slice_start

    @property
    def pixels_per_slice(self) -> int:
        return (self.row_stop - self.row_start) * (self.col_stop - self.col_start)

    def as_slices(self) -> tuple[slice, slice, slice]:
        return (slice(self.slice_start, self.slice_stop), slice(self.row_start, self.row_stop),
                slice(self.col_start, self.col_stop))

    @classmethod
    def from_slices(cls, box: Box) -> RegionOfInterest:
        return cls(*(int(v) for s in box for v in (s.start, s.stop)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CascadeGate:
    """Collects stage 1's detections and gives stage 2's region of interest.

    Args:
        shape: canonical scan shape (slices, rows, cols).
        spacing: canonical spacing (slice, row, col) in mm.
        roi_labels: stage 1 labels that count as kidney region (the ``roi.labels`` of
            stage 2, e.g. [1, 2, 3]).
        margin_mm: how far to grow the box beyond the detections, in mm.
        crop_in_plane: False when stage 2 needs whole slices (a fixed-size native input):
            then only slices are gated.
        slice_step: stage 1 ran on every ``slice_step``-th slice only. Sampled slices
            next to each other count as neighbours for the 3D regions, and the region's
            slice range grows over the unseen slices beyond its first and last hit (the
            kidney may end anywhere before the next seen slice) - unless the caller runs
            stage 1 on those slices too (:meth:`unseen_edges`), which finds where the
            kidney really ends, as stage 1 on every slice would; in plane, the box of
            the seen slices stands for the slices between them (the margin covers the
            few mm a kidney's outline moves over one step).
        fill_grid: the segmenter's preprocessing, when it was trained seeing the scan
            around its box (``roi.context = "scan"``): the in-plane box then grows to
            fill its padded input.
    """

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 roi_labels: list[int], margin_mm: float, crop_in_plane: bool = True,
                 slice_step: int = 1, fill_grid: PreprocessSpec | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.roi_labels = np.asarray(sorted(set(int(v) for v in roi_labels)), np.uint8)
        self.margin_mm = float(margin_mm)
        self.crop_in_plane = crop_in_plane
        self.slice_step = max(1, int(slice_step))
        self.fill_grid = fill_grid
        # Per slice: [row_min, row_max_exclusive, col_min, col_max_exclusive], -1 if none.
        self.boxes = np.full((self.shape[0], 4), -1, np.int64)
        self.seen = np.zeros(self.shape[0], bool)
        # Stage 1's low-resolution hits of slices that had any (a few KB per slice).
        self.hits: dict[int, np.ndarray] = {}
        self._region: RegionOfInterest | None = None
        self._region_ready = False

    @classmethod
    def for_stage(cls, stage: Stage, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  slice_step: int = 1) -> CascadeGate:
        """The gate of a cascade's segment ``stage`` on a scan: the stage's ROI rule; only
        slices are gated when the stage takes whole slices of one fixed native size."""
        fixed_native = stage.preprocess.in_plane == "native" and stage.input.height is not None
        sees_scan = stage.roi.extra.get("context", "floor") == "scan"
        return cls(shape, spacing, stage.roi.labels, stage.roi.margin_mm, crop_in_plane=not fixed_native,
                   slice_step=slice_step, fill_grid=stage.preprocess if sees_scan else None)

    def add(self, start: int, labels_lowres: np.ndarray, step: int | None = None) -> None:
        """Record stage 1's labels for slices ``start, start + step, ...`` (n of them).

        Args:
            start: canonical index of the first slice.
            labels_lowres: uint8 ``(n, h, w)`` stage 1 labels on its own grid, which
                covers the whole slice (padding already removed).
            step: slices between them (default: the gate's ``slice_step``; 1 for the
                slices of :meth:`unseen_edges`).
        """
        n = labels_lowres.shape[0]
        step = self.slice_step if step is None else int(step)
        hit = np.isin(labels_lowres, self.roi_labels)
        self._region_ready = False
        for i in range(n):
            k = start + i * step
            self.seen[k] = True
            if hit[i].any():
                self.hits[k] = hit[i]
                self.boxes[k] = self._box_of(hit[i])
            else:
                self.hits.pop(k, None)
                self.boxes[k] = -1

    def _box_of(self, hit: np.ndarray) -> tuple[int, int, int, int]:
        h, w = hit.shape
        rows_full, cols_full = self.shape[1], self.shape[2]
        r, c = bounding_box(hit)
        # Low-res pixel j covers full-res [j*R/h, (j+1)*R/h): take the outer pixels.
        return (math.floor(r.start * rows_full / h), math.ceil(r.stop * rows_full / h),
                math.floor(c.start * cols_full / w), math.ceil(c.stop * cols_full / w))

    def _kept_boxes(self) -> np.ndarray:
        """Per-slice boxes of the largest stage-1 regions only (-1 where none)."""
        ks = sorted(self.hits)
        shapes = {self.hits[k].shape for k in ks}
        if len(shapes) != 1:  # stage 1 grids differ between slices: no 3D regions to compare
            return self.boxes
        # Seen slices without hits between hit slices break 3D connectivity, as they should;
        # slices stage 1 did not see (between sampled ones) are not there at all.
        seen = np.flatnonzero(self.seen[ks[0]:ks[-1] + 1]) + ks[0]
        index = {int(k): i for i, k in enumerate(seen)}
        stack = np.zeros((len(index), *shapes.pop()), bool)
        for k in ks:
            stack[index[k]] = self.hits[k]
        regions, count = ndimage.label(stack, structure=np.ones((3, 3, 3), bool))
        if count <= 1:
            return self.boxes
        sizes = np.bincount(regions.ravel())[1:]
        order = np.argsort(sizes)[::-1][:KEEP_REGIONS]
        keep = [int(j) + 1 for j in order if sizes[j] >= MIN_REGION_FRACTION * sizes[order[0]]]
        boxes = np.full_like(self.boxes, -1)
        kept = np.isin(regions, keep)
        for k, i in index.items():
            if kept[i].any():
                boxes[k] = self._box_of(kept[i])
        return boxes

    def region(self) -> RegionOfInterest | None:
        """The box stage 2 must run on, or None when stage 1 found no kidney at all."""
        if not self._region_ready:
            self._region = self._compute_region()
            self._region_ready = True
        return self._region

    def _unseen_run(self, k: int, direction: int) -> int:
        """The last slice of the run of unseen slices next to slice ``k`` in ``direction``
        (-1 down, +1 up); ``k`` itself when its neighbour is seen or off the scan."""
        while 0 <= k + direction < self.shape[0] and not self.seen[k + direction]:
            k += direction
        return k

    def unseen_edges(self) -> list[tuple[int, int]]:
        """Half-open slice ranges stage 1 did not see between the kept regions' first and
        last hit and the nearest seen slice beyond them: running stage 1 there (and
        :meth:`add` with ``step=1``) puts the region's ends where stage 1 on every slice
        would, instead of a whole step beyond the last hit. Empty when nothing was found
        or every slice was seen."""
        found = np.flatnonzero(self._kept_boxes()[:, 0] >= 0) if self.hits else np.empty(0, int)
        if found.size == 0:
            return []
        lo, hi = int(found[0]), int(found[-1])
        edges = [(self._unseen_run(lo, -1), lo), (hi + 1, self._unseen_run(hi, +1) + 1)]
        return [(a, b) for a, b in edges if b > a]

    def _compute_region(self) -> RegionOfInterest | None:
        if not self.hits:
            return None
        boxes = self._kept_boxes()
        found = np.flatnonzero(boxes[:, 0] >= 0)
        if found.size == 0:
            return None
        b = boxes[found]
        # the kidney may reach up to the next seen slice on either side
        found = np.array([self._unseen_run(int(found[0]), -1), self._unseen_run(int(found[-1]), +1)])
        found_box = (slice(int(found[0]), int(found[-1]) + 1), slice(int(b[:, 0].min()), int(b[:, 1].max())),
                     slice(int(b[:, 2].min()), int(b[:, 3].max())))
        z, r, c = grow_box(found_box, self.shape, margin_voxels(self.spacing, self.margin_mm))
        if not self.crop_in_plane:
            r, c = slice(0, self.shape[1]), slice(0, self.shape[2])
        elif self.fill_grid is not None:  # the scan where the network's input would be padding
            r, c = grid_filling_box(self.fill_grid, r, c, self.shape[1:], self.spacing[1:])
        return RegionOfInterest.from_slices((z, r, c))

    def _dropped(self) -> int:
        """Slices whose stage-1 hits were all stray (outside the kept regions)."""
        if not self.hits:
            return 0
        return int((self.boxes[:, 0] >= 0).sum() - (self._kept_boxes()[:, 0] >= 0).sum())

    def stats(self) -> dict:
        """How much of the scan stage 2 skipped (for the profile)."""
        n, rows, cols = self.shape
        roi = self.region()
        run_slices = roi.slices if roi else 0
        run_pixels = roi.slices * roi.pixels_per_slice if roi else 0
        total_pixels = n * rows * cols
        return {
            "enabled": True,
            "margin_mm": self.margin_mm,
            "slices_with_kidney_stage1": int((self.boxes[:, 0] >= 0).sum()),
            "stage1_regions_dropped": self._dropped(),
            "slices_total": n,
            "slices_run_stage2": int(run_slices),
            "skipped_slice_fraction": round(1 - run_slices / n, 6) if n else 0.0,
            "pixels_total": int(total_pixels),
            "pixels_run_stage2": int(run_pixels),
            "skipped_pixel_fraction": round(1 - run_pixels / total_pixels, 6) if total_pixels else 0.0,
            "roi": roi.to_dict() if roi else None,
        }
