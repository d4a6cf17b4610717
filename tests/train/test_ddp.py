"""DistributedDataParallel on CPU: torchrun starts 2 processes (gloo backend) that train
one short epoch of paper 000's recipe together; rank 0 writes the run, the ranks end with
bit-identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kidedge.train.models import build_model

SMALL = ["preprocess.in_plane=\"size\"", "preprocess.size=[64, 64]", "train.batch_size=4",
         "sampling.samples_per_epoch=16"]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_gloo(phantom_data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "kidedge.cli", "train", "--recipe", "squeezenet_unet_kits19", "--data", str(phantom_data),
           "--out", str(out), "--epochs", "1", "--device", "cpu"]
    for s in SMALL:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert run["ddp"] == {"world_size": 2, "weights_in_sync": True}
    st = run["stages"][0]
    assert st["ddp"]["world_size"] == 2 and st["ddp"]["weights_in_sync"] is True
    # each rank drew half of the epoch: 16 samples / (batch 4 x 2 ranks) = 2 steps per rank
    assert st["train"]["samples_per_epoch"] == 16
    state = torch.load(out / "segment" / "best.pt", map_location="cpu", weights_only=True)
    build_model("squeezenet_unet", classes=3).load_state_dict(state)
    assert proc.stdout.count("run written to") == 1  # only rank 0 reports
