"""Random fields for phantom textures and scanner noise, cheap at full resolution.

Smooth fields are drawn on a coarse 3D grid (a few mm per cell), smoothed there, and
evaluated slice by slice with separable linear interpolation, so a 512x512x200 case never
pays for a full-resolution 3D filter. Scanner noise is white noise filtered in-plane by a
small gaussian (CT noise is correlated by the reconstruction kernel).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def _interp_index(n: int, step_mm: float, grid_mm: float, n_low: int):
    """Left coarse-grid index and weight for each of ``n`` full-resolution samples."""
    pos = (np.arange(n, dtype=np.float64) * step_mm) / grid_mm
    i0 = np.clip(np.floor(pos).astype(np.intp), 0, n_low - 2)
    w = np.clip(pos - i0, 0.0, 1.0).astype(np.float32)
    return i0, w


class SmoothField:
    """Unit-variance smooth random field(s) over a scan, evaluated one slice at a time.

    Args:
        rng: numpy Generator (the field is deterministic for its state).
        shape: (n_slices, rows, cols) of the scan.
        spacing: (slice_mm, row_mm, col_mm).
        grid_mm: coarse grid cell size in mm (the field's finest detail is ~2 cells).
        sigma_cells: gaussian smoothing on the coarse grid, in cells.
        channels: number of independent fields drawn together.
    """

    def __init__(self, rng, shape, spacing, grid_mm: float, sigma_cells: float, channels: int = 1):
        n, rows, cols = shape
        sz, sy, sx = spacing
        self.grid_mm = float(grid_mm)
        dims = [max(3, int(math.ceil(m * s / grid_mm)) + 2) for m, s in zip(shape, spacing, strict=True)]
        low = rng.standard_normal((channels, *dims), dtype=np.float32)
        for c in range(channels):
            low[c] = ndimage.gaussian_filter(low[c], sigma_cells, mode="wrap")
            low[c] -= low[c].mean()
            low[c] /= max(float(low[c].std()), 1e-6)
        self.low = low
        self.z0, self.wz = _interp_index(n, sz, grid_mm, dims[0])
        self.r0, self.wr = _interp_index(rows, sy, grid_mm, dims[1])
        self.c0, self.wc = _interp_index(cols, sx, grid_mm, dims[2])

    def slice(self, k: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Field values (channels, h, w) float32 on slice ``k`` within the given bbox."""
        z0, wz = self.z0[k], self.wz[k]
        plane = self.low[:, z0] * (1.0 - wz) + self.low[:, z0 + 1] * wz
        c0, wc = self.c0[cols], self.wc[cols]
        r0, wr = self.r0[rows], self.wr[rows]
        lo, hi = (int(r0.min()), int(r0.max()) + 2) if r0.size else (0, 0)
        band = plane[:, lo:hi]
        tmp = band[:, :, c0] * (1.0 - wc) + band[:, :, c0 + 1] * wc
        r0 = r0 - lo
        wr = wr[:, None]
        return tmp[:, r0] * (1.0 - wr) + tmp[:, r0 + 1] * wr


class ScannerNoise:
    """Correlated gaussian noise with a given std after filtering.

    Args:
        rng: numpy Generator.
        sigma_hu: std of the noise (HU) as it appears in the image.
        corr_px: gaussian sigma (pixels) of the in-plane correlation.
    """

    def __init__(self, rng, sigma_hu: float, corr_px: float):
        self.rng = rng
        self.corr_px = float(corr_px)
        # The filter shrinks the std by the L2 norm of its kernel; undo that so sigma_hu
        # is the std a user would measure in a flat region.
        delta = np.zeros(65, np.float64)
        delta[32] = 1.0
        k = ndimage.gaussian_filter1d(delta, self.corr_px)
        self.scale = float(sigma_hu / (np.sum(k**2)))  # 2D separable: norm is (sum k^2)^(1/2) squared

    def slice(self, shape) -> np.ndarray:
        """One slice of noise, float32 (rows, cols)."""
        white = self.rng.standard_normal(shape, dtype=np.float32)
        out = ndimage.gaussian_filter(white, self.corr_px, mode="reflect")
        out *= self.scale
        return out
