"""The runtime, as ``kidedge batch`` uses it: one model load, then one call per scan.

The only place the batch package touches the runtime's API, so the stages stay the same
when the runtime changes underneath. :meth:`Engine.segment` is the runtime's one library
call, ``Segmenter.segment(scan)`` (labels post-processed, volumes).
"""

from __future__ import annotations

import contextlib


def load_checked_package(model=None, backend: str = "auto", precision: str = "auto"):
    """The package and backend choice, checked (one-line KidedgeError) before any worker
    starts: a bad ``--model`` is one error, not one per scan."""
    from kidedge.package import ModelPackage
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import check_package_runnable

    package = ModelPackage.load(model)
    check_package_runnable(package)
    return package, select_backend(package, backend, precision)


class Engine:
    """A :class:`kidedge.runtime.engine.Segmenter` with its backends activated."""

    def __init__(self, segmenter) -> None:
        self.segmenter = segmenter
        self.package_name = segmenter.package.name

    def segment(self, scan, gate: bool = True):
        """Canonical labels (sparse, post-processed), the volumes in mL and the review's
        warnings (one line each, as ``kidedge infer`` prints them) of one scan."""
        result = self.segmenter.segment(scan, gate=gate)
        return result.labels, result.volumes, list(result.warnings)


@contextlib.contextmanager
def open_engine(model=None, backend: str = "auto", precision: str = "auto", threads: int | None = None):
    """Load the package once and activate its backends for the life of the block."""
    from kidedge.runtime.engine import Segmenter

    package, choice = load_checked_package(model, backend, precision)
    with Segmenter(package, choice, threads=threads) as segmenter:  # a backend that cannot start: one line
        yield Engine(segmenter)


def write_nifti_labels(labels, scan, path) -> None:
    """The label map as NIfTI in the input's exact geometry (atomically)."""
    from kidedge.io.writer import check_output_path, save_segmentation_planes

    check_output_path(path, like=scan)
    save_segmentation_planes(labels, scan, path)
