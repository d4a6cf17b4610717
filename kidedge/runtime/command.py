"""``kidedge infer``: segment scans with a model package (the library side of the CLI).

For each scan: read it (streaming), run the package's stages through the pipeline,
post-process (largest kidneys, masses only at a kidney), write the label map in the
input's exact shape and affine (atomically), write the volumes in mL as JSON beside it,
and optionally an overlay PNG. A bad scan is reported in one line and skipped; the others
are still written, and the exit code is 2 when any failed. Nothing here imports torch
(only ``--backend torch`` does, inside its backend).
"""

from __future__ import annotations

import platform
import sys
import zlib
from pathlib import Path

import click
import numpy as np

from kidedge.errors import KidedgeError
from kidedge.runtime.backends.base import BackendUnavailable
from kidedge.runtime.backends.registry import default_threads, select_backend
from kidedge.runtime.engine import Segmenter, check_package_runnable
from kidedge.runtime.inputs import ScanJob, expand_inputs, plan_outputs
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.report import format_summary, write_report_json

DEFAULT_BATCH_CPU = 4
DEFAULT_BATCH_GPU = 16


def load_package(model: str | Path | None):
    """The package named by ``--model``, or the one shipped inside kidedge."""
    from kidedge.package import ModelPackage, default_package_path

    if model is None and not default_package_path().exists():
        raise KidedgeError(
            f"{default_package_path()}: no built-in model package is installed in this kidedge; "
            "pass --model PACKAGE (made by kidedge export)")
    return ModelPackage.load(model)


def _overlay_path(overlay: str | None, job: ScanJob, n_jobs: int) -> Path | None:
    if overlay is None:
        return None
    p = Path(overlay)
    if n_jobs == 1:
        return p
    return p.with_name(f"{p.stem}_{job.name}{p.suffix or '.png'}")


def _grab_slices(scan, indices: list[int]):
    """HU of a few canonical slices, read by streaming (the scan is never loaded whole)."""

    from kidedge.runtime.pipeline import iter_slabs

    want = sorted(set(indices))
    got = {}
    for a, b, arr in iter_slabs(scan, 16, 0, want[0], want[-1] + 1):
        for k in want:
            if a <= k < b:
                got[k] = arr[k - a].astype(np.float32) * np.float32(scan.slope) + np.float32(scan.intercept)
    return np.stack([got[k] for k in want]), want


def segment_job(job: ScanJob, segmenter: Segmenter, gate: bool = True,
                overlay: Path | None = None) -> dict:
    """Segment one scan and write its outputs; returns the scan's report dict.

    Raises:
        KidedgeError: the scan cannot be read or is not a usable CT, or the output path
            is not allowed. Nothing is written then.
    """
    from kidedge.io import load_scan
    from kidedge.io.writer import check_output_path, write_json_atomic
    from kidedge.io.writer import save_segmentation_planes as save_sparse_segmentation
    from kidedge.postprocess import class_volumes_ml, postprocess_labels
    from kidedge.runtime.labelmap import box_affine

    scan = load_scan(job.scan)
    check_output_path(job.output, like=scan)
    if overlay is not None and overlay.resolve() == Path(job.scan).resolve():
        raise KidedgeError(f"{overlay}: the overlay path is the input scan; choose another name")
    profiler = Profiler()
    with profiler:
        labels, gating = segmenter.segment_sparse(scan, profiler, gate=gate)
        with profiler.stage("postprocess"):
            # Everything outside the labels' bounding box is background, so post-processing
            # and counting the box gives the same result without whole-volume arrays.
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
        with profiler.stage("write"):
            save_sparse_segmentation(labels, scan, job.output)
    write_json_atomic(job.volumes_json, {
        "scan": str(job.scan), "segmentation": str(job.output),
        "package": segmenter.package.name, "volumes": volumes})
    if overlay is not None:
        from kidedge.runtime.overlay import pick_slices, write_overlay

        picks = pick_slices(labels.nonempty()[:, None, None], 4)
        hu, picks = _grab_slices(scan, picks)
        overlay.parent.mkdir(parents=True, exist_ok=True)
        write_overlay(hu, np.stack([labels.slice(k) for k in picks]), picks, overlay,
                      pixel_spacing=scan.spacing[1:], title=job.name)
    classes = volumes.get("classes", {}) if isinstance(volumes, dict) else {}
    report = {
        "scan": str(job.scan), "output": str(job.output), "volumes_json": str(job.volumes_json),
        "overlay": str(overlay) if overlay else None,
        "shape": list(scan.shape), "spacing_mm": [round(s, 4) for s in scan.spacing],
        "backend": segmenter.describe(), "gating": gating,
        "volumes_ml": {k: v for k, v in classes.items() if isinstance(v, (int, float))},
        "profile": profiler.result(scan.shape[0]),
    }
    scan.release()
    return report


def _machine() -> dict:
    import os

    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def infer_command(scans, output=None, model=None, backend="auto", precision="auto", batch=None,
                  profile=None, overlay=None, gate=True) -> int:
    """Run ``kidedge infer``; returns the exit code (0 all written, 2 some scans failed).

    Args:
        scans: NIfTI files, DICOM series folders, or folders of those.
        output: a ``.nii.gz`` file (one scan) or a folder (default ``./kidedge_out``).
        model: model package directory or zip (default: the built-in package).
        backend: ``auto``, ``onnxruntime``, ``tensorrt`` or ``torch``.
        precision: ``auto``, ``fp32``, ``fp16`` or ``int8``.
        batch: micro-batch size in slices (default 4 on CPU, 16 on GPU).
        profile: write the run's profile JSON here.
        overlay: write a PNG of axial slices with the labels (one per scan; with several
            scans the scan's name is added to the file name).
        gate: cascade gating (stage 2 only inside stage 1's kidney region).

    Raises:
        KidedgeError: a problem that stops the whole run (model, backend, output); with a
            single scan, also a bad scan.
    """
    from tqdm import tqdm

    package = load_package(model)
    check_package_runnable(package)
    choice = select_backend(package, backend, precision)
    jobs = plan_outputs(expand_inputs(scans), output)
    for extra, what in ((profile, "--profile"), (overlay, "--overlay")):
        if extra is not None and any(Path(extra).resolve() == Path(j.scan).resolve() for j in jobs):
            raise KidedgeError(f"{extra}: {what} would overwrite an input scan")
    batch = int(batch or (DEFAULT_BATCH_CPU if choice.device == "cpu" else DEFAULT_BATCH_GPU))
    click.echo(f"kidedge: {package.name} on {choice.describe()} [{choice.reason}]", err=True)
    reports, failures = [], []
    try:
        segmenter = Segmenter(package, choice, batch=batch, threads=default_threads()).__enter__()
    except BackendUnavailable as exc:
        raise KidedgeError(f"--backend {choice.backend}: {exc}") from None
    try:
        bar = tqdm(jobs, unit="scan", disable=len(jobs) < 2, file=sys.stderr)
        for job in bar:
            bar.set_postfix_str(job.name)
            try:
                rep = segment_job(job, segmenter, gate=gate, overlay=_overlay_path(overlay, job, len(jobs)))
            except KidedgeError as exc:
                if len(jobs) == 1:
                    raise
                failures.append({"scan": str(job.scan), "error": str(exc)})
                tqdm.write(f"kidedge: error: {exc}", file=sys.stderr)
                continue
            except (OSError, EOFError, zlib.error) as exc:  # unreadable file beyond io's checks
                msg = f"{job.scan}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                if len(jobs) == 1:
                    raise KidedgeError(msg) from None
                failures.append({"scan": str(job.scan), "error": msg})
                tqdm.write(f"kidedge: error: {msg}", file=sys.stderr)
                continue
            reports.append(rep)
            tqdm.write(f"{job.output}\n{format_summary(rep)}", file=sys.stdout)
    finally:
        segmenter.__exit__(None, None, None)
    if profile is not None:
        Path(profile).parent.mkdir(parents=True, exist_ok=True)
        write_report_json({
            "kidedge_profile": 1, "package": package.name, "package_path": str(package.source),
            "backend": {"name": choice.backend, "device": choice.device, "precision": choice.precision,
                        "files": choice.files, "reason": choice.reason, "not_available": choice.skipped, "engine": reports[0]["backend"] if reports else None},
            "batch": batch, "gate": gate, "machine": _machine(),
            "scans": reports, "failed": failures,
        }, profile)
    if failures:
        click.echo(f"kidedge: {len(failures)} of {len(jobs)} scans failed; the others were written", err=True)
        return 2
    return 0
