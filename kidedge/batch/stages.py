"""The three stages of ``kidedge batch``: read, segment, write. Plain Python, no Ray: the
pipeline (:mod:`kidedge.batch.pipeline`) runs them as Ray Data map stages, and the tests
call them directly.

Each stage takes and returns one row (a dict with the same keys throughout, so Ray Data
sees one schema): the scan's paths, ``payload`` (pickled: the scan's voxels after read,
its labels after segment), ``volumes`` and ``warnings`` (JSON text), ``error`` (one line, or None) and the
seconds each stage took. A stage never raises for a bad scan: it fills ``error`` and later
stages pass the row through, so one scan's failure is recorded and the others go on.

The payload carries the scan's geometry (affine, NIfTI header, DICOM source record) with
it, so a scan is read once (by the read stage) and its result is written in exactly the
input's geometry by the write stage, on whichever machine each stage runs.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import time
import zlib

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.io.scan import Scan

ROW_KEYS = ("scan", "name", "output", "volumes_json", "payload", "volumes", "warnings", "error",
            "t_read", "t_segment", "t_write", "finished_at")


def new_row(item) -> dict:
    """The row of a :class:`kidedge.batch.plan.BatchItem` before any stage ran."""
    return {"scan": item.scan, "name": item.name, "output": item.output,
            "volumes_json": item.volumes_json, "payload": None, "volumes": None,
            "warnings": "[]", "error": None, "t_read": 0.0, "t_segment": 0.0, "t_write": 0.0, "finished_at": 0.0}


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KidedgeError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}"[:300]


@contextlib.contextmanager
def _stage(row: dict, key: str):
    """Time a stage into ``row[key]``; any exception becomes the row's one-line error."""
    t0 = time.perf_counter()
    try:
        yield
    except (KidedgeError, OSError, EOFError, zlib.error, MemoryError) as exc:
        row["error"], row["payload"] = _one_line(exc), None
    except Exception as exc:  # a bug on one scan must not stop an archive: record it
        row["error"], row["payload"] = f"internal error: {_one_line(exc)}", None
    finally:
        row[key] = time.perf_counter() - t0


# ------------------------------------------------------------------ scan geometry
def _geometry(scan: Scan) -> dict:
    """Everything needed to rebuild ``scan`` without its voxels (picklable)."""
    return {"source": str(scan.source), "affine": scan.affine, "native_shape": scan.native_shape,
            "dtype": scan.dtype.str, "slope": scan.slope, "intercept": scan.intercept,
            "format": scan.format, "header": scan.header, "file_shape": scan.file_shape,
            "dicom": getattr(scan, "dicom", None)}


def _no_voxels():
    raise RuntimeError("the voxels of this scan stayed with the read stage")


def _rebuild(geometry: dict, native: np.ndarray | None = None) -> Scan:
    scan = Scan(source=geometry["source"], affine=geometry["affine"],
                native_shape=geometry["native_shape"], dtype=np.dtype(geometry["dtype"]),
                slope=geometry["slope"], intercept=geometry["intercept"],
                loader=(lambda: native) if native is not None else _no_voxels,
                format=geometry["format"], header=geometry["header"],
                file_shape=geometry["file_shape"])
    if geometry["dicom"] is not None:
        scan.dicom = geometry["dicom"]
    return scan


# ------------------------------------------------------------------ stages
def read_stage(row: dict, fmt: str = "nifti") -> dict:
    """Read the scan (all its checks: a bad one fails here) and decompress its voxels."""
    if row["error"]:
        return row
    with _stage(row, "t_read"):
        from kidedge.io import load_scan

        scan = load_scan(row["scan"])
        if fmt == "dicom-seg":
            from kidedge.io.dicom_seg import check_dicom_seg_source

            check_dicom_seg_source(scan)  # before any segmentation work is spent on it
        native = np.ascontiguousarray(scan.native)
        row["payload"] = pickle.dumps({"geometry": _geometry(scan), "native": native}, protocol=5)
    return row


class SegmentStage:
    """Segments scan after scan with one model load (a callable class: Ray Data builds one
    per worker of the actor pool).

    Args:
        model: model package path, or None for the built-in package.
        backend, precision: as ``kidedge infer`` (``auto`` picks).
        gate: cascade gating.
        threads: CPU threads of this worker's engine (its share of the machine).
    """

    def __init__(self, model=None, backend: str = "auto", precision: str = "auto",
                 gate: bool = True, threads: int | None = None) -> None:
        from kidedge.batch.engine import open_engine

        self._stack = contextlib.ExitStack()
        self.engine = self._stack.enter_context(open_engine(model, backend, precision, threads))
        self.gate = gate

    def __call__(self, row: dict) -> dict:
        if row["error"]:
            return row
        with _stage(row, "t_segment"):
            data = pickle.loads(row["payload"])
            scan = _rebuild(data["geometry"], data["native"])
            labels, volumes, warnings = self.engine.segment(scan, gate=self.gate)
            row["volumes"], row["warnings"] = json.dumps(volumes), json.dumps(warnings)
            row["payload"] = pickle.dumps({"geometry": data["geometry"], "labels": labels}, protocol=5)
        return row

    def close(self) -> None:
        self._stack.close()


def write_stage(row: dict, package_name: str = "", fmt: str = "nifti") -> dict:
    """Write the label map (NIfTI or DICOM SEG) in the input's geometry, then the volumes
    record that marks the scan finished (:func:`kidedge.batch.plan.finished_record`).
    ``finished_at``: when the scan left the pipeline (epoch seconds), written or failed."""
    if row["error"]:
        row["payload"], row["finished_at"] = None, time.time()
        return row
    with _stage(row, "t_write"):
        from kidedge.batch.plan import file_digest
        from kidedge.io.writer import write_json_atomic

        data = pickle.loads(row["payload"])
        scan = _rebuild(data["geometry"])
        if fmt == "dicom-seg":
            from kidedge.io.dicom_seg import write_dicom_seg

            write_dicom_seg(data["labels"], scan, row["output"], model=package_name)
        else:
            from kidedge.batch.engine import write_nifti_labels

            write_nifti_labels(data["labels"], scan, row["output"])
        size, digest = file_digest(row["output"])
        write_json_atomic(row["volumes_json"], {
            "scan": row["scan"], "segmentation": row["output"], "package": package_name,
            "output_bytes": size, "output_sha256": digest, "volumes": json.loads(row["volumes"]),
            "warnings": json.loads(row["warnings"])})
        row["payload"] = None
    row["finished_at"] = time.time()
    return row
