"""One package, its backends activated once, segmenting scan after scan.

:class:`Segmenter` holds the package and one activated backend per stage (engines load
once for a whole batch of scans). :meth:`Segmenter.segment` runs the stages over one scan
through the streaming pipeline: a single-stage package runs on every slice; a cascade runs
its localiser on a low-resolution view of every slice and, with gating on, its segmenter
at full resolution inside the region the localiser found (:mod:`kidedge.runtime.gating`).

Memory: no whole-scan array. Network inputs and logits exist per slab only; the labels
go into a :class:`kidedge.runtime.labelmap.SparseLabels` that keeps only the labelled
part of each slice, so peak memory does not grow with the scan's length.
"""

from __future__ import annotations

import contextlib

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.runtime.backends.registry import BackendChoice, create_backend
from kidedge.runtime.blas_threads import SingleThreadedBlas
from kidedge.runtime.gating import CascadeGate
from kidedge.runtime.labelmap import SparseLabels
from kidedge.runtime.pipeline import run_stage
from kidedge.runtime.profiling import Profiler


def check_package_runnable(package) -> None:
    """Refuse packages this streaming runtime cannot run, in one line."""
    dim = package.manifest.dimensionality
    if dim != "2d":
        raise KidedgeError(
            f"{package.source}: a {dim} package; the streaming runtime runs 2D (slice-wise) packages only "
            "(3D patch inference is not implemented in kidedge infer)")
    if len(package.stages) > 2:
        raise KidedgeError(f"{package.source}: {len(package.stages)} stages; the runtime runs one stage or a two-stage cascade")
    if len(package.stages) == 2:
        seg = [s for s in package.stages if s.roi is not None]
        if len(seg) != 1:
            raise KidedgeError(f"{package.source}: a two-stage package needs exactly one stage with an roi")


class ForegroundBox:
    """Bounding box of the non-zero labels, grown slab by slab as labels are written, so
    post-processing can work on the kidney region without a pass over the whole volume."""

    def __init__(self) -> None:
        self.lo = None
        self.hi = None

    def update(self, start: int, labels: np.ndarray, row0: int = 0, col0: int = 0) -> None:
        """Add the non-zero voxels of ``labels`` (slices from ``start``, rows/cols offset)."""
        fg = labels != 0
        s = np.flatnonzero(fg.any(axis=(1, 2)))
        if s.size == 0:
            return
        r = np.flatnonzero(fg.any(axis=(0, 2)))
        c = np.flatnonzero(fg.any(axis=(0, 1)))
        lo = np.array([start + s[0], row0 + r[0], col0 + c[0]])
        hi = np.array([start + s[-1] + 1, row0 + r[-1] + 1, col0 + c[-1] + 1])
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def slices(self) -> tuple[slice, slice, slice] | None:
        """The box as index slices, or None when every label is background."""
        if self.lo is None:
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi, strict=True))


class Segmenter:
    """Run a package on scans.

    Args:
        package: a loaded :class:`kidedge.package.ModelPackage`.
        choice: the backend choice (:func:`kidedge.runtime.backends.registry.select_backend`).
        batch: micro-batch size in slices.
        slab_size: slices read and preprocessed at a time.
        threads: CPU threads for the engine (None: the library's default).
    """

    def __init__(self, package, choice: BackendChoice, batch: int = 4, slab_size: int = 16,
                 threads: int | None = None) -> None:
        check_package_runnable(package)
        self.package = package
        self.choice = choice
        self.batch = int(batch)
        self.slab_size = int(slab_size)
        self.threads = threads
        if len(package.stages) == 1:
            self.localiser, self.segmenter = None, package.stages[0]
        else:
            self.segmenter = next(s for s in package.stages if s.roi is not None)
            self.localiser = package.stage(self.segmenter.roi.source_stage)
        self.backends: dict = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Segmenter:
        try:
            # the pipeline's threads and the engine's pool share the cores: no BLAS pool on top
            self._stack.enter_context(SingleThreadedBlas())
            for stage in ([self.localiser] if self.localiser else []) + [self.segmenter]:
                backend = create_backend(self.choice, self.package, stage, max_batch=self.batch,
                                         threads=self.threads)
                self.backends[stage.name] = self._stack.enter_context(backend)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self.backends.clear()

    def describe(self) -> str:
        b = next(iter(self.backends.values()), None)
        return b.description if b is not None else self.choice.describe()

    def segment(self, scan, profiler: Profiler, gate: bool = True) -> tuple[np.ndarray, dict, ForegroundBox]:
        """Segment one scan into a dense label volume (for scoring and tests; the
        runtime itself uses :meth:`segment_sparse`).

        Returns:
            ``(labels, gating, box)``: uint8 canonical labels (before post-processing), the
            gating statistics, and the bounding box of the non-zero labels.
        """
        store, gating = self.segment_sparse(scan, profiler, gate=gate)
        box = ForegroundBox()
        fg = store.box()
        if fg is not None:
            box.lo = np.array([sl.start for sl in fg])
            box.hi = np.array([sl.stop for sl in fg])
        return store.to_dense(), gating, box

    def segment_sparse(self, scan, profiler: Profiler, gate: bool = True) -> tuple[SparseLabels, dict]:
        """Segment one scan.

        Args:
            scan: a :class:`kidedge.io.Scan`.
            profiler: a started profiler (stage times, latencies, counters).
            gate: run a cascade's stage 2 only inside stage 1's region (False: everywhere).

        Returns:
            ``(labels, gating)``: the canonical labels before post-processing, held
            sparsely, and the gating statistics (``{"enabled": False, ...}`` without gating).
        """
        n, rows, cols = scan.shape
        labels = SparseLabels((n, rows, cols))
        seg = self.segmenter
        seg_backend = self.backends[seg.name]
        common = dict(batch=self.batch, slab_size=self.slab_size)
        if self.localiser is None or not gate:
            run_stage(scan, seg_backend, seg, lambda a, b, lab: labels.write(a, lab), profiler, name="segment", **common)
            profiler.count("segment_slices", n)
            reason = "single-stage package" if self.localiser is None else "gating disabled (--no-gate)"
            return labels, {"enabled": False, "reason": reason, "slices_total": n,
                            "skipped_slice_fraction": 0.0, "skipped_pixel_fraction": 0.0}

        g = CascadeGate.for_stage(seg, scan.shape, scan.spacing)
        run_stage(scan, self.backends[self.localiser.name], self.localiser,
                  lambda a, b, lab: g.add(a, lab), profiler, label_grid="model", name="localise", **common)
        profiler.count("localise_slices", n)
        roi = g.region()
        if roi is not None:
            def write_roi(a: int, b: int, lab: np.ndarray) -> None:
                labels.write(a, lab, roi.row_start, roi.col_start)

            run_stage(scan, seg_backend, seg, write_roi, profiler, region=roi, name="segment", **common)
            profiler.count("segment_slices", roi.slices)
        return labels, g.stats()
