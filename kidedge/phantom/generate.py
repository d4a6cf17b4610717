"""``make_phantom``: one synthetic abdominal CT with its kidney/tumour/cyst label map.

Pipeline per case: draw the style (contrast phase, HU table, noise, blur); get the kidney
labels (procedural, or the caller's real label map, kept voxel for voxel); plan a body
around the kidneys; paint each axial slice as tissue codes; turn codes into HU (mean +
smooth texture), blur in-plane and through-plane (partial volume), add correlated scanner
noise, a slow intensity drift and a global offset; store int16.

Slices are produced one at a time with a three-slice ring buffer for the through-plane
blur, so the only full-size arrays are the int16 HU, the uint8 labels and the uint8
tissue map.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from kidedge.errors import KidedgeError
from kidedge.phantom import tissues as T
from kidedge.phantom.body import BodyPlan, plan_body, procedural_kidney_centres
from kidedge.phantom.fields import ScannerNoise, SmoothField
from kidedge.phantom.kidneys import (
    HALO_REPLACES,
    draw_kidney_labels,
    find_kidney_sites,
    kidney_tissues,
)
from kidedge.phantom.painter import SlicePainter

DEFAULT_SHAPE = (48, 128, 128)
DEFAULT_SPACING = (5.0, 3.0, 3.0)
HU_MAX = 3071


@dataclasses.dataclass
class Phantom:
    """A synthetic CT in the canonical (KiTS19) orientation.

    Attributes:
        hu: int16 (slice, row, col) Hounsfield units; row 0 anterior, col 0 the patient's
            right, slice 0 superior.
        labels: uint8 same shape; 0 background, 1 kidney, 2 tumour, 3 cyst.
        affine: 4x4 float64 with nibabel axis codes ('I', 'P', 'L'), as KiTS19's.
        spacing: (slice_mm, row_mm, col_mm).
        tissues: uint8 same shape; the tissue code of every voxel (see ``tissues.py``),
            the ground truth of how the image was made (tests measure HU per tissue).
        style: the case's drawn appearance (contrast phase, HU table, noise ...).
        plan: the case's drawn anatomy.
    """

    hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple
    tissues: np.ndarray
    style: T.PhantomStyle
    plan: BodyPlan


def canonical_affine(spacing) -> np.ndarray:
    """The KiTS19-style affine of a canonical (slice, row, col) array with this spacing.

    Array axes map to world (RAS) axes as slice -> -z (I), row -> -y (P), col -> -x (L).
    """
    sz, sr, sc = (float(v) for v in spacing)
    return np.array(
        [[0.0, 0.0, -sc, 0.0], [0.0, -sr, 0.0, 0.0], [-sz, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )


def _check_geometry(shape, spacing):
    try:
        shape = tuple(int(v) for v in shape)
        spacing = tuple(float(v) for v in spacing)
    except (TypeError, ValueError) as exc:
        raise KidedgeError(f"phantom: shape and spacing must be three numbers each ({exc})") from exc
    if len(shape) != 3 or len(spacing) != 3:
        raise KidedgeError(f"phantom: shape {shape} and spacing {spacing} must have 3 values each")
    if min(shape) < 1 or shape[1] < 8 or shape[2] < 8:
        raise KidedgeError(f"phantom: shape {shape} is too small (need >= 1 slice of >= 8x8)")
    if not all(np.isfinite(spacing)) or min(spacing) <= 0.05 or max(spacing) > 20:
        raise KidedgeError(f"phantom: spacing {spacing} mm is not a CT spacing (0.05..20 mm)")
    return shape, spacing


def make_phantom(seed, shape=None, spacing=None, labels=None) -> Phantom:
    """Make one synthetic CT, deterministic for ``seed``.

    Args:
        seed: int (or anything ``np.random.default_rng`` accepts).
        shape: (n_slices, rows, cols); default (48, 128, 128), or the label map's shape.
        spacing: (slice_mm, row_mm, col_mm); default (5, 3, 3). Needed with ``labels``
            for a faithful body (defaults to 1 mm otherwise).
        labels: optional canonical uint8 label map (0 bg, 1 kidney, 2 tumour, 3 cyst),
            e.g. a real KiTS19 segmentation; the phantom's kidneys, tumours and cysts take
            exactly its shape, and ``Phantom.labels`` equals it voxel for voxel.

    Raises:
        KidedgeError: bad shape, spacing or label values.
    """
    rng = np.random.default_rng(seed)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise KidedgeError(f"phantom: labels must be a 3D array, got shape {labels.shape}")
        if shape is not None and tuple(shape) != labels.shape:
            raise KidedgeError(f"phantom: shape {tuple(shape)} differs from the labels' {labels.shape}")
        shape = labels.shape
        if labels.dtype != np.uint8:
            if labels.size and (labels.min() < 0 or labels.max() > 3):
                raise KidedgeError("phantom: labels must be 0..3 (bg, kidney, tumour, cyst)")
            labels = labels.astype(np.uint8)
        if labels.size and labels.max() > 3:
            raise KidedgeError(f"phantom: label value {int(labels.max())} is not one of 0..3")
        spacing = (1.0, 1.0, 1.0) if spacing is None else spacing
    else:
        shape = DEFAULT_SHAPE if shape is None else shape
        spacing = DEFAULT_SPACING if spacing is None else spacing
    shape, spacing = _check_geometry(shape, spacing)

    style = T.sample_style(rng)
    if labels is None:
        plan = plan_body(rng, shape, spacing, None)
        centres = procedural_kidney_centres(rng, plan)
        labels, sinus = draw_kidney_labels(rng, shape, spacing, centres)
        plan.sites = find_kidney_sites(labels, spacing)
    else:
        sites = find_kidney_sites(labels, spacing)
        plan = plan_body(rng, shape, spacing, sites)
        sinus = None
    kidney_parts = kidney_tissues(labels, spacing, rng)

    organ_fields = SmoothField(rng, shape, spacing, grid_mm=5.0, sigma_cells=1.2, channels=3)
    texture = SmoothField(rng, shape, spacing, grid_mm=3.0, sigma_cells=1.0, channels=1)
    wobble = SmoothField(rng, shape, spacing, grid_mm=10.0, sigma_cells=1.2, channels=1)
    n, rows, cols = shape
    w = style.blur_z if n > 1 else 0.0
    noise = ScannerNoise(rng, (rows, cols), style.noise_sigma, style.noise_corr_px, w)
    # Slow intensity drift: a random tilt across the field of view, changing along z.
    tilt = rng.standard_normal((2, 2)) * style.bias_hu
    gx = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
    gy = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]

    hu = np.empty(shape, np.int16)
    tissues = np.empty(shape, np.uint8)
    painter = SlicePainter(plan, style)
    lut_mean = style.hu_mean.astype(np.float32)
    lut_tex = style.hu_texture.astype(np.float32)
    outside_fov = None
    if style.outside_fov_hu is not None:
        yy = (np.arange(rows) - (rows - 1) / 2)[:, None]
        xx = (np.arange(cols) - (cols - 1) / 2)[None, :]
        outside_fov = yy**2 + xx**2 > (min(rows, cols) / 2) ** 2
        lut_mean[T.OUTSIDE_FOV] = style.outside_fov_hu
    hu_min = min(-1024.0, style.outside_fov_hu or -1024.0)

    def clean_slice(k):
        codes = painter.paint(k, organ_fields, wobble)
        if sinus is not None:
            s = sinus[k]
            if s.any():
                codes[s] = T.SINUS_FAT
        for part in kidney_parts:
            box = part["box"]
            if not box[0].start <= k < box[0].stop:
                continue
            sub = part["codes"][k - box[0].start]
            view = codes[box[1], box[2]]
            halo = part["halo"][k - box[0].start]
            view[halo & np.isin(view, HALO_REPLACES)] = T.VISCERAL_FAT
            m = sub > 0
            view[m] = sub[m]
        if outside_fov is not None:
            codes[outside_fov & (labels[k] == 0)] = T.OUTSIDE_FOV
        tissues[k] = codes
        img = np.take(lut_tex, codes)
        img *= texture.slice(k)[0]
        img += np.take(lut_mean, codes)
        # Partial-volume blur of the anatomy (the scanner's point spread), then noise.
        img = ndimage.gaussian_filter(img, style.blur_px, mode="nearest", truncate=3.0)
        img += noise.slice()
        return img

    def finish(k, img):
        t = k / max(n - 1, 1)
        bx = tilt[0, 0] * (1 - t) + tilt[0, 1] * t
        by = tilt[1, 0] * (1 - t) + tilt[1, 1] * t
        img += style.hu_offset
        img += bx * gx
        img += by * gy
        np.clip(img, hu_min, HU_MAX, out=img)
        if outside_fov is not None:
            img[tissues[k] == T.OUTSIDE_FOV] = style.outside_fov_hu
        np.rint(img, out=img)
        hu[k] = img

    prev, cur = None, clean_slice(0)
    for k in range(n):
        nxt = clean_slice(k + 1) if k + 1 < n else cur
        before = prev if prev is not None else cur
        if w > 0:
            mixed = cur * (1.0 - 2.0 * w)
            mixed += w * before
            mixed += w * nxt
        else:
            mixed = cur.copy()
        finish(k, mixed)
        prev, cur = cur, nxt
    return Phantom(hu=hu, labels=labels, affine=canonical_affine(spacing), spacing=spacing,
                   tissues=tissues, style=style, plan=plan)
