"""Run profiling: stage times, per-slice latency, throughput, peak memory, energy.

:class:`Profiler` is started around one scan's inference. It measures

* wall time per pipeline stage (summed over the threads that run it; stages overlap, so
  they can add up to more than the run's wall time),
* per-slice inference latency: the wall time of each micro-batch's ``infer`` call divided
  by the slices in it (amortised; with ``--batch 1`` it is the true per-slice latency),
  summarised as p50 / p95 / p99,
* slices per second (slices of the scan / wall time of the run),
* peak host RSS: a psutil polling thread (every ``interval_s``) during the run, and the
  kernel's high-water mark of the whole process (``VmHWM``, which also covers start-up
  and anything the polling missed),
* peak GPU memory and energy when NVML (``pynvml``) is importable and sees a GPU, and
  energy on a Jetson from ``tegrastats`` (whole-module power, not just this process).

Where no power sensor can be read (an ordinary CPU machine), energy is reported as null
with the reason, never estimated.
"""

from __future__ import annotations

import contextlib
import re
import resource
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

# ---------------------------------------------------------------------------------------
# tegrastats
# ---------------------------------------------------------------------------------------

# A power rail is "NAME cur/avg" with an optional "mW" after each number, e.g.
# "VDD_IN 5000mW/5000mW" (JetPack 5+) or "POM_5V_IN 3000/3000" (JetPack 4). The lookahead
# keeps "RAM 1400/3964MB" and "IRAM 0/252kB" out.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}
#: Rails that measure the whole module's input, in order of preference.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """Instantaneous power of each rail in one tegrastats line, in milliwatts.

    Args:
        line: one line of ``tegrastats`` output (any Jetson generation).

    Returns:
        ``{rail: mW}`` (the current value, not the running average); empty if the line
        has no power rails.
    """
    return {m[1]: float(m[2]) for m in _RAIL.finditer(line) if m[1] not in _NOT_RAILS}


def tegrastats_total_mw(rails: dict[str, float]) -> float | None:
    """Module input power: ``VDD_IN`` or ``POM_5V_IN`` when present, else the sum of the
    rails (boards such as AGX Xavier list only per-domain rails); None if no rails."""
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name]
    return float(sum(rails.values())) if rails else None


def integrate_energy_j(samples: list[tuple[float, float]]) -> float | None:
    """Energy in joules from ``(time_s, power_w)`` samples (trapezoid rule)."""
    if len(samples) < 2:
        return None
    t = np.array([s[0] for s in samples])
    p = np.array([s[1] for s in samples])
    return float(np.sum((p[1:] + p[:-1]) * 0.5 * np.diff(t)))


# ---------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------


def high_water_rss_mb() -> float:
    """The process's peak RSS so far, in MiB.

    On Linux this is ``VmHWM`` from /proc/self/status: the peak of this process image.
    ``ru_maxrss`` is only the fallback, because Linux carries it across ``execve`` (a
    child started from a large parent reports the parent's peak).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


class _NvmlSampler:
    """Peak GPU memory and power of GPU 0 via NVML (device-wide)."""

    def __init__(self) -> None:
        import pynvml  # noqa: F401 - raises ImportError where NVML is absent

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = pynvml.nvmlDeviceGetName(self.handle)
        if isinstance(self.name, bytes):
            self.name = self.name.decode()
        self.base_used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        self.peak_used = self.base_used
        self.power: list[tuple[float, float]] = []
        try:
            self.energy_start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:  # pre-Volta GPUs have no energy counter
            self.energy_start_mj = None

    def sample(self) -> None:
        nv = self.nvml
        self.peak_used = max(self.peak_used, nv.nvmlDeviceGetMemoryInfo(self.handle).used)
        try:
            self.power.append((time.perf_counter(), nv.nvmlDeviceGetPowerUsage(self.handle) / 1000.0))
        except Exception:
            pass

    def result(self) -> tuple[dict, dict | None]:
        nv = self.nvml
        gpu = {"name": self.name, "source": "nvml (device-wide)",
               "peak_memory_mb": round(self.peak_used / 2**20, 1),
               "peak_memory_above_start_mb": round((self.peak_used - self.base_used) / 2**20, 1)}
        energy = None
        if self.energy_start_mj is not None:
            try:
                j = (nv.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.energy_start_mj) / 1000.0
                energy = {"joules": round(j, 3), "source": "nvml energy counter (GPU board)"}
            except Exception:
                energy = None
        if energy is None:
            j = integrate_energy_j(self.power)
            if j is not None:
                energy = {"joules": round(j, 3), "source": "nvml power samples (GPU board)"}
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
        return gpu, energy


class _TegrastatsSampler:
    """Module power on a Jetson from a ``tegrastats`` child process.

    tegrastats prints one line per interval; through a pipe its output may be block
    buffered (``stdbuf -oL`` asks for lines where available), so arrival times are not
    sample times. Energy is therefore the mean power of the lines received times the
    run's wall time, not an integral over arrival times.
    """

    def __init__(self, interval_ms: int = 100) -> None:
        exe = shutil.which("tegrastats")
        if exe is None:
            raise FileNotFoundError("tegrastats")
        cmd = [exe, "--interval", str(interval_ms)]
        if shutil.which("stdbuf"):
            cmd = [shutil.which("stdbuf"), "-oL", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.watts: list[float] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            mw = tegrastats_total_mw(parse_tegrastats_line(line))
            if mw is not None:
                self.watts.append(mw / 1000.0)

    def stop(self, wall_s: float) -> dict | None:
        self.proc.terminate()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=2)
        self.thread.join(timeout=2)
        if not self.watts:
            return None
        mean_w = float(np.mean(self.watts))
        return {"joules": round(mean_w * wall_s, 3), "source": "tegrastats (whole module)",
                "mean_power_w": round(mean_w, 3), "samples": len(self.watts)}


# ---------------------------------------------------------------------------------------
# the profiler
# ---------------------------------------------------------------------------------------


class Profiler:
    """Profile one inference run. Use as a context manager around the run.

    Args:
        interval_s: sampling period of the RSS / GPU / power polling thread.
        gpu: try NVML for GPU memory and power.
        power: try tegrastats on a Jetson.
    """

    def __init__(self, interval_s: float = 0.02, gpu: bool = True, power: bool = True) -> None:
        self.interval_s = float(interval_s)
        self.want_gpu = gpu
        self.want_power = power
        self.stage_s: dict[str, float] = {}
        self.latencies_s: list[float] = []
        self.counters: dict[str, float] = {}
        self.info: dict[str, object] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_rss = 0
        self.wall_s = 0.0
        self._nvml = None
        self._tegra = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Profiler:
        import psutil

        self._proc = psutil.Process()
        self.peak_rss = self._proc.memory_info().rss
        if self.want_gpu:
            try:
                self._nvml = _NvmlSampler()
            except Exception:  # no pynvml, no driver or no GPU: no GPU numbers
                self._nvml = None
        if self.want_power:
            try:
                self._tegra = _TegrastatsSampler()
            except Exception:  # not a Jetson
                self._tegra = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="kidedge-profiler", daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            rss = self._proc.memory_info().rss
        except Exception:
            return
        if rss > self.peak_rss:
            self.peak_rss = rss
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.sample()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._gpu, self._energy = None, None
        if self._nvml is not None:
            self._gpu, self._energy = self._nvml.result()
        if self._tegra is not None:
            self._energy = self._tegra.stop(self.wall_s) or self._energy

    def __enter__(self) -> Profiler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- recording -----------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str):
        """Add the wall time of the ``with`` block to stage ``name`` (thread-safe)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            with self._lock:
                self.stage_s[name] = self.stage_s.get(name, 0.0) + dt

    def add_time(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` (for times measured by the caller)."""
        with self._lock:
            self.stage_s[name] = self.stage_s.get(name, 0.0) + seconds

    def add_batch(self, n_slices: int, seconds: float) -> None:
        """Record one micro-batch's inference time (``n_slices`` slices)."""
        if n_slices > 0:
            with self._lock:
                self.latencies_s.extend([seconds / n_slices] * n_slices)

    def count(self, key: str, value: float = 1) -> None:
        """Add ``value`` to counter ``key`` (e.g. slices run by stage 2)."""
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + value

    # -- result ---------------------------------------------------------------------------
    def result(self, n_slices: int) -> dict:
        """The profile as a JSON-ready dict (see :mod:`kidedge.runtime.report`)."""
        lat = np.asarray(self.latencies_s) * 1000.0
        latency = {"n": int(lat.size), "definition": "inference wall time per micro-batch / slices in it"}
        if lat.size:
            latency.update({k: round(float(np.percentile(lat, q)), 3) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))})
            latency["mean"] = round(float(lat.mean()), 3)
        energy = self._energy or {"joules": None, "source": None,
                                  "note": "no readable power sensor (NVML or tegrastats) on this machine"}
        return {
            "wall_s": round(self.wall_s, 4),
            "slices": int(n_slices),
            "slices_per_s": round(n_slices / self.wall_s, 3) if self.wall_s > 0 else None,
            "stages_s": {k: round(v, 4) for k, v in self.stage_s.items()},
            "latency_ms": latency,
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "max_rss_mb": round(high_water_rss_mb(), 1),
            "gpu": self._gpu,
            "energy": energy,
            "counters": dict(self.counters),
            **({"info": dict(self.info)} if self.info else {}),
        }
