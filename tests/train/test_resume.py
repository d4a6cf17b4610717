"""Training is deterministic for a seed, refuses to overwrite a finished run, and a run
interrupted mid-stage (Ctrl-C) resumes with ``resume=True`` to exactly the weights and
metrics of an uninterrupted run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from kidedge.train.checkpoint import load_resume_state
from kidedge.train.loop import train_recipe

# paper 000's recipe shrunk for run mechanics: 64 x 64 slices, 2 steps per epoch
SMALL = ["preprocess.in_plane=\"size\"", "preprocess.size=[64, 64]", "train.batch_size=8",
         "sampling.samples_per_epoch=16"]


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_same_seed_same_weights_and_resume_continues(phantom_data, tmp_path, monkeypatch):
    from kidedge.errors import KidedgeError
    from kidedge.train.loop import StageTrainer

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    # b and c: two uninterrupted 2-epoch runs with the same seed
    for out in (b, c):
        train_recipe("squeezenet_unet_kits19", phantom_data, out, epochs=2, device="cpu", overrides=SMALL)
    wb, wc = _weights(b / "segment" / "last.pt"), _weights(c / "segment" / "last.pt")
    assert all(torch.equal(wb[k], wc[k]) for k in wb)
    with pytest.raises(KidedgeError, match="already holds a training run"):
        train_recipe("squeezenet_unet_kits19", phantom_data, b, epochs=2, device="cpu", overrides=SMALL)

    # a: interrupted during epoch 2 (Ctrl-C in its validation), then resumed
    real_validate, calls = StageTrainer.validate, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_validate(self, *args, **kwargs)

    monkeypatch.setattr(StageTrainer, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_recipe("squeezenet_unet_kits19", phantom_data, a, epochs=2, device="cpu", overrides=SMALL)
    monkeypatch.setattr(StageTrainer, "validate", real_validate)
    assert load_resume_state(a / "segment" / "resume.pt")["epoch"] == 0
    assert not (a / "run.json").exists()
    train_recipe("squeezenet_unet_kits19", phantom_data, a, epochs=2, device="cpu", overrides=SMALL, resume=True)
    assert load_resume_state(a / "segment" / "resume.pt")["epoch"] == 1
    rows_a, rows_b = _rows(a), _rows(b)
    assert [int(r["epoch"]) for r in rows_a] == [0, 1]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if k != "epoch_seconds"} == {
            k: v for k, v in rb.items() if k != "epoch_seconds"}
    # the resumed run ends with exactly the weights of the uninterrupted one
    wa = _weights(a / "segment" / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    assert json.loads((a / "split.json").read_text()) == json.loads((b / "split.json").read_text())
    assert np.isfinite(float(rows_a[1]["train_loss"]))
