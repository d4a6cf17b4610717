"""kidedge.bench.package_eval: the shipped package scored on labelled cases through the
runtime (no torch), per precision, and recorded in the manifest without touching hashes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kidedge.bench.package_eval import evaluate_package, record_in_manifest
from kidedge.cli import main
from kidedge.errors import KidedgeError
from kidedge.package import ModelPackage
from tests.runtime.synthetic import kits_affine, make_cascade_package, make_ct, write_nifti


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        hu, truth = make_ct(seed=i)
        case = root / f"case_{i:05d}"
        case.mkdir(parents=True)
        write_nifti(case / "imaging.nii.gz", hu, kits_affine())
        write_nifti(case / "segmentation.nii.gz", truth, kits_affine())
    return root


def test_scores_the_split_part_and_records_it(tmp_path, dataset):
    pkg = make_cascade_package(tmp_path / "pkg")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["case_00000"], "val": [], "test": ["case_00001", "case_00002"]}))
    ev = evaluate_package(pkg, dataset, str(split), "test", ("fp32",), progress=False)
    assert ev["cases"] == ["case_00001", "case_00002"]
    res = ev["by_precision"]["fp32"]
    assert set(res["per_case"]) == {"case_00001", "case_00002"}
    # The synthetic package thresholds intensity: the kidneys are found almost exactly.
    assert res["mean"]["kidney_dice"] > 0.9
    assert res["summary"]["kidney_dice"]["min"] <= res["mean"]["kidney_dice"]

    record_in_manifest(pkg, ev)
    loaded = ModelPackage.load(pkg)
    recorded = loaded.manifest.provenance["evaluation"]
    assert recorded["by_precision"]["fp32"]["mean"]["kidney_dice"] == res["mean"]["kidney_dice"]
    assert "per_case" not in recorded["by_precision"]["fp32"]
    loaded.verify_hashes()  # model files and their hashes are untouched


def test_bad_split_is_one_line_error(tmp_path, dataset):
    pkg = make_cascade_package(tmp_path / "pkg")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": ["case_09999"]}))
    with pytest.raises(KidedgeError, match="case_09999"):
        evaluate_package(pkg, dataset, str(split), "test", ("fp32",), progress=False)
    r = CliRunner().invoke(main, ["evaluate", "--package", str(pkg), "--data", str(dataset), "--split", str(split),
                                  "--precision", "fp32"])
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert err.startswith("kidedge: error:") and "case_09999" in err and "\n" not in err


def test_evaluate_package_command_prints_and_writes(tmp_path, dataset):
    pkg = make_cascade_package(tmp_path / "pkg")
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["evaluate", "--package", str(pkg), "--data", str(dataset), "--precision", "fp32",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 cases" in r.stdout and "kidney_dice" in r.stdout
    ev = json.loads(out.read_text())
    assert set(ev["by_precision"]["fp32"]["per_case"]) == {"case_00000", "case_00001", "case_00002"}
    r = CliRunner().invoke(main, ["evaluate", "--package", str(pkg)])
    assert r.exit_code == 2 and "--data" in r.stderr
