"""Masses-Net (3D): stage 2 of the two-stage cascade of paper 003.

Paper 003, "Kidney and kidney tumor segmentation using a two-stage cascade framework
(KiTS21)", section 2.2, Fig. 3(b) and Fig. 4: input and output blocks are residual blocks;
"four pooling operations and four encoder blocks"; encoder/decoder blocks are
multi-dimension feature (MDF) modules: a 3D branch of two 3x3x3 convolutions and an
anisotropic 3x3x1 branch (in-plane, i.e. (1, 3, 3) in our (D, H, W) order), concatenated,
then CBAM (channel attention then spatial attention, Woo et al. 2018), plus the input (eq.
3: ``F_sam(F_cam(m_c)) + x``); deep supervision on the outputs of the last three decoder
blocks (eq. 7). Loss: 0.5 Dice + 0.5 weighted CE.

Parts:
* encoder: input residual block (``base``), four (max-pool 2 + MDF) stages, widths
  ``base * (2, 4, 8, 16)`` (capped by ``max_width``).
* decoder: four (transposed conv x2 + concatenated skip + 1x1x1 fuse + MDF) stages, then
  the output residual block.
* head: 1x1x1 conv to ``classes`` on the last three decoder outputs; in training mode the
  model returns ``[deep2, deep1, final]`` (coarse to fine; the loss upsamples them to the
  label size), in eval mode only the final logits.
Input D, H, W multiples of 16. Widths are not given in the paper (kidedge default 16).
"""

from __future__ import annotations

import torch
from torch import nn

from kidedge.train.models.blocks3d import ResidualBlock3d, conv_bn_relu


class ChannelAttention3d(nn.Module):
    """CBAM channel attention: shared MLP on average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv3d(hidden, channels, 1))

    def forward(self, x):
        avg = self.mlp(x.mean(dim=(2, 3, 4), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3, 4), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention3d(nn.Module):
    """CBAM spatial attention: conv over the channel-wise mean and max maps."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x):
        m = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(m))


class MDF3d(nn.Module):
    """Multi-dimension feature module (paper 003 Fig. 4c, eq. 2-3)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.branch3d = nn.Sequential(conv_bn_relu(cin, half), conv_bn_relu(half, half))
        self.branch2d = conv_bn_relu(cin, cout - half, kernel=(1, 3, 3))  # the 3x3x1 anisotropic branch
        self.cam = ChannelAttention3d(cout)
        self.sam = SpatialAttention3d()
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1, bias=False)

    def forward(self, x):
        m = torch.cat([self.branch3d(x), self.branch2d(x)], dim=1)
        return self.sam(self.cam(m)) + self.skip(x)


class MassesNet3D(nn.Module):
    """Args:
        in_channels: input channels (1 for CT).
        classes: output logit channels (4: background, kidney, tumour, cyst).
        base: width of the input block; stages double it.
        max_width: cap on the stage widths (memory).
        deep_supervision: return the last three decoder outputs in training mode.
    """

    def __init__(self, in_channels: int = 1, classes: int = 4, base: int = 16, max_width: int = 256,
                 deep_supervision: bool = True):
        super().__init__()
        w = [min(max_width, base * 2**i) for i in range(5)]
        self.deep_supervision = deep_supervision
        self.input_block = ResidualBlock3d(in_channels, w[0])
        self.pool = nn.MaxPool3d(2)
        self.encoder = nn.ModuleList([MDF3d(w[i], w[i + 1]) for i in range(4)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(w[i + 1], w[i], 2, stride=2) for i in reversed(range(4))])
        self.fuse = nn.ModuleList([conv_bn_relu(2 * w[i], w[i], kernel=1) for i in reversed(range(4))])
        self.decoder = nn.ModuleList([MDF3d(w[i], w[i]) for i in reversed(range(4))])
        self.output_block = ResidualBlock3d(w[0], w[0])
        # heads of the last three decoder blocks (widths w[2], w[1], w[0])
        self.heads = nn.ModuleList([nn.Conv3d(w[i], classes, 1) for i in (2, 1, 0)])

    def forward(self, x: torch.Tensor):
        skips = [self.input_block(x)]
        h = skips[0]
        for block in self.encoder:
            h = block(self.pool(h))
            skips.append(h)
        outs = []
        for i, (up, fuse, block) in enumerate(zip(self.up, self.fuse, self.decoder, strict=True)):
            h = block(fuse(torch.cat([up(h), skips[3 - i]], dim=1)))
            outs.append(h)
        outs[-1] = self.output_block(outs[-1])
        final = self.heads[2](outs[-1])
        if self.training and self.deep_supervision:
            return [self.heads[0](outs[1]), self.heads[1](outs[2]), final]
        return final
