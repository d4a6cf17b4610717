"""Multi-scale residual network (3D) of paper 002.

Paper 002, "Automatic segmentation of kidney and kidney tumor based on 3D CNNs (KiTS19)",
section 2 and Figs. 2-3: the segmentation network works on 128x128x80 patches around the
kidney; "multiple scale residual blocks (MRB)" use "cascade of 3x3 kernel convolution
layer to obtain a bigger receptive field, then concatenates all the features with a
residual shortcut" with "a 1x1 convolution layer used for dimensionality reduction"; "more
transpose convolution layers are added" "to acquire more semantic features in the lower
layers".

Parts:
* encoder: stem conv, then four levels of (MRB, then a strided 2x2x2 conv down), widths
  ``base * (1, 2, 4, 8)`` and an MRB bottleneck (``base * 16``).
* decoder: transposed-conv upsampling x2 + concatenated skip + MRB at each level.
* extra transposed convolutions: every decoder level's features are also brought to full
  resolution by its own transposed convolution (stride 2^k) and summed before the head:
  our reading of the paper's extra transpose convolutions (the figure is not available).
* head: 1x1x1 conv to ``classes`` logits (sigmoid channels: kidney, tumour, paper's soft
  Dice + BCE).
Input D, H, W multiples of 16.
"""

from __future__ import annotations

import torch
from torch import nn

from kidedge.train.models.blocks3d import conv_bn_relu


class MultiScaleResidualBlock3d(nn.Module):
    """Cascaded 3x3x3 convs (growing receptive field), concatenation of every stage's
    output, 1x1x1 reduction, residual shortcut (paper 002 Fig. 3)."""

    def __init__(self, cin: int, cout: int, depth: int = 3):
        super().__init__()
        self.convs = nn.ModuleList([conv_bn_relu(cin if i == 0 else cout, cout) for i in range(depth)])
        self.reduce = nn.Sequential(nn.Conv3d(depth * cout, cout, 1, bias=False), nn.BatchNorm3d(cout))
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1, bias=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        feats, h = [], x
        for conv in self.convs:
            h = conv(h)
            feats.append(h)
        return self.act(self.reduce(torch.cat(feats, dim=1)) + self.skip(x))


class MSRN3D(nn.Module):
    """Args:
        in_channels: input channels (1 for CT).
        classes: output logit channels (2 sigmoid channels: kidney region, tumour).
        base: width of the first level (doubled per level; kidedge default 16, the paper
            does not give widths).
        levels: down-sampling levels (4).
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, base: int = 16, levels: int = 4):
        super().__init__()
        w = [base * 2**i for i in range(levels + 1)]
        self.stem = conv_bn_relu(in_channels, w[0])
        self.enc = nn.ModuleList([MultiScaleResidualBlock3d(w[i], w[i]) for i in range(levels)])
        self.down = nn.ModuleList([nn.Conv3d(w[i], w[i + 1], 2, stride=2) for i in range(levels)])
        self.bottleneck = MultiScaleResidualBlock3d(w[levels], w[levels])
        self.up = nn.ModuleList([nn.ConvTranspose3d(w[i + 1], w[i], 2, stride=2) for i in reversed(range(levels))])
        self.dec = nn.ModuleList([MultiScaleResidualBlock3d(2 * w[i], w[i]) for i in reversed(range(levels))])
        # extra transpose convolutions: decoder level i (from the deepest) straight to full size
        self.extra_up = nn.ModuleList([
            nn.ConvTranspose3d(w[i], w[0], 2 ** i, stride=2 ** i) for i in reversed(range(1, levels))])
        self.head = nn.Conv3d(w[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = []
        for enc, down in zip(self.enc, self.down, strict=True):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        extras = []
        for i, (up, dec) in enumerate(zip(self.up, self.dec, strict=True)):
            h = dec(torch.cat([up(h), skips[-1 - i]], dim=1))
            if i < len(self.extra_up):
                extras.append(self.extra_up[i](h))
        for e in extras:
            h = h + e
        return self.head(h)
