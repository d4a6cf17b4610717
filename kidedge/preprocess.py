"""THE preprocessing of kidedge: HU window, normalisation, in-plane resampling, slice context.

One numpy implementation, parameterised by a small :class:`PreprocessSpec`. Training,
int8 calibration and the runtime all call :func:`preprocess_slices`; the spec travels in
the checkpoint and in the model package, so a package carries everything needed to run
it. No other module may re-implement any of this (docs/architecture.md, "Preprocessing
contract").

Conventions
-----------
* Input slices are canonical (``array[k]`` is an axial slice, rows anterior->posterior,
  columns patient right->left; see docs/architecture.md, "Geometry"), in Hounsfield units
  or in the raw stored integers plus a rescale slope/intercept.
* Output is float32 ``(n, channels, height, width)`` (NCHW), ready for a 2D network.
* Resampling is linear, with the pixel-centre convention of ``align_corners=False``, and
  anti-aliased when shrinking (a triangle filter widened by the scale factor), done as
  two small dense matrix products per slice: exact, vectorised and fast in numpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

NORMALISATIONS = ("zscore", "range")
IN_PLANE_MODES = ("native", "size", "spacing")


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How CT slices become network input.

    Args:
        hu_window: (low, high) Hounsfield units to clip to.
        normalisation: ``"zscore"`` subtracts ``mean`` and divides by ``std`` (both in HU,
            measured after clipping, e.g. over a training set); ``"range"`` maps the window
            linearly onto [0, 1].
        mean, std: z-score parameters (HU).
        in_plane: ``"native"`` keeps the scan's pixels; ``"size"`` resamples every slice to
            ``size`` = (height, width) pixels; ``"spacing"`` resamples to ``spacing_mm``
            pixels (the output size then depends on the scan's pixel spacing).
        size: target (height, width) for ``in_plane="size"``.
        spacing_mm: target in-plane pixel spacing for ``in_plane="spacing"``.
        context: neighbouring slices on each side stacked as extra channels (2.5D input);
            0 gives one channel.
        pad_multiple: output height and width are padded (edge value of the window's low
            end) up to a multiple of this, so U-Net poolings divide evenly. 1 disables.
    """

    hu_window: tuple[float, float] = (-100.0, 400.0)
    normalisation: str = "range"
    mean: float = 0.0
    std: float = 1.0
    in_plane: str = "native"
    size: tuple[int, int] | None = None
    spacing_mm: float | None = None
    context: int = 0
    pad_multiple: int = 1

    def __post_init__(self) -> None:
        lo, hi = self.hu_window
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"hu_window must be finite with low < high, got {self.hu_window}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}")
        if self.normalisation == "zscore" and not self.std > 0:
            raise ValueError("zscore normalisation needs std > 0")
        if self.in_plane not in IN_PLANE_MODES:
            raise ValueError(f"in_plane must be one of {IN_PLANE_MODES}")
        if self.in_plane == "size" and (self.size is None or min(self.size) < 1):
            raise ValueError("in_plane='size' needs size=(height, width)")
        if self.in_plane == "spacing" and not (self.spacing_mm and self.spacing_mm > 0):
            raise ValueError("in_plane='spacing' needs spacing_mm > 0")
        if self.context < 0 or self.pad_multiple < 1:
            raise ValueError("context must be >= 0 and pad_multiple >= 1")

    @property
    def channels(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hu_window"] = list(self.hu_window)
        d["size"] = list(self.size) if self.size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
        d = dict(d)
        if "hu_window" in d:
            d["hu_window"] = tuple(float(v) for v in d["hu_window"])
        if d.get("size") is not None:
            d["size"] = tuple(int(v) for v in d["size"])
        return cls(**d)

    def replace(self, **changes) -> PreprocessSpec:
        return dataclasses.replace(self, **changes)


def output_size(
    spec: PreprocessSpec, in_size: tuple[int, int], pixel_spacing: Sequence[float]
) -> tuple[int, int]:
    """(height, width) that :func:`preprocess_slices` produces for slices of ``in_size``,
    before padding to ``pad_multiple`` (see :func:`padded_size`)."""
    h, w = int(in_size[0]), int(in_size[1])
    if spec.in_plane == "native":
        return h, w
    if spec.in_plane == "size":
        return int(spec.size[0]), int(spec.size[1])
    sr, sc = float(pixel_spacing[0]), float(pixel_spacing[1])
    return max(1, round(h * sr / spec.spacing_mm)), max(1, round(w * sc / spec.spacing_mm))


def padded_size(spec: PreprocessSpec, size: tuple[int, int]) -> tuple[int, int]:
    m = spec.pad_multiple
    return -(-size[0] // m) * m, -(-size[1] // m) * m


#: A grown span starts on a multiple of this many pixels where its slack allows: boxes a
#: few pixels apart (the stepped localiser's and the every-slice one's) then give the same
#: crop, not two crops shifted by half their difference.
SPAN_ALIGN_PX = 16


def grid_filling_span(spec: PreprocessSpec, start: int, stop: int, length: int, pixel_mm: float) -> tuple[int, int]:
    """``[start, stop)`` of an axis of ``length`` pixels grown (about evenly on both sides,
    kept inside the axis, starting on a multiple of ``SPAN_ALIGN_PX`` where that still holds
    the span) to the most pixels that still resample into the same padded network size: the
    network then sees real pixels where it would see padding.

    For ``in_plane`` ``"spacing"`` and ``"native"``; other specs return the span as is.
    Used by a cascade segmenter trained with the scan around its box
    (``roi.context = "scan"``): the runtime, the bench's baselines and training's
    validation all grow its box this way.
    """
    if spec.in_plane not in ("spacing", "native") or stop <= start:
        return start, stop

    def out(n: int) -> int:  # output_size along this axis (the same rounding)
        return output_size(spec, (n, 1), (pixel_mm, pixel_mm))[0]

    n = stop - start
    target = padded_size(spec, (out(n), 1))[0]
    # a first guess at or just above the answer, then down to the last size that fits
    guess = target if spec.in_plane == "native" else int(math.floor((target + 0.5) * spec.spacing_mm / pixel_mm)) + 1
    grown = min(max(guess, n), length)
    while grown > n and out(grown) > target:
        grown -= 1
    lo_min, lo_max = max(0, stop - grown), min(start, length - grown)  # holds the span, inside the axis
    lo = min(max(start - (grown - n) // 2, lo_min), lo_max)
    aligned = lo // SPAN_ALIGN_PX * SPAN_ALIGN_PX
    aligned = aligned if aligned >= lo_min else aligned + SPAN_ALIGN_PX
    lo = aligned if lo_min <= aligned <= lo_max else lo
    return lo, lo + grown


def grid_filling_box(spec: PreprocessSpec, rows: slice, cols: slice, size: Sequence[int],
                     pixel_spacing: Sequence[float]) -> tuple[slice, slice]:
    """The in-plane box ``rows`` x ``cols`` of slices of ``size`` (rows, cols) pixels of
    ``pixel_spacing`` mm, each side grown by :func:`grid_filling_span`."""
    return (slice(*grid_filling_span(spec, rows.start, rows.stop, size[0], pixel_spacing[0])),
            slice(*grid_filling_span(spec, cols.start, cols.stop, size[1], pixel_spacing[1])))


def window_and_normalise(hu: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Clip to the HU window and normalise, as float32 (in ``out`` when given)."""
    lo, hi = spec.hu_window
    if out is None:
        out = np.clip(hu, lo, hi).astype(np.float32)
    else:
        np.clip(hu, lo, hi, out=out)
    if spec.normalisation == "zscore":
        out -= np.float32(spec.mean)
        out *= np.float32(1.0 / spec.std)
    else:
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
    return out


def normalised_value(hu: float, spec: PreprocessSpec) -> float:
    """The network-input value of one HU value (used for padding and calibration)."""
    return float(window_and_normalise(np.asarray([hu], np.float32), spec)[0])


@lru_cache(maxsize=64)
def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of linear resampling, align_corners=False, anti-aliased
    when shrinking (triangle filter of support = scale), rows summing to 1."""
    scale = n_in / n_out
    support = max(1.0, scale)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.arange(n_in, dtype=np.float64)
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centres[:, None]) / support)
    # Edge rows whose filter falls partly outside are renormalised (edge replication).
    empty = w.sum(1) == 0
    if empty.any():
        nearest = np.clip(np.round(centres[empty]).astype(int), 0, n_in - 1)
        w[empty, nearest] = 1.0
    w /= w.sum(1, keepdims=True)
    return w.astype(np.float32)


def resize_linear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample the last two axes of float32 ``x`` to ``size`` (linear, anti-aliased)."""
    h, w = x.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return np.ascontiguousarray(x, dtype=np.float32)
    a = _interp_matrix(h, th)
    b = _interp_matrix(w, tw)
    return np.ascontiguousarray(a @ x.astype(np.float32, copy=False) @ b.T)


def resize_labels_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of the last two axes of an integer label array."""
    h, w = labels.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return labels
    rows = np.minimum(((np.arange(th) + 0.5) * (h / th)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) * (w / tw)).astype(np.int64), w - 1)
    return labels[..., rows[:, None], cols[None, :]]


def preprocess_slices(
    hu: np.ndarray,
    spec: PreprocessSpec,
    pixel_spacing: Sequence[float] = (1.0, 1.0),
    slope: float = 1.0,
    intercept: float = 0.0,
    pad_to: tuple[int, int] | None = None,
) -> np.ndarray:
    """Turn canonical slices into network input.

    Args:
        hu: ``(n + 2 * spec.context, H, W)`` slices, in HU or as raw stored values with
            ``slope``/``intercept``; any real dtype. With ``context > 0`` the first and last
            ``context`` slices are context only (the caller pads at the volume's ends, by
            repeating the edge slice, see :func:`context_indices`).
        spec: the preprocessing spec.
        pixel_spacing: (row, column) spacing in mm of the input slices.
        pad_to: pad to this (h, w) instead of ``padded_size`` (an input shape bucket,
            :mod:`kidedge.shape_buckets`); it must hold the resampled slices.

    Returns:
        float32 ``(n, spec.channels, h, w)``, ``(h, w)`` = ``pad_to`` or
        ``padded_size(output_size(...))``.
    """
    if hu.ndim != 3:
        raise ValueError(f"expected (slices, rows, cols), got shape {hu.shape}")
    c = spec.context
    n = hu.shape[0] - 2 * c
    if n < 1:
        raise ValueError(f"{hu.shape[0]} slices cannot carry context {c}")
    x = hu.astype(np.float32, copy=True)
    if slope != 1.0:
        x *= np.float32(slope)
    if intercept != 0.0:
        x += np.float32(intercept)
    window_and_normalise(x, spec, out=x)
    size = output_size(spec, hu.shape[1:], pixel_spacing)
    x = resize_linear(x, size)
    ph, pw = padded_size(spec, size) if pad_to is None else (int(pad_to[0]), int(pad_to[1]))
    if ph < size[0] or pw < size[1]:
        raise ValueError(f"pad_to {pad_to} is smaller than the resampled slices {size}")
    if (ph, pw) != size:
        padded = np.full((x.shape[0], ph, pw), normalised_value(spec.hu_window[0], spec), np.float32)
        padded[:, : size[0], : size[1]] = x
        x = padded
    if c == 0:
        return x[:, None]
    # Channel j of output slice i is input slice i + j (i.e. offsets -c..+c around i + c).
    idx = np.arange(n)[:, None] + np.arange(2 * c + 1)[None, :]
    return np.ascontiguousarray(x[idx])


def context_indices(start: int, stop: int, context: int, n_slices: int) -> np.ndarray:
    """Slice indices to read so slices ``start:stop`` get ``context`` neighbours each side,
    repeating the first/last slice of the volume at its ends."""
    return np.clip(np.arange(start - context, stop + context), 0, n_slices - 1)


def fit_zscore(hu_samples: np.ndarray, hu_window: tuple[float, float]) -> tuple[float, float]:
    """Mean and std (HU) of clipped samples: the training-set statistics of paper 001."""
    x = np.clip(np.asarray(hu_samples, dtype=np.float64), *hu_window)
    std = float(x.std())
    return float(x.mean()), std if std > 0 else 1.0
