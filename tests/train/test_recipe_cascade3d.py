"""Paper 003's 3D cascade trains for one tiny epoch per stage on CPU: Kidney-Net on 3D
patches with the Dice loss, then Masses-Net with deep supervision (a list of outputs
through the 0.5 Dice + 0.5 weighted CE loss) inside the kidney ROI, validated on whole
cases with tiled 3D prediction."""

from __future__ import annotations

import json
import math

import torch

from kidedge.train.loop import train_recipe
from kidedge.train.losses import SegmentationLoss
from kidedge.train.models import build_model
from kidedge.train.recipes import load_recipe

# the recipe's architecture and losses; patches and widths shrunk for a 2-core CPU
TINY = ["kidney.sampling.patch=[8, 32, 32]", "masses.sampling.patch=[16, 32, 32]", "model.base=4",
        "sampling.samples_per_epoch=4"]


def test_deep_supervision_loss_averages_the_upsampled_outputs():
    st = load_recipe("cascade3d_kits21")["stages"][1]
    t = st["train"]
    loss = SegmentationLoss(t["loss"], st["output"], t["dice_weight"], t["class_weights"], t["deep_supervision_weights"])
    model = build_model("masses_net3d", classes=4, base=4).train()
    y = torch.randint(0, 4, (1, 16, 32, 32))
    outs = model(torch.randn(1, 1, 16, 32, 32))
    total = loss(outs, y)
    parts = [loss(o, y) for o in outs]
    assert torch.isclose(total, sum(parts) / 3)
    total.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.heads)


def test_cascade3d_trains_one_tiny_epoch(phantom_data, tmp_path):
    out = tmp_path / "run"
    assert train_recipe("cascade3d_kits21", phantom_data, out, epochs=1, device="cpu", overrides=TINY) == 0
    run = json.loads((out / "run.json").read_text())
    kidney, masses = run["stages"]
    assert (kidney["arch"], masses["arch"]) == ("kidney_net3d", "masses_net3d")
    assert kidney["status"] == masses["status"] == "done"
    assert masses["roi"]["source_stage"] == "kidney"
    for st in (kidney, masses):
        assert st["preprocess"]["normalisation"] == "zscore" and st["preprocess"]["hu_window"] == [-100.0, 400.0]
        assert st["preprocess"]["std"] > 1.0  # fitted on the training cases (not the default 1)
        assert math.isfinite(st["metrics"]["val_loss"]) and 0.0 <= st["metrics"]["val_dice"] <= 1.0
        state = torch.load(out / st["checkpoint"], map_location="cpu", weights_only=True)
        build_model(st["arch"], **st["model_kwargs"]).load_state_dict(state)
    assert masses["train"]["loss"] == "dice_wce" and masses["model_kwargs"]["deep_supervision"] is True
    assert "kidney_dice" in run["metrics"]["val"]["mean"]
