"""kidedge.bench.real_ct and benchmarks/validate_real_ct.py: the ircadb-01 reader's geometry
(shared data), the scores and the targets (synthetic)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from kidedge.bench.real_ct import (
    IRCADB,
    SAMPLE,
    check_targets,
    read_ircadb,
    score_ircadb,
    score_sample,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ircadb():
    if not (IRCADB / "PATIENT_DICOM").is_dir():
        pytest.skip("../shared/data/ircadb-01 is not available")
    return read_ircadb(IRCADB, ["leftkidney", "rightkidney", "liver", "spleen", "leftlung", "rightlung"])


@pytest.mark.shared_data
def test_ircadb_masks_lie_on_their_organs(ircadb):
    """A flipped or shifted mask would silently ruin every Dice: check the masks against the
    CT's own geometry and against anatomy."""
    scan, masks = ircadb
    assert scan.shape == (129, 512, 512)
    np.testing.assert_allclose(scan.spacing, (1.6, 0.57, 0.57), atol=1e-4)
    for name, m in masks.items():
        assert m.shape == scan.shape and m.dtype == bool, name
    left, right = masks["leftkidney"], masks["rightkidney"]
    assert 100 < left.sum() * 0.57 * 0.57 * 1.6 / 1000 < 200 and 80 < right.sum() * 0.57 * 0.57 * 1.6 / 1000 < 200

    def centroid_world(m):
        return (scan.canonical_affine @ np.r_[np.argwhere(m).mean(axis=0), 1.0])[:3]

    # RAS+: x grows toward the patient's right. Left kidney and spleen on the left, liver right.
    assert centroid_world(left)[0] < centroid_world(right)[0] - 50
    assert centroid_world(masks["spleen"])[0] < centroid_world(masks["liver"])[0] - 100
    # canonical columns grow toward the patient's left; slice 0 is the top (lungs above kidneys)
    assert np.argwhere(left)[:, 2].mean() > 256 > np.argwhere(right)[:, 2].mean()
    lungs = masks["leftlung"] | masks["rightlung"]
    assert np.argwhere(lungs)[:, 0].mean() < np.argwhere(left | right)[:, 0].mean()
    assert centroid_world(lungs)[2] > centroid_world(left | right)[2]  # superior = larger z
    # the masks sit on the CT's contrast-enhanced kidneys: flipped top-bottom they do not
    stored = np.asarray(scan.array)

    def median_hu(m):
        return float(np.median(stored[m])) * scan.slope + scan.intercept

    kidneys = left | right
    truth = median_hu(kidneys)
    assert truth > 150
    for flipped in (kidneys[::-1], kidneys[:, ::-1], kidneys[:, :, ::-1]):
        assert median_hu(flipped) < truth - 50
    assert 60 < median_hu(masks["liver"]) < 160


def test_scores_of_a_known_prediction():
    shape = (10, 20, 20)
    left, right = np.zeros(shape, bool), np.zeros(shape, bool)
    left[2:6, 5:10, 12:18] = True  # 120 voxels
    right[2:6, 5:10, 2:8] = True
    liver, skin = np.zeros(shape, bool), np.ones(shape, bool)
    liver[2:6, 12:16, 2:8] = True
    masks = {"leftkidney": left, "rightkidney": right, "liver": liver, "skin": skin}
    labels = np.zeros(shape, np.uint8)
    labels[left] = 1
    labels[2:6, 12:16, 2:8] = 2  # 96 voxels of false tumour in the liver
    labels[0, 0, 0] = 3  # one false cyst voxel, in no organ
    s = score_ircadb(labels, masks, voxel_ml=0.5)
    assert s["kidney_dice"] == pytest.approx(2 * 120 / (217 + 240), abs=1e-4)  # rounded to 4 places
    assert s["label1_dice"] == pytest.approx(2 * 120 / (120 + 240), abs=1e-4)
    assert s["tumour_ml"] == 48.0 and s["cyst_ml"] == 0.5 and s["masses_ml"] == 48.5
    assert s["outside_kidney_ml"] == 48.5 and s["left_recall"] == 1.0 and s["right_recall"] == 0.0
    where = s["outside_by_structure"]
    assert where["liver"] == {"all_ml": 48.0, "masses_ml": 48.0}
    assert where["none (inside the body)"] == {"all_ml": 0.5, "masses_ml": 0.5}
    assert score_sample(labels, 0.5) == {"kidney_ml": 108.5, "parenchyma_ml": 60.0, "tumour_ml": 48.0,
                                         "cyst_ml": 0.5, "masses_ml": 48.5}
    assert s["left_in_region"] is None and s["right_in_region"] is None  # no region given
    # a stage-2 region holding all of the left kidney and the right one's first half
    roi = {"slice_start": 0, "slice_stop": 10, "row_start": 0, "row_stop": 20, "col_start": 5, "col_stop": 20}
    s = score_ircadb(labels, masks, voxel_ml=0.5, roi=roi)
    assert s["left_in_region"] == 1.0 and s["right_in_region"] == 0.5


def test_targets_met_and_not_met():
    runs = {"int8": {"ircadb-01": {"runtime": {"kidney_dice": 0.91, "masses_ml": 4.0}},
                     "ct-dicom-sample": {"runtime": {"masses_ml": 6.0}}},
            "fp32": {"ircadb-01": {"runtime": {"kidney_dice": 0.92, "masses_ml": 1.0}},
                     "ct-dicom-sample": {"runtime": {"masses_ml": 0.0}}}}
    phantoms = {"by_precision": {"int8": {"kidney_dice": 0.96, "tumour_dice": 0.79},
                                 "fp32": {"kidney_dice": 0.961, "tumour_dice": 0.80}}}
    rows = check_targets(runs, phantoms)
    met = {(r["target"].split(" >=")[0].split(" <")[0], r["precision"]): r["met"] for r in rows}
    assert met[("ircadb-01 kidney Dice", "int8")] and met[("ircadb-01 tumour + cyst", "int8")]
    assert not met[("DICOM sample tumour + cyst", "int8")] and met[("DICOM sample tumour + cyst", "fp32")]
    assert not met[("phantom tumour Dice", "int8")] and met[("phantom tumour Dice", "fp32")]
    diffs = {r["target"]: r for r in rows if r["precision"] == "int8 vs fp32"}
    assert diffs["int8 within 0.005 of fp32: ircadb-01 kidney Dice"]["met"] is False  # 0.01 apart
    assert diffs["int8 within 0.005 of fp32: phantom kidney dice"]["met"] is True
    assert len(check_targets({"fp32": runs["fp32"]}, None)) == 3  # no phantoms, no int8: three rows


@pytest.mark.shared_data
def test_the_script_writes_json_and_markdown(tmp_path):
    """The validation script end to end on the 20-slice sample with a tiny intensity-threshold
    package (ircadb-01's 129 slices take minutes through it; its reader is tested above)."""
    if not SAMPLE.is_dir():
        pytest.skip("../shared/data/ct-dicom-sample is not available")
    from tests.runtime.synthetic import make_cascade_package

    pkg = make_cascade_package(tmp_path / "pkg")
    spec = importlib.util.spec_from_file_location("validate_real_ct", ROOT / "benchmarks" / "validate_real_ct.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "results"
    assert script.main(["--model", str(pkg), "--precision", "fp32", "--out", str(out), "--scans",
                        "ct-dicom-sample", "--overlay", str(tmp_path / "sample.png")]) == 0
    result = json.loads((out / "real_ct.json").read_text())
    run = result["runs"]["fp32"]["ct-dicom-sample"]
    assert set(run["postprocess_variants"]) == {"none", "legacy", "review"}
    # the runtime's output is one of the variants, re-made from the same raw labels
    assert any(v["equals_runtime_output"] for v in run["postprocess_variants"].values())
    assert run["runtime"]["kidney_ml"] > 0 and result["overlay"] == "sample.png"
    md = (out / "real_ct.md").read_text()
    assert "Targets (issue 11)" in md and "DICOM sample tumour + cyst" in md
    assert (tmp_path / "sample.png").stat().st_size > 5000
    machine = f"{ROOT.parent}/"  # the absolute folder holding the project and ../shared
    assert machine not in md and machine not in json.dumps(result)
