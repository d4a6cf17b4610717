"""Fixtures for export tests: a tiny U-Net-shaped model and a run directory holding it.

The tiny model (conv, pool, conv, upsample, concat, head; with BatchNorm) has the
operators of the real U-Nets at a few thousand parameters, so export, quantisation and
fidelity run in seconds. It is briefly trained on phantom slices so its logits are
structured (kidney vs background), not noise around zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kidedge.export.held_out import phantom_volume
from kidedge.export.stage_inputs import slice_inputs
from kidedge.preprocess import PreprocessSpec, resize_labels_nearest

SPEC = PreprocessSpec(hu_window=(-200.0, 300.0), normalisation="range", in_plane="size", size=(96, 96))
VOLUME_SHAPE = (16, 96, 96)
SPACING = (3.0, 3.0, 3.0)


class TinyUNet(nn.Module):
    """Two-level U-Net: enough structure for export tests, tiny enough for a 2-core CPU."""

    def __init__(self, in_channels: int = 1, classes: int = 4, width: int = 8):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        a = self.enc(x)
        b = self.up(self.down(a))
        return self.head(self.dec(torch.cat([a, b], 1)))


def prepared_tiny_unet(folder: Path, x: np.ndarray) -> Path:
    """An untrained TinyUNet (seed 0) exported to ``folder/fp32.onnx`` with ``x[:1]`` as the
    example, and ORT's quantisation pre-processing of it (``folder/prep.onnx``, returned)."""
    from kidedge.export.onnx_export import export_onnx
    from kidedge.export.quantize import prepare_for_quantization

    torch.manual_seed(0)
    export_onnx(TinyUNet().eval(), folder / "fp32.onnx", x[:1])
    return prepare_for_quantization(folder / "fp32.onnx", folder / "prep.onnx")


def tiny_factory(arch: str, **kwargs) -> nn.Module:
    assert arch == "tiny_unet", arch
    return TinyUNet(**kwargs)


def _train_briefly(model: nn.Module, stage: dict, steps: int = 12) -> None:
    """A few Adam steps on 8 phantom slices (mostly kidney slices): seconds on 2 cores."""
    torch.manual_seed(0)
    v = phantom_volume(1, VOLUME_SHAPE, SPACING)
    has_kidney = np.nonzero((v.labels > 0).any(axis=(1, 2)))[0]
    idx = np.unique(np.concatenate([has_kidney[:: max(1, len(has_kidney) // 6)][:6], [0, len(v.labels) - 1]]))
    xs = [slice_inputs(v, stage, idx)]
    ys = [resize_labels_nearest(v.labels[idx], SPEC.size)]
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    weights = torch.tensor([0.2, 1.0, 2.0, 2.0])
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y, weight=weights)
        loss.backward()
        opt.step()
    model.eval()


def make_run(root: Path, stages=("seg",), train: bool = True) -> Path:
    """A run directory with run.json and one checkpoint per stage."""
    torch.set_num_threads(2)
    run = root / "run"
    run.mkdir()
    st_list = []
    for i, name in enumerate(stages):
        role = "localise" if (len(stages) > 1 and i == 0) else "segment"
        labels = [0, 1, 2, 3]
        st = {
            "name": name, "role": role, "arch": "tiny_unet", "model_kwargs": {"in_channels": 1, "classes": 4},
            "preprocess": SPEC.to_dict(),
            "output": {"activation": "softmax", "labels": labels},
            "checkpoint": f"{name}/best.pt", "metrics": {"val_dice": 0.5},
        }
        if role == "segment" and len(stages) > 1:
            st["roi"] = {"source_stage": stages[0], "labels": [1, 2, 3], "margin_mm": 10.0}
        torch.manual_seed(i)  # the same weights every run: tests that need a model which finds the kidney do not flake
        model = TinyUNet()
        if train:
            _train_briefly(model, st)
        (run / name).mkdir()
        torch.save(model.state_dict(), run / name / "best.pt")
        st_list.append(st)
    (run / "run.json").write_text(json.dumps({
        "kidedge_run": 1, "recipe": "tiny-test", "dimensionality": "2d",
        "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
        "stages": st_list, "split": {"train": ["p1", "p2"]}, "data": "phantoms", "metrics": {"val_dice": 0.5},
    }))
    return run


EXPORT_KW = dict(volume_shape=VOLUME_SHAPE, spacing=SPACING, held_out_cases=1, calib_cases=2,
                 slices_per_case=6, parity_slices=4, model_factory=tiny_factory, quiet=True)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("export-run"))


@pytest.fixture(scope="session")
def full_package(tmp_path_factory, run_dir) -> Path:
    """A package with every ONNX precision (fp32, fp16, int8-cpu, int8-trt)."""
    from kidedge.export.package_writer import export_run

    out = tmp_path_factory.mktemp("export-pkg") / "pkg"
    assert export_run(run_dir, out, fp16=True, int8=True, calib_method="minmax", **EXPORT_KW) == 0
    return out
