"""What the kidney review measures of each connected component of a label map: its
voxel count, centroid, extent and how far toward the patient's left its voxels lie
(:func:`describe_components`), and the gap between two components (:func:`gap_mm`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.spatial import cKDTree

from kidedge.components import component_boxes, label26, review_threads
from kidedge.postprocess import _leftness_of

#: Slices of a component's box described at a time (bounds the review's memory).
DESCRIBE_SLICES = 32


def describe_components(block: np.ndarray, offset: np.ndarray, affine: np.ndarray,
                        voxel_ml: float) -> tuple[np.ndarray, list[dict]]:
    """26-connected components of ``block > 0``: ``(ids, descriptions)``, one dict per id
    1..n in order: ``id``, ``voxels``, ``ml``, ``centroid`` and ``lo`` / ``hi`` (voxel
    indices in the scan: ``offset`` is ``block[0, 0, 0]``'s), ``world`` (the centroid
    through ``affine``), ``lefts`` (each voxel's leftness in mm) and their mean
    ``leftness``."""
    comp, n = label26(block > 0)

    def describe(i: int, sl: tuple[slice, ...]) -> dict:
        # a few slices at a time: a kidney's (n, 3) int64 voxel list and its offset copies
        # were ~100 MB at once per kidney on a 0.5 mm scan, the runtime's peak memory
        start = np.array([s.start for s in sl]) + offset
        lefts, total, lo, hi = [], np.zeros(3, np.int64), None, None
        for a in range(sl[0].start, sl[0].stop, DESCRIBE_SLICES):
            chunk = (slice(a, min(a + DESCRIBE_SLICES, sl[0].stop)), *sl[1:])
            idx = [v + int(o) for v, o in zip(np.nonzero(comp[chunk] == i + 1), start + [a - sl[0].start, 0, 0],
                                             strict=True)]
            if idx[0].size == 0:
                continue
            lefts.append(_leftness_of(*(v.astype(np.float64) for v in idx), affine, None))
            total += [int(v.sum()) for v in idx]
            first, last = np.array([v.min() for v in idx]), np.array([v.max() for v in idx])
            lo = first if lo is None else np.minimum(lo, first)
            hi = last if hi is None else np.maximum(hi, last)
        lefts = np.concatenate(lefts)
        centroid = total / lefts.size  # exact integer sums: the mean of the voxel list
        world = (np.r_[centroid, 1.0] @ affine.T)[:3]
        return {"id": i + 1, "voxels": lefts.size, "ml": lefts.size * voxel_ml, "centroid": centroid,
                "world": world, "leftness": float(lefts.mean()), "lefts": lefts, "lo": lo, "hi": hi}

    boxes = component_boxes(comp, n)
    # the two kidneys hold nearly all voxels: their index scans and sums (numpy releases
    # the GIL) run on two threads, largest boxes first; the list keeps the ids' order
    order = sorted(range(n), key=lambda i: -np.prod([s.stop - s.start for s in boxes[i]]))
    with ThreadPoolExecutor(max_workers=review_threads(), thread_name_prefix="kidedge-review") as pool:
        described = dict(zip(order, pool.map(lambda i: describe(i, boxes[i]), order), strict=True))
    return comp, [described[i] for i in range(n)]


def gap_mm(piece: dict, main: dict, comp: np.ndarray, offset: np.ndarray, spacing, within_mm: float) -> float:
    """Shortest distance (mm, voxel centre to voxel centre) from component ``piece`` to
    ``main`` (descriptions of :func:`describe_components`), looked for only within
    ``within_mm`` around the piece (inf when farther)."""
    grow = np.ceil(within_mm / np.asarray(spacing, float)).astype(int) + 1
    lo = np.maximum(piece["lo"] - offset - grow, 0)
    hi = np.minimum(piece["hi"] - offset + grow + 1, comp.shape)
    window = comp[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    near_main = window == main["id"]
    if not near_main.any():
        return float("inf")
    # The closest pair of two disjoint voxel sets lies on both sets' surfaces (from an
    # inner voxel, a step toward the other set's voxel is still in the set and closer),
    # so a k-d tree of surface voxels gives the distance a distance transform of the
    # window would (0.3 s for a 2.6 M-voxel window of a 602-slice scan) in a few ms.
    sp = np.asarray(spacing, float)
    main_pts = np.argwhere(surface(near_main)) * sp
    piece_pts = np.argwhere(surface(window == piece["id"])) * sp
    return float(cKDTree(main_pts).query(piece_pts, k=1)[0].min())


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the array's border counts as
    outside)."""
    inner = mask.copy()
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        inner[tuple(lo)] &= mask[tuple(hi)]
        inner[tuple(hi)] &= mask[tuple(lo)]
        edge = [slice(None)] * mask.ndim
        for end in (0, -1):
            edge[axis] = end
            inner[tuple(edge)] = False
    return mask & ~inner
