"""``kidedge infer``: jobs, progress and errors around the library call.

For each scan: read it (:func:`kidedge.io.load_scan`), segment it
(:meth:`kidedge.runtime.engine.Segmenter.segment`: stages, post-processing, volumes), write
the label map in the input's exact shape and affine and the volumes in mL beside it
(:mod:`kidedge.io.writer`, atomically), and optionally an overlay PNG. A bad scan is
reported in one line and skipped; the others are still written, and the exit code is 2
when any failed. Nothing here imports torch (only ``--backend torch`` does, inside its
backend).
"""

from __future__ import annotations

import os
import platform
import sys
import zlib

import click

from kidedge.errors import KidedgeError
from kidedge.io import load_scan
from kidedge.io.dicom_seg import check_dicom_seg_source, check_seg_output_path, write_dicom_seg
from kidedge.io.writer import save_segmentation_planes, write_json_atomic
from kidedge.package import ModelPackage
from kidedge.runtime.backends.registry import default_threads, select_backend
from kidedge.runtime.engine import Segmenter
from kidedge.runtime.inputs import ScanJob, expand_inputs, plan_outputs
from kidedge.runtime.overlay import write_scan_overlay
from kidedge.runtime.profiling import Profiler
from kidedge.runtime.report import format_summary, write_report_json


def segment_job(job: ScanJob, segmenter: Segmenter, gate: bool = True) -> dict:
    """Segment one scan and write its outputs; returns the scan's report dict.

    Raises:
        KidedgeError: the scan cannot be read or is not a usable CT, or the output path
            is not allowed. Nothing is written then.
    """
    scan = load_scan(job.scan)
    if job.format == "dicom-seg":  # refused before any segmentation work
        check_seg_output_path(job.output, scan)
        check_dicom_seg_source(scan)
    profiler = Profiler()
    with profiler:  # the profile covers the write too: the user waits for it
        result = segmenter.segment(scan, gate=gate, profiler=profiler)
        with profiler.stage("write"):
            if job.format == "dicom-seg":
                write_dicom_seg(result.labels, scan, job.output, model=segmenter.package.name)
            else:
                save_segmentation_planes(result.labels, scan, job.output)
    write_json_atomic(job.volumes_json, {
        "scan": str(job.scan), "segmentation": str(job.output),
        "package": segmenter.package.name, "volumes": result.volumes, "warnings": list(result.warnings)})
    if job.overlay is not None:
        write_scan_overlay(scan, result.labels, job.overlay, title=job.name)
    report = {
        "scan": str(job.scan), "output": str(job.output), "volumes_json": str(job.volumes_json),
        "overlay": str(job.overlay) if job.overlay else None,
        "shape": list(scan.shape), "spacing_mm": [round(s, 4) for s in scan.spacing],
        "backend": segmenter.describe(), "gating": result.gating,
        "volumes_ml": result.volumes_ml, "warnings": list(result.warnings),
        "profile": profiler.result(scan.shape[0]),
    }
    scan.release()
    return report


def _machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def _run_jobs(jobs: list[ScanJob], segmenter: Segmenter, gate: bool) -> tuple[list[dict], list[dict]]:
    """Every job in turn with a progress bar; a failed scan is one line and the run goes
    on (with a single scan its error is the command's, raised once the profile is written)."""
    from tqdm import tqdm

    reports, failures = [], []
    bar = tqdm(jobs, unit="scan", disable=len(jobs) < 2, file=sys.stderr)
    for job in bar:
        bar.set_postfix_str(job.name)
        try:
            rep = segment_job(job, segmenter, gate=gate)
        except KidedgeError as exc:
            msg = str(exc)
        except (OSError, EOFError, zlib.error) as exc:  # unreadable file beyond io's checks
            msg = f"{job.scan}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        else:
            reports.append(rep)
            tqdm.write(f"{job.output}\n{format_summary(rep)}", file=sys.stdout)
            for warning in rep.get("warnings", []):
                tqdm.write(f"kidedge: warning: {job.scan}: {warning}", file=sys.stderr)
            continue
        failures.append({"scan": str(job.scan), "error": msg})
        if len(jobs) > 1:
            tqdm.write(f"kidedge: error: {msg}", file=sys.stderr)
    return reports, failures


def infer_command(scans, output=None, model=None, backend="auto", precision="auto", batch=None,
                  profile=None, overlay=None, gate=True, dla_core=None, fmt="nifti",
                  through_plane_mm=None) -> int:
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
        dla_core: run TensorRT plans built for this Jetson DLA core (a stage without one
            runs its GPU plan; the choice's reason says so on stderr).
        fmt: ``nifti`` (default) or ``dicom-seg``: a DICOM Segmentation object referencing
            the source series (DICOM series inputs only; :mod:`kidedge.io.dicom_seg`).
        through_plane_mm: the segmenter's through-plane smoothing sigma in mm instead of
            the package's (0: each slice alone; None: the package's).

    Raises:
        KidedgeError: a problem that stops the whole run (model, backend, output); with a
            single scan, also a bad scan.
    """
    package = ModelPackage.load(model)
    choice = select_backend(package, backend, precision, dla_core=dla_core)
    segmenter = Segmenter(package, choice, batch=batch, threads=default_threads(), through_plane_mm=through_plane_mm)
    jobs = plan_outputs(expand_inputs(scans), output, overlay=overlay, profile=profile, fmt=fmt)
    click.echo(f"kidedge: {package.name} on {choice.describe()} [{choice.reason}]", err=True)
    with segmenter:
        reports, failures = _run_jobs(jobs, segmenter, gate)
    if profile is not None:
        write_report_json({
            "kidedge_profile": 1, "package": package.name, "package_path": str(package.source),
            "backend": {"name": choice.backend, "device": choice.device, "precision": choice.precision,
                        "files": choice.files, "reason": choice.reason, "not_available": choice.skipped,
                        "dla_core": choice.dla_core,
                        "engine": reports[0]["backend"] if reports else None},
            "batch": segmenter.batch, "gate": gate, "machine": _machine(),
            "scans": reports, "failed": failures,
        }, profile)
    if failures and len(jobs) == 1:
        raise KidedgeError(failures[0]["error"])
    if failures:
        click.echo(f"kidedge: {len(failures)} of {len(jobs)} scans failed; the others were written", err=True)
        return 2
    return 0
