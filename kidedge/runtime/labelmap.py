"""The scan's label map held sparsely, handed out as its dense bounding box.

A dense uint8 label volume of a 512 x 512 x 1000 scan is 250 MiB, and a boolean mask of
it (for a bounding box or a volume count) another 250 MiB: the runtime's peak memory
would grow with the scan's length. Kidneys do not: they span a few hundred cm^3 whatever
the scan covers. :class:`SparseLabels` therefore keeps, for each slice that has any
non-zero label, only the crop of that slice around its labels; empty slices cost nothing.
Post-processing and volumes work on the dense bounding box of the labels
(:meth:`SparseLabels.dense_box`), and :func:`kidedge.io.writer.save_segmentation_planes`
writes the NIfTI in the input's exact geometry one native plane at a time (from the
dense box), so no whole-scan array exists at any point
(``benchmarks/bench_runtime_memory.py`` measures this).
"""

from __future__ import annotations

import numpy as np


class SparseLabels:
    """A canonical (slice, row, column) uint8 label volume that stores only its labels.

    Args:
        shape: canonical shape of the scan.
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = tuple(int(s) for s in shape)
        # slice index -> (row0, col0, crop): the slice is zero outside the crop.
        self._crops: dict[int, tuple[int, int, np.ndarray]] = {}

    # ---------------------------------------------------------------- writing
    def write(self, start: int, labels: np.ndarray, row0: int = 0, col0: int = 0) -> None:
        """Set slices ``start : start + n`` to ``labels`` placed at ``(row0, col0)``; the
        rest of each of those slices becomes background."""
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise ValueError(f"expected (n, h, w) labels, got shape {labels.shape}")
        n, h, w = labels.shape
        if start < 0 or start + n > self.shape[0] or row0 < 0 or col0 < 0 or row0 + h > self.shape[1] \
                or col0 + w > self.shape[2]:
            raise ValueError(f"labels {labels.shape} at ({start}, {row0}, {col0}) fall outside {self.shape}")
        rows_any = labels.any(axis=2)  # (n, h)
        cols_any = labels.any(axis=1)  # (n, w)
        for i in range(n):
            k = start + i
            r = np.flatnonzero(rows_any[i])
            if r.size == 0:
                self._crops.pop(k, None)
                continue
            c = np.flatnonzero(cols_any[i])
            crop = np.array(labels[i, r[0]:r[-1] + 1, c[0]:c[-1] + 1], dtype=np.uint8)  # a copy: owns its memory
            self._crops[k] = (row0 + int(r[0]), col0 + int(c[0]), crop)

    def assign_box(self, box: tuple[slice, slice, slice], dense: np.ndarray) -> None:
        """Replace the labels inside ``box`` with ``dense``; everything outside the box
        must already be background (``box`` is :meth:`box` or contains it)."""
        s, r, c = box
        outside = [k for k in self._crops if not (s.start <= k < s.stop)]
        if outside:
            raise ValueError(f"slices {outside[:3]} hold labels outside the box {box}")
        self.write(s.start, dense, r.start, c.start)

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        """Number of slices holding any label."""
        return len(self._crops)

    @property
    def nbytes(self) -> int:
        return sum(crop.nbytes for _, _, crop in self._crops.values())

    def nonempty(self) -> np.ndarray:
        """Bool ``(slices,)``: which slices hold any label."""
        m = np.zeros(self.shape[0], bool)
        m[list(self._crops)] = True
        return m

    def box(self) -> tuple[slice, slice, slice] | None:
        """Bounding box of the non-zero labels as index slices, or None when all is background."""
        if not self._crops:
            return None
        ks = list(self._crops)
        r0 = min(v[0] for v in self._crops.values())
        c0 = min(v[1] for v in self._crops.values())
        r1 = max(v[0] + v[2].shape[0] for v in self._crops.values())
        c1 = max(v[1] + v[2].shape[1] for v in self._crops.values())
        return slice(min(ks), max(ks) + 1), slice(r0, r1), slice(c0, c1)

    def slice(self, k: int) -> np.ndarray:
        """Canonical slice ``k`` as a dense ``(rows, cols)`` uint8 array."""
        out = np.zeros(self.shape[1:], np.uint8)
        if k in self._crops:
            r0, c0, crop = self._crops[k]
            out[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return out

    def dense_box(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """The labels inside ``box`` as a dense uint8 array."""
        s, r, c = (slice(*sl.indices(n)[:2]) for sl, n in zip(box, self.shape, strict=True))
        out = np.zeros((s.stop - s.start, r.stop - r.start, c.stop - c.start), np.uint8)
        for k, (r0, c0, crop) in self._crops.items():
            if not (s.start <= k < s.stop):
                continue
            rr0, rr1 = max(r0, r.start), min(r0 + crop.shape[0], r.stop)
            cc0, cc1 = max(c0, c.start), min(c0 + crop.shape[1], c.stop)
            if rr0 < rr1 and cc0 < cc1:
                out[k - s.start, rr0 - r.start:rr1 - r.start, cc0 - c.start:cc1 - c.start] = \
                    crop[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0]
        return out

    def to_dense(self) -> np.ndarray:
        """The whole volume, dense (for callers that need it, e.g. scoring; not the runtime)."""
        return self.dense_box((slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2])))


def box_affine(canonical_affine: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """The voxel->world affine of the sub-array ``box`` of a canonical volume."""
    shift = np.eye(4)
    shift[:3, 3] = [sl.start for sl in box]
    return np.asarray(canonical_affine, np.float64) @ shift
