"""Every registered model: output shape, gradients reaching the first layer, parameter
counts (recorded here so an accidental architecture change shows up)."""

from __future__ import annotations

import pytest
import torch

from kidedge.errors import KidedgeError
from kidedge.train.models import REGISTRY, build_model, count_parameters, model_dimensionality

# arch -> (constructor kwargs, input shape): small inputs / widths keep the suite fast
CASES = {
    "squeezenet_unet": ({"in_channels": 1, "classes": 4}, (2, 1, 64, 64)),
    "resnet34_unet": ({"in_channels": 1, "classes": 3}, (2, 1, 64, 64)),
    "kidney_net3d": ({"in_channels": 1, "classes": 2, "base": 4}, (2, 1, 8, 32, 32)),
    "masses_net3d": ({"in_channels": 1, "classes": 4, "base": 4}, (2, 1, 16, 32, 32)),
    "msrn3d": ({"in_channels": 1, "classes": 2, "base": 4}, (2, 1, 16, 32, 32)),
}


def first_weight(model: torch.nn.Module) -> torch.nn.Parameter:
    """The weight of the first convolution the input meets (registration order)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            return m.weight
    raise AssertionError("no convolution")


def test_every_registered_arch_is_covered():
    assert set(CASES) == set(REGISTRY)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_forward_shape_and_gradient_reaches_first_layer(arch):
    kwargs, shape = CASES[arch]
    torch.manual_seed(0)
    model = build_model(arch, **kwargs)
    assert model_dimensionality(arch) == ("2d" if len(shape) == 4 else "3d")
    model.train()
    x = torch.randn(shape)
    out = model(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    final = outs[-1]
    assert final.shape == (shape[0], kwargs["classes"], *shape[2:])
    assert all(torch.isfinite(o).all() for o in outs)
    loss = sum(o.float().pow(2).mean() for o in outs)
    loss.backward()
    g = first_weight(model).grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        ev = model(x)
    assert isinstance(ev, torch.Tensor) and ev.shape == final.shape


def test_masses_net_deep_supervision_outputs_coarse_to_fine():
    model = build_model("masses_net3d", classes=4, base=4).train()
    outs = model(torch.randn(1, 1, 16, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(4, 8, 8), (8, 16, 16), (16, 32, 32)]
    flat = build_model("masses_net3d", classes=4, base=4, deep_supervision=False).train()
    assert isinstance(flat(torch.randn(1, 1, 16, 32, 32)), torch.Tensor)


# Parameter counts at the constructors' defaults (in_channels 1). These pin the
# architectures: a change of any of them is deliberate and updates this table.
DEFAULT_PARAMS = {
    ("squeezenet_unet", 4): 993_036,
    ("resnet34_unet", 2): 24_430_242,
    ("kidney_net3d", 2): 1_401_282,
    ("masses_net3d", 4): 2_402_830,
    ("msrn3d", 2): 11_613_426,
}


@pytest.mark.parametrize("arch,classes", sorted(DEFAULT_PARAMS))
def test_parameter_counts(arch, classes):
    n = count_parameters(build_model(arch, classes=classes))
    assert n == DEFAULT_PARAMS[(arch, classes)], f"{arch}: {n}"


def test_squeezenet_unet_is_much_smaller_than_resnet34_unet():
    small = count_parameters(build_model("squeezenet_unet", classes=4))
    big = count_parameters(build_model("resnet34_unet", classes=4))
    assert small < 1.2e6 and big > 20e6


def test_bad_model_arguments_are_one_line_errors():
    with pytest.raises(KidedgeError, match="bad arguments"):
        build_model("kidney_net3d", classes=2, widths=3)
    with pytest.raises(KidedgeError, match="unknown model architecture"):
        build_model("vgg_unet")
