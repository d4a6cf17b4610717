"""The runtime's cascade one step at a time, for benchmarks that change what stage 2 is
given (its box, its engine's input sizes) between the same stage-1 result and the same
post-processing: ``kidedge infer`` does both steps in :meth:`kidedge.runtime.engine.
Segmenter._run_stages` (there with the localiser's slice step)."""

from __future__ import annotations

import numpy as np

from kidedge.runtime.engine import Segmenter, _postprocess
from kidedge.runtime.gating import CascadeGate, RegionOfInterest
from kidedge.runtime.labelmap import SparseLabels
from kidedge.runtime.pipeline import run_stage
from kidedge.runtime.profiling import Profiler


def localise_every_slice(seg: Segmenter, scan, gate: CascadeGate, profiler: Profiler) -> None:
    """Run ``seg``'s localiser on every slice of ``scan`` into ``gate``."""
    run_stage(scan, seg.backends[seg.localiser.name], seg.localiser, lambda a, b, lab: gate.add(a, lab), profiler,
              label_grid="model", name="localise", batch=seg.batch, slab_size=seg.slab_size)


def segment_box(seg: Segmenter, scan, box: RegionOfInterest, profiler: Profiler) -> np.ndarray:
    """``seg``'s segmenter on ``box`` of ``scan`` (its backend as it is set up), the labels
    post-processed as ``kidedge infer`` does: a dense canonical label map."""
    labels = SparseLabels(scan.shape)
    run_stage(scan, seg.backends[seg.segmenter.name], seg.segmenter,
              lambda a, b, lab: labels.write(a, lab, box.row_start, box.col_start), profiler,
              region=box, name="segment", batch=seg.batch, slab_size=seg.slab_size)
    _postprocess(labels, scan)
    return labels.to_dense()
