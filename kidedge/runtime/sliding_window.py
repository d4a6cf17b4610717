"""3D sliding-window inference over a stream of slices, in bounded memory.

The scheme is MONAI's ``sliding_window_inference`` in ``"gaussian"`` mode (the blending
nnU-Net introduced), reproduced exactly so the two can be compared voxel by voxel:

* windows of the stage's ``patch`` (slices, rows, cols) on a regular grid: per axis the
  step is ``int(patch * (1 - overlap))`` and the last window is shifted back to end at
  the border (:func:`window_starts`); an axis shorter than the patch is padded on both
  sides (half before, half after) with the value of the bottom of the HU window, as the
  training patches are (:func:`centre_padding`);
* each window's logits are weighted by a Gaussian of sigma ``patch / 8`` per axis
  (clamped below at 1e-3, :func:`gaussian_importance`), summed, and divided by the sum of
  the weights. Logits are blended (as nnU-Net v2 and MONAI do), not probabilities.

What differs from MONAI is memory. MONAI holds the whole input volume and a float32
output of ``classes x`` the whole volume; :class:`SlabBlender` takes the slices in order,
runs a z-row of windows as soon as its slices have arrived, and keeps only ``patch[0]``
slices of input and of blended logits: when the next z-row starts ``step`` slices further,
the first ``step`` slices can receive no more windows, so they are normalised and handed
out, and the overlap is carried to the next row. Memory is therefore
``(1 + classes + 1) x patch_depth x rows x cols`` float32 whatever the scan's length.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

#: Sigma of the Gaussian weights as a fraction of the patch (nnU-Net's and MONAI's 1/8).
SIGMA_SCALE = 0.125
#: MONAI clamps the weights below at this value (its ``compute_importance_map``).
MIN_WEIGHT = 1e-3
#: Overlap between neighbouring windows when a package gives none (nnU-Net's step of 0.5).
DEFAULT_OVERLAP = 0.5
BLENDS = ("gaussian", "constant")


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How a 3D stage is tiled (the stage's ``window`` entry in the package manifest).

    Args:
        patch: (slices, rows, cols) of one network input, on the stage's grid.
        overlap: fraction of the patch shared by neighbouring windows, per axis, in [0, 1).
        blend: ``"gaussian"`` (weights of sigma ``sigma_scale * patch``) or ``"constant"``.
        sigma_scale: sigma of the Gaussian as a fraction of the patch.
    """

    patch: tuple[int, int, int]
    overlap: tuple[float, float, float] = (DEFAULT_OVERLAP,) * 3
    blend: str = "gaussian"
    sigma_scale: float = SIGMA_SCALE

    def __post_init__(self) -> None:
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive sizes, got {self.patch}")
        if len(self.overlap) != 3 or not all(0.0 <= o < 1.0 for o in self.overlap):
            raise ValueError(f"overlap must be three values in [0, 1), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if not self.sigma_scale > 0:
            raise ValueError("sigma_scale must be > 0")

    def to_dict(self) -> dict:
        return {"patch": list(self.patch), "overlap": list(self.overlap), "blend": self.blend,
                "sigma_scale": self.sigma_scale}

    @classmethod
    def from_dict(cls, d: dict) -> WindowSpec:
        overlap = d.get("overlap", DEFAULT_OVERLAP)
        if isinstance(overlap, (int, float)):
            overlap = (overlap,) * 3
        return cls(patch=tuple(int(v) for v in d["patch"]), overlap=tuple(float(v) for v in overlap),
                   blend=str(d.get("blend", "gaussian")), sigma_scale=float(d.get("sigma_scale", SIGMA_SCALE)))

    @classmethod
    def from_stride(cls, patch: Sequence[int], stride: Sequence[int] | None) -> WindowSpec:
        """The spec of a recipe's ``sampling`` (patch and training stride, as paper 003
        gives them): overlap ``1 - stride / patch``; no stride: :data:`DEFAULT_OVERLAP`."""
        patch = tuple(int(v) for v in patch)
        if not stride:
            return cls(patch)
        return cls(patch, tuple(max(0.0, 1.0 - int(s) / p) for s, p in zip(stride, patch, strict=True)))


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis of ``size`` (>= ``patch``) voxels.

    MONAI's rule (``_get_scan_interval`` and ``dense_patch_slices``): step
    ``int(patch * (1 - overlap))`` (at least 1; the whole axis when it equals the patch),
    as many windows as needed to reach the end, the last one shifted back to end there.
    """
    if size < patch:
        raise ValueError(f"axis of {size} is shorter than the patch {patch}: pad it first")
    if size == patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    count = next(d for d in range(math.ceil(size / step)) if d * step + patch >= size) + 1
    return [min(i * step, size - patch) for i in range(count)]


def centre_padding(size: int, patch: int) -> tuple[int, int]:
    """(before, after) padding that makes an axis at least ``patch`` long (MONAI's split)."""
    diff = max(patch - size, 0)
    return diff // 2, diff - diff // 2


def gaussian_importance(patch: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """float32 weights of one window: the product of 1D Gaussians of sigma
    ``sigma_scale * patch`` centred on the patch, clamped below at ``min(weights)`` or
    :data:`MIN_WEIGHT`, whichever is larger (MONAI's ``compute_importance_map``)."""
    weights = None
    for p in patch:
        x = np.arange(-(p - 1) / 2.0, (p - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x**2 / np.float32(-2 * (p * sigma_scale) ** 2)).astype(np.float32)
        weights = g if weights is None else weights[..., None] * g
    return np.maximum(weights, np.float32(max(float(weights.min()), MIN_WEIGHT)))


class WindowGrid:
    """The windows covering a (slices, rows, cols) grid: padding and starts per axis.

    Args:
        shape: the grid (a stage's preprocessed region, before padding).
        spec: the :class:`WindowSpec`.
    """

    def __init__(self, shape: Sequence[int], spec: WindowSpec) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"grid shape must be three positive sizes, got {shape}")
        self.spec = spec
        self.padding = tuple(centre_padding(s, p) for s, p in zip(self.shape, spec.patch, strict=True))
        self.padded = tuple(s + a + b for s, (a, b) in zip(self.shape, self.padding, strict=True))
        self.starts = tuple(window_starts(s, p, o) for s, p, o in
                            zip(self.padded, spec.patch, spec.overlap, strict=True))

    @property
    def windows_per_row(self) -> int:
        """Windows sharing one z start (the in-plane tiling)."""
        return len(self.starts[1]) * len(self.starts[2])

    @property
    def n_windows(self) -> int:
        return len(self.starts[0]) * self.windows_per_row


class SlabBlender:
    """Gaussian-blended sliding-window logits of a grid whose slices arrive in order.

    Feed preprocessed slices with :meth:`push` (any number at a time, in order, exactly
    ``grid.shape[0]`` in all), then call :meth:`close`. Both return the finished part of
    the blended logits as ``(z0, z1, logits)``: float32 ``(classes, z1 - z0, rows, cols)``
    on the unpadded grid, in slice order, each slice exactly once.

    Args:
        grid: the :class:`WindowGrid` of the region.
        infer: the network: float32 ``(n, 1, *patch)`` -> logits ``(n, classes, *patch)``.
        pad_value: network-input value of padding (the bottom of the HU window).
        batch: windows per ``infer`` call (windows of one z start are batched together).
        on_batch: called as ``on_batch(windows, seconds)`` after each ``infer`` call.
    """

    def __init__(self, grid: WindowGrid, infer: Callable[[np.ndarray], np.ndarray], pad_value: float,
                 batch: int = 2, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.grid = grid
        self.infer = infer
        self.pad_value = np.float32(pad_value)
        self.batch = max(1, int(batch))
        self.on_batch = on_batch
        spec = grid.spec
        self.weights = (gaussian_importance(spec.patch, spec.sigma_scale) if spec.blend == "gaussian"
                        else np.ones(spec.patch, np.float32))
        (self._zb, self._za), (self._rb, _), (self._cb, _) = grid.padding
        _, self._rows, self._cols = grid.padded
        # input slices [_in0, _in0 + len(_in)) of the padded grid
        self._in = np.empty((0, self._rows, self._cols), np.float32)
        self._in0 = 0
        self._received = 0
        self._next_row = 0  # index into grid.starts[0] of the next z-row of windows
        self._acc: np.ndarray | None = None  # (classes, patch_d, rows, cols) weighted sums
        self._wsum = np.zeros((spec.patch[0], self._rows, self._cols), np.float32)
        self._acc0 = 0  # padded z of _acc[:, 0]
        self.windows_run = 0
        self._closed = False

    # ------------------------------------------------------------------ feeding
    def push(self, slices: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """Add the next preprocessed slices, float32 ``(n, rows, cols)`` (unpadded grid)."""
        if self._closed:
            raise RuntimeError("push() after close()")
        slices = np.asarray(slices, np.float32)
        n, rows, cols = slices.shape
        if (rows, cols) != self.grid.shape[1:]:
            raise ValueError(f"slices of {rows}x{cols} do not fit the grid {self.grid.shape}")
        if self._received + n > self.grid.shape[0]:
            raise ValueError(f"more slices than the grid's {self.grid.shape[0]}")
        parts = []
        if self._received == 0 and self._zb:
            parts.append(np.full((self._zb, self._rows, self._cols), self.pad_value, np.float32))
        if n:
            padded = np.full((n, self._rows, self._cols), self.pad_value, np.float32)
            padded[:, self._rb:self._rb + rows, self._cb:self._cb + cols] = slices
            parts.append(padded)
        self._received += n
        if self._received == self.grid.shape[0] and self._za:
            parts.append(np.full((self._za, self._rows, self._cols), self.pad_value, np.float32))
        if parts:
            self._in = np.concatenate([self._in, *parts]) if self._in.size else np.concatenate(parts)
        return list(self._run_ready())

    def close(self) -> list[tuple[int, int, np.ndarray]]:
        """Finish: the remaining blended slices (every slice must have been pushed)."""
        if self._received != self.grid.shape[0]:
            raise ValueError(f"{self._received} of {self.grid.shape[0]} slices were pushed")
        out = list(self._run_ready())
        if self._next_row != len(self.grid.starts[0]):
            raise RuntimeError("windows left after the last slice")  # cannot happen: all slices are in
        if not self._closed and self._acc is not None:
            out += self._emit(self.grid.spec.patch[0])
        self._closed = True
        self._in = self._in[:0]
        return out

    # ------------------------------------------------------------------ internals
    def _run_ready(self) -> Iterator[tuple[int, int, np.ndarray]]:
        pd = self.grid.spec.patch[0]
        zs = self.grid.starts[0]
        while self._next_row < len(zs) and zs[self._next_row] + pd <= self._in0 + len(self._in):
            z = zs[self._next_row]
            if self._acc is not None and z > self._acc0:
                yield from self._emit(z - self._acc0)
            self._acc0 = z
            self._run_row(z)
            self._next_row += 1
            # input slices before the next row's start are needed by no further window
            keep_from = zs[self._next_row] if self._next_row < len(zs) else z + pd
            drop = keep_from - self._in0
            if drop > 0:
                self._in = self._in[drop:].copy()
                self._in0 = keep_from

    def _run_row(self, z: int) -> None:
        pd, ph, pw = self.grid.spec.patch
        block = self._in[z - self._in0: z - self._in0 + pd]
        cells = list(itertools.product(self.grid.starts[1], self.grid.starts[2]))
        for i in range(0, len(cells), self.batch):
            part = cells[i:i + self.batch]
            x = np.stack([block[:, r:r + ph, c:c + pw] for r, c in part])[:, None]
            t = time.perf_counter()
            y = self.infer(x)
            if self.on_batch is not None:
                self.on_batch(len(part), time.perf_counter() - t)
            if y.ndim != 5 or y.shape[0] != len(part) or y.shape[2:] != (pd, ph, pw):
                raise ValueError(f"the network returned {y.shape} for windows of {x.shape}; a 3D stage "
                                 f"must return (n, classes, {pd}, {ph}, {pw})")
            if self._acc is None:
                self._acc = np.zeros((y.shape[1], pd, self._rows, self._cols), np.float32)
            for (r, c), logits in zip(part, y, strict=True):
                self._acc[:, :, r:r + ph, c:c + pw] += logits * self.weights
                self._wsum[:, r:r + ph, c:c + pw] += self.weights
            self.windows_run += len(part)

    def _emit(self, step: int) -> list[tuple[int, int, np.ndarray]]:
        """Normalise and hand out the first ``step`` slices of the accumulator, then
        carry the rest (the overlap) to its front."""
        pd = self.grid.spec.patch[0]
        a, b = self._acc0, self._acc0 + step  # padded z
        lo, hi = max(a, self._zb), min(b, self._zb + self.grid.shape[0])
        out = []
        if lo < hi:
            rows = slice(self._rb, self._rb + self.grid.shape[1])
            cols = slice(self._cb, self._cb + self.grid.shape[2])
            part = self._acc[:, lo - a:hi - a, rows, cols] / self._wsum[lo - a:hi - a, rows, cols]
            out.append((lo - self._zb, hi - self._zb, part))
        keep = pd - step
        if keep > 0:
            self._acc[:, :keep] = self._acc[:, step:]
            self._wsum[:keep] = self._wsum[step:]
        self._acc[:, keep:] = 0
        self._wsum[keep:] = 0
        return out
