"""The baselines kidedge is measured against: what users would otherwise run.

Both run the same model package as kidedge (its ``torch`` state_dicts, rebuilt with
:func:`kidedge.train.models.build_model`) and the same preprocessing
(:func:`kidedge.preprocess.preprocess_slices`), so the benchmark measures how inference is
executed, not a different model:

* :class:`PapersWay` -- how the papers' code runs a 2D model (papers 000 and 001, and the
  fastai/PyTorch scripts they describe): the whole scan loaded as float with nibabel
  (``get_fdata``, float64), the whole volume preprocessed at once, PyTorch eager fp32 on
  every slice at full resolution in batches of slices, the logits of every slice kept in
  one float32 volume, then ``argmax``.
* :class:`MonaiSliceInferer` -- MONAI's way for a 2D model over a 3D scan: ``LoadImage``
  (float32), then ``monai.inferers.SliceInferer`` (a ``SlidingWindowInferer`` per slice,
  ``roi_size`` = the whole slice) with the same torch model; it also returns one float
  logit volume before ``argmax``.

A cascade package (localise + segment stages) runs the way the two-phase papers describe
it (paper 001: kidney first, then the masses inside it): every stage over every slice, no
gating; the final labels are the segment stage's, kept inside the localiser's kidney box
(the same :class:`kidedge.runtime.gating.CascadeGate` box kidedge uses), so the baselines
and kidedge compute the same segmentation and only the execution differs.

torch and MONAI are imported inside these classes only (when a benchmark child process
builds one); importing this module never imports torch, as kidedge.runtime must not.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kidedge.package import Stage
from kidedge.preprocess import context_indices, output_size, preprocess_slices


class _Timer:
    """Accumulates wall time per named stage (the per-stage breakdown of a baseline)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def add(self, name: str, t0: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + (time.perf_counter() - t0)


class TorchBaseline:
    """Shared set-up and flow of the torch baselines; subclasses say how the volume is
    loaded and how the model is applied to it.

    Args:
        model: a model package (directory or .zip) with ``torch`` files for every stage.
        image: the scan (NIfTI in the KiTS layout: axis 0 is the slice axis).
        out: the label map to write (NIfTI, the input's affine).
        batch: slices per forward pass.
        threads: torch intra-op threads (None: torch's default).
        device: torch device ("cpu", "cuda").
    """

    def __init__(self, model: str | Path, image: str | Path, out: str | Path, batch: int = 16,
                 threads: int | None = None, device: str = "cpu") -> None:
        import torch

        from kidedge.package import ModelPackage
        from kidedge.train.models import build_model

        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.image, self.out = Path(image), Path(out)
        self.batch, self.device = int(batch), device
        self.package = ModelPackage.load(model)
        self.models = {}
        for stage in self.package.stages:
            net = build_model(stage.arch, **stage.model_kwargs)
            state = torch.load(self.package.file_path(stage.name, "torch"), map_location="cpu",
                               weights_only=True)
            net.load_state_dict(state)
            self.models[stage.name] = net.eval().to(device)

    # -- what the subclasses provide -------------------------------------------------
    def load_volume(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """(volume in HU as float, affine, spacing (slice, row, col) mm)."""
        raise NotImplementedError

    def infer_volume(self, x: np.ndarray, model) -> object:
        """float32 (n, C, h, w) preprocessed slices -> torch logits (n, K, h, w)."""
        raise NotImplementedError

    # -- the flow ---------------------------------------------------------------------
    def _stage_labels(self, stage: Stage, volume: np.ndarray, spacing, timer: _Timer,
                      grid: str = "scan") -> np.ndarray:
        """uint8 labels of one stage over the whole volume; ``grid="model"`` keeps them on
        the stage's own (unpadded) output grid, as the runtime hands a localiser's labels
        to the cascade gate."""
        torch = self.torch
        spec = stage.preprocess
        n = volume.shape[0]
        t0 = time.perf_counter()
        hu = volume if spec.context == 0 else volume[context_indices(0, n, spec.context, n)]
        x = preprocess_slices(hu, spec, spacing[1:])  # the whole volume at once, as the papers do
        del hu
        timer.add(f"{stage.name}.preprocess", t0)
        t0 = time.perf_counter()
        logits = self.infer_volume(x, self.models[stage.name])  # (n, K, h, w) float32, whole scan
        del x
        timer.add(f"{stage.name}.infer", t0)
        t0 = time.perf_counter()
        output = stage.output
        content = output_size(spec, volume.shape[1:], spacing[1:])
        target = tuple(volume.shape[1:]) if grid == "scan" else tuple(content)
        values = np.asarray(output.labels, np.uint8)
        if output.activation == "softmax" and tuple(content) == target \
                and tuple(logits.shape[2:]) == target:
            labels = values[torch.argmax(logits, dim=1).numpy()]
        else:  # resampled or padded model grid, or sigmoid heads: kidedge's own conversion
            from kidedge.runtime.labels import logits_to_labels

            labels = logits_to_labels(logits.numpy(), output, content, target)
        timer.add(f"{stage.name}.argmax", t0)
        return labels

    def run(self) -> dict:
        import nibabel as nib

        from kidedge.postprocess import postprocess_labels

        timer = _Timer()
        t0 = time.perf_counter()
        volume, affine, spacing = self.load_volume()
        timer.add("read", t0)
        with self.torch.inference_mode():
            stages = self.package.stages
            if len(stages) == 1:
                labels = self._stage_labels(stages[0], volume, spacing, timer)
            else:
                labels = self._cascade(stages, volume, spacing, timer)
        del volume
        t0 = time.perf_counter()
        labels = postprocess_labels(labels, spacing)  # the same post-processing as kidedge infer
        timer.add("postprocess", t0)
        t0 = time.perf_counter()
        nib.save(nib.Nifti1Image(labels.astype(np.uint8, copy=False), affine), str(self.out))
        timer.add("write", t0)
        return {"stages": timer.stages}

    def _cascade(self, stages: tuple[Stage, ...], volume: np.ndarray, spacing, timer: _Timer) -> np.ndarray:
        from kidedge.runtime.gating import CascadeGate

        segment = next(s for s in stages if s.roi is not None)
        localise = next(s for s in stages if s.name == segment.roi.source_stage)
        coarse = self._stage_labels(localise, volume, spacing, timer, grid="model")
        fine = self._stage_labels(segment, volume, spacing, timer)
        t0 = time.perf_counter()
        gate = CascadeGate.for_stage(segment, volume.shape, spacing)  # the runtime's own box rule
        gate.add(0, coarse)
        region = gate.region()
        labels = np.zeros(volume.shape, np.uint8)
        if region is not None:
            box = region.as_slices()
            labels[box] = fine[box]
        timer.add("roi", t0)
        return labels


class PapersWay(TorchBaseline):
    """The papers' way: nibabel ``get_fdata`` (float64 volume), PyTorch eager fp32 in batches
    of full-resolution slices, one float32 logit volume, ``argmax``."""

    def load_volume(self):
        import nibabel as nib

        img = nib.load(str(self.image))
        volume = img.get_fdata()  # float64, slope/intercept applied: HU
        return volume, img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])

    def infer_volume(self, x: np.ndarray, model):
        torch = self.torch
        outs = []
        for i in range(0, x.shape[0], self.batch):
            outs.append(model(torch.from_numpy(x[i:i + self.batch]).to(self.device)).float().cpu())
        return torch.cat(outs)


class MonaiSliceInferer(TorchBaseline):
    """MONAI's way: ``LoadImage`` (float32 volume) and ``SliceInferer`` over axis 0.

    ``SliceInferer(spatial_dim=0)`` slides over the first spatial axis, which is the slice
    axis of a KiTS-layout file as MONAI's nibabel reader returns it (MONAI's own examples
    use ``spatial_dim=2`` for RAS-resampled volumes, where the axial axis comes last).
    ``roi_size`` is the whole preprocessed slice, so each slice is one window.
    """

    def load_volume(self):
        from monai.transforms import LoadImage

        img = LoadImage(image_only=True, dtype=np.float32)(str(self.image))
        affine = np.asarray(img.affine)
        spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        return np.asarray(img), affine, spacing

    def infer_volume(self, x: np.ndarray, model):
        from monai.inferers import SliceInferer

        torch = self.torch
        volume = torch.from_numpy(x).permute(1, 0, 2, 3).unsqueeze(0)  # (1, C, n, h, w)
        inferer = SliceInferer(roi_size=tuple(x.shape[2:]), sw_batch_size=self.batch, spatial_dim=0,
                               progress=False)
        logits = inferer(volume.to(self.device), model)  # (1, K, n, h, w)
        return logits[0].permute(1, 0, 2, 3).float().cpu()
