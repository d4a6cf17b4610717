"""SqueezeNet U-Net (2D): the compute-light model of paper 000.

Paper 000, "A Novel Deep-Learning Based Segmentation Of Kidney Tumor (KiTS19)", section
III (Methodology): "Our model was built with squeezeNet and u-net learner", fire modules
(squeeze 1x1, expand 1x1 + 3x3).

Parts:
* encoder: torchvision ``squeezenet1_1().features`` (conv + 8 fire modules, 3 max pools),
  first conv adapted to ``in_channels``. Two changes make it U-Net and export friendly
  while keeping every weight shape (so ImageNet weights still load): the first conv gets
  padding 1 and the max pools are ``MaxPool2d(3, 2, padding=1)`` without ``ceil_mode``;
  an even input then halves exactly at each step (strides 2, 4, 8, 16), so any H, W that
  is a multiple of 16 (hence of 32) gives skips of exactly matching sizes.
* decoder: four U-Net blocks (2x bilinear upsample, concatenate the skip, two 3x3
  conv-BN-ReLU); the last one concatenates the input image itself (full resolution).
* head: a 1x1 conv to ``classes`` logits at the input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import squeezenet1_1

from kidedge.errors import KidedgeError
from kidedge.train.models.pretrained_weights import (
    adapt_first_conv,
    load_weights_file,
    strip_prefix,
)


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # scale_factor=2 (not a size taken from the skip) exports to a static ONNX Resize;
        # the encoder guarantees the sizes match for inputs that are multiples of 16.
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class SqueezeNetUNet(nn.Module):
    """SqueezeNet-1.1 encoder + U-Net decoder.

    Args:
        in_channels: input channels (1 for a CT slice; 2 * context + 1 for 2.5D input).
        classes: output logit channels.
        decoder_channels: widths of the four decoder blocks, deepest first. The default
            keeps the whole model near 1.0 M parameters (about 4 MB in fp32, 1 MB int8);
            the encoder alone is 0.72 M.
        pretrained: path to a local torchvision ``squeezenet1_1`` state_dict (ImageNet);
            its ``features.*`` weights initialise the encoder. None (default): random.
    """

    # (index in torchvision's features, channels) of the skip taps, shallow to deep
    _TAPS = ((1, 64), (4, 128), (7, 256), (12, 512))

    def __init__(self, in_channels: int = 1, classes: int = 2,
                 decoder_channels=(32, 16, 16, 8), pretrained: str | None = None):
        super().__init__()
        if len(decoder_channels) != 4:
            raise KidedgeError("squeezenet_unet: decoder_channels needs 4 widths")
        self.in_channels, self.classes = int(in_channels), int(classes)
        features = squeezenet1_1(weights=None).features
        first = features[0]
        features[0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=2, padding=1)
        for i in (2, 5, 8):
            features[i] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.encoder = features
        skips = [c for _, c in self._TAPS]  # 64 @1/2, 128 @1/4, 256 @1/8, 512 @1/16
        d = [int(c) for c in decoder_channels]
        self.decoder = nn.ModuleList([
            DecoderBlock(skips[3], skips[2], d[0]),
            DecoderBlock(d[0], skips[1], d[1]),
            DecoderBlock(d[1], skips[0], d[2]),
            DecoderBlock(d[2], in_channels, d[3]),
        ])
        self.head = nn.Conv2d(d[3], classes, kernel_size=1)
        if pretrained:
            self.load_pretrained(pretrained)

    def load_pretrained(self, path) -> None:
        """Load torchvision squeezenet1_1 ImageNet weights into the encoder."""
        state = strip_prefix(load_weights_file(path), "features.")
        if "0.weight" not in state:
            raise KidedgeError(f"{path}: no squeezenet 'features.*' weights in this file")
        state["0.weight"] = adapt_first_conv(state["0.weight"], self.in_channels)
        try:
            self.encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise KidedgeError(f"{path}: weights do not fit squeezenet1_1 features: {str(exc).splitlines()[0]}") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        taps = {i for i, _ in self._TAPS}
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i in taps:
                skips.append(h)
        h = skips[3]
        for block, skip in zip(self.decoder, (skips[2], skips[1], skips[0], x), strict=True):
            h = block(h, skip)
        return self.head(h)
