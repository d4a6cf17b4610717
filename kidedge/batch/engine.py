"""The runtime, as ``kidedge batch`` uses it: one model load, then one call per scan.

The only place the batch package touches the runtime's API, so the stages stay the same
when the runtime changes underneath. :meth:`Engine.segment` repeats the post-processing and
volume steps of ``kidedge.runtime.command.segment_job`` until the runtime's one library call
(``Segmenter.segment(scan)`` returning labels and volumes) replaces both.
"""

from __future__ import annotations

import contextlib

import numpy as np

from kidedge.errors import KidedgeError


def load_checked_package(model=None, backend: str = "auto", precision: str = "auto"):
    """The package and backend choice, checked (one-line KidedgeError) before any worker
    starts: a bad ``--model`` is one error, not one per scan."""
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.command import load_package
    from kidedge.runtime.engine import check_package_runnable

    package = load_package(model)
    check_package_runnable(package)
    return package, select_backend(package, backend, precision)


class Engine:
    """A :class:`kidedge.runtime.engine.Segmenter` with its backends activated."""

    def __init__(self, segmenter) -> None:
        self.segmenter = segmenter
        self.package_name = segmenter.package.name

    def segment(self, scan, gate: bool = True):
        """Canonical labels (sparse, post-processed) and the volumes in mL of one scan."""
        from kidedge.postprocess import class_volumes_ml, postprocess_labels
        from kidedge.runtime.labelmap import box_affine
        from kidedge.runtime.profiling import Profiler

        profiler = Profiler()
        with profiler:
            labels, _ = self.segmenter.segment_sparse(scan, profiler, gate=gate)
        fg = labels.box()
        if fg is not None:
            labels.assign_box(fg, postprocess_labels(labels.dense_box(fg), scan.spacing))
            fg = labels.box()
        if fg is not None:
            volumes = class_volumes_ml(labels.dense_box(fg), scan.spacing,
                                       affine=box_affine(scan.canonical_affine, fg))
        else:
            volumes = class_volumes_ml(np.zeros((1, 1, 1), np.uint8), scan.spacing,
                                       affine=scan.canonical_affine)
        return labels, volumes


@contextlib.contextmanager
def open_engine(model=None, backend: str = "auto", precision: str = "auto", threads: int | None = None):
    """Load the package once and activate its backends for the life of the block."""
    from kidedge.runtime.backends.base import BackendUnavailable
    from kidedge.runtime.engine import Segmenter

    package, choice = load_checked_package(model, backend, precision)
    batch = 4 if choice.device == "cpu" else 16
    try:
        with Segmenter(package, choice, batch=batch, threads=threads) as segmenter:
            yield Engine(segmenter)
    except BackendUnavailable as exc:
        raise KidedgeError(f"--backend {choice.backend}: {exc}") from None


def write_nifti_labels(labels, scan, path) -> None:
    """The label map as NIfTI in the input's exact geometry (atomically)."""
    from kidedge.io.writer import check_output_path, save_segmentation_planes

    check_output_path(path, like=scan)
    save_segmentation_planes(labels, scan, path)
