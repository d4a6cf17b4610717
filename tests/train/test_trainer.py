"""The trainer end to end on CPU: a SqueezeNet U-Net learns the kidneys of tiny phantoms,
the run directory holds everything export needs, checkpoints load with
``weights_only=True``. (Determinism and resume: test_resume.py.)"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from kidedge.train.loop import train_recipe
from kidedge.train.models import build_model

# The paper 000 recipe as it is (native 96 x 96 phantom slices, one-cycle Adam 1e-3, CE),
# with short epochs: 4 x 96 slices = 48 steps, about 25 s on one core.
DICE_RUN = ["sampling.samples_per_epoch=96"]
DICE_EPOCHS = 4
# The validation kidney Dice must beat this after DICE_EPOCHS. An untrained network
# scores about 0.06 on the validation phantom; this run reached 0.53 when written.
KIDNEY_DICE_THRESHOLD = 0.4


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def squeeze_run(phantom_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("squeeze_run")
    assert train_recipe("squeezenet_unet_kits19", phantom_data, out, epochs=DICE_EPOCHS, device="cpu",
                        overrides=DICE_RUN) == 0
    return out


def test_validation_kidney_dice_rises_above_threshold(squeeze_run):
    rows = _rows(squeeze_run)
    assert [int(r["epoch"]) for r in rows] == list(range(DICE_EPOCHS))
    dice = [float(r["val_kidney_dice"]) for r in rows]
    assert max(dice) > KIDNEY_DICE_THRESHOLD, dice
    assert dice[-1] > dice[0] + 0.2, dice
    run = json.loads((squeeze_run / "run.json").read_text())
    assert run["stages"][0]["metrics"]["val_kidney_dice"] == pytest.approx(max(dice), abs=1e-5)
    # the whole-case evaluation of the best checkpoint agrees with the stage's own validation
    assert run["metrics"]["val"]["mean"]["kidney_dice"] == pytest.approx(max(dice), abs=1e-3)


def test_run_directory_holds_what_export_needs(squeeze_run, phantom_data):
    run = json.loads((squeeze_run / "run.json").read_text())
    split = json.loads((squeeze_run / "split.json").read_text())
    ids = sorted(p.name for p in phantom_data.iterdir() if p.name.startswith("case_"))
    parts = [split["train"], split["val"], split["test"]]
    assert sorted(sum(parts, [])) == ids and [len(p) for p in parts] == [8, 1, 1]
    assert run["split"] == split and run["recipe"] == "squeezenet_unet_kits19"
    st = run["stages"][0]
    assert st["status"] == "done" and st["arch"] == "squeezenet_unet" and st["parameters"] > 0
    assert st["train"]["precision"] == "fp32" and st["train"]["channels_last"] is False
    pre = json.loads((squeeze_run / "segment" / "preprocess.json").read_text())
    assert pre == st["preprocess"] and pre["in_plane"] == "native" and pre["hu_window"] == [-200.0, 400.0]
    for name in ("metrics.csv", "curves.png", "segment/best.pt", "segment/last.pt", "segment/resume.pt"):
        assert (squeeze_run / name).stat().st_size > 0, name
    assert (squeeze_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_load_weights_only(squeeze_run):
    state = torch.load(squeeze_run / "segment" / "best.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = build_model("squeezenet_unet", classes=3)
    model.load_state_dict(state)  # strict: every key matches the recipe's architecture
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)
