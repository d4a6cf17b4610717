"""The papers' way of running a 3D cascade (papers 002 and 003): the baseline of the 3D
benchmark.

How 3D segmentation code of the KiTS challenges runs a model (and what MONAI offers for
it): the whole scan loaded as float (nibabel ``get_fdata``, float64), preprocessed whole,
PyTorch eager fp32 through MONAI's ``sliding_window_inference`` (Gaussian blending) over
the whole volume at once, one float logit volume per stage, then labels. The cascade
does kidedge's work exactly: stage 1 over the whole scan, the same kidney boxes
(:class:`kidedge.runtime.cascade3d.KidneyLocator` on stage 1's labels), stage 2 by
sliding windows inside each box, with the package's patch, overlap and Gaussian, the same
preprocessing (:func:`kidedge.preprocess.preprocess_slices`) and the same post-processing
and outputs; MONAI's window grid and weights are the ones kidedge reproduces
(``tests/runtime/test_sliding_window.py``), so only the execution differs.

torch and MONAI are imported in the benchmark child process only.
"""

from __future__ import annotations

import time

import numpy as np

from kidedge.bench.baselines import PapersWay, _Timer
from kidedge.package import Stage
from kidedge.preprocess import preprocess_slices
from kidedge.runtime.stage3d import Stage3D


class PapersWay3D(PapersWay):
    """A 3D package the papers' way (see the module docstring).

    Args:
        model, image, out, threads, device: as :class:`kidedge.bench.baselines.TorchBaseline`.
        batch: windows per forward pass (MONAI's ``sw_batch_size``).
    """

    def __init__(self, model, image, out, batch: int = 1, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__(model, image, out, batch=batch, threads=threads, device=device, region=True)
        from monai.inferers import sliding_window_inference

        self.sliding_window_inference = sliding_window_inference

    def _stage_labels(self, stage: Stage, volume: np.ndarray, spacing, timer: _Timer, grid: str = "scan") -> np.ndarray:
        view = Stage3D.of(stage)
        win = view.window
        t0 = time.perf_counter()
        x = preprocess_slices(volume, view.spec, spacing[1:])[:, 0]  # the whole volume (or box) at once
        timer.add(f"{stage.name}.preprocess", t0)
        t0 = time.perf_counter()
        logits = self.sliding_window_inference(
            self.torch.from_numpy(x)[None, None].to(self.device), win.patch, self.batch, self.models[stage.name],
            overlap=list(win.overlap), mode=win.blend, sigma_scale=win.sigma_scale, padding_mode="constant",
            cval=view.pad_value)[0].float().cpu()  # (K, slices, h, w): the stage's whole logit volume
        timer.add(f"{stage.name}.infer", t0)
        t0 = time.perf_counter()
        content = x.shape[1:]
        del x
        target = tuple(volume.shape[1:]) if grid == "scan" else tuple(content)
        labels = self._logits_to_labels(logits.permute(1, 0, 2, 3), stage, content, target)
        timer.add(f"{stage.name}.argmax", t0)
        return labels

    def _cascade(self, stages, volume: np.ndarray, spacing, timer: _Timer) -> tuple[np.ndarray, dict]:
        from kidedge.runtime.cascade3d import KidneyLocator

        segment = next(s for s in stages if s.roi is not None)
        localise = next(s for s in stages if s.name == segment.roi.source_stage)
        roi = Stage3D.of(segment).roi
        coarse = self._stage_labels(localise, volume, spacing, timer, grid="model")
        t0 = time.perf_counter()
        locator = KidneyLocator(volume.shape, spacing, coarse.shape[1:], roi["labels"], roi["margin_mm"],
                                roi["per_component"])
        locator.add(0, coarse)
        regions = locator.regions()
        timer.add("roi", t0)
        labels = np.zeros(volume.shape, np.uint8)
        for r in regions:
            labels[r.as_slices()] = self._stage_labels(segment, np.ascontiguousarray(volume[r.as_slices()]),
                                                       spacing, timer)
        return labels, {"enabled": True, "regions": [r.to_dict() for r in regions]}
