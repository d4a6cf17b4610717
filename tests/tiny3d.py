"""A tiny, deterministic 3D cascade for the 3D runtime and export tests.

The network is a two-level 3D U-Net (Conv3d, BatchNorm3d, MaxPool3d, ConvTranspose3d,
concatenation: the operators of the 3D recipes) plus a fixed 1x1x1 intensity path that
maps HU to class logits (the thresholds of ``tests/runtime/synthetic.py``: kidney above
100 HU, tumour above 250 HU). The U-Net part is untrained, seeded, scaled to perturb the
intensity path: its output depends on what the window sees at its borders, so blending
and window placement change the labels, while the labels still follow the anatomy
(stage 1 finds two kidneys, stage 2 segments kidney and tumour). Untrained and tiny on
purpose: the tests are about the sliding-window mechanics, export and geometry.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from kidedge.preprocess import PreprocessSpec

from .runtime.synthetic import kits_affine, make_ct

CLASSES = {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"}
SPACING = (2.0, 1.0, 1.0)
SHAPE = (32, 64, 64)
LOCALISE = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range", in_plane="spacing", spacing_mm=4.0,
                          pad_multiple=2)
SEGMENT = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range", in_plane="native", pad_multiple=2)
# x = (HU + 100) / 500: localiser l1 = 10x - 4 (kidney above 100 HU); segmenter as the 2D
# synthetic package: kidney 100-250 HU, tumour above 250 HU, never cyst.
INTENSITY = {2: ([0.0, 10.0], [0.0, -4.0]), 4: ([0.0, 10.0, 20.0, 0.0], [0.0, -4.0, -11.0, -100.0])}


class Tiny3DNet(nn.Module):
    """Two-level 3D U-Net + fixed intensity path (see the module docstring)."""

    def __init__(self, classes: int = 4, width: int = 4, seed: int = 0, mix: float = 0.5):
        super().__init__()
        torch.manual_seed(seed)
        w = width
        self.enc = nn.Sequential(nn.Conv3d(1, w, 3, padding=1), nn.BatchNorm3d(w), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool3d(2), nn.Conv3d(w, 2 * w, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * w, w, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv3d(2 * w, w, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(w, classes, 1)
        self.intensity = nn.Conv3d(1, classes, 1)
        weights, bias = INTENSITY[classes]
        with torch.no_grad():
            self.head.weight.mul_(mix)
            self.head.bias.zero_()
            self.intensity.weight.copy_(torch.tensor(weights).reshape(classes, 1, 1, 1, 1))
            self.intensity.bias.copy_(torch.tensor(bias))

    def forward(self, x):
        a = self.enc(x)
        b = self.up(self.down(a))
        return self.intensity(x) + self.head(self.dec(torch.cat([a, b], 1)))


def tiny3d_factory(arch: str, **kwargs) -> nn.Module:
    assert arch == "tiny3d", arch
    return Tiny3DNet(**kwargs)


def write_case(folder: Path, hu: np.ndarray, labels: np.ndarray, spacing=SPACING) -> Path:
    """imaging.nii.gz + segmentation.nii.gz in KiTS19's (I, P, L) layout."""
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), kits_affine(spacing)), folder / "imaging.nii.gz")
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), kits_affine(spacing)), folder / "segmentation.nii.gz")
    return folder / "imaging.nii.gz"


def make_dataset(root: Path, cases: int = 3) -> Path:
    """``cases`` tiny CTs (two kidneys, a tumour) in the KiTS layout."""
    for i in range(cases):
        hu, truth = make_ct(SHAPE, kidney_slices=(10 + i, 20 + i), seed=i)
        write_case(root / f"case_{i:05d}", hu, truth)
    return root


def make_run_3d(root: Path, data: Path, per_component: bool = True) -> Path:
    """run.json + checkpoints of the tiny 3D cascade: a 4 mm localiser on 8x8x8 patches,
    then a native segmenter on 8x16x16 patches (stride 4x8x8) inside each kidney's box."""
    run = root / "run"
    stages = [
        {"name": "localise", "role": "localise", "arch": "tiny3d", "model_kwargs": {"classes": 2, "seed": 1},
         "preprocess": LOCALISE.to_dict(),
         "output": {"activation": "softmax", "labels": [0, 1], "regions": [[0], [1, 2, 3]]},
         "sampling": {"patch": [8, 8, 8]}, "checkpoint": "localise/best.pt"},
        {"name": "segment", "role": "segment", "arch": "tiny3d", "model_kwargs": {"classes": 4, "seed": 2},
         "preprocess": SEGMENT.to_dict(),
         "output": {"activation": "softmax", "labels": [0, 1, 2, 3]},
         "sampling": {"patch": [8, 16, 16], "stride": [4, 8, 8]},
         "roi": {"source_stage": "localise", "labels": [1, 2, 3], "margin_mm": 6.0, "per_component": per_component},
         "checkpoint": "segment/best.pt"},
    ]
    for st in stages:
        (run / st["name"]).mkdir(parents=True)
        torch.save(Tiny3DNet(**st["model_kwargs"]).eval().state_dict(), run / st["checkpoint"])
    cases = sorted(p.name for p in data.iterdir())
    (run / "run.json").write_text(json.dumps({
        "kidedge_run": 1, "recipe": "tiny3d-cascade", "dimensionality": "3d", "classes": CLASSES,
        "stages": stages, "split": {"train": cases[:-1], "val": [], "test": cases[-1:]},
        "data": str(data), "metrics": {},
    }))
    return run


def export_tiny3d(root: Path, precisions=("fp32",), per_component: bool = True) -> tuple[Path, Path]:
    """Dataset, run and exported package of the tiny 3D cascade under ``root``."""
    from kidedge.export.package_writer import export_run

    data = make_dataset(root / "data")
    run = make_run_3d(root, data, per_component)
    out = root / "pkg"
    # The tiny networks are untrained (random weights): their int8 labels need not stay within
    # the export gate's 0.005 Dice of fp32, and these tests are about the export's mechanics,
    # so int8 ships regardless (the gate's decision is still recorded; tests/export/test_int8_gate.py
    # tests the refusal). Both stages are quantised, so that the 3D int8 path runs on each.
    export_run(run, out, fp16="fp16" in precisions, int8="int8" in precisions, calib_method="minmax",
               held_out_cases=1, calib_cases=2, slices_per_case=6, model_factory=tiny3d_factory, quiet=True,
               allow_int8_fidelity_loss="int8" in precisions, int8_localiser="int8" in precisions)
    return data, out
