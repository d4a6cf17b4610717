"""Paper 001's 2D two-phase cascade runs on CPU: phase 1 (kidney, slices clipped to
[0, 200] HU, z-score fitted on the training cases, one sigmoid channel, BCE) and phase 2
(kidney region + tumour sigmoid channels inside phase 1's kidney box)."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from kidedge.preprocess import fit_zscore
from kidedge.train.data import CaseCache, discover_training_cases, sample_hu
from kidedge.train.loop import train_recipe
from kidedge.train.models import build_model

# ResNet34 U-Nets as in the paper, narrow decoders and tiny batches for a 2-core CPU
TINY = ["kidney.sampling.patch=[64, 64]", "train.batch_size=4", "sampling.samples_per_epoch=8",
        "model.decoder_channels=[32, 16, 16, 8, 8]"]


def test_cascade2d_runs_with_zscore_fitted_on_train(phantom_data, tmp_path):
    out = tmp_path / "run"
    assert train_recipe("cascade2d_kits21", phantom_data, out, epochs=1, device="cpu", overrides=TINY) == 0
    run = json.loads((out / "run.json").read_text())
    kidney, tumour = run["stages"]
    assert kidney["arch"] == tumour["arch"] == "resnet34_unet"
    assert kidney["output"]["activation"] == tumour["output"]["activation"] == "sigmoid"
    assert kidney["train"]["loss"] == tumour["train"]["loss"] == "bce"
    assert kidney["train"]["select_best"] == "val_loss"
    pre = kidney["preprocess"]
    assert pre["hu_window"] == [0.0, 200.0] and pre["normalisation"] == "zscore"
    # the statistics are those of the (clipped) training cases: recompute them
    cache = CaseCache(out / "cache")
    by_id = {c.case_id: c for c in discover_training_cases(phantom_data)}
    train_cases = [cache.get(by_id[c]) for c in run["split"]["train"]]
    mean, std = fit_zscore(sample_hu(train_cases, 0), (0.0, 200.0))
    assert math.isclose(pre["mean"], mean, rel_tol=1e-6) and math.isclose(pre["std"], std, rel_tol=1e-6)
    assert 0.0 < pre["mean"] < 200.0 and 0.0 < pre["std"] < 100.0
    assert tumour["roi"]["source_stage"] == "kidney"
    assert tumour["preprocess"]["mean"] != pre["mean"]  # phase 2 is not clipped to [0, 200]
    for st in (kidney, tumour):
        assert math.isfinite(st["metrics"]["val_loss"])
        state = torch.load(out / st["checkpoint"], map_location="cpu", weights_only=True)
        build_model(st["arch"], **st["model_kwargs"]).load_state_dict(state)
    assert np.isfinite(run["metrics"]["val"]["mean"]["kidney_dice"])
