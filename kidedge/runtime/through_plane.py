"""Through-plane smoothing of a 2D segmenter's class probabilities, streaming.

A 2D segmenter sees one slice at a time, so its answer flickers from slice to slice: a
kidney pole present on one slice and gone on the next, a speck of tumour on one slice
only. Averaging each pixel's class probabilities over the neighbouring slices with a
Gaussian of a fixed width in millimetres (the same anatomy whatever the slice thickness)
lets the slices above and below vote. A package asks for it per stage
(``output.through_plane_sigma_mm``, 0 = off); the built-in segmenter uses 4 mm, chosen
on the validation phantoms (benchmarks/results/through_plane.md).

Only probabilities of the slices in flight are held: :class:`ThroughPlaneSmoother` takes
the logits of consecutive slices in order (micro-batches of any size) and hands back the
smoothed probabilities of every slice whose upper neighbours have all arrived, so it
keeps ``2 * reach`` slices plus one micro-batch. :func:`smooth_probabilities` does the
same to a whole stack at once (tests; the baselines do it in torch); all give the same numbers.
Slices beyond the ends of the stack (the region's first and last slices) are the end
slices repeated.
"""

from __future__ import annotations

import math

import numpy as np

#: The Gaussian reaches to the first slice at or beyond this many sigmas.
TRUNCATE_SIGMAS = 2.0


def through_plane_weights(slice_mm: float, sigma_mm: float) -> np.ndarray:
    """Normalised Gaussian weights of slices ``-reach..reach`` for slices ``slice_mm``
    apart; ``[1.0]`` (no smoothing) when ``sigma_mm`` is 0."""
    if sigma_mm < 0 or not math.isfinite(sigma_mm):
        raise ValueError(f"through-plane sigma must be >= 0 mm, got {sigma_mm}")
    if sigma_mm == 0:
        return np.ones(1, np.float32)
    if slice_mm <= 0 or not math.isfinite(slice_mm):
        raise ValueError(f"slice spacing must be > 0 mm, got {slice_mm}")
    s = sigma_mm / slice_mm
    reach = max(1, int(math.ceil(TRUNCATE_SIGMAS * s - 1e-9)))
    j = np.arange(-reach, reach + 1, dtype=np.float64)
    w = np.exp(-0.5 * (j / s) ** 2)
    return (w / w.sum()).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax over axis 1 of ``(n, K, h, w)``."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def smooth_probabilities(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Softmax of ``(n, K, h, w)`` logits of consecutive slices, each slice's then averaged
    with its neighbours' by ``weights`` (ends repeated): float32 ``(n, K, h, w)``."""
    p = softmax(np.array(logits, dtype=np.float32))
    reach = weights.size // 2
    if reach == 0:
        return p
    n = p.shape[0]
    out = np.zeros_like(p)
    for j, w in zip(range(-reach, reach + 1), weights, strict=True):
        out += w * p[np.clip(np.arange(n) + j, 0, n - 1)]
    return out


class ThroughPlaneSmoother:
    """:func:`smooth_probabilities` fed micro-batch by micro-batch.

    ``push(start, logits)`` takes the logits of slices ``start .. start + m - 1`` (the
    next ones in order) and returns ``(first, probabilities)`` of the slices now complete,
    or None; ``finish()`` returns the rest (their missing upper neighbours are the last
    slice repeated).
    """

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, np.float32)
        self.reach = self.weights.size // 2
        self._slices: list[np.ndarray] = []  # probabilities of slices _first .. _first + len - 1
        self._first = 0  # index (within the stack) of _slices[0]
        self._next_out = 0  # first slice not yet handed back
        self._offset: int | None = None  # the caller's index of stack slice 0

    @property
    def _received(self) -> int:
        """Slices pushed so far (those dropped plus those held)."""
        return self._first + len(self._slices)

    def push(self, start: int, logits: np.ndarray) -> tuple[int, np.ndarray] | None:
        if self._offset is None:
            self._offset = start
        if start - self._offset != self._received:
            raise ValueError(f"slices must come in order: expected {self._offset + self._received}, got {start}")
        p = softmax(np.array(logits, dtype=np.float32))
        self._slices.extend(p)
        return self._emit(self._received - self.reach)

    def finish(self) -> tuple[int, np.ndarray] | None:
        return self._emit(self._received, last=self._received - 1)

    def _emit(self, stop: int, last: int | None = None) -> tuple[int, np.ndarray] | None:
        """Slices ``_next_out .. stop - 1``; ``last`` is the stack's last slice once known
        (indices beyond it repeat it), before that only lower ends are clipped."""
        if stop <= self._next_out:
            return None
        ks = np.arange(self._next_out, stop)
        hi = self._received - 1 if last is None else last
        # the slices these outputs read, stacked once, and one matrix product with the
        # band of weights (repeated end slices add their weights up): one BLAS call instead
        # of a multiply-add per weight and slice, 0.27 s against 0.44 s for 307 slices of
        # 4 x 129 x 289 with 33 weights fed 4 at a time, one core, the same numbers to 3e-7
        src = np.clip(ks[:, None] + np.arange(-self.reach, self.reach + 1)[None, :], 0, hi)
        lo = int(src.min())
        band = np.zeros((ks.size, int(src.max()) - lo + 1), np.float32)
        np.add.at(band, (np.repeat(np.arange(ks.size), src.shape[1]), (src - lo).ravel()),
                  np.tile(self.weights, ks.size))
        window = np.stack(self._slices[lo - self._first:lo - self._first + band.shape[1]])
        out = (band @ window.reshape(band.shape[1], -1)).reshape(ks.size, *window.shape[1:])
        first = self._next_out
        self._next_out = stop
        # keep only what the next slices still need: reach slices below the next one
        drop = max(0, self._next_out - self.reach - self._first)
        if drop:
            del self._slices[:drop]
            self._first += drop
        return first + self._offset, out
