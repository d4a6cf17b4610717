"""The streaming pipeline: slabs in, uint8 labels out, with I/O overlapping compute.

One stage of a package runs over a scan as three workers joined by bounded queues::

    reader thread        main thread              labeller thread
    read slab  ->  [q] -> micro-batched infer -> [q] -> logits -> uint8 labels -> sink
    + preprocess    (slabs)                 (micro-batches)

Where the engine runs calls side by side (``Backend.parallel_calls`` > 1: onnxruntime on
CPU, one thread per call), the main thread hands micro-batches in turn to that many
inference threads, and the labeller puts their logits back in slice order (two calls by
default, :func:`kidedge.runtime.backends.registry.cpu_parallel_calls`: on the 2-core machine
faster than one two-thread call at a time, benchmarks/results/cpu-2core-amd-epyc/threads.md).

The queues hold at most ``queue_depth`` slabs (input) and ``queue_depth`` micro-batches
(logits), so memory stays bounded by a few slabs whatever the scan's length, and
decompression / preprocessing (numpy and zlib release the GIL) run while the engine
computes. A cascade's region is cut out while reading (only the crop is copied), and a
localiser can run on every k-th slice only (``slice_step``). The float32 network input and logits exist only for what is in flight; the
labeller turns logits into uint8 labels micro-batch by micro-batch
(:func:`kidedge.runtime.labels.logits_to_labels`) and hands them to ``sink``; a stage
whose output asks for through-plane smoothing has its probabilities averaged over
neighbouring slices first (:mod:`kidedge.runtime.through_plane`), the labeller holding
only the slices that average still needs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.package import Stage
from kidedge.preprocess import PreprocessSpec, output_size, padded_size, preprocess_slices
from kidedge.runtime.backends.base import Backend
from kidedge.runtime.gating import RegionOfInterest
from kidedge.runtime.labels import logits_to_labels
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.through_plane import ThroughPlaneSmoother, through_plane_weights
from kidedge.shape_buckets import bucket_for, describe

_DONE = object()


def iter_slabs(scan, slab_size: int, context: int, start: int = 0, stop: int | None = None,
               rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
               ) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, slices)`` of canonical slices ``start:stop`` in slabs, each with
    ``context`` neighbour slices on each side (edge-replicated at the volume's ends),
    cut to ``rows`` x ``cols`` when given.

    Uses :class:`kidedge.io.SlabReader`, which streams the file and never holds the
    whole volume (for slice-slowest layouts). Slabs are trimmed to ``[start, stop)``.
    """
    from kidedge.io import SlabReader

    n = scan.shape[0]
    stop = n if stop is None else min(stop, n)
    if start >= stop:
        return
    for slab in SlabReader(scan, slab_size=slab_size, context=context, start=start, stop=stop,
                           rows=rows, cols=cols):
        a, b = slab.start, slab.stop
        if b <= start:
            continue
        if a >= stop:
            break
        lo, hi = max(a, start), min(b, stop)
        arr = slab.array
        if (lo, hi) != (a, b):
            arr = arr[lo - a: hi - a + 2 * context]
        yield lo, hi, arr


def iter_sampled(scan, start: int, stop: int, step: int, context: int, group: int,
                 rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
                 ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Every ``step``-th canonical slice of ``start:stop``, ``group`` at a time, as
    ``(first, stop, slices)``: the slices ``first, first + step, ...`` below ``stop``, each
    as its ``2 * context + 1`` consecutive slices (edge-replicated at the volume's ends),
    so ``slices`` is ``(m * (2 * context + 1), h, w)``.

    A scan read whole (KiTS19 files) gives just those slices (:func:`kidedge.io.slabs.
    gather_slices`); a streamed one is read in slabs and the chosen slices kept.
    """
    from kidedge.io import SlabReader
    from kidedge.io.slabs import gather_slices

    n = scan.shape[0]
    offsets = np.arange(-context, context + 1)
    reader = SlabReader(scan, slab_size=group * step, context=context, start=start, stop=stop,
                        rows=rows, cols=cols)
    if reader.strategy == "whole":
        ks_all = np.arange(start, min(stop, n), step)
        for i in range(0, ks_all.size, group):
            ks = ks_all[i:i + group]
            yield int(ks[0]), int(ks[-1]) + 1, gather_slices(scan, np.clip(ks[:, None] + offsets, 0, n - 1).ravel(),
                                                             rows, cols)
        return
    for slab in reader:  # slabs start at start + j * group * step: their first slice is sampled
        local = np.arange(0, slab.stop - slab.start, step)
        yield slab.start, slab.start + int(local[-1]) + 1, slab.array[(local[:, None] + context + offsets).ravel()]


class _Worker(threading.Thread):
    """A daemon thread that records the exception that ended it."""

    def __init__(self, target: Callable[[], None], name: str, abort: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._abort = abort
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised in the main thread
            self.error = exc
            self._abort.set()  # unblocks the other workers' queue waits


def _put(q: queue.Queue, item, abort: threading.Event) -> bool:
    """Put with a timeout loop so a worker never blocks forever after an abort."""
    while not abort.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_stage(
    scan,
    backend: Backend,
    stage: Stage,
    sink: Callable[[int, int, np.ndarray], None],
    profiler: Profiler,
    region: RegionOfInterest | None = None,
    batch: int = 4,
    slab_size: int = 16,
    queue_depth: int = 2,
    label_grid: str = "scan",
    name: str = "stage",
    slice_step: int = 1,
) -> int:
    """Run one package stage over a scan (or over ``region`` of it), streaming.

    Args:
        scan: a :class:`kidedge.io.Scan`.
        backend: an activated backend for this stage.
        stage: the package's :class:`kidedge.package.Stage` (preprocessing, input, output).
        sink: called as ``sink(start, stop, labels)`` per micro-batch, in slice order, with
            uint8 labels of slices ``start, start + slice_step, ...`` below ``stop``
            (``(stop - start, h, w)`` for every slice) on the grid chosen by ``label_grid``.
        profiler: where stage times and batch latencies go.
        region: only these slices / rows / columns (cascade stage 2); None: everything.
        batch: micro-batch size (slices per ``infer`` call).
        slab_size: slices read and preprocessed at a time.
        queue_depth: slabs (input) and micro-batches (logits) buffered between workers
            (bounds memory).
        label_grid: ``"scan"``: labels at the region's full resolution; ``"model"``: on
            the stage's own (unpadded) output grid, e.g. 64x64 for a localiser.
        name: prefix of this stage's entries in the profile.
        slice_step: run on every ``slice_step``-th slice of the region only (a cascade's
            localiser), starting at its first slice.

    Returns:
        Number of slices run.
    """
    spec = stage.preprocess
    n, rows, cols = scan.shape
    roi = region or RegionOfInterest(0, n, 0, rows, 0, cols)
    full_crop = (roi.row_start, roi.row_stop, roi.col_start, roi.col_stop) == (0, rows, 0, cols)
    in_size = (roi.row_stop - roi.row_start, roi.col_stop - roi.col_start)
    pixel_spacing = scan.spacing[1:]
    content = output_size(spec, in_size, pixel_spacing)
    # engines with fixed shapes (TensorRT profiles) get the smallest bucket that holds the
    # crop; the others the multiple of pad_multiple (measured faster on ONNX Runtime CPU:
    # benchmarks/results/shape_buckets.md)
    pad_to = _bucket(backend, content, stage, scan) if backend.input_buckets else None
    net_size = pad_to or padded_size(spec, content)
    _check_input_size(stage, spec, net_size, scan)
    target = in_size if label_grid == "scan" else content
    slab_size = max(slab_size, batch)
    abort = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=queue_depth)
    q_out: queue.Queue = queue.Queue(maxsize=queue_depth)
    finite_check = np.issubdtype(scan.dtype, np.floating)

    crop = {} if full_crop else {"rows": (roi.row_start, roi.row_stop), "cols": (roi.col_start, roi.col_stop)}
    # sampled slices come as groups of 2 * context + 1: each group is preprocessed as
    # single slices, then stacked into one input (what preprocess_slices' context does)
    per_slice = spec.replace(context=0) if slice_step > 1 else spec

    def read_and_preprocess() -> None:
        if slice_step > 1:
            it = iter_sampled(scan, roi.slice_start, roi.slice_stop, slice_step, spec.context, slab_size, **crop)
        else:
            it = iter_slabs(scan, slab_size, spec.context, roi.slice_start, roi.slice_stop, **crop)
        while not abort.is_set():
            with profiler.stage(f"{name}.read"):
                item = next(it, None)
            if item is None:
                break
            a, b, raw = item
            if finite_check and not np.all(np.isfinite(raw)):
                raise KidedgeError(f"{scan.source}: slices {a}-{b - 1} contain NaN or infinite values")
            with profiler.stage(f"{name}.preprocess"):
                x = preprocess_slices(raw, per_slice, pixel_spacing, scan.slope, scan.intercept, pad_to=pad_to)
                if slice_step > 1 and spec.context:
                    x = x.reshape(-1, spec.channels, *x.shape[2:])
            if not _put(q_in, (a, b, x), abort):
                return
        _put(q_in, _DONE, abort)

    # a 2D segmenter's probabilities averaged over neighbouring slices (the package asks
    # for it): the labeller holds the few slices the average still needs
    weights = through_plane_weights(float(scan.spacing[0]), stage.output.through_plane_sigma_mm)
    smoother = ThroughPlaneSmoother(weights) if weights.size > 1 and slice_step == 1 else None

    def to_sink(a: int, b: int, scores: np.ndarray) -> None:
        with profiler.stage(f"{name}.labels"):
            labels = logits_to_labels(scores, stage.output, content, target)
        with profiler.stage(f"{name}.sink"):
            sink(a, b, labels)

    def smoothed_to_sink(ready: tuple[int, np.ndarray] | None) -> None:
        if ready is not None:  # consecutive slices (the smoother runs where slice_step is 1)
            to_sink(ready[0], ready[0] + ready[1].shape[0], ready[1])

    def label() -> None:
        # micro-batches may finish out of order (parallel infer calls): the sink still
        # gets them in slice order, from the few held here until their turn
        pending: dict[int, tuple] = {}
        turn = 0
        while not abort.is_set():
            try:
                item = q_out.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                if smoother is not None:
                    smoothed_to_sink(smoother.finish())
                return
            seq, a, b, logits = item
            pending[seq] = (a, b, logits)
            del item, logits
            while turn in pending:
                a, b, logits = pending.pop(turn)
                turn += 1
                if smoother is None:
                    to_sink(a, b, logits)
                else:
                    with profiler.stage(f"{name}.smooth"):
                        ready = smoother.push(a, logits[:, :, :content[0], :content[1]])
                    smoothed_to_sink(ready)
                del logits

    def infer(seq: int, first: int, xb: np.ndarray) -> bool:
        """One micro-batch through the engine, its logits to the labeller."""
        t = time.perf_counter()
        logits = backend.infer(xb)
        dt = time.perf_counter() - t
        profiler.add_batch(xb.shape[0], dt)
        profiler.add_time(f"{name}.infer", dt)
        # Logits travel per micro-batch, so only a few micro-batches of logits exist at
        # any time, whatever the slab size.
        return _put(q_out, (seq, first, first + (xb.shape[0] - 1) * slice_step + 1, logits), abort)

    # Engines that run calls side by side (onnxruntime on CPU, one thread per call:
    # Backend.parallel_calls) get that many inference threads fed micro-batches in turn.
    calls = max(1, int(getattr(backend, "parallel_calls", 1)))
    q_work: queue.Queue = queue.Queue(maxsize=calls)

    def infer_worker() -> None:
        while not abort.is_set():
            try:
                item = q_work.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE or not infer(*item):
                return

    reader = _Worker(read_and_preprocess, f"kidedge-{name}-reader", abort)
    labeller = _Worker(label, f"kidedge-{name}-labeller", abort)
    inferers = [_Worker(infer_worker, f"kidedge-{name}-infer{i}", abort) for i in range(calls if calls > 1 else 0)]
    workers = [reader, labeller, *inferers]
    for worker in workers:
        worker.start()
    done = seq = 0
    try:
        while True:
            try:
                item = q_in.get(timeout=0.1)
            except queue.Empty:
                if abort.is_set():
                    break
                if not reader.is_alive() and q_in.empty():
                    break
                continue
            if item is _DONE:
                break
            a, b, x = item
            stopped = False
            for i in range(0, x.shape[0], batch):
                xb = x[i:i + batch]
                work = (seq, a + i * slice_step, xb)
                seq += 1
                if not (_put(q_work, work, abort) if inferers else infer(*work)):
                    stopped = True
                    break
            done += x.shape[0]
            x = xb = work = None  # views of the slab: drop them all so it is freed
            if stopped:
                break
        for _ in inferers:
            _put(q_work, _DONE, abort)
        for worker in inferers:
            worker.join()
        _put(q_out, _DONE, abort)
        labeller.join()
    finally:
        abort.set()
        for worker in workers:
            worker.join()
    for worker in workers:
        if worker.error is not None:
            raise worker.error
    return done


def _bucket(backend: Backend, content: tuple[int, int], stage: Stage, scan) -> tuple[int, int]:
    """The backend's smallest input bucket that holds ``content``, or a one-line refusal
    (a field of view wider than the package's buckets cover: kidedge.shape_buckets)."""
    b = bucket_for(backend.input_buckets, content)
    if b is None:
        raise KidedgeError(
            f"{scan.source}: stage {stage.name!r} needs a {content[0]}x{content[1]} input, larger than every input "
            f"bucket of its {backend.name} engine ({describe(backend.input_buckets)}); use --backend onnxruntime")
    return b


def _check_input_size(stage: Stage, spec: PreprocessSpec, net_size: tuple[int, int], scan) -> None:
    """Refuse a fixed-size model that the preprocessed slices do not fit."""
    fixed = stage.input.fixed_size
    if fixed is not None and tuple(fixed) != tuple(net_size):
        raise KidedgeError(
            f"{scan.source}: stage {stage.name!r} takes {fixed[0]}x{fixed[1]} slices but this scan's "
            f"{scan.shape[1]}x{scan.shape[2]} slices preprocess to {net_size[0]}x{net_size[1]}")
    if stage.input.channels != spec.channels:
        raise KidedgeError(f"stage {stage.name!r}: input has {stage.input.channels} channels but its "
                           f"preprocessing gives {spec.channels}")
