"""Scans in and out: NIfTI files, DICOM series, dataset layouts (docs/architecture.md, "Geometry").

Never imports torch. The public API:

- :func:`load_scan` -> :class:`Scan` (``array`` canonical view of native-dtype voxels,
  ``affine``, ``canonical_affine``, ``spacing``, ``slope``, ``intercept``, ``source``)
- :func:`save_segmentation` (labels in canonical orientation -> the input's geometry)
- :class:`SlabReader` / :class:`Slab` (consecutive canonical slices, bounded memory)
- :func:`discover_cases` / :class:`Case`, :func:`load_label_map`
"""

from kidedge.io.datasets import Case, discover_cases
from kidedge.io.labels import KIDEDGE_LABELS, load_label_map
from kidedge.io.orientation import CANONICAL_AXCODES
from kidedge.io.scan import Scan, load_scan
from kidedge.io.slabs import Slab, SlabReader
from kidedge.io.writer import save_segmentation

__all__ = [
    "CANONICAL_AXCODES",
    "KIDEDGE_LABELS",
    "Case",
    "Scan",
    "Slab",
    "SlabReader",
    "discover_cases",
    "load_label_map",
    "load_scan",
    "save_segmentation",
]
