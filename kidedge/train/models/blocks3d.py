"""3D building blocks shared by the 3D models (papers 002 and 003)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel=3) -> nn.Sequential:
    """3D conv (same padding) + BatchNorm + ReLU; ``kernel`` an int or (d, h, w)."""
    k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    return nn.Sequential(nn.Conv3d(cin, cout, k, padding=tuple(x // 2 for x in k), bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class DoubleConv3d(nn.Sequential):
    """Two conv-BN-ReLU layers: the regular block of a 3D U-Net (paper 003 Fig. 3a)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class ResidualBlock3d(nn.Module):
    """Two 3x3x3 conv-BN layers with an identity (or 1x1x1 projection) shortcut
    (paper 003 Fig. 4a, the input/output block of Masses-Net)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout),
                                  nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout))
        self.skip = nn.Identity() if cin == cout else nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False),
                                                                    nn.BatchNorm3d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Trilinear upsampling of ``x`` to ``like``'s spatial size."""
    return nn.functional.interpolate(x, size=like.shape[2:], mode="trilinear", align_corners=False)
