"""The 3D cascades of papers 002 and 003 over a scan: localise, then segment inside.

Both papers find the kidneys first and run their 3D segmenter only around them: paper 003
(KiTS21 two-stage cascade, section 2) crops the volume of interest by the boundary of
Kidney-Net's mask; paper 002 (KiTS19 3D CNNs, section 2) takes its 128x128x80 patches
"from the located kidney". Here:

1. Stage 1 (``role: localise``) runs by sliding windows over the whole scan at its own
   resolution (e.g. 4 mm pixels for paper 002's coarse localiser), streamed in z-slabs
   (:func:`kidedge.runtime.stage3d.run_stage_3d`); its labels stay on its grid.
2. :class:`KidneyLocator` keeps, per slice, where stage 1 found the ROI labels, pooled
   in-plane to at most :data:`LOCATOR_MAX_PIXELS` per side (a few MB for any scan length),
   labels 3D connected components, keeps the largest two (each at least 10% of the
   largest, the runtime's rule for stray detections, :mod:`kidedge.runtime.gating`), and
   gives boxes in scan voxels grown by the stage's ``roi.margin_mm``: one box around all
   kept components, or with ``roi.per_component: true`` one box per kidney (boxes that
   overlap after the margin are merged, so no voxel is segmented twice).
3. Stage 2 runs by sliding windows inside each box only; everything outside is
   background. Its labels go into the sparse label store, box by box.

The gating report says how many slices, voxels and windows stage 2 skipped compared with
running it over the whole scan.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from kidedge.runtime.gating import KEEP_REGIONS, MIN_REGION_FRACTION, RegionOfInterest
from kidedge.runtime.labelmap import SparseLabels
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.stage3d import Stage3D, run_stage_3d

#: The locator's mask is pooled in-plane (logical OR) to at most this many pixels a side.
LOCATOR_MAX_PIXELS = 128
#: Windows per inference call. A 3D window is a whole batch's worth of work (80x128x128
#: voxels is 20 slices of 256x256), so a CPU gains nothing from batching them and pays the
#: activations of each (hundreds of MB for the papers' widths); a GPU fills better with two.
DEFAULT_WINDOWS_CPU = 1
DEFAULT_WINDOWS_GPU = 2


class KidneyLocator:
    """Stage 1's kidney detections, slab by slab, and the boxes stage 2 runs in.

    Args:
        shape: canonical scan shape (slices, rows, cols).
        spacing: canonical spacing (slice, row, col) in mm.
        grid: (rows, cols) of stage 1's label grid (covers the whole slice).
        roi_labels: stage-1 labels that count as kidney region.
        margin_mm: how far boxes grow beyond the detections.
        per_component: one box per kept component (kidney) instead of one around all.
    """

    def __init__(self, shape, spacing, grid: tuple[int, int], roi_labels, margin_mm: float,
                 per_component: bool = False) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.grid = (int(grid[0]), int(grid[1]))
        self.roi_labels = np.asarray(sorted({int(v) for v in roi_labels}), np.uint8)
        self.margin_mm = float(margin_mm)
        self.per_component = bool(per_component)
        self.pool = max(1, math.ceil(max(self.grid) / LOCATOR_MAX_PIXELS))
        ph, pw = (-(-g // self.pool) for g in self.grid)
        self.mask = np.zeros((self.shape[0], ph, pw), bool)
        self.components_found = 0
        self.components_kept = 0

    def add(self, start: int, labels: np.ndarray) -> None:
        """Stage 1's labels ``(n, rows, cols)`` on its grid for slices ``start:start + n``."""
        n, h, w = labels.shape
        if (h, w) != self.grid:
            raise ValueError(f"stage-1 labels of {h}x{w} do not match the locator's grid {self.grid}")
        hit = np.isin(labels, self.roi_labels)
        f = self.pool
        if f > 1:
            ph, pw = self.mask.shape[1:]
            padded = np.zeros((n, ph * f, pw * f), bool)
            padded[:, :h, :w] = hit
            hit = padded.reshape(n, ph, f, pw, f).any(axis=(2, 4))
        self.mask[start:start + n] = hit

    def regions(self) -> list[RegionOfInterest]:
        """Boxes (scan voxels, half-open) for stage 2; empty when stage 1 found nothing."""
        components, count = ndimage.label(self.mask, structure=np.ones((3, 3, 3), bool))
        self.components_found = int(count)
        if count == 0:
            self.components_kept = 0
            return []
        sizes = np.bincount(components.ravel())[1:]
        order = np.argsort(sizes)[::-1][:KEEP_REGIONS]
        keep = [int(j) + 1 for j in order if sizes[j] >= MIN_REGION_FRACTION * sizes[order[0]]]
        self.components_kept = len(keep)
        found = ndimage.find_objects(components)
        boxes = [self._scan_box(found[k - 1]) for k in keep]
        if not self.per_component:
            boxes = [_union(boxes)]
        return _merge_overlapping([self._grow(b) for b in boxes])

    def _scan_box(self, pooled: tuple[slice, slice, slice]) -> RegionOfInterest:
        """A pooled-grid box -> scan voxels (outer pixels: a detection is never cut)."""
        zs, rs, cs = pooled
        f, (h, w) = self.pool, self.grid
        rows, cols = self.shape[1], self.shape[2]
        r0, r1 = rs.start * f, min(rs.stop * f, h)
        c0, c1 = cs.start * f, min(cs.stop * f, w)
        return RegionOfInterest(zs.start, zs.stop,
                                math.floor(r0 * rows / h), math.ceil(r1 * rows / h),
                                math.floor(c0 * cols / w), math.ceil(c1 * cols / w))

    def _grow(self, box: RegionOfInterest) -> RegionOfInterest:
        ms, mr, mc = (math.ceil(self.margin_mm / s) if s > 0 else 0 for s in self.spacing)
        n, rows, cols = self.shape
        return RegionOfInterest(max(0, box.slice_start - ms), min(n, box.slice_stop + ms),
                                max(0, box.row_start - mr), min(rows, box.row_stop + mr),
                                max(0, box.col_start - mc), min(cols, box.col_stop + mc))


def _union(boxes: list[RegionOfInterest]) -> RegionOfInterest:
    return RegionOfInterest(min(b.slice_start for b in boxes), max(b.slice_stop for b in boxes),
                            min(b.row_start for b in boxes), max(b.row_stop for b in boxes),
                            min(b.col_start for b in boxes), max(b.col_stop for b in boxes))


def _overlap(a: RegionOfInterest, b: RegionOfInterest) -> bool:
    return (a.slice_start < b.slice_stop and b.slice_start < a.slice_stop and a.row_start < b.row_stop
            and b.row_start < a.row_stop and a.col_start < b.col_stop and b.col_start < a.col_stop)


def _merge_overlapping(boxes: list[RegionOfInterest]) -> list[RegionOfInterest]:
    """Replace overlapping boxes by their union until none overlap (sorted by slice)."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if _overlap(boxes[i], boxes[j]):
                    boxes[i] = _union([boxes[i], boxes[j]])
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes, key=lambda b: (b.slice_start, b.row_start, b.col_start))


def _write_box(store: SparseLabels, region: RegionOfInterest):
    """A sink that sets ``region`` of each slice to stage 2's labels and keeps what other
    (disjoint) boxes wrote elsewhere in the same slices."""

    def sink(start: int, stop: int, labels: np.ndarray) -> None:
        for i, k in enumerate(range(start, stop)):
            plane = store.slice(k)
            plane[region.row_start:region.row_stop, region.col_start:region.col_stop] = labels[i]
            store.write(k, plane[None])

    return sink


def segment_3d(scan, localiser: Stage3D | None, segmenter: Stage3D, backends: dict, profiler: Profiler,
               gate: bool = True, batch: int = 2, slab_size: int = 16) -> tuple[SparseLabels, dict]:
    """Segment one scan with a 3D package's stages.

    Args:
        scan: a :class:`kidedge.io.Scan`.
        localiser: stage 1 (None for a single-stage package).
        segmenter: the segment stage (with ``roi`` when it follows a localiser).
        backends: stage name -> activated backend.
        profiler: a started profiler.
        gate: run stage 2 only inside stage 1's boxes (False: everywhere).
        batch: windows per inference call.
        slab_size: slices read at a time.

    Returns:
        ``(labels, gating)``: canonical labels (before post-processing) held sparsely, and
        the gating statistics.
    """
    n, rows, cols = scan.shape
    labels = SparseLabels((n, rows, cols))
    whole = RegionOfInterest(0, n, 0, rows, 0, cols)
    profiler.info["latency_unit"] = "3D window (the stage's patch), not slice"
    common = dict(batch=batch, slab_size=slab_size)
    seg_backend = backends[segmenter.name]
    ungated_windows = segmenter.grid(whole, scan.spacing[1:]).n_windows
    if localiser is None or not gate:
        run = run_stage_3d(scan, seg_backend, segmenter, lambda a, b, lab: labels.write(a, lab), profiler,
                           name="segment", **common)
        reason = "single-stage package" if localiser is None else "gating disabled (--no-gate)"
        return labels, {"enabled": False, "reason": reason, "slices_total": n, "voxels_total": n * rows * cols,
                        "windows_stage2": run.windows, "windows_stage2_ungated": ungated_windows,
                        "skipped_slice_fraction": 0.0, "skipped_voxel_fraction": 0.0,
                        "skipped_pixel_fraction": 0.0, "skipped_window_fraction": 0.0}

    roi = segmenter.roi
    loc_grid = localiser.grid(whole, scan.spacing[1:]).shape[1:]
    locator = KidneyLocator(scan.shape, scan.spacing, loc_grid, roi["labels"], roi["margin_mm"], roi["per_component"])
    loc = run_stage_3d(scan, backends[localiser.name], localiser, lambda a, b, lab: locator.add(a, lab), profiler,
                       label_grid="model", name="localise", **common)
    with profiler.stage("locate"):
        regions = locator.regions()
    runs = [run_stage_3d(scan, seg_backend, segmenter, _write_box(labels, r), profiler, region=r,
                         name="segment", **common) for r in regions]
    run_slices = np.zeros(n, bool)
    for r in regions:
        run_slices[r.slice_start:r.slice_stop] = True
    voxels_total = n * rows * cols
    voxels_run = sum(r.voxels for r in runs)
    windows_run = sum(r.windows for r in runs)
    return labels, {
        "enabled": True,
        "margin_mm": locator.margin_mm,
        "per_component": locator.per_component,
        "stage1_components": locator.components_found,
        "stage1_components_kept": locator.components_kept,
        "windows_stage1": loc.windows,
        "slices_total": n,
        "slices_run_stage2": int(run_slices.sum()),
        "skipped_slice_fraction": round(1 - run_slices.sum() / n, 6),
        "voxels_total": voxels_total,
        "voxels_run_stage2": int(voxels_run),
        "skipped_voxel_fraction": round(1 - voxels_run / voxels_total, 6),
        # the 2D runtime's name for the same fraction, so reports read one key for both
        "skipped_pixel_fraction": round(1 - voxels_run / voxels_total, 6),
        "windows_stage2": int(windows_run),
        "windows_stage2_ungated": int(ungated_windows),
        "skipped_window_fraction": round(1 - windows_run / ungated_windows, 6) if ungated_windows else 0.0,
        "regions": [r.to_dict() for r in regions],
    }
