"""Paper 002's multi-scale residual network recipe trains for one tiny epoch per stage
on CPU: a coarse localiser, then the segmenter on 1 mm-grid patches inside its box
(sigmoid channels, soft Dice + BCE, SGD with the plateau schedule)."""

from __future__ import annotations

import json
import math

import torch

from kidedge.train.loop import train_recipe
from kidedge.train.models import build_model

TINY = ["localise.sampling.patch=[16, 32, 32]", "segment.sampling.patch=[16, 32, 32]",
        "segment.preprocess.spacing_mm=3.0", "model.base=4", "sampling.samples_per_epoch=4"]


def test_msrn3d_trains_one_tiny_epoch(phantom_data, tmp_path):
    out = tmp_path / "run"
    assert train_recipe("msrn3d_kits19", phantom_data, out, epochs=1, device="cpu", overrides=TINY) == 0
    run = json.loads((out / "run.json").read_text())
    loc, seg = run["stages"]
    assert loc["arch"] == seg["arch"] == "msrn3d"
    assert loc["preprocess"]["in_plane"] == "spacing" and loc["preprocess"]["spacing_mm"] == 4.0
    assert seg["output"] == {"activation": "sigmoid", "labels": [1, 2], "regions": [[1, 2, 3], [2]]}
    for st in (loc, seg):
        assert st["train"]["optimizer"] == "sgd" and st["train"]["schedule"] == "plateau"
        assert math.isfinite(st["metrics"]["val_loss"])
        state = torch.load(out / st["checkpoint"], map_location="cpu", weights_only=True)
        build_model(st["arch"], **st["model_kwargs"]).load_state_dict(state)
    assert run["metrics"]["val"]["n_cases"] == 1
