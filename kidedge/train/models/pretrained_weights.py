"""Loading local ImageNet-pretrained encoder weights (they cannot be downloaded here).

A user passes a file made elsewhere, e.g. ``torch.save(torchvision.models.squeezenet1_1(
weights="DEFAULT").state_dict(), "squeezenet1_1.pt")``. The RGB first convolution is
adapted to the model's input channels: for one channel the RGB kernels are summed (a grey
image is R = G = B, so the summed kernel gives the same response as on the RGB image);
for more channels the mean kernel is repeated and rescaled to keep the response size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kidedge.errors import KidedgeError


def load_weights_file(path) -> dict[str, torch.Tensor]:
    """A state_dict from ``path`` (a plain state_dict, or a dict with ``state_dict``/``model``)."""
    p = Path(path)
    if not p.is_file():
        raise KidedgeError(f"{p}: pretrained weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise KidedgeError(f"{p}: not a readable torch weights file ({type(exc).__name__})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KidedgeError(f"{p}: does not hold a state_dict of tensors")
    return obj


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB kernel ``(out, 3, kh, kw)`` into ``(out, in_channels, kh, kw)``."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, *([1] * (weight.dim() - 2))) * (weight.shape[1] / in_channels)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``prefix``, without it (other keys dropped)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
