"""Keep numpy from asking Linux for transparent huge pages where that stalls the runtime.

numpy marks every allocation of 4 MB or more ``madvise(MADV_HUGEPAGE)``. The mark stays
on the heap memory after numpy frees it, and when the kernel's THP ``defrag`` setting is
``madvise`` or ``defer+madvise`` (a common default), a later page fault in such memory
compacts memory synchronously to find a huge page when none is free, instead of falling
back to small pages (numpy issue 31590, "Setting MADV_HUGEPAGE on heap allocations can
adversely affect the behavior of later allocations"). A scan's run allocates and frees
box-sized arrays all the time; on the 602-slice bench scan on this project's 2-core
machine the first 26-connected labelling of the post-processing took 0.18-0.23 s instead
of 0.03 s, and the whole int8 scan took 4.29 s (median of 4) with numpy's hugepages
against 3.96 s without (``NUMPY_MADVISE_HUGEPAGE=0``), each run in a fresh process.

A user's own ``NUMPY_MADVISE_HUGEPAGE`` always wins: it is left alone when set.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The kernel's THP defrag settings under which a fault in ``MADV_HUGEPAGE`` memory may
#: stall on synchronous compaction ("always" stalls every fault, marked or not).
STALLING_DEFRAG = ("madvise", "defer+madvise")
DEFRAG_FILE = Path("/sys/kernel/mm/transparent_hugepage/defrag")


def thp_defrag(path: Path = DEFRAG_FILE) -> str | None:
    """The kernel's selected THP defrag mode (the bracketed word), None off Linux."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def avoid_hugepage_stalls(defrag: str | None = None, environ=os.environ) -> bool:
    """Turn numpy's huge-page advice off for this process when the kernel would stall on
    it and the user has not chosen (``NUMPY_MADVISE_HUGEPAGE`` unset). Returns whether
    this call turned it off."""
    try:  # the private switch numpy's own environment variable sets (numpy >= 1.19)
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    setter = getattr(multiarray, "_set_madvise_hugepage", None)
    if setter is None or "NUMPY_MADVISE_HUGEPAGE" in environ:
        return False
    if (defrag if defrag is not None else thp_defrag()) not in STALLING_DEFRAG:
        return False
    setter(False)
    return True
