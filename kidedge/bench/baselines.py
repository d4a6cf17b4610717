"""The baselines kidedge is measured against: what users would otherwise run, doing the
same work as kidedge.

Both run the same model package as kidedge (its ``torch`` state_dicts, rebuilt with
:func:`kidedge.train.models.build_model`), the same preprocessing
(:func:`kidedge.preprocess.preprocess_slices`), the same cascade box
(:class:`kidedge.runtime.gating.CascadeGate`) and the same post-processing
(:func:`kidedge.postprocess.review_segmentation` on the labels' box, with the body
landmarks measured on the same slices, and the volumes in mL; a stage's through-plane
smoothing on the whole stage's logits, in torch: :func:`smooth_probabilities_torch`), so
the benchmark measures how inference is executed, not a different computation:

* :class:`PapersWay` -- how the papers' code runs a 2D model: the whole scan loaded as a
  float volume with nibabel (``get_fdata``, float64), each stage's input preprocessed for
  the whole volume (or the whole region) at once, PyTorch eager fp32 in batches of slices,
  the logits of the whole stage kept in one float32 tensor, resized with
  ``torch.nn.functional.interpolate`` (bilinear) and ``argmax``.
* :class:`MonaiSliceInferer` -- MONAI's way for a 2D model over a 3D scan: ``LoadImage``
  (float32), then ``monai.inferers.SliceInferer`` (a sliding window per slice, ``roi_size``
  = the whole preprocessed slice) with the same torch model.

A cascade package runs as the two-stage papers describe it: the localiser on every slice,
then the segmenter on the localiser's kidney region only (papers 002 and 003 crop to it),
``region=True``, the default and the same work as kidedge. ``region=False`` is paper
001's literal variant: the segmenter on every whole slice, its labels kept inside the box
(more work, and less accurate for a segmenter trained on region crops); the bench reports
it as a separately named extra row.

Imports (torch, MONAI, nibabel) and model loading happen in the constructor, which the
benchmark times as set-up, not as per-scan time. torch and MONAI are imported inside these
classes only (in a benchmark child process); importing this module never imports torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from kidedge.package import Stage
from kidedge.preprocess import context_indices, output_size, preprocess_slices
from kidedge.runtime.through_plane import through_plane_weights


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
        out: the label map to write (NIfTI, the input's affine); the volumes go beside it
            as ``<name>.volumes.json``, as ``kidedge infer`` writes them.
        batch: slices per forward pass.
        threads: torch intra-op threads (None: torch's default).
        device: torch device ("cpu", "cuda").
        region: a cascade's segmenter on the localiser's region only (True, kidedge's
            work) or on every whole slice, kept inside the region (False, paper 001).
    """

    def __init__(self, model: str | Path, image: str | Path, out: str | Path, batch: int = 16,
                 threads: int | None = None, device: str = "cpu", region: bool = True) -> None:
        import nibabel  # noqa: F401 - import cost belongs to set-up
        import torch
        import torch.nn.functional  # noqa: F401

        import kidedge.kidney_review  # noqa: F401 - the review's imports (scipy.spatial) too, as the runtime's engine
        from kidedge.package import ModelPackage
        from kidedge.train.models import build_model

        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.image, self.out = Path(image), Path(out)
        self.batch, self.device, self.region = int(batch), device, bool(region)
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
                      grid: str = "scan", box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """uint8 labels of one stage over all of ``volume`` or over its region ``box``;
        ``grid="model"`` keeps them on the stage's own (unpadded) output grid, as the
        runtime hands a localiser's labels to the cascade gate. A 2.5D stage's neighbour
        slices come from the whole volume, beyond the box where there are any (edge slices
        repeated only at the volume's ends), as the runtime reads them."""
        spec = stage.preprocess
        n = volume.shape[0]
        z, rows, cols = box if box is not None else (slice(0, n), slice(None), slice(None))
        t0 = time.perf_counter()
        if spec.context == 0:
            hu = volume if box is None else np.ascontiguousarray(volume[box])
        else:  # crop in-plane first (a view), so only the region is copied
            hu = volume[:, rows, cols][context_indices(z.start, z.stop, spec.context, n)]
        plane = hu.shape[1:]
        x = preprocess_slices(hu, spec, spacing[1:])  # the whole stage at once, as the papers do
        del hu
        timer.add(f"{stage.name}.preprocess", t0)
        t0 = time.perf_counter()
        logits = self.infer_volume(x, self.models[stage.name])  # (n, K, h, w) float32, whole stage
        del x
        timer.add(f"{stage.name}.infer", t0)
        t0 = time.perf_counter()
        content = output_size(spec, plane, spacing[1:])
        weights = through_plane_weights(float(spacing[0]), stage.output.through_plane_sigma_mm)
        if weights.size > 1:  # the package's post-processing: probabilities averaged over slices
            logits = smooth_probabilities_torch(self.torch, logits[:, :, :content[0], :content[1]], weights)
        target = tuple(plane) if grid == "scan" else tuple(content)
        labels = self._logits_to_labels(logits, stage, content, target)
        timer.add(f"{stage.name}.argmax", t0)
        return labels

    def _logits_to_labels(self, logits, stage: Stage, content, target) -> np.ndarray:
        """The papers' way: cut the padding, resize the logits bilinearly (anti-aliased when
        shrinking, as kidedge's resampling is), arg-max; slab by slab only to bound the
        full-resolution float copy. Sigmoid heads use kidedge's own conversion."""
        torch = self.torch
        values = np.asarray(stage.output.labels, np.uint8)
        logits = logits[:, :, :content[0], :content[1]]
        if stage.output.activation != "softmax":
            from kidedge.runtime.labels import logits_to_labels

            return logits_to_labels(np.ascontiguousarray(logits.numpy()), stage.output, content, target)
        out = np.empty((logits.shape[0], *target), np.uint8)
        shrink = target[0] < content[0] or target[1] < content[1]
        for i in range(0, logits.shape[0], self.batch):
            z = logits[i:i + self.batch]
            if tuple(content) != tuple(target):
                z = torch.nn.functional.interpolate(z, size=tuple(target), mode="bilinear",
                                                    align_corners=False, antialias=shrink)
            out[i:i + self.batch] = values[torch.argmax(z, dim=1).numpy()]
        return out

    def run(self) -> dict:
        timer = _Timer()
        t0 = time.perf_counter()
        volume, affine, spacing = self.load_volume()
        timer.add("read", t0)
        with self.torch.inference_mode():
            stages = self.package.stages
            if len(stages) == 1:
                labels = self._stage_labels(stages[0], volume, spacing, timer)
                gating = None
            else:
                labels, gating = self._cascade(stages, volume, spacing, timer)
        t0 = time.perf_counter()
        marks = _review_landmarks(labels, volume, affine, spacing)  # kidedge infer measures these too
        timer.add("postprocess", t0)
        del volume
        self._finish(labels, marks, affine, spacing, timer)
        return {"stages": timer.stages, "gating": gating}

    def _finish(self, labels: np.ndarray, marks, affine, spacing, timer: _Timer) -> None:
        """The same post-processing and outputs as ``kidedge infer``."""
        import nibabel as nib

        from kidedge.postprocess import _foreground_box, class_volumes_ml, review_segmentation
        from kidedge.runtime.labelmap import box_affine

        t0 = time.perf_counter()
        fg = _foreground_box(labels > 0, margin=0)
        if fg is None:
            volumes = class_volumes_ml(np.zeros((1, 1, 1), np.uint8), spacing, affine=affine)
        else:  # on the labels' box, as the runtime does
            reviewed = review_segmentation(labels[fg], spacing, box_affine(affine, fg), marks,
                                           box_start=[b.start for b in fg], scan_shape=labels.shape)
            labels[fg] = reviewed.labels
            volumes = reviewed.volumes
        timer.add("postprocess", t0)
        t0 = time.perf_counter()
        nib.save(nib.Nifti1Image(labels.astype(np.uint8, copy=False), affine), str(self.out))
        name = self.out.name[:-len(".nii.gz")] if self.out.name.endswith(".nii.gz") else self.out.stem
        self.out.with_name(f"{name}.volumes.json").write_text(json.dumps({"volumes": volumes}))
        timer.add("write", t0)

    def _cascade(self, stages: tuple[Stage, ...], volume: np.ndarray, spacing,
                 timer: _Timer) -> tuple[np.ndarray, dict]:
        from kidedge.runtime.gating import CascadeGate

        segment = next(s for s in stages if s.roi is not None)
        localise = next(s for s in stages if s.name == segment.roi.source_stage)
        coarse = self._stage_labels(localise, volume, spacing, timer, grid="model")  # every slice
        t0 = time.perf_counter()
        gate = CascadeGate.for_stage(segment, volume.shape, spacing)  # the runtime's own box rule
        gate.add(0, coarse)
        region = gate.region()
        timer.add("roi", t0)
        labels = np.zeros(volume.shape, np.uint8)
        if region is None:
            return labels, gate.stats()
        box = region.as_slices()
        if self.region:  # papers 002/003: the segmenter sees the region only
            labels[box] = self._stage_labels(segment, volume, spacing, timer, box=box)
        else:  # paper 001: whole slices, labels kept inside the region
            fine = self._stage_labels(segment, volume, spacing, timer)
            labels[box] = fine[box]
        return labels, gate.stats()


class PapersWay(TorchBaseline):
    """The papers' way: nibabel ``get_fdata`` (float64 volume), PyTorch eager fp32 in batches
    of slices, one float32 logit tensor per stage, bilinear resize, ``argmax``."""

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
    ``roi_size`` is the whole preprocessed slice, so each slice is one window. MONAI is
    imported in the constructor (set-up; about 3 s on the shared 2-core CPU).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from monai.inferers import SliceInferer
        from monai.transforms import LoadImage

        self._load = LoadImage(image_only=True, dtype=np.float32)
        self._inferer_cls = SliceInferer

    def load_volume(self):
        img = self._load(str(self.image))
        affine = np.asarray(img.affine)
        spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        return np.asarray(img), affine, spacing

    def infer_volume(self, x: np.ndarray, model):
        torch = self.torch
        volume = torch.from_numpy(x).permute(1, 0, 2, 3).unsqueeze(0)  # (1, C, n, h, w)
        inferer = self._inferer_cls(roi_size=tuple(x.shape[2:]), sw_batch_size=self.batch, spatial_dim=0,
                                    progress=False)
        logits = inferer(volume.to(self.device), model)  # (1, K, n, h, w)
        return logits[0].permute(1, 0, 2, 3).float().cpu()


def smooth_probabilities_torch(torch, logits, weights: np.ndarray):
    """:func:`kidedge.runtime.through_plane.smooth_probabilities` in torch, as a torch user
    would write it for a whole stage's ``(n, K, h, w)`` logits: softmax, the end slices
    repeated, one in-place weighted add per neighbour (multi-threaded; faster here than a
    depthwise conv3d: 0.6 s against 1.0 s for 307 crops of 129 x 289 with 33 weights)."""
    p = torch.softmax(logits.float(), dim=1)
    n, reach = p.shape[0], weights.size // 2
    padded = p[torch.clamp(torch.arange(-reach, n + reach), 0, n - 1)]
    out = torch.zeros_like(p)
    for j, w in enumerate(weights):
        out.add_(padded[j:j + n], alpha=float(w))
    return out


def _review_landmarks(labels: np.ndarray, volume: np.ndarray, affine, spacing):
    """The body landmarks ``kidedge infer`` gives its post-processing review: one slice
    every ``LOCALISER_STEP_MM`` of the labels' slice range (None without labels)."""
    from kidedge.body_landmarks import landmarks_on_slices
    from kidedge.runtime.engine import localiser_step

    hit = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if hit.size == 0:
        return None
    return landmarks_on_slices(volume, affine, range(int(hit[0]), int(hit[-1]) + 1, localiser_step(spacing[0])))
