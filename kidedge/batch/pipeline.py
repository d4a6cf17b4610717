"""``kidedge batch``: every scan of an archive through the lean runtime, as a Ray Data
pipeline (needs ``pip install 'kidedge[cluster]'``: Ray, imported only here).

::

    plan (driver)          find scans, skip finished ones, check the model once
       |
    read    (tasks)        load + check + decompress one scan          -> voxels + geometry
       |
    segment (actor pool)   one model load per worker, scan after scan  -> labels + volumes
       |
    write   (tasks)        label map in the input's geometry, then the volumes record
       |
    summary (driver)       batch_summary.csv: scan, status, seconds, volumes (mL), error

Stages are Ray Data map stages over one scan per block, so reading the next scan overlaps
segmenting this one and writing the last, and Ray Data's backpressure bounds how many scans
are in flight (memory stays a few scans' worth whatever the archive's size).

Failures: a bad scan fails inside its stage (:mod:`kidedge.batch.stages`) and is recorded;
the others go on. A worker that dies (out of memory, a crash in a native library) loses
only the scan it held: tasks and actor tasks are never retried (``max_retries=0``,
``max_task_retries=0``, so a scan that kills its worker cannot kill workers in a loop),
errored blocks are dropped instead of failing the run, the actor pool replaces the dead
worker, and the lost scan is listed as failed. A rerun does every scan not finished.

Ray: without ``ray_address`` a private local Ray is started for this run (``workers``
CPUs, no dashboard, a bounded object store, workers at the command's own priority; even
where ``RAY_ADDRESS`` names a cluster) and
shut down at the end, even on error or Ctrl-C. With an address (``auto``, ``host:6379``,
``ray://host:10001``) the run joins that cluster as it is (nothing on it is configured or
shut down; only this driver disconnects); its nodes need kidedge installed and the same
paths for INPUT and OUT (shared storage), and Ray's own settings apply (e.g.
``RAY_AUTH_MODE=token`` and the cluster's token where it requires one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from kidedge.batch.plan import SUMMARY_NAME, find_scans, finished_record, plan_items
from kidedge.batch.stages import ROW_KEYS, SegmentStage, new_row, read_stage, write_stage
from kidedge.batch.summary import failed_line, skipped_line, summary_line, write_summary
from kidedge.errors import KidedgeError

DEFAULT_OUTPUT_DIR = Path("kidedge_batch")
#: Object store of a local Ray: a few scans in flight (a 600-slice 512x512 scan is 300 MiB
#: of int16); beyond it Ray spills to disk rather than growing.
LOCAL_OBJECT_STORE_MB = 1024
INSTALL_HINT = "kidedge batch needs Ray: pip install 'kidedge[cluster]'"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs the [data] extra: pandas, pyarrow)
    except ModuleNotFoundError as exc:
        raise KidedgeError(f"{INSTALL_HINT} (missing {exc.name})") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None, workers: int):
    """Ray for the run: a private local one (started and shut down here), or a connection
    to an existing cluster (left as it is)."""
    ray = _import_ray()
    if ray.is_initialized():  # called inside a Ray program: use its Ray, leave it running
        yield ray
        return
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            # "local": a new private Ray even where RAY_ADDRESS names a cluster. Workers at
            # this process's priority: Ray's default starts them 15 nicer than the driver,
            # which on a shared machine leaves the segmenting to whatever CPU is left over.
            ray.init(address="local", num_cpus=workers, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_MB * 1024 * 1024,
                     _system_config={"worker_niceness": 0}, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        ray.shutdown()  # whatever a failed start left behind
        where = f"--ray-address {address}" if address else "local Ray"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KidedgeError(f"{where}: cannot start or connect ({msg[:200]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data(ray) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one line per scan is printed instead
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # a dead worker's scan is dropped (and listed), not fatal
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def build_dataset(ray, items, *, workers: int, cpus_per_worker: float, model, backend: str,
                  precision: str, gate: bool, fmt: str, package_name: str):
    """The read -> segment -> write Ray Data pipeline over ``items`` (lazy)."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    io_tasks = TaskPoolStrategy(size=max(1, workers))
    # One scan in flight per worker: a worker that dies loses only the scan it runs, not
    # a queue of others. Retries off (see the module docstring); Ray 2.60 takes them only
    # as generic remote arguments, which it marks deprecated: that warning is expected.
    pool = ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
    threads = max(1, int(cpus_per_worker))
    ds = ray.data.from_items([new_row(it) for it in items], override_num_blocks=len(items))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        # reading and writing are I/O and (de)compression: no CPU reserved, so the
        # workers' CPUs are all the segmenters'; the task pool's size bounds them instead
        ds = ds.map(read_stage, fn_kwargs={"fmt": fmt}, compute=io_tasks, num_cpus=0, max_retries=0)
        ds = ds.map(SegmentStage, fn_constructor_kwargs={
            "model": model, "backend": backend, "precision": precision, "gate": gate, "threads": threads},
            compute=pool, num_cpus=cpus_per_worker, max_restarts=-1, max_task_retries=0)
        return ds.map(write_stage, fn_kwargs={"package_name": package_name, "fmt": fmt},
                      compute=io_tasks, num_cpus=0, max_retries=0)


LOST = "not finished: its worker died or the run was interrupted (see Ray's logs)"


def account(todo, got: dict[str, dict]) -> list[dict]:
    """Summary lines of this run's scans: what came back, and every scan that did not
    (its worker died, or the run was interrupted) as failed."""
    return [got[it.scan] if it.scan in got else failed_line(it, LOST) for it in todo]


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_batch(input_path, out=None, *, ray_address: str | None = None, workers: int | None = None,
              cpus_per_worker: float = 1.0, model=None, backend: str = "auto", precision: str = "auto",
              gate: bool = True, fmt: str = "nifti") -> int:
    """Run ``kidedge batch``; returns the exit code (0: every scan finished, 2: some failed).

    Args:
        input_path: a folder tree of scans, or a list file (see :mod:`kidedge.batch.plan`).
        out: output folder (default ``./kidedge_batch``); results mirror INPUT's folders,
            and ``batch_summary.csv`` lists every scan.
        ray_address: an existing Ray cluster; None starts a private local Ray.
        workers: segmenting workers (one model load each); default: this machine's CPUs,
            or the cluster's CPUs over ``cpus_per_worker``.
        cpus_per_worker: CPUs (and engine threads) each worker holds.
        model, backend, precision, gate: as ``kidedge infer``.
        fmt: ``nifti`` or ``dicom-seg`` (DICOM series only; NIfTI scans then fail).

    Raises:
        KidedgeError: no scans, a bad model, Ray missing or unreachable.
    """
    from kidedge.batch.engine import load_checked_package

    _import_ray()  # the install hint before anything else
    out = Path(out) if out is not None else DEFAULT_OUTPUT_DIR
    scans, root = find_scans(input_path, out)
    items = plan_items(scans, root, out, fmt)
    package, choice = load_checked_package(model, backend, precision)
    lines, todo = [], []
    for it in items:
        record = finished_record(it, package.name)
        if record is not None:
            lines.append(skipped_line(it, record))
        else:
            todo.append(it)
    _echo(f"kidedge batch: {len(items)} scans, {len(items) - len(todo)} finished before, "
          f"{len(todo)} to do; {package.name} on {choice.describe()}")
    t0 = time.perf_counter()
    got: dict[str, dict] = {}
    if todo:
        local_cpus = os.cpu_count() or 1
        with ray_session(ray_address, workers or max(1, int(local_cpus // cpus_per_worker))) as ray:
            if workers is None:
                cpus = ray.cluster_resources().get("CPU", local_cpus)
                workers = max(1, int(cpus // cpus_per_worker))
            _quiet_ray_data(ray)
            ds = build_dataset(ray, todo, workers=workers, cpus_per_worker=cpus_per_worker, model=model,
                               backend=backend, precision=precision, gate=gate, fmt=fmt,
                               package_name=package.name)
            try:
                for row in ds.iter_rows():
                    row = {k: row.get(k) for k in ROW_KEYS}
                    line = summary_line(row)
                    got[row["scan"]] = line
                    _echo(f"[{len(got)}/{len(todo)}] {line['status']:6s} {row['name']}"
                          + (f": {line['error']}" if line["error"] else f" ({line['seconds']:.1f} s)"))
            finally:
                lines += account(todo, got)
                summary = write_summary(Path(out) / SUMMARY_NAME, lines)
    else:
        summary = write_summary(Path(out) / SUMMARY_NAME, lines)
    failed = sum(1 for line in lines if line["status"] == "failed")
    done = sum(1 for line in lines if line["status"] == "done")
    _echo(f"kidedge batch: {done} done, {len(items) - len(todo)} skipped (finished before), {failed} failed "
          f"in {time.perf_counter() - t0:.1f} s; summary {summary}")
    return 2 if failed else 0
