"""``kidedge train --precision``: the trainer's autocast on CPU and the modes it accepts."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from kidedge.errors import KidedgeError
from kidedge.train.loop import train_recipe
from kidedge.train.optimisation import PRECISIONS, Precision


def test_cpu_auto_and_fp32_do_not_autocast():
    for mode in ("auto", "fp32"):
        p = Precision(torch.device("cpu"), mode)
        assert p.dtype is None and p.scaler is None and p.name == "fp32"
        with p.autocast():
            assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32


def test_cpu_bf16_autocasts_convolutions_but_not_the_weights():
    p = Precision(torch.device("cpu"), "bf16")
    assert p.dtype == torch.bfloat16 and p.scaler is None and p.name == "bf16-autocast"
    conv = torch.nn.Conv2d(1, 2, 3)
    with p.autocast():
        out = conv(torch.ones(1, 1, 8, 8))
    assert out.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32


def test_unknown_precision_is_a_one_line_error():
    with pytest.raises(KidedgeError, match="--precision fp8"):
        Precision(torch.device("cpu"), "fp8")
    assert PRECISIONS == ("auto", "fp32", "bf16")


def test_bf16_training_on_cpu_learns_and_is_recorded(phantom_data, tmp_path):
    # the paper 000 recipe as test_trainer.py runs it in fp32 (4 short epochs); bf16
    # autocast must learn the kidneys as well (an untrained network scores about 0.06)
    out = tmp_path / "run"
    assert train_recipe("squeezenet_unet_kits19", phantom_data, out, epochs=4, device="cpu",
                        overrides=["sampling.samples_per_epoch=96"], precision="bf16") == 0
    with open(out / "metrics.csv") as f:
        dice = [float(r["val_kidney_dice"]) for r in csv.DictReader(f)]
    assert max(dice) > 0.4, dice
    run = json.loads((out / "run.json").read_text())
    assert run["precision"] == "bf16-autocast"
    st = run["stages"][0]
    assert st["train"]["precision"] == "bf16-autocast" and st["train"]["channels_last"] is True
    # the checkpoint is fp32 weights, loadable by export as always
    state = torch.load(out / "segment" / "best.pt", map_location="cpu", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state.values())


def test_cpu_bf16_without_native_support_says_so(monkeypatch):
    from kidedge.train import optimisation

    monkeypatch.setattr(optimisation, "cpu_has_native_bf16", lambda: False)
    assert "emulated" in Precision(torch.device("cpu"), "bf16").note
    monkeypatch.setattr(optimisation, "cpu_has_native_bf16", lambda: True)
    assert Precision(torch.device("cpu"), "bf16").note is None
    assert Precision(torch.device("cpu"), "auto").note is None
