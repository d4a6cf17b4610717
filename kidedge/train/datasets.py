"""torch Datasets that turn :class:`~kidedge.train.sampling.Draw` s into network input.

Every sample is read from the memory-mapped cache (only the slices and the in-plane
window it needs) and goes through :func:`kidedge.preprocess.preprocess_slices`, the one
preprocessing of kidedge; augmentation happens afterwards on the batch
(:mod:`kidedge.train.augment`). Labels stay raw KiTS labels (0-3) here; the loss maps
them onto the stage's output channels.

For the segment stage of a cascade, everything outside the (jittered) ROI box is set to
the bottom of the HU window, which is exactly what the runtime's padding of an ROI crop
looks like, so the network never relies on context it will not see at inference
(``roi.context = "floor"``). With ``roi.context = "scan"`` the crops keep the scan around
the box (the box still centres the draws), as the runtime then shows it: no box edge for
the network to take as a cue.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kidedge.preprocess import (
    PreprocessSpec,
    context_indices,
    normalised_value,
    output_size,
    padded_size,
    preprocess_slices,
    resize_labels_nearest,
)
from kidedge.train.data import CachedCase
from kidedge.train.roi import Box
from kidedge.train.sampling import Draw


def jitter_box(box: Box, core: Box, spacing, jitter_mm: float, shape, rng) -> Box:
    """Move each side of ``box`` by up to ``jitter_mm``, never inside ``core`` (the
    labels' own box), clipped to ``shape``."""
    if jitter_mm <= 0:
        return box
    out = []
    for axis in range(3):
        j = int(math.ceil(jitter_mm / float(spacing[axis])))
        lo = box[2 * axis] + int(rng.integers(-j, j + 1))
        hi = box[2 * axis + 1] + int(rng.integers(-j, j + 1))
        out += [int(np.clip(lo, 0, core[2 * axis])), int(np.clip(hi, core[2 * axis + 1], shape[axis]))]
    return tuple(out)


def read_window(volume: np.ndarray, zs: np.ndarray, r0: int, r1: int, c0: int, c1: int,
                box: Box | None, fill) -> np.ndarray:
    """``volume[zs, r0:r1, c0:c1]`` where the window may leave the volume; voxels outside
    the volume or outside ``box`` (when given) are ``fill``."""
    n, h, w = volume.shape
    out = np.full((len(zs), r1 - r0, c1 - c0), fill, dtype=volume.dtype)
    lo_r, hi_r, lo_c, hi_c = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    z_ok = (zs >= 0) & (zs < n)
    if box is not None:
        lo_r, hi_r = max(lo_r, box[2]), min(hi_r, box[3])
        lo_c, hi_c = max(lo_c, box[4]), min(hi_c, box[5])
        z_ok &= (zs >= box[0]) & (zs < box[1])
    if hi_r <= lo_r or hi_c <= lo_c:
        return out
    for i, z in enumerate(zs):
        if z_ok[i]:
            out[i, lo_r - r0:hi_r - r0, lo_c - c0:hi_c - c0] = volume[int(z), lo_r:hi_r, lo_c:hi_c]
    return out


def fit_last2(x: np.ndarray, size, fill) -> np.ndarray:
    """Crop or pad (at the end) the last two axes of ``x`` to ``size``."""
    th, tw = int(size[0]), int(size[1])
    h, w = x.shape[-2:]
    if (h, w) == (th, tw):
        return x
    out = np.full(x.shape[:-2] + (th, tw), fill, dtype=x.dtype)
    out[..., : min(h, th), : min(w, tw)] = x[..., : min(h, th), : min(w, tw)]
    return out


def raw_extent(spec: PreprocessSpec, patch, pixel_spacing) -> tuple[int, int]:
    """Raw in-plane pixels that preprocess into ``patch`` output pixels."""
    if spec.in_plane == "native":
        return int(patch[0]), int(patch[1])
    if spec.in_plane == "spacing":
        return (int(math.ceil(patch[0] * spec.spacing_mm / pixel_spacing[0])),
                int(math.ceil(patch[1] * spec.spacing_mm / pixel_spacing[1])))
    raise ValueError("patch sampling needs in_plane 'native' or 'spacing'")


def pick_centre(case: CachedCase, zs: np.ndarray, category: str, box: Box | None, rng) -> tuple[int, int]:
    """An in-plane (row, col) centre: a random tumour/cyst or kidney voxel of the slices
    ``zs`` for those categories, else uniform inside the box or the slice."""
    if category in ("tumour", "kidney"):
        lab = np.asarray(case.labels[int(zs[len(zs) // 2])])
        hit = np.argwhere(lab >= 2) if category == "tumour" else np.argwhere(lab >= 1)
        if hit.size:
            r, c = hit[rng.integers(len(hit))]
            return int(r), int(c)
    _, h, w = case.hu.shape
    if category == "outside":
        # somewhere in the body (not the air around it): a few tries at a soft-tissue pixel
        hu = case.hu[int(zs[len(zs) // 2])]
        for _ in range(20):
            r, c = int(rng.integers(h)), int(rng.integers(w))
            if hu[r, c] > -300:
                return r, c
        return int(rng.integers(h)), int(rng.integers(w))
    r0, r1, c0, c1 = (box[2], box[3], box[4], box[5]) if box is not None else (0, h, 0, w)
    return int(rng.integers(r0, max(r0 + 1, r1))), int(rng.integers(c0, max(c0 + 1, c1)))


class _StageDataset(torch.utils.data.Dataset):
    """Shared parts: cases, draws, the spec and the ROI boxes of a segment stage.

    Args:
        cases: cached training cases.
        draws: this epoch's draws (this rank's share under DDP).
        spec: the stage's preprocessing spec.
        patch: output patch size ((h, w) or (d, h, w)), None = whole slices (2D only).
        roi: the stage's roi dict (segment stage of a cascade) or None.
        roi_boxes: per case, the ground-truth ROI box (grown by margin_mm) or None.
        core_boxes: per case, the box of the ROI labels themselves (jitter never cuts it).
    """

    def __init__(self, cases, draws: list[Draw], spec: PreprocessSpec, patch=None,
                 roi: dict | None = None, roi_boxes=None, core_boxes=None):
        self.cases, self.draws, self.spec, self.patch = cases, draws, spec, patch
        self.roi, self.roi_boxes, self.core_boxes = roi, roi_boxes, core_boxes
        self.fill_hu = np.int16(max(-32768, math.floor(spec.hu_window[0])))

    def __len__(self) -> int:
        return len(self.draws)

    def _mask(self, box: Box | None) -> Box | None:
        """The box outside which the crop is blanked (None: the scan is kept)."""
        return box if self.roi is not None and self.roi.get("context", "floor") == "floor" else None

    def _box(self, d: Draw, rng) -> Box | None:
        if self.roi is None or self.roi_boxes[d.case] is None or d.category == "outside":
            return None
        c = self.cases[d.case]
        return jitter_box(self.roi_boxes[d.case], self.core_boxes[d.case], c.spacing,
                          float(self.roi.get("jitter_mm", 0.0)), c.hu.shape, rng)


class SliceDataset(_StageDataset):
    """2D samples: ``(x float32 (C, h, w), y int64 (h, w))``."""

    def __getitem__(self, i):
        d = self.draws[i]
        c = self.cases[d.case]
        rng = np.random.default_rng(d.seed)
        spec = self.spec
        n, h, w = c.hu.shape
        zs = context_indices(d.z, d.z + 1, spec.context, n)
        box = self._box(d, rng)
        pix = c.spacing[1:]
        if self.patch is None:
            r0, r1, c0, c1 = (box[2], box[3], box[4], box[5]) if box is not None else (0, h, 0, w)
        else:
            rh, rw = raw_extent(spec, self.patch, pix)
            cr, cc = pick_centre(c, np.array([d.z]), d.category, box, rng)
            # random offset of the centre inside the patch: the crop augmentation
            cr += int(rng.integers(-rh // 4, rh // 4 + 1))
            cc += int(rng.integers(-rw // 4, rw // 4 + 1))
            r0, c0 = cr - rh // 2, cc - rw // 2
            r1, c1 = r0 + rh, c0 + rw
        hu = read_window(c.hu, zs, r0, r1, c0, c1, self._mask(box), self.fill_hu)
        lab = read_window(c.labels, np.array([d.z]), r0, r1, c0, c1, self._mask(box), np.uint8(0))[0]
        x = preprocess_slices(hu, spec, pix)[0]
        size = output_size(spec, hu.shape[1:], pix)
        y = resize_labels_nearest(lab, size)
        y = fit_last2(y, padded_size(spec, size), np.uint8(0))
        if self.patch is not None:
            pad = normalised_value(spec.hu_window[0], spec)
            x = fit_last2(x, self.patch, np.float32(pad))
            y = fit_last2(y, self.patch, np.uint8(0))
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


class PatchDataset(_StageDataset):
    """3D samples: ``(x float32 (1, D, h, w), y int64 (D, h, w))``; the slice axis is not
    resampled (PreprocessSpec resamples in-plane only)."""

    def __getitem__(self, i):
        d = self.draws[i]
        c = self.cases[d.case]
        rng = np.random.default_rng(d.seed)
        spec = self.spec
        pd, ph, pw = self.patch
        box = self._box(d, rng)
        pix = c.spacing[1:]
        zc = d.z + int(rng.integers(-pd // 4, pd // 4 + 1))
        zs = np.arange(zc - pd // 2, zc - pd // 2 + pd)
        rh, rw = raw_extent(spec, (ph, pw), pix)
        cr, cc = pick_centre(c, np.array([d.z]), d.category, box, rng)
        cr += int(rng.integers(-rh // 4, rh // 4 + 1))
        cc += int(rng.integers(-rw // 4, rw // 4 + 1))
        r0, c0 = cr - rh // 2, cc - rw // 2
        hu = read_window(c.hu, zs, r0, r0 + rh, c0, c0 + rw, self._mask(box), self.fill_hu)
        lab = read_window(c.labels, zs, r0, r0 + rh, c0, c0 + rw, self._mask(box), np.uint8(0))
        x = preprocess_slices(hu, spec, pix)[:, 0]  # (D, h, w)
        size = output_size(spec, hu.shape[1:], pix)
        y = resize_labels_nearest(lab, size)
        pad = normalised_value(spec.hu_window[0], spec)
        x = fit_last2(x, (ph, pw), np.float32(pad))
        y = fit_last2(y, (ph, pw), np.uint8(0))
        return torch.from_numpy(np.ascontiguousarray(x[None])), torch.from_numpy(y.astype(np.int64))


def pad_collate(pad_value: float):
    """Collate that pads samples of different in-plane sizes (whole-slice stages on
    scans of different sizes) to the largest in the batch."""

    def collate(items):
        xs, ys = zip(*items, strict=True)
        h = max(x.shape[-2] for x in xs)
        w = max(x.shape[-1] for x in xs)
        if all(x.shape[-2:] == (h, w) for x in xs):
            return torch.stack(xs), torch.stack(ys)
        bx = torch.full((len(xs),) + tuple(xs[0].shape[:-2]) + (h, w), pad_value, dtype=xs[0].dtype)
        by = torch.zeros((len(ys),) + tuple(ys[0].shape[:-2]) + (h, w), dtype=ys[0].dtype)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            bx[i, ..., : x.shape[-2], : x.shape[-1]] = x
            by[i, ..., : y.shape[-2], : y.shape[-1]] = y
        return bx, by

    return collate
