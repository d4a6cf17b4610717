"""Losses of the recipes, on raw KiTS label maps mapped to a stage's output channels.

* ``ce``: softmax cross-entropy (optionally class-weighted).
* ``ce_dice``: (1 - w) * CE + w * soft Dice over the foreground channels.
* ``dice``: soft Dice over all channels (paper 003 eq. 1, Kidney-Net).
* ``dice_wce``: w * Dice over foreground + (1 - w) * weighted CE (paper 003 eq. 4-6,
  Masses-Net, w = 0.5); with deep supervision every output is upsampled to the label
  size and the losses averaged (eq. 7).
* ``bce``: BCE-with-logits on sigmoid channels (paper 001).
* ``dice_bce``: soft Dice + BCE (paper 002).

A stage's ``output.regions[k]`` lists the GT labels channel ``k`` stands for: for
softmax the target is the channel whose region holds the voxel's label (0 when none),
for sigmoid channel ``k`` is 1 where the label is in ``regions[k]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kidedge.train.data import N_LABELS


class SegmentationLoss(torch.nn.Module):
    """Args:
        loss: one of the names above.
        output: the stage's output section (activation, labels, regions).
        dice_weight: weight of the Dice term in ``ce_dice``/``dice_wce``.
        class_weights: per-channel CE weights (softmax) or BCE pos weights (sigmoid).
        deep_supervision_weights: weights of the outputs when the model returns a list
            (deepest last); None = equal weights.
    """

    def __init__(self, loss: str, output: dict, dice_weight: float = 0.5, class_weights=None,
                 deep_supervision_weights=None):
        super().__init__()
        self.loss, self.sigmoid = loss, output["activation"] == "sigmoid"
        self.w = float(dice_weight)
        regions = output["regions"]
        self.k = len(regions)
        if self.sigmoid:
            table = torch.zeros(N_LABELS, self.k)
            for ch, labs in enumerate(regions):
                for lab in labs:
                    table[lab, ch] = 1.0
        else:
            table = torch.zeros(N_LABELS, dtype=torch.long)
            for ch, labs in enumerate(regions):
                for lab in labs:
                    table[lab] = ch
        self.register_buffer("table", table, persistent=False)
        cw = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", cw, persistent=False)
        self.ds_weights = deep_supervision_weights

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Softmax: class index map; sigmoid: float (N, K, ...) multi-hot."""
        t = self.table[labels.clamp(0, N_LABELS - 1)]
        if self.sigmoid:
            t = t.movedim(-1, 1)
        return t

    def forward(self, logits, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):
            ws = self.ds_weights or [1.0] * len(logits)
            total = sum(float(w) * self._one(lg, labels) for w, lg in zip(ws, logits, strict=True))
            return total / float(sum(ws))
        return self._one(logits, labels)

    def _one(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[2:] != labels.shape[1:]:
            mode = "bilinear" if logits.dim() == 4 else "trilinear"
            logits = F.interpolate(logits, size=labels.shape[1:], mode=mode, align_corners=False)
        logits = logits.float()
        t = self.targets(labels)
        if self.sigmoid:
            bce = F.binary_cross_entropy_with_logits(
                logits, t, pos_weight=None if self.class_weights is None else self.class_weights.view(1, -1, *([1] * (logits.dim() - 2))))
            if self.loss == "bce":
                return bce
            return soft_dice_loss(torch.sigmoid(logits), t) + bce
        ce = F.cross_entropy(logits, t, weight=self.class_weights)
        if self.loss == "ce":
            return ce
        prob = torch.softmax(logits, dim=1)
        onehot = F.one_hot(t, self.k).movedim(-1, 1).to(prob.dtype)
        if self.loss == "dice":
            return soft_dice_loss(prob, onehot)
        dice = soft_dice_loss(prob[:, 1:], onehot[:, 1:])
        return (1 - self.w) * ce + self.w * dice


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over channels of the batch soft Dice (sums over batch and voxels)."""
    dims = (0,) + tuple(range(2, prob.dim()))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()
