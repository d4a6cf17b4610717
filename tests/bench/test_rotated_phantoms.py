"""benchmarks/rotated_phantoms.py: a phantom part copied with each scan turned in-plane."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("rotated_phantoms", ROOT / "benchmarks" / "rotated_phantoms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kits_affine():
    """KiTS19's layout: array axes (slices, rows, cols) = (I, P, L)."""
    return np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1.0]])


def test_in_plane_axes_from_the_affine():
    script = _script()
    assert script.in_plane_axes(_kits_affine()) == (1, 2)
    assert script.in_plane_axes(np.diag([0.8, 0.8, 3.0, 1.0])) == (0, 1)  # RAS: slices last
    with pytest.raises(ValueError, match="head-foot"):
        script.in_plane_axes(np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1.0]]))


def test_a_case_turned_by_90_degrees_keeps_its_slices_and_labels(tmp_path):
    ct = np.full((4, 32, 32), -1000, np.int16)
    lab = np.zeros((4, 32, 32), np.uint8)
    ct[1:3, 4:10, 20:28] = 200   # a bright block off-centre
    lab[1:3, 4:10, 20:28] = 1
    lab[2, 5:7, 22:24] = 2
    src = tmp_path / "data" / "case_00000"
    src.mkdir(parents=True)
    nib.save(nib.Nifti1Image(ct, _kits_affine()), str(src / "imaging.nii.gz"))
    nib.save(nib.Nifti1Image(lab, _kits_affine()), str(src / "segmentation.nii.gz"))
    (src / "source.json").write_text(json.dumps({"appearance": {"phase": "noncontrast"}}))
    (tmp_path / "data" / "split.json").write_text(json.dumps({"val": ["case_00000"]}))

    out = tmp_path / "rot"
    assert _script().main(["--data", str(tmp_path / "data"), "--part", "val", "--deg", "90",
                           "--out", str(out), "--workers", "1"]) == 0
    ct_r = np.asanyarray(nib.load(str(out / "case_00000" / "imaging.nii.gz")).dataobj)
    lab_r = np.asanyarray(nib.load(str(out / "case_00000" / "segmentation.nii.gz")).dataobj)
    assert ct_r.shape == ct.shape and ct_r.dtype == ct.dtype and lab_r.dtype == lab.dtype
    # a quarter turn in (rows, cols) is exact: every slice is np.rot90 of the original
    np.testing.assert_array_equal(lab_r, np.rot90(lab, 1, axes=(1, 2)))
    np.testing.assert_array_equal(ct_r, np.rot90(ct, 1, axes=(1, 2)))
    assert json.loads((out / "case_00000" / "source.json").read_text()) == {
        "appearance": {"phase": "noncontrast"}, "rotated_in_plane_deg": 90.0}
    assert json.loads((out / "split.json").read_text())["val"] == ["case_00000"]


def test_odd_cases_turn_the_other_way(tmp_path):
    data = tmp_path / "data"
    lab = np.zeros((2, 16, 16), np.uint8)
    lab[:, 2:5, 10:14] = 1
    for name in ("case_00000", "case_00001"):
        (data / name).mkdir(parents=True)
        nib.save(nib.Nifti1Image(lab * 100, _kits_affine()), str(data / name / "imaging.nii.gz"))
        nib.save(nib.Nifti1Image(lab, _kits_affine()), str(data / name / "segmentation.nii.gz"))
    (data / "split.json").write_text(json.dumps({"val": ["case_00000", "case_00001"]}))
    _script().main(["--data", str(data), "--deg", "90", "--out", str(tmp_path / "r"), "--workers", "1"])
    turned = [np.asanyarray(nib.load(str(tmp_path / "r" / n / "segmentation.nii.gz")).dataobj)
              for n in ("case_00000", "case_00001")]
    np.testing.assert_array_equal(turned[0], np.rot90(lab, 1, axes=(1, 2)))
    np.testing.assert_array_equal(turned[1], np.rot90(lab, -1, axes=(1, 2)))
