"""One package, its backends activated once, segmenting scan after scan: the library call.

:class:`Segmenter` holds the package and one activated backend per stage (engines load
once for a whole batch of scans). :meth:`Segmenter.segment` is the one call that turns a
scan into a result (:class:`Segmentation`: post-processed labels, volumes in mL, gating,
profile, warnings); ``kidedge infer``, ``kidedge evaluate --package``, the demo, the
benchmark and ``kidedge batch`` all call it, and write its labels with
:mod:`kidedge.io.writer`.

Inside, the stages run over the scan through the streaming pipeline: a single-stage
package runs on every slice; a cascade runs its localiser on a low-resolution view of
one slice every :data:`LOCALISER_STEP_MM` and, with gating on, its segmenter at full resolution inside the region the
localiser found (:mod:`kidedge.runtime.gating`). Then post-processing
(:func:`kidedge.postprocess.review_segmentation`: masses seated on a kidney, kidneys by
size and position beside the spine, per-scan warnings) and the volumes, on the labels'
bounding box only.

Memory: no whole-scan array. Network inputs and logits exist per slab only; the labels
go into a :class:`kidedge.runtime.labelmap.SparseLabels` that keeps only the labelled
part of each slice, so peak memory does not grow with the scan's length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kidedge.body_landmarks import BodyLandmarks, LandmarkCollector, strided_affine
from kidedge.errors import KidedgeError
from kidedge.kidney_review import review_segmentation  # scipy.spatial: 0.2 s of set-up
from kidedge.package import ModelPackage
from kidedge.postprocess import class_volumes_ml
from kidedge.runtime.backends.base import BackendOutOfMemory, BackendUnavailable
from kidedge.runtime.backends.registry import (
    BackendChoice,
    cpu_parallel_calls,
    create_backend,
    select_backend,
)
from kidedge.runtime.blas_threads import SingleThreadedBlas
from kidedge.runtime.cascade3d import DEFAULT_WINDOWS_CPU, DEFAULT_WINDOWS_GPU, segment_3d
from kidedge.runtime.gating import CascadeGate, RegionOfInterest
from kidedge.runtime.hugepages import avoid_hugepage_stalls
from kidedge.runtime.labelmap import SparseLabels, box_affine
from kidedge.runtime.pipeline import iter_sampled, run_stage
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.stage3d import Stage3D

#: Micro-batch (slices per ``infer`` call) when none is asked for.
DEFAULT_BATCH_CPU = 4
DEFAULT_BATCH_GPU = 16
#: A cascade's localiser sees one slice every this many millimetres (every slice when the
#: slices are thicker), then the unseen slices next to the first and last hit (the region's
#: ends as on every slice). Kidneys span 100-130 mm. Measured on phantoms of KiTS19 label
#: geometry (benchmarks/results/cpu-2core-amd-epyc/localiser_step.md), with today's
#: segmenter (it sees the scan around its box, grown onto a 16-pixel grid): at 4 mm the
#: labels equal the every-slice run's on 1.25 and 0.5 mm slices and agree 0.939 (kidney) on
#: 1 mm ones, truth Dice 0.858 against 0.850 (mean of 4 scans), for a localiser on 90
#: instead of 602 slices (3-4 s less on 600 slices). At 8 mm the region can miss a kidney.
LOCALISER_STEP_MM = 4.0


def localiser_step(slice_mm: float, step_mm: float = LOCALISER_STEP_MM) -> int:
    """Slices between two localiser slices: ``step_mm`` in slices, at least 1."""
    if not slice_mm > 0 or not step_mm > 0:
        return 1
    return max(1, int(step_mm / slice_mm + 1e-6))


def check_package_runnable(package: ModelPackage) -> None:
    """Refuse packages this streaming runtime cannot run, in one line."""
    if package.manifest.dimensionality == "3d":
        for stage in package.stages:  # a one-line error for a stage without sliding-window settings
            Stage3D.of(stage)
    if len(package.stages) > 2:
        raise KidedgeError(f"{package.source}: {len(package.stages)} stages; the runtime runs one stage or a two-stage cascade")
    if len(package.stages) == 2 and sum(s.roi is not None for s in package.stages) != 1:
        raise KidedgeError(f"{package.source}: a two-stage package needs exactly one stage with an roi")


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """What :meth:`Segmenter.segment` gives for one scan.

    Attributes:
        labels: the canonical (slice, row, column) labels after post-processing, held
            sparsely (:class:`SparseLabels`: ``to_dense()``, ``box()``, ``dense_box()``);
            write them with :func:`kidedge.io.writer.save_segmentation_planes`.
        volumes: :func:`kidedge.postprocess.class_volumes_ml` of the labels (mL per
            class and per side).
        gating: how much work cascade gating skipped (``{"enabled": False, ...}`` without).
        profile: the call's profile (:meth:`kidedge.runtime.profiling.Profiler.result`);
            None when the caller passed its own running profiler (it holds the profile).
        warnings: one-line notes about the result for the user: the post-processing
            review's (no kidney, one kidney, an implausible volume, what was removed:
            :mod:`kidedge.kidney_review`), and e.g. that the scan was rerun at a smaller
            micro-batch after the GPU ran out of memory.
    """

    labels: SparseLabels
    volumes: dict
    gating: dict
    profile: dict | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def volumes_ml(self) -> dict[str, float]:
        """The per-class volumes (``kidney_ml``, ``tumour_ml``, ...) as plain numbers."""
        classes = self.volumes.get("classes", {})
        return {k: v for k, v in classes.items() if isinstance(v, (int, float))}


class Segmenter:
    """Run a package on scans; a context manager that activates the backends once.

    Args:
        package: a loaded :class:`kidedge.package.ModelPackage`.
        choice: the backend choice (default: ``select_backend(package)``, the fastest here).
        batch: micro-batch size in slices (default 4 on a CPU, 16 on a GPU); for a 3D
            package, windows per inference call (default 1 on a CPU, 2 on a GPU).
        slab_size: slices read and preprocessed at a time.
        threads: CPU threads for the engine (None: the library's default); how a 2D
            package on onnxruntime's CPU provider uses them:
            :func:`kidedge.runtime.backends.registry.cpu_parallel_calls`.
        localiser_step_mm: a cascade's localiser runs on one slice every this many mm
            (:data:`LOCALISER_STEP_MM`); 0 runs it on every slice.
        through_plane_mm: the segmenter's through-plane smoothing sigma in mm instead of
            the package's (``output.through_plane_sigma_mm``); 0 turns it off; None keeps
            the package's. 2D softmax packages only.

    Raises:
        KidedgeError: the runtime cannot run this package; on entry, a backend that
            cannot be activated here.
    """

    def __init__(self, package: ModelPackage, choice: BackendChoice | None = None, batch: int | None = None,
                 slab_size: int = 16, threads: int | None = None,
                 localiser_step_mm: float = LOCALISER_STEP_MM, through_plane_mm: float | None = None) -> None:
        check_package_runnable(package)
        avoid_hugepage_stalls()  # a scan's box-sized arrays, freed and reused: see that module
        self.localiser_step_mm = float(localiser_step_mm)
        self.package = package
        self.choice = choice or select_backend(package)
        self.is_3d = package.manifest.dimensionality == "3d"
        cpu = self.choice.device == "cpu"
        default = (DEFAULT_WINDOWS_CPU if cpu else DEFAULT_WINDOWS_GPU) if self.is_3d else (
            DEFAULT_BATCH_CPU if cpu else DEFAULT_BATCH_GPU)
        self.batch = int(batch or default)
        self.slab_size = int(slab_size)
        self.threads = threads
        self.segmenter = next((s for s in package.stages if s.roi is not None), package.stages[0])
        self.localiser = package.stage(self.segmenter.roi.source_stage) if self.segmenter.roi else None
        if through_plane_mm is not None:
            self.segmenter = _with_through_plane(self.segmenter, float(through_plane_mm), self.is_3d)
        self.backends: dict = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Segmenter:
        try:
            # the pipeline's threads and the engine's pool share the cores: no BLAS pool on top
            self._stack.enter_context(SingleThreadedBlas())
            calls, threads = 1, self.threads
            if self.choice.backend == "onnxruntime" and self.choice.device == "cpu" and not self.is_3d:
                # 2D slices stream through the pipeline's micro-batches, which may run side
                # by side (registry.cpu_parallel_calls: two by default, KIDEDGE_PARALLEL_CALLS)
                calls, threads = cpu_parallel_calls(self.threads)
            for stage in ([self.localiser] if self.localiser else []) + [self.segmenter]:
                backend = create_backend(self.choice, self.package, stage, max_batch=self.batch,
                                         threads=threads, parallel_calls=calls)
                self.backends[stage.name] = self._stack.enter_context(backend)
        except BackendUnavailable as exc:
            self._stack.close()
            raise KidedgeError(f"--backend {self.choice.backend}: {exc}") from None
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

    def segment(self, scan, gate: bool = True, profiler: Profiler | None = None,
                postprocess: bool = True) -> Segmentation:
        """Segment one scan: stages, post-processing, volumes.

        Args:
            scan: a :class:`kidedge.io.Scan`.
            gate: run a cascade's stage 2 only inside stage 1's region (False: everywhere).
            profiler: a running profiler to record into, when the caller also times what
                it does with the result (e.g. writing it); by default the call profiles
                itself.
            postprocess: False keeps the network's own labels (for comparing engines).

        Returns:
            A :class:`Segmentation`.
        """
        own = profiler is None
        profiler = Profiler() if own else profiler
        warnings: list[str] = []
        with profiler if own else contextlib.nullcontext():
            labels, gating = self._run_stages_fitting_memory(scan, profiler, gate, warnings)
            with profiler.stage("postprocess"):
                if postprocess:
                    volumes, notes = _postprocess(labels, scan)
                    warnings += notes
                else:
                    volumes = _volumes(labels, scan)
        return Segmentation(labels, volumes, gating, profiler.result(scan.shape[0]) if own else None, warnings)

    def _run_stages_fitting_memory(self, scan, profiler: Profiler, gate: bool,
                                   warnings: list[str]) -> tuple[SparseLabels, dict]:
        """:meth:`_run_stages`, retried from the start at half the micro-batch each time the
        device runs out of memory (:class:`BackendOutOfMemory`), down to 1; then a one-line
        error for this scan (the engines stay loaded for the next one)."""
        batch = self.batch
        while True:
            try:
                return self._run_stages(scan, profiler, gate, batch)
            except BackendOutOfMemory as exc:
                if batch <= 1:
                    raise KidedgeError(f"{scan.source}: out of GPU memory even one slice at a time ({exc}); "
                                       "use a smaller model or --backend onnxruntime") from None
                warnings.append(f"out of GPU memory at micro-batch {batch}: scan rerun at {max(1, batch // 2)}")
                profiler.count("oom_retries", 1)
                batch = max(1, batch // 2)

    def _run_stages(self, scan, profiler: Profiler, gate: bool, batch: int) -> tuple[SparseLabels, dict]:
        """The canonical labels before post-processing, and the gating statistics."""
        n, rows, cols = scan.shape
        labels = SparseLabels((n, rows, cols))
        seg = self.segmenter
        if self.is_3d:  # papers 002/003: sliding windows, stage 2 inside each kidney's box
            return segment_3d(scan, Stage3D.of(self.localiser) if self.localiser else None, Stage3D.of(seg),
                              self.backends, profiler, gate=gate, batch=batch, slab_size=self.slab_size)
        seg_backend = self.backends[seg.name]
        common = dict(batch=batch, slab_size=self.slab_size)
        if self.localiser is None or not gate:
            run_stage(scan, seg_backend, seg, lambda a, b, lab: labels.write(a, lab), profiler, name="segment", **common)
            profiler.count("segment_slices", n)
            reason = "single-stage package" if self.localiser is None else "gating disabled (--no-gate)"
            return labels, {"enabled": False, "reason": reason, "slices_total": n,
                            "skipped_slice_fraction": 0.0, "skipped_pixel_fraction": 0.0}

        step = localiser_step(scan.spacing[0], self.localiser_step_mm)
        g = CascadeGate.for_stage(seg, scan.shape, scan.spacing, slice_step=step)
        localise = dict(label_grid="model", name="localise", **common)
        ran = run_stage(scan, self.backends[self.localiser.name], self.localiser,
                        lambda a, b, lab: g.add(a, lab), profiler, slice_step=step, **localise)
        # The kidneys end somewhere in the step beyond the first and last sampled hit: the
        # localiser on those few slices puts the region's ends where it would on every
        # slice (a region up to a step smaller each way, and stage 2 on the same slices
        # as with the localiser everywhere), for 2 * (step - 1) slices at most.
        for a, b in g.unseen_edges():
            ran += run_stage(scan, self.backends[self.localiser.name], self.localiser,
                             lambda a_, b_, lab: g.add(a_, lab, step=1), profiler,
                             region=RegionOfInterest(a, b, 0, rows, 0, cols), **localise)
        profiler.count("localise_slices", ran)
        roi = g.region()
        if roi is not None:
            def write_roi(a: int, b: int, lab: np.ndarray) -> None:
                labels.write(a, lab, roi.row_start, roi.col_start)

            run_stage(scan, seg_backend, seg, write_roi, profiler, region=roi, name="segment", **common)
            profiler.count("segment_slices", roi.slices)
        return labels, g.stats()


def _with_through_plane(stage, sigma_mm: float, is_3d: bool):
    """``stage`` with its output's through-plane smoothing set to ``sigma_mm`` (a run-time
    override of the package's), or a one-line refusal where it cannot apply."""
    if not (sigma_mm >= 0 and math.isfinite(sigma_mm)):
        raise KidedgeError(f"--through-plane-mm must be a number of mm >= 0, got {sigma_mm}")
    if sigma_mm and (is_3d or stage.output.activation != "softmax"):
        raise KidedgeError("--through-plane-mm: only a 2D softmax segmenter averages over slices "
                           "(this package's is 3D or sigmoid)")
    return dataclasses.replace(stage, output=dataclasses.replace(stage.output, through_plane_sigma_mm=sigma_mm))


def _postprocess(labels: SparseLabels, scan) -> tuple[dict, list[str]]:
    """Post-process ``labels`` in place (:func:`kidedge.postprocess.review_segmentation`:
    masses seated on a kidney, kidneys where kidneys lie); returns their volumes and the
    review's warnings. Everything outside the labels' bounding box is background, so
    working on the box gives the whole volume's result without a whole-volume array."""
    fg = labels.box()
    if fg is None:
        empty = review_segmentation(np.zeros((1, 1, 1), np.uint8), scan.spacing, scan.canonical_affine)
        return _volumes(labels, scan), empty.warnings
    # the body outline and spine are found on the other core while the review labels the
    # masses and kidneys (it needs them only afterwards, for positions and the midline)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kidedge-landmarks") as pool:
        landmarks = pool.submit(_landmarks, scan, fg[0])
        reviewed = review_segmentation(labels.dense_box(fg), scan.spacing, box_affine(scan.canonical_affine, fg),
                                       landmarks, box_start=[b.start for b in fg], scan_shape=scan.shape)
    labels.assign_box(fg, reviewed.labels)
    return reviewed.volumes, reviewed.warnings


def _landmarks(scan, slices: slice, stride: int = 4) -> BodyLandmarks:
    """Body outline and spine (:mod:`kidedge.body_landmarks`) on one slice every
    ``LOCALISER_STEP_MM`` of the labels' slice range, read again at every ``stride``-th
    pixel in-plane: the review's anatomy, a few milliseconds per slice."""
    step = localiser_step(scan.spacing[0])
    marks = LandmarkCollector(scan.shape[0], strided_affine(scan.canonical_affine, stride))
    for first, stop, raw in iter_sampled(scan, slices.start, slices.stop, step, 0, 16):
        hu = raw[:, ::stride, ::stride].astype(np.float32) * np.float32(scan.slope) + np.float32(scan.intercept)
        for j, k in enumerate(range(first, stop, step)):
            marks.add(k, hu[j:j + 1])
    return marks.result()


def _volumes(labels: SparseLabels, scan) -> dict:
    """:func:`kidedge.postprocess.class_volumes_ml` of ``labels``, counted on their box."""
    fg = labels.box()
    if fg is None:
        return class_volumes_ml(np.zeros((1, 1, 1), np.uint8), scan.spacing, affine=scan.canonical_affine)
    return class_volumes_ml(labels.dense_box(fg), scan.spacing, affine=box_affine(scan.canonical_affine, fg))
