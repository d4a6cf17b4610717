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

    def slice(self, k: int, rows: slice = slice(None), cols: slice = slice(None),
              channels: slice = slice(None)) -> np.ndarray:
        """Field values (channels, h, w) float32 on slice ``k`` within the given bbox
        (only the ``channels`` asked for are computed)."""
        z0, wz = self.z0[k], self.wz[k]
        low = self.low[channels]
        plane = low[:, z0] * (1.0 - wz) + low[:, z0 + 1] * wz
        c0, wc = self.c0[cols], self.wc[cols]
        r0, wr = self.r0[rows], self.wr[rows]
        lo, hi = (int(r0.min()), int(r0.max()) + 2) if r0.size else (0, 0)
        band = plane[:, lo:hi]
        tmp = band[:, :, c0] * (1.0 - wc) + band[:, :, c0 + 1] * wc
        r0 = r0 - lo
        wr = wr[:, None]
        return tmp[:, r0] * (1.0 - wr) + tmp[:, r0 + 1] * wr


class ScannerNoise:
    """Scanner-like noise: gaussian noise correlated in-plane by the reconstruction kernel.

    Drawing and filtering 262k normals per slice would be the slowest step of a case, so
    a small bank of filtered noise slices is made once, and each slice takes one of them
    rolled by a random offset and flipped at random: neighbouring slices never share a
    pattern, and the noise statistics (std, correlation) are exactly those of the bank.

    Args:
        rng: numpy Generator.
        shape: (rows, cols) of a slice.
        sigma_hu: std (HU) of the noise as the image shows it (after the through-plane mix).
        corr_px: gaussian sigma (pixels) of the in-plane correlation.
        z_weight: weight of each neighbour slice in the through-plane mix (it lowers the
            std of independent noise slices, so it is compensated here).
        bank: number of noise slices made.
    """

    def __init__(self, rng, shape, sigma_hu: float, corr_px: float, z_weight: float = 0.0,
                 bank: int = 6):
        self.rng = rng
        z_gain = math.sqrt((1 - 2 * z_weight) ** 2 + 2 * z_weight**2)
        white = rng.standard_normal((bank, *shape), dtype=np.float32)
        self.bank = np.empty_like(white)
        for j in range(bank):
            ndimage.gaussian_filter(white[j], corr_px, output=self.bank[j], mode="wrap")
            # Scale by the measured std: exact for the bank, whatever the kernel.
            self.bank[j] *= sigma_hu / (float(self.bank[j].std()) * z_gain)

    def slice(self) -> np.ndarray:
        """One slice of noise, float32 (rows, cols)."""
        j = int(self.rng.integers(len(self.bank)))
        rows, cols = self.bank.shape[1:]
        out = np.roll(self.bank[j], (int(self.rng.integers(rows)), int(self.rng.integers(cols))),
                      axis=(0, 1))
        flip = int(self.rng.integers(4))
        if flip & 1:
            out = out[::-1]
        if flip & 2:
            out = out[:, ::-1]
        return out


class CoarseGrid:
    """A grid every ``factor`` pixels, and linear upsampling from it to the full slice.

    Smooth quantities (the distance below the skin, say) are computed on the coarse grid
    and interpolated: ``factor**2`` times fewer evaluations for the same result.

    Args:
        rows, cols: full slice size.
        factor: coarse grid step in pixels.
    """

    def __init__(self, rows: int, cols: int, factor: int = 4):
        self.factor = int(factor)
        self.rows_idx = np.arange(0, rows - 1 + factor, factor)  # last node may lie beyond
        self.cols_idx = np.arange(0, cols - 1 + factor, factor)
        self.r0, self.wr = _interp_index(rows, 1.0, float(factor), len(self.rows_idx))
        self.c0, self.wc = _interp_index(cols, 1.0, float(factor), len(self.cols_idx))
        self.wr = self.wr[:, None]

    def up(self, coarse: np.ndarray) -> np.ndarray:
        """Full-resolution (rows, cols) float32 from a (len(rows_idx), len(cols_idx)) array."""
        tmp = coarse[:, self.c0] * (1.0 - self.wc) + coarse[:, self.c0 + 1] * self.wc
        return tmp[self.r0] * (1.0 - self.wr) + tmp[self.r0 + 1] * self.wr
