"""Network logits of one micro-batch -> uint8 labels at the scan's resolution.

This is where the runtime keeps its memory promise: logits exist only for the slices in
flight, and no probability or logit volume of the whole scan ever exists. It is also on
the runtime's critical path (one labeller thread beside the engine on a 2-core CPU), so
a softmax head is not resampled channel by channel at full resolution: the arg-max is
taken at the network's resolution and only the pixels on a border between classes are
resampled exactly (:func:`_softmax_labels`; 1.6 ms instead of 7.2 ms per 188 x 359 crop
slice of the built-in segmenter, the same labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from kidedge.package import StageOutput
from kidedge.preprocess import _interp_matrix, resize_linear

#: Sigmoid channels are read as "logit > 0", i.e. probability > 0.5.
SIGMOID_THRESHOLD_LOGIT = 0.0


def logits_to_labels(
    logits: np.ndarray,
    output: StageOutput | Mapping,
    content_size: tuple[int, int],
    target_size: tuple[int, int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Turn a slab's logits into uint8 labels at ``target_size``.

    Args:
        logits: float ``(n, K, h, w)`` network output (``h, w`` may include padding added
            by ``pad_multiple``, which is cut off first).
        output: the stage's :class:`kidedge.package.StageOutput` (or its JSON form, as
            training runs record it): ``activation`` ``"softmax"`` (label of the
            arg-max channel, mapped through ``labels``: channel i -> ``labels[i]``) or
            ``"sigmoid"`` (channel i, where its probability exceeds 0.5, paints
            ``labels[i]``; later channels paint over earlier ones, so hierarchical regions
            listed outer first, e.g. kidney+masses, masses, tumour, come out nested).
        content_size: ``(h0, w0)`` of the unpadded network input (``output_size``).
        target_size: ``(H, W)`` to resample the logits to (the scan's slice, or a crop).
        out: optional uint8 ``(n, H, W)`` array to write into.

    Returns:
        uint8 ``(n, H, W)``: the labels of the linearly resampled logits
        (:func:`kidedge.preprocess.resize_linear`). Ties in the arg-max go to the lower channel.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected logits (n, K, h, w), got shape {logits.shape}")
    n, k = logits.shape[:2]
    if isinstance(output, Mapping):  # a training run's stage output (its JSON form)
        output = StageOutput(output.get("activation", "softmax"), tuple(output.get("labels", range(k))))
    label_values = np.asarray(output.labels, dtype=np.uint8)
    if label_values.size != k:
        raise ValueError(f"the stage declares {label_values.size} output labels but the model gives {k} channels")
    h0, w0 = int(content_size[0]), int(content_size[1])
    th, tw = int(target_size[0]), int(target_size[1])
    z = logits[:, :, :h0, :w0]
    if output.activation == "softmax":
        labels = _softmax_labels(z, (th, tw))
        if not np.array_equal(label_values, np.arange(k)):
            labels = label_values[labels]
    elif output.activation == "sigmoid":
        labels = _sigmoid_labels(z, (th, tw), label_values)
    else:
        raise ValueError(f"unknown activation {output.activation!r}")
    if out is None:
        return labels
    out[...] = labels
    return out


def _argmax_channels(z: np.ndarray) -> np.ndarray:
    """uint8 arg-max over axis 1 of ``(n, K, h, w)``, ties to the lower channel.

    K passes over contiguous planes: faster than ``np.argmax(axis=1)``, whose inner loop
    strides across channels.
    """
    best = z[:, 0].copy()
    index = np.zeros(best.shape, np.uint8)
    for c in range(1, z.shape[1]):
        zc = z[:, c]
        index[zc > best] = c
        np.maximum(best, zc, out=best)
    return index


def _softmax_labels(z: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Channel indices of the arg-max of ``z`` resampled to ``target``, without resampling
    every channel at every pixel.

    Linear resampling gives each output pixel a weighted mean (weights >= 0) of a small
    block of input pixels (2 x 2 when enlarging). Where one channel is the largest at every
    pixel of that block, it is the largest in any such mean too, so the output pixel takes
    the block's label as it is. Only pixels whose block holds more than one label (the
    borders between classes, a few percent of a slice) get their K weighted means computed,
    with the weights of :func:`kidedge.preprocess.resize_linear`. Same labels as resampling
    all K channels and taking the arg-max (up to float rounding at exact ties).
    """
    n, k, h0, w0 = z.shape
    low = _argmax_channels(z)
    th, tw = target
    if (h0, w0) == (th, tw):
        return low
    rows, row_w = _taps(h0, th)
    cols, col_w = _taps(w0, tw)
    wr, wc = rows.shape[1], cols.shape[1]
    hu, wu = h0 - wr + 1, w0 - wc + 1
    first = low[:, :hu, :wu]
    uniform = np.ones((n, hu, wu), bool)  # block starting at (i, j) holds one label
    for a in range(wr):
        for b in range(wc):
            if a or b:
                uniform &= low[:, a:a + hu, b:b + wu] == first
    r0, c0 = rows[:, 0], cols[:, 0]
    labels = np.take(np.take(low, r0, axis=1), c0, axis=2)
    s, r, c = np.nonzero(~np.take(np.take(uniform, r0, axis=1), c0, axis=2))
    if s.size:
        zt = np.moveaxis(z, 1, -1)  # (n, h0, w0, K) view: the K values of a pixel together
        block = zt[s[:, None, None], rows[r][:, :, None], cols[c][:, None, :]]  # (P, wr, wc, K)
        weights = row_w[r][:, :, None] * col_w[c][:, None, :]
        labels[s, r, c] = np.argmax(np.einsum("pab,pabk->pk", weights, block), axis=1)
    return labels


def _sigmoid_labels(z: np.ndarray, target: tuple[int, int], values: np.ndarray) -> np.ndarray:
    """``values[c]`` painted where channel c's resampled logit exceeds the threshold."""
    n, k = z.shape[:2]
    labels = np.zeros((n, *target), np.uint8)
    for i in range(n):  # one slice at a time: the resized logits are K x H x W float32
        zi = resize_linear(np.ascontiguousarray(z[i], dtype=np.float32), target)
        for c in range(k):
            labels[i][zi[c] > SIGMOID_THRESHOLD_LOGIT] = values[c]
    return labels


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero band of the linear resampling matrix (n_out, n_in) of
    :func:`kidedge.preprocess.resize_linear`: input indices ``(n_out, W)`` (consecutive,
    W the widest band) and their weights (zero where a row's band is narrower)."""
    m = _interp_matrix(n_in, n_out)
    nz = m != 0
    first = nz.argmax(axis=1)
    last = n_in - 1 - nz[:, ::-1].argmax(axis=1)
    width = int((last - first).max()) + 1
    first = np.minimum(first, n_in - width)
    index = first[:, None] + np.arange(width)[None, :]
    return index, np.ascontiguousarray(np.take_along_axis(m, index, axis=1), np.float32)
