"""Input shape buckets: the few fixed (height, width) sizes a stage's network input is
padded to, so that every crop the cascade gate can produce runs on a built engine profile.

Why: a TensorRT engine runs only the input shapes its optimisation profiles admit, and a
DLA engine only the exact shapes it was built for (min = opt = max). The segmenter of a
cascade sees a different crop for every scan (the kidney box of that patient, at the
stage's own pixel spacing), so one profile built from one example cannot run it. Instead
the package lists a small set of buckets per stage (manifest ``stage.input.buckets``) and
export builds one profile per bucket. A DLA plan's profile (and a plan built before GPU
profiles took ranges) runs only its bucket: the runtime pads each crop (bottom and right,
with the window's low value, exactly as ``pad_multiple`` padding) to the smallest bucket
that holds it. A GPU 2D plan's profile admits every size from ``pad_multiple`` up to its
bucket, so there the crop is padded to a multiple of ``pad_multiple`` only: padding the
built-in segmenter's crops to their buckets cost kidney Dice (mean 0.833 against 0.861 on
7 phantom scans, benchmarks/results/cpu-2core-amd-epyc/bucket_context.md).

The bucket list of a stage follows from its preprocessing spec (:func:`stage_buckets`):

* ``in_plane="size"`` (e.g. a 96x96 localiser): one bucket, the padded size itself.
* ``in_plane="spacing"`` (e.g. a segmenter at 1.25 mm pixels): a crop of ``e`` mm becomes
  ``round(e / spacing_mm)`` pixels, and no crop is wider than the slice, so every crop of a
  scan whose field of view is at most :data:`MAX_FOV_MM` fits the largest bucket. Sizes
  between grow geometrically (:func:`size_ladder`), each a multiple of ``pad_multiple``.
* ``in_plane="native"``: the crop's own pixels, up to :data:`MAX_NATIVE_PIXELS`.

Both sides come from the same ladder; buckets are the pairs whose longer side is at most
``max_aspect`` times the shorter (a kidney box is about twice as wide as it is deep, a
whole slice square), which keeps the list short while the square pairs guarantee that
every size up to the largest has a bucket (a thin crop is padded on its short side).

Numpy-free and torch-free: used by export (to record and build) and by the runtime (to
pad and check).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from kidedge.preprocess import PreprocessSpec, padded_size

#: Largest in-plane field of view (mm) a bucket list covers by default. Diagnostic CT
#: reconstructs about 500 mm; KiTS19's widest scans are 512 x 1.04 mm = 532 mm; 800 mm
#: leaves room for extended-FOV reconstructions. Scans wider than this are refused in one
#: line by the backends that need buckets (TensorRT), not cropped.
MAX_FOV_MM = 800.0
#: Largest side (pixels) for stages that keep the scan's native pixels.
MAX_NATIVE_PIXELS = 1024
#: Smallest bucket side (pixels): smaller crops are padded up to it.
MIN_SIDE = 64
#: Ratio between consecutive ladder sizes (before rounding up to ``pad_multiple``).
GROWTH = 1.5
#: Largest long/short side ratio of a bucket.
MAX_ASPECT = 2.0

Bucket = tuple[int, int]


def _round_up(v: float, multiple: int) -> int:
    return int(math.ceil(v / multiple)) * multiple


def size_ladder(smallest: int, largest: int, multiple: int, growth: float = GROWTH) -> list[int]:
    """Sizes from ``smallest`` to ``largest`` (both rounded up to ``multiple``), each about
    ``growth`` times the one before and a multiple of ``multiple``.

    A size less than half a growth step below the largest is dropped (the largest covers
    it), so the last step is never a sliver.
    """
    if multiple < 1 or smallest < 1 or largest < smallest or growth <= 1:
        raise ValueError(f"bad ladder ({smallest}, {largest}, multiple {multiple}, growth {growth})")
    top = _round_up(largest, multiple)
    sizes = [_round_up(smallest, multiple)]
    while sizes[-1] < top:
        sizes.append(min(top, max(sizes[-1] + multiple, _round_up(sizes[-1] * growth, multiple))))
    if len(sizes) > 2 and top / sizes[-2] < 1 + (growth - 1) / 2:
        del sizes[-2]
    return sizes


def pair_buckets(ladder: Sequence[int], max_aspect: float = MAX_ASPECT) -> list[Bucket]:
    """All (h, w) from ``ladder`` x ``ladder`` whose long side is at most ``max_aspect``
    times the short side, sorted by area then height."""
    out = [(h, w) for h in ladder for w in ladder if max(h, w) <= max_aspect * min(h, w) + 1e-9]
    return sorted(out, key=lambda b: (b[0] * b[1], b[0]))


def largest_content(spec: PreprocessSpec, max_fov_mm: float = MAX_FOV_MM,
                    max_native_pixels: int = MAX_NATIVE_PIXELS) -> int:
    """Largest content side (pixels, before padding) a bucket list for ``spec`` must hold."""
    if spec.in_plane == "size":
        return max(spec.size)
    if spec.in_plane == "spacing":
        # output_size: round(pixels * pixel_spacing / spacing_mm), pixels * spacing <= FOV
        return max(1, math.floor(max_fov_mm / spec.spacing_mm + 0.5))
    return int(max_native_pixels)


def stage_buckets(spec: PreprocessSpec, *, max_fov_mm: float = MAX_FOV_MM,
                  max_native_pixels: int = MAX_NATIVE_PIXELS, min_side: int = MIN_SIDE,
                  growth: float = GROWTH, max_aspect: float = MAX_ASPECT) -> list[Bucket]:
    """The default bucket list of a 2D stage with preprocessing ``spec``.

    Every content size ``(h, w)`` with ``1 <= h, w <= largest_content(spec, ...)`` has a
    bucket (:func:`bucket_for`); every bucket is a multiple of ``spec.pad_multiple``.
    """
    if spec.in_plane == "size":
        return [padded_size(spec, spec.size)]
    m = spec.pad_multiple
    top = largest_content(spec, max_fov_mm, max_native_pixels)
    ladder = size_ladder(min(min_side, top), top, m, growth)
    return pair_buckets(ladder, max_aspect)


def bucket_for(buckets: Iterable[Sequence[int]], content: Sequence[int]) -> Bucket | None:
    """The smallest-area bucket that holds ``content`` (h, w), or None when none does.

    Ties (equal area) go to the bucket with the smaller height, so the choice is the same
    everywhere (export's profile order does not matter).
    """
    h, w = int(content[0]), int(content[1])
    fits = [(int(b[0]), int(b[1])) for b in buckets if b[0] >= h and b[1] >= w]
    if not fits:
        return None
    return min(fits, key=lambda b: (b[0] * b[1], b[0]))


def check_buckets(value: object, spec: PreprocessSpec | None = None) -> list[Bucket]:
    """A manifest ``input.buckets`` value as a list of (h, w), or ValueError saying why not.

    Each bucket is two positive integers; with ``spec``, each a multiple of its
    ``pad_multiple`` (the network's poolings need it). Duplicates are refused.
    """
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"buckets must be a non-empty list of [height, width], got {value!r}")
    out: list[Bucket] = []
    for b in value:
        if (not isinstance(b, (list, tuple)) or len(b) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in b)):
            raise ValueError(f"bucket {b!r} is not [height, width] of positive integers")
        if spec is not None and (b[0] % spec.pad_multiple or b[1] % spec.pad_multiple):
            raise ValueError(f"bucket {list(b)} is not a multiple of pad_multiple {spec.pad_multiple}")
        out.append((int(b[0]), int(b[1])))
    if len(set(out)) != len(out):
        raise ValueError(f"buckets repeat a size: {[list(b) for b in out]}")
    return out


def describe(buckets: Iterable[Sequence[int]]) -> str:
    """``"64x64, 64x96, ..."`` for messages."""
    return ", ".join(f"{b[0]}x{b[1]}" for b in buckets)
