"""The scanner model of the anatomical phantoms: tissue codes in, int16 HU slices out.

Per fine (sub-)slice: each tissue's mean HU plus its smooth texture. Per written slice:
the sub-slices integrated over the slice profile (``appearance.sub_slice_weights``), an
optional lower in-plane acquisition resolution, the in-plane point-spread blur, a smooth
multiplicative field on attenuation (beam hardening, cupping: a few % of HU+1000), for
the SynthSeg-style cases also a multiplicative field on HU itself, correlated noise, a
calibration offset, clipping at -1024 HU (what scanners store for air) and the padding
value outside the reconstruction circle.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kidedge.phantom import tissues as T
from kidedge.phantom.fields import ScannerNoise, SmoothField

HU_MIN = -1024.0
HU_MAX = 3071.0


class ScannerModel:
    """Renders one case's slices.

    Args:
        rng: numpy Generator.
        app: the case's :class:`kidedge.phantom.appearance.Appearance`.
        fine_shape, fine_spacing: the fine grid (sub-slices).
        n_written: number of written slices; pixel_mm: in-plane spacing.
        keep_radius_px: the reconstruction circle is at least this large (pixels from the
            centre), so labelled voxels are never padding.
    """

    def __init__(self, rng, app, fine_shape, fine_spacing, n_written: int, pixel_mm: float,
                 keep_radius_px: float = 0.0):
        self.app = app
        _, rows, cols = fine_shape
        self.shape = (rows, cols)
        self.pixel_mm = float(pixel_mm)
        self.lut_mean = app.hu_mean.astype(np.float32)
        self.lut_tex = app.hu_texture.astype(np.float32)
        self.texture = SmoothField(rng, fine_shape, fine_spacing, grid_mm=3.0, sigma_cells=1.0)
        self.bias = SmoothField(rng, (n_written, rows, cols), (app.slice_mm, pixel_mm, pixel_mm),
                                grid_mm=60.0, sigma_cells=1.0, channels=2)
        self.noise = ScannerNoise(rng, (rows, cols), app.noise_sigma, app.noise_corr_px)
        self.outside = None
        if app.padding is not None:
            yy = (np.arange(rows) - (rows - 1) / 2)[:, None]
            xx = (np.arange(cols) - (cols - 1) / 2)[None, :]
            radius = max(app.fov_frac * min(rows, cols) / 2, keep_radius_px + 2.0)
            self.outside = yy**2 + xx**2 > radius**2

    def plane(self, codes: np.ndarray, f: int) -> np.ndarray:
        """float32 HU of one fine slice before blur and noise."""
        img = np.take(self.lut_tex, codes)
        img *= self.texture.slice(f, channels=slice(0, 1))[0]
        img += np.take(self.lut_mean, codes)
        return img

    def finish(self, img: np.ndarray, i: int) -> np.ndarray:
        """int16 HU of written slice ``i`` from its integrated plane (modified in place)."""
        app = self.app
        rows, cols = self.shape
        if app.lowres > 1.0:
            small = ndimage.zoom(img, 1.0 / app.lowres, order=1, mode="nearest")
            img = ndimage.zoom(small, (rows / small.shape[0], cols / small.shape[1]), order=1,
                               mode="nearest")[:rows, :cols]
        img = ndimage.gaussian_filter(img, app.blur_mm / self.pixel_mm, mode="nearest", truncate=3.0)
        b = self.bias.slice(i)
        if app.bias_frac > 0:
            img += 1000.0
            img *= 1.0 + np.float32(app.bias_frac) * b[0]
            img -= 1000.0
        if app.bias_hu_frac > 0:
            img *= 1.0 + np.float32(app.bias_hu_frac) * b[1]
        img += self.noise.slice()
        img += np.float32(app.hu_offset)
        np.clip(img, HU_MIN, HU_MAX, out=img)
        if self.outside is not None:
            img[self.outside] = app.padding
        return np.rint(img).astype(np.int16)

    def mark_outside(self, codes: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Tissue code OUTSIDE_FOV outside the reconstruction circle (never over labels)."""
        if self.outside is None:
            return
        m = self.outside if labels is None else self.outside & (labels == 0)
        codes[m] = T.OUTSIDE_FOV
