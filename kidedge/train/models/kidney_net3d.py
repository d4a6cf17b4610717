"""Kidney-Net (3D): stage 1 of the two-stage cascade of paper 003.

Paper 003, "Kidney and kidney tumor segmentation using a two-stage cascade framework
(KiTS21)", section 2.1 and Fig. 3(a): "a u-shaped network which only contains three
pooling layers", encoder/decoder blocks of "two convolution layers with batch
normalization (BN) and rectified linear unit (ReLU)", trained with the Dice loss (eq. 1)
on 256x256x16 patches.

Parts:
* encoder: a double-conv block at full resolution, then three (max-pool 2x2x2 + double
  conv) stages; widths ``base * (1, 2, 4, 8)``.
* decoder: three (transposed-conv x2 + concatenated skip + double conv) stages.
* head: 1x1x1 conv to ``classes`` logits at the input resolution.
Input ``(N, C, D, H, W)`` with D, H, W multiples of 8. ``base`` is not given in the
paper (kidedge default 16; small values make tiny test models).
"""

from __future__ import annotations

import torch
from torch import nn

from kidedge.train.models.blocks3d import DoubleConv3d


class KidneyNet3D(nn.Module):
    """Args:
        in_channels: input channels (1 for CT).
        classes: output logit channels (2: background, kidney region).
        base: width of the first stage (doubled at each pooling).
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, base: int = 16):
        super().__init__()
        w = [base, base * 2, base * 4, base * 8]
        self.encoder = nn.ModuleList([DoubleConv3d(in_channels, w[0])] +
                                     [DoubleConv3d(w[i], w[i + 1]) for i in range(3)])
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList([nn.ConvTranspose3d(w[i + 1], w[i], 2, stride=2) for i in reversed(range(3))])
        self.decoder = nn.ModuleList([DoubleConv3d(2 * w[i], w[i]) for i in reversed(range(3))])
        self.head = nn.Conv3d(w[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        h = skips[-1]
        for up, block, skip in zip(self.up, self.decoder, reversed(skips[:-1]), strict=True):
            h = block(torch.cat([up(h), skip], dim=1))
        return self.head(h)
