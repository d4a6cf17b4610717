"""ResNet34 U-Net (2D): paper 000's comparison model and paper 001's two phases.

Papers: 000, "A Novel Deep-Learning Based Segmentation Of Kidney Tumor (KiTS19)", section
IV (ResNet model, Dice 99.05 "dice_multi"); 001, "Kidney Tumor Segmentation (KiTS21)",
section 4.2 ("U-Net base model ... encoder path is based on a pre-trained ResNet34").

Parts (segmentation-models-pytorch ``Unet("resnet34")``):
* encoder: ResNet34 (conv1 7x7/2, 4 residual stages), first conv for ``in_channels``,
* decoder: U-Net decoder, widths ``decoder_channels`` (smp default 256, 128, 64, 32, 16),
* head: 3x3 conv to ``classes`` logits at the input resolution (H, W multiples of 32).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from kidedge.errors import KidedgeError
from kidedge.train.models.pretrained_weights import adapt_first_conv, load_weights_file


class ResNet34UNet(nn.Module):
    """segmentation-models-pytorch U-Net with a ResNet34 encoder.

    Args:
        in_channels: input channels (1 for CT).
        classes: output logit channels.
        decoder_channels: the five decoder widths.
        pretrained: path to a local resnet34 state_dict with torchvision/timm keys
            (``conv1.weight``, ``layer1.0.conv1.weight``, ...); ``fc.*`` is ignored and the
            RGB first conv is summed to ``in_channels``. None (default): random init.
    """

    def __init__(self, in_channels: int = 1, classes: int = 2,
                 decoder_channels=(256, 128, 64, 32, 16), pretrained: str | None = None):
        super().__init__()
        self.in_channels, self.classes = int(in_channels), int(classes)
        self.net = smp.Unet("resnet34", encoder_weights=None, in_channels=in_channels,
                            classes=classes, decoder_channels=tuple(int(c) for c in decoder_channels))
        if pretrained:
            self.load_pretrained(pretrained)

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def load_pretrained(self, path) -> None:
        state = {k: v for k, v in load_weights_file(path).items() if not k.startswith("fc.")}
        if "conv1.weight" not in state:
            raise KidedgeError(f"{path}: no resnet 'conv1.weight' in this file")
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], self.in_channels)
        try:
            self.net.encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise KidedgeError(f"{path}: weights do not fit resnet34: {str(exc).splitlines()[0]}") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
