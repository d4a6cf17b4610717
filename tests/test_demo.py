"""`kidedge demo` and the built-in model package: the package ships inside kidedge, verifies,
and the demo segments a phantom end to end through the CLI (what `make demo` runs)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from kidedge.cli import main
from kidedge.package import ModelPackage, default_package_path


def test_builtin_package_ships_verifies_and_is_small():
    pkg = ModelPackage.load(default_package_path())
    pkg.verify_hashes()
    assert pkg.is_cascade and [s.role for s in pkg.stages] == ["localise", "segment"]
    localise, segment = pkg.stages
    # export's int8 defaults: the localiser stays float, the segmenter's int8 has 8-bit weights
    assert {"fp32", "fp16"} <= set(localise.precisions) and "int8-cpu" not in localise.precisions
    assert {"fp32", "fp16", "int8-cpu", "int8-trt"} <= set(segment.precisions)
    assert segment.files["int8-cpu"].extra["weight_bits"] == 8
    total = sum(p.stat().st_size for p in default_package_path().rglob("*") if p.is_file())
    assert total < 32e6, f"built-in package is {total / 1e6:.1f} MB"
    # Held-out metrics are recorded with the package (README quotes them).
    ev = pkg.manifest.provenance["evaluation"]
    assert ev["part"] == "test" and len(ev["cases"]) >= 10
    assert 0.0 <= ev["by_precision"]["int8"]["mean"]["kidney_dice"] <= 1.0


def test_demo_segments_a_phantom_and_writes_everything(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("phantom_ct.nii.gz", "phantom_truth.nii.gz", "phantom_ct_seg.nii.gz",
                 "phantom_ct_seg.volumes.json", "profile.json", "overlay.png"):
        assert (out / name).is_file(), name
    seg = nib.load(out / "phantom_ct_seg.nii.gz")
    ct = nib.load(out / "phantom_ct.nii.gz")
    assert seg.shape == ct.shape and np.allclose(seg.affine, ct.affine)
    assert "Dice against the phantom's truth" in r.output and "kidney" in r.output
    volumes = json.loads((out / "phantom_ct_seg.volumes.json").read_text())["volumes"]
    assert volumes  # per class and side, in mL
    profile = json.loads((out / "profile.json").read_text())
    assert profile["scans"][0]["gating"]["enabled"] is True
    # The kidneys are found: the built-in model is trained, not a placeholder.
    labels = np.asarray(seg.dataobj)
    truth = np.asarray(nib.load(out / "phantom_truth.nii.gz").dataobj)
    inter = np.logical_and(labels > 0, truth > 0).sum()
    assert 2 * inter / ((labels > 0).sum() + (truth > 0).sum()) > 0.6
