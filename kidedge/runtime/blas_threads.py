"""Keep numpy's BLAS to one thread while the runtime runs.

The streaming pipeline already runs three things at once (reader + preprocessing,
engine, labeller) and the engine has its own intra-op thread pool sized to the cores.
Preprocessing resamples slices with matrix products (``kidedge.preprocess.resize_linear``),
and OpenBLAS would start its own thread per core for each of them: on a 2-core machine
that is 2 BLAS threads spinning against 2 engine threads (``benchmarks/bench_blas_threads.py``
measures the difference).

:class:`SingleThreadedBlas` sets every OpenBLAS loaded in the process (numpy's, scipy's)
to one thread for the duration of a ``with`` block and restores the previous counts. It
finds the libraries in ``/proc/self/maps`` and calls their ``openblas_set_num_threads``
(under the names the numpy / scipy wheels export); where there is none (no OpenBLAS, not
Linux) it does nothing. No new dependency (threadpoolctl would do the same, more widely).
``KIDEDGE_BLAS_THREADS=N`` chooses another count; ``0`` leaves BLAS as it is.
"""

from __future__ import annotations

import ctypes
import os
import re

_NAMES = [(f"{pre}openblas_get_num_threads{suf}", f"{pre}openblas_set_num_threads{suf}")
          for pre in ("", "scipy_") for suf in ("", "64_")]


def openblas_libraries() -> list[tuple[str, object, object]]:
    """``(path, get_num_threads, set_num_threads)`` of each OpenBLAS loaded in this process."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return []
    found = []
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so[.\d]*)", maps))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            getter, setter = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if getter is not None and setter is not None:
                getter.restype = ctypes.c_int
                setter.argtypes = [ctypes.c_int]
                found.append((path, getter, setter))
                break
    return found


class SingleThreadedBlas:
    """Context manager: OpenBLAS at ``threads`` threads inside (default 1, or
    ``KIDEDGE_BLAS_THREADS``; 0 changes nothing), as before after."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = int(os.environ.get("KIDEDGE_BLAS_THREADS", "1") if threads is None else threads)
        self._saved: list[tuple[object, int]] = []

    def __enter__(self) -> SingleThreadedBlas:
        if self.threads <= 0:
            return self
        for _, getter, setter in openblas_libraries():
            self._saved.append((setter, int(getter())))
            setter(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        for setter, n in self._saved:
            setter(n)
        self._saved.clear()
