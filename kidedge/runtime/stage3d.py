"""One 3D stage of a package over a scan (or a box of it), streaming, in bounded memory.

::

    reader thread                        main thread
    read slab (SlabReader) -> crop   -> [q] -> SlabBlender.push: z-rows of windows through the
    -> kidedge.preprocess                     backend, Gaussian blend -> finished slices' logits
    (in-plane resampling to the stage's       -> uint8 labels at scan (or stage) resolution -> sink
    spacing, HU window, normalisation)

The stage's grid is the region preprocessed by the one preprocessing of kidedge
(:func:`kidedge.preprocess.preprocess_slices`): in-plane resampled to the stage's spacing
(or kept native), the slice axis as scanned (the 3D recipes do not resample it, and the
training patches are cut the same way). ``pad_multiple`` does not apply: windows of the
fixed patch cover the grid, and the padding of short axes is the window grid's own
(:mod:`kidedge.runtime.sliding_window`). At any time only one slab being read, one z-row
of windows, ``patch_depth`` slices of blended logits and one slab of labels exist.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.preprocess import PreprocessSpec, normalised_value, output_size, preprocess_slices
from kidedge.runtime.backends.base import Backend
from kidedge.runtime.gating import RegionOfInterest
from kidedge.runtime.labels import logits_to_labels
from kidedge.runtime.pipeline import _DONE, _put, _Worker, iter_slabs
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.sliding_window import SlabBlender, WindowGrid, WindowSpec


@dataclasses.dataclass(frozen=True)
class Stage3D:
    """What the 3D runtime reads from a package stage (a manifest dict or a typed stage).

    Attributes:
        name: the stage's name.
        spec: its preprocessing for the 3D grid (``pad_multiple`` dropped: windows cover it).
        window: its sliding-window settings (the manifest's ``window`` entry).
        output: its output (activation and labels, as :func:`logits_to_labels` takes it).
        roi: for a cascade's segment stage: ``source_stage``, ``labels``, ``margin_mm`` and
            ``per_component`` (one box per kidney); None otherwise.
    """

    name: str
    spec: PreprocessSpec
    window: WindowSpec
    output: object
    roi: dict | None = None

    @classmethod
    def of(cls, stage) -> Stage3D:
        """Read a stage dict, or a typed stage (attributes, unknown entries in ``extra``)."""
        if isinstance(stage, Mapping):
            name, spec, output = stage.get("name"), PreprocessSpec.from_dict(stage["preprocess"]), stage["output"]
            window, roi = stage.get("window"), stage.get("roi")
        else:
            name, spec, output = stage.name, stage.preprocess, stage.output
            window, roi = stage.extra.get("window"), stage.roi
            if roi is not None:
                roi = {"source_stage": roi.source_stage, "labels": list(roi.labels), "margin_mm": roi.margin_mm,
                       **dict(roi.extra)}
        if not isinstance(window, Mapping) or "patch" not in window:
            raise KidedgeError(f"3D stage {name!r} has no sliding-window settings ('window' with 'patch' in "
                               "its manifest entry); re-export the run with this kidedge")
        try:
            window = WindowSpec.from_dict(window)
        except (ValueError, TypeError, KeyError) as exc:
            raise KidedgeError(f"3D stage {name!r}: bad window settings: {exc}") from None
        if spec.context:
            raise KidedgeError(f"3D stage {name!r} has slice context {spec.context}; a 3D network sees its "
                               "neighbours through its patch, context must be 0")
        if spec.in_plane == "size":
            raise KidedgeError(f"3D stage {name!r} resamples slices to a fixed size; 3D stages resample to a "
                               "spacing or keep the scan's pixels")
        if roi is not None:
            roi = {"source_stage": roi["source_stage"], "labels": [int(v) for v in roi.get("labels", (1, 2, 3))],
                   "margin_mm": float(roi.get("margin_mm", 10.0)),
                   "per_component": bool(roi.get("per_component", False))}
        return cls(str(name), spec.replace(pad_multiple=1), window, output, roi)

    def grid(self, region: RegionOfInterest, pixel_spacing) -> WindowGrid:
        """The window grid of this stage over ``region`` of a scan with ``pixel_spacing``."""
        h, w = output_size(self.spec, (region.row_stop - region.row_start, region.col_stop - region.col_start),
                           pixel_spacing)
        return WindowGrid((region.slices, h, w), self.window)

    @property
    def pad_value(self) -> float:
        """Network input of padding: the bottom of the HU window, as in training."""
        return normalised_value(self.spec.hu_window[0], self.spec)


@dataclasses.dataclass
class StageRun:
    """What one 3D stage did on one region (for the profile and the gating report)."""

    grid: tuple[int, int, int]
    windows: int
    slices: int
    voxels: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_stage_3d(
    scan,
    backend: Backend,
    stage: Stage3D,
    sink: Callable[[int, int, np.ndarray], None],
    profiler: Profiler,
    region: RegionOfInterest | None = None,
    batch: int = 2,
    slab_size: int = 16,
    label_grid: str = "scan",
    name: str = "stage",
    queue_depth: int = 2,
) -> StageRun:
    """Run one 3D stage over a scan (or ``region`` of it) by Gaussian-blended sliding windows.

    Args:
        scan: a :class:`kidedge.io.Scan`.
        backend: an activated backend of this stage (takes ``(n, 1, *patch)`` float32).
        stage: the stage (:meth:`Stage3D.of` a package stage).
        sink: called as ``sink(start, stop, labels)`` in slice order with uint8 labels of
            canonical slices ``start:stop`` of the region, on the grid ``label_grid`` asks.
        profiler: where stage times, window latencies and counters go.
        region: a box of the scan (default: all of it).
        batch: windows per ``infer`` call.
        slab_size: slices read and preprocessed at a time.
        label_grid: ``"scan"``: labels at the region's scan resolution; ``"model"``: on the
            stage's own grid (a localiser's coarse view).
        name: prefix of this stage's profile entries.
        queue_depth: preprocessed slabs buffered between the reader and the network.
    """
    n, rows, cols = scan.shape
    roi = region or RegionOfInterest(0, n, 0, rows, 0, cols)
    spec = stage.spec
    pixel_spacing = scan.spacing[1:]
    grid = stage.grid(roi, pixel_spacing)
    content = grid.shape[1:]
    target = (roi.row_stop - roi.row_start, roi.col_stop - roi.col_start) if label_grid == "scan" else content
    full_crop = (roi.row_start, roi.row_stop, roi.col_start, roi.col_stop) == (0, rows, 0, cols)
    finite_check = np.issubdtype(scan.dtype, np.floating)
    abort = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=queue_depth)

    def read_and_preprocess() -> None:
        it = iter_slabs(scan, slab_size, 0, roi.slice_start, roi.slice_stop)
        while not abort.is_set():
            with profiler.stage(f"{name}.read"):
                item = next(it, None)
            if item is None:
                break
            a, b, raw = item
            if not full_crop:
                raw = raw[:, roi.row_start:roi.row_stop, roi.col_start:roi.col_stop]
            if finite_check and not np.all(np.isfinite(raw)):
                raise KidedgeError(f"{scan.source}: slices {a}-{b - 1} contain NaN or infinite values")
            with profiler.stage(f"{name}.preprocess"):
                x = preprocess_slices(raw, spec, pixel_spacing, scan.slope, scan.intercept)[:, 0]
            if not _put(q_in, x, abort):
                return
        _put(q_in, _DONE, abort)

    def on_batch(windows: int, seconds: float) -> None:
        profiler.add_batch(windows, seconds)
        profiler.add_time(f"{name}.infer", seconds)

    blender = SlabBlender(grid, backend.infer, stage.pad_value, batch, on_batch)

    def label(parts) -> None:
        for z0, z1, logits in parts:
            t = time.perf_counter()
            labels = logits_to_labels(logits.transpose(1, 0, 2, 3), stage.output, content, target)
            profiler.add_time(f"{name}.labels", time.perf_counter() - t)
            with profiler.stage(f"{name}.sink"):
                sink(roi.slice_start + z0, roi.slice_start + z1, labels)

    reader = _Worker(read_and_preprocess, f"kidedge-{name}-reader", abort)
    reader.start()
    try:
        while True:
            try:
                item = q_in.get(timeout=0.1)
            except queue.Empty:
                if abort.is_set() or (not reader.is_alive() and q_in.empty()):
                    break
                continue
            if item is _DONE:
                label(blender.close())
                break
            label(blender.push(item))
            del item
    finally:
        abort.set()
        reader.join()
    if reader.error is not None:
        raise reader.error
    profiler.count(f"{name}_windows", blender.windows_run)
    return StageRun(grid=grid.shape, windows=blender.windows_run, slices=roi.slices,
                    voxels=roi.slices * (roi.row_stop - roi.row_start) * (roi.col_stop - roi.col_start))
