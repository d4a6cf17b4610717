"""Network logits of one slab -> uint8 labels at the scan's resolution.

This is where the runtime keeps its memory promise: logits exist only for the slab in
flight, and are resized back to scan resolution one slice at a time (a 512x512 slice of
4-class float32 logits is 4 MiB), then reduced to uint8 at once. No probability or logit
volume of the whole scan ever exists.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kidedge.package import StageOutput
from kidedge.preprocess import resize_linear

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
        uint8 ``(n, H, W)``. Ties in the arg-max go to the lower channel.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected logits (n, K, h, w), got shape {logits.shape}")
    n, k = logits.shape[:2]
    if isinstance(output, Mapping):  # a training run's stage output (its JSON form)
        output = StageOutput(output.get("activation", "softmax"), tuple(output.get("labels", range(k))))
    label_values = np.asarray(output.labels, dtype=np.uint8)
    if label_values.size != k:
        raise ValueError(f"the stage declares {label_values.size} output labels but the model gives {k} channels")
    activation = output.activation
    h0, w0 = int(content_size[0]), int(content_size[1])
    th, tw = int(target_size[0]), int(target_size[1])
    if out is None:
        out = np.empty((n, th, tw), np.uint8)
    for i in range(n):  # one slice at a time: the resized logits are K x H x W float32
        z = logits[i, :, :h0, :w0]
        if (h0, w0) != (th, tw):
            z = resize_linear(np.ascontiguousarray(z, dtype=np.float32), (th, tw))
        if activation == "softmax":
            # argmax of logits == argmax of softmax; no exp needed.
            out[i] = label_values[np.argmax(z, axis=0)]
        elif activation == "sigmoid":
            lab = np.zeros((th, tw), np.uint8)
            for c in range(k):
                lab[z[c] > SIGMOID_THRESHOLD_LOGIT] = label_values[c]
            out[i] = lab
        else:
            raise ValueError(f"unknown activation {activation!r}")
    return out
