"""Model registry: ``build_model(arch, **kwargs)`` for every architecture a recipe can name.

All 2D models take float32 ``(N, C, H, W)`` and return logits ``(N, K, H, W)`` at the input
resolution; 3D models take ``(N, C, D, H, W)`` (D = slices) and return ``(N, K, D, H, W)``.
Modules are imported lazily so building one model does not import the others' deps.
"""

from __future__ import annotations

import importlib

from kidedge.errors import KidedgeError

# arch name -> (module, class name, dimensionality)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "squeezenet_unet": ("kidedge.train.models.squeezenet_unet", "SqueezeNetUNet", "2d"),
    "resnet34_unet": ("kidedge.train.models.resnet34_unet", "ResNet34UNet", "2d"),
    "kidney_net3d": ("kidedge.train.models.kidney_net3d", "KidneyNet3D", "3d"),
    "masses_net3d": ("kidedge.train.models.masses_net3d", "MassesNet3D", "3d"),
    "msrn3d": ("kidedge.train.models.msrn3d", "MSRN3D", "3d"),
}


def model_class(arch: str):
    """The ``nn.Module`` class registered as ``arch``."""
    if arch not in REGISTRY:
        raise KidedgeError(f"unknown model architecture '{arch}' (known: {', '.join(sorted(REGISTRY))})")
    module, name, _ = REGISTRY[arch]
    return getattr(importlib.import_module(module), name)


def model_dimensionality(arch: str) -> str:
    """``"2d"`` or ``"3d"``."""
    model_class(arch)
    return REGISTRY[arch][2]


def build_model(arch: str, **kwargs):
    """Build the model registered as ``arch`` with constructor keyword arguments ``kwargs``.

    ``pretrained`` (a path to a local weights file), where the model supports it, is passed
    through; unknown keyword arguments are a one-line :class:`KidedgeError`.
    """
    cls = model_class(arch)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise KidedgeError(f"model '{arch}': bad arguments {sorted(kwargs)}: {exc}") from exc


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
