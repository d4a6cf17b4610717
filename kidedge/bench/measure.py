"""One benchmark variant on one scan, in a fresh process: wall time, peak RSS, stages.

Every measurement runs as its own child process (``python -m kidedge.bench.measure
SPEC.json RESULT.json``) so that each variant starts from a clean heap: peak RSS is then the
variant's own, not whatever an earlier variant left behind, and torch is only ever imported
by the children that run a torch baseline.

In the child the run has two timed phases:

* ``setup``: imports and model loading (building the torch model, creating onnxruntime
  sessions); a user pays it once per process, so it is reported apart.
* ``scan``: from the scan's path to the written label map (read, decompress, preprocess,
  infer, post-process, write). This is the end-to-end time per scan the report compares.
  Its CPU time (all threads) is recorded too: on a shared, oversubscribed machine wall time
  stretches with other people's load, CPU time much less.

Every child first turns numpy's transparent-huge-page advice off where the kernel would
stall on it (:mod:`kidedge.runtime.hugepages`), as kidedge's engine does for itself: the
floor and the baselines run under the same setting.

Peak RSS is the kernel's high-water mark of resident memory (``VmHWM`` in
``/proc/self/status``). It is reset after setup (writing ``5`` to
``/proc/self/clear_refs``), so ``scan_peak_rss_mb`` is the peak while the scan ran
(including the resident libraries and model), and ``peak_rss_mb`` is the process's peak over
both phases. Where the reset is not allowed, both are the whole-process peak; off Linux the
numbers come from ``getrusage`` instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1e6


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark, in MB (1e6 bytes)."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: getrusage's maxrss (kB on Linux, bytes on macOS)
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ru / MB if sys.platform == "darwin" else ru * 1024 / MB
    return kb * 1024 / MB


def current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024 / MB


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class FloorRunner:
    """Read and decompress the scan into its native dtype with nibabel: the floor.

    No runtime can segment a scan faster than it can read it, so every variant's time is
    also reported as a multiple of this one.
    """

    def __init__(self, spec: dict) -> None:
        import nibabel  # noqa: F401 - import cost belongs to setup

        self.image = spec["image"]

    def run(self) -> dict:
        import nibabel as nib

        t0 = time.perf_counter()
        img = nib.load(self.image)
        array = img.dataobj.get_unscaled()  # native dtype (int16 for KiTS CT), fully decompressed
        seconds = time.perf_counter() - t0
        return {"stages": {"read": seconds}, "voxels": int(array.size), "dtype": str(array.dtype)}


def _runner(spec: dict):
    kind = spec["kind"]
    if kind == "floor":
        return FloorRunner(spec)
    if kind == "papers":
        from kidedge.bench.baselines import PapersWay

        return PapersWay(spec["model"], batch=spec.get("batch", 16), threads=spec.get("threads"),
                         image=spec["image"], out=spec["out"], region=spec.get("region", True))
    if kind == "monai":
        from kidedge.bench.baselines import MonaiSliceInferer

        return MonaiSliceInferer(spec["model"], batch=spec.get("batch", 16), threads=spec.get("threads"),
                                 image=spec["image"], out=spec["out"], region=spec.get("region", True))
    if kind == "papers3d":  # a 3D package: whole float volume, torch eager, MONAI sliding window
        from kidedge.bench.papers3d import PapersWay3D

        return PapersWay3D(spec["model"], spec["image"], spec["out"], batch=spec.get("batch", 1),
                           threads=spec.get("threads"))
    if kind == "kidedge":
        from kidedge.bench.kidedge_variant import KidedgeRunner

        return KidedgeRunner(spec)
    raise ValueError(f"unknown benchmark variant kind {kind!r}")


def run_in_this_process(spec: dict) -> dict:
    """Set up and run one variant here; returns the measurement (see the module doc)."""
    from kidedge.runtime.hugepages import avoid_hugepage_stalls

    # kidedge's engine turns numpy's huge-page advice off where the kernel stalls on it;
    # every variant (the read floor and the baselines too) runs under the same setting,
    # so no ratio credits kidedge with what is a property of the process
    hugepages_off = avoid_hugepage_stalls()
    t0 = time.perf_counter()
    runner = _runner(spec)
    setup_s = time.perf_counter() - t0
    setup_peak = peak_rss_mb()
    was_reset = reset_peak_rss()
    rss_before = current_rss_mb()
    t1, c1 = time.perf_counter(), time.process_time()
    info = runner.run() or {}
    scan_s, cpu_s = time.perf_counter() - t1, time.process_time() - c1
    scan_peak = peak_rss_mb()
    close = getattr(runner, "close", None)
    if close is not None:
        close()
    return {
        "ok": True,
        "setup_s": setup_s,
        "scan_s": scan_s,
        "scan_cpu_s": cpu_s,
        "rss_before_scan_mb": rss_before,
        "setup_peak_rss_mb": setup_peak,
        "scan_peak_rss_mb": scan_peak,
        "peak_rss_mb": max(setup_peak, scan_peak),
        "peak_reset": was_reset,
        "numpy_hugepages_off": hugepages_off,
        **info,
    }


def measure(spec: dict, timeout_s: float = 1800.0, env: dict | None = None) -> dict:
    """Run one variant in a fresh ``python -m kidedge.bench.measure`` process.

    Args:
        spec: what to run: ``kind`` (floor | papers | monai | kidedge), ``image`` (the scan),
            ``out`` (label map to write), ``model`` (package), and for kidedge ``backend``,
            ``precision``, ``gate``; optional ``batch``, ``threads``.
        timeout_s: the child is killed after this long (the result then says so).
        env: extra environment variables for the child.

    Returns:
        The child's measurement, plus ``wall_s`` (the child's whole life, interpreter start
        included). On failure ``ok`` is False and ``error`` holds one line.
    """
    with tempfile.TemporaryDirectory(prefix="kidedge-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        child_env = dict(os.environ, **(env or {}))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "kidedge.bench.measure",
                                   str(spec_path), str(result_path)],
                                  capture_output=True, text=True, timeout=timeout_s, env=child_env)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout_s:.0f} s", "wall_s": time.perf_counter() - t0}
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not result_path.exists():
            tail = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
            return {"ok": False, "wall_s": wall,
                    "error": (tail[-1] if tail else f"exit code {proc.returncode}")[:300]}
        result = json.loads(result_path.read_text())
        result["wall_s"] = wall
        return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m kidedge.bench.measure SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    result = run_in_this_process(spec)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
