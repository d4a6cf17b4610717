"""ImageNet-pretrained encoders from local files (off by default). The files are made
here from torchvision/timm models with seeded random weights: what is tested is that
every weight lands in the right place, not ImageNet itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from kidedge.errors import KidedgeError
from kidedge.train.loop import StageTrainer
from kidedge.train.models import build_model
from kidedge.train.recipes import load_recipe


@pytest.fixture(scope="module")
def squeezenet_file(tmp_path_factory):
    torch.manual_seed(1)
    sd = torchvision.models.squeezenet1_1(weights=None).state_dict()
    p = tmp_path_factory.mktemp("weights") / "squeezenet1_1.pt"
    torch.save(sd, p)
    return p, sd


@pytest.fixture(scope="module", params=["torchvision", "timm"])
def resnet34_file(request, tmp_path_factory):
    torch.manual_seed(2)
    if request.param == "torchvision":
        sd = torchvision.models.resnet34(weights=None).state_dict()
    else:
        import timm

        sd = timm.create_model("resnet34", pretrained=False).state_dict()
    p = tmp_path_factory.mktemp("weights") / f"resnet34_{request.param}.pt"
    torch.save({"state_dict": sd}, p)  # wrapped, as many training scripts save them
    return p, sd


def test_squeezenet_unet_loads_local_squeezenet1_1(squeezenet_file):
    path, sd = squeezenet_file
    model = build_model("squeezenet_unet", classes=4, pretrained=str(path))
    enc = model.encoder.state_dict()
    for k, v in sd.items():
        if not k.startswith("features.") or k == "features.0.weight":
            continue
        assert torch.equal(enc[k[len("features."):]], v), k
    # grey input: the RGB kernels summed give the same response as on an R = G = B image
    assert torch.allclose(enc["0.weight"], sd["features.0.weight"].sum(1, keepdim=True))
    default = build_model("squeezenet_unet", classes=4)
    assert not torch.equal(default.encoder.state_dict()["3.squeeze.weight"], sd["features.3.squeeze.weight"])


def test_resnet34_unet_loads_local_resnet34(resnet34_file):
    path, sd = resnet34_file
    model = build_model("resnet34_unet", classes=2, pretrained=str(path))
    enc = model.encoder.state_dict()
    assert sum(1 for k in sd if not k.startswith("fc.")) == len(enc)
    for k, v in enc.items():
        if k != "conv1.weight":
            assert torch.equal(v, sd[k]), k
    assert torch.allclose(enc["conv1.weight"], sd["conv1.weight"].sum(1, keepdim=True))
    # more input channels (2.5D): the mean kernel repeated, the response size kept
    three = build_model("resnet34_unet", in_channels=3, classes=2, pretrained=str(path))
    assert torch.equal(three.encoder.state_dict()["conv1.weight"], sd["conv1.weight"])
    five = build_model("resnet34_unet", in_channels=5, classes=2, pretrained=str(path))
    w5 = five.encoder.state_dict()["conv1.weight"]
    assert w5.shape[1] == 5 and torch.allclose(w5.sum(1), sd["conv1.weight"].sum(1), atol=1e-5)


def test_trainer_passes_pretrained_to_2d_encoders(squeezenet_file, tmp_path):
    path, sd = squeezenet_file
    r = load_recipe("squeezenet_unet_kits19")
    trainer = StageTrainer(tmp_path, r, 0, [], [], torch.device("cpu"), 1, str(path))
    model = trainer.build()
    assert torch.equal(model.encoder.state_dict()["3.squeeze.weight"], sd["features.3.squeeze.weight"])
    off = StageTrainer(tmp_path, r, 0, [], [], torch.device("cpu"), 1, None).build()
    assert not torch.equal(off.encoder.state_dict()["3.squeeze.weight"], sd["features.3.squeeze.weight"])


def test_bad_weights_files_are_one_line_errors(tmp_path, squeezenet_file, resnet34_file):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    cases = [
        ("squeezenet_unet", tmp_path / "missing.pt", "not found"),
        ("squeezenet_unet", garbage, "not a readable torch weights file"),
        ("squeezenet_unet", resnet34_file[0], "no squeezenet"),
        ("resnet34_unet", squeezenet_file[0], "no resnet"),
    ]
    for arch, path, match in cases:
        with pytest.raises(KidedgeError, match=match) as info:
            build_model(arch, classes=2, pretrained=str(Path(path)))
        assert "\n" not in str(info.value)
