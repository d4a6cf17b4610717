"""`kidedge evaluate` / kidedge.metrics.evaluate_dirs on small KiTS-layout folders."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("kidedge.io")  # evaluate reads through kidedge.io

from kidedge import cli  # noqa: E402
from kidedge.metrics import evaluate_dirs, find_predictions, kits_scores  # noqa: E402

SPACING = (3.0, 0.8, 0.8)
# KiTS19's affine: array axes (slice, row, col) -> axis codes ('I', 'P', 'L')
AFFINE = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def labels_for(seed, shape=(12, 40, 40)):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.uint8)
    r0 = int(rng.integers(5, 10))
    lab[2:10, r0 : r0 + 16, 4:16] = 1
    lab[2:10, r0 : r0 + 16, 24:36] = 1
    lab[4:7, r0 + 2 : r0 + 8, 26:31] = 2
    return lab


def write(path, labels, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, affine), str(path))


@pytest.fixture
def dataset(tmp_path):
    gt = tmp_path / "gt"
    truths = {}
    for i in range(3):
        lab = labels_for(i)
        truths[f"case_{i:05d}"] = lab
        write(gt / f"case_{i:05d}" / "segmentation.nii.gz", lab)
    return gt, truths


def test_prediction_equal_to_truth_scores_one_everywhere(dataset, tmp_path):
    gt, truths = dataset
    pred = tmp_path / "pred"
    for cid, lab in truths.items():
        write(pred / f"{cid}.nii.gz", lab)
    out = tmp_path / "res" / "eval.json"
    result = CliRunner().invoke(cli.main, ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [c["case_id"] for c in report["cases"]] == list(truths)
    for case in report["cases"]:
        assert all(v == 1.0 for v in case["metrics"].values()), case
    for stats in report["aggregate"].values():
        assert stats["mean"] == 1.0 and stats["median"] == 1.0 and stats["std"] == 0.0
    assert report["dice_multi_pooled"]["value"] == 1.0
    rows = list(csv.reader(out.with_suffix(".csv").open()))
    assert rows[0][0] == "case_id" and [r[0] for r in rows[1:]] == [*truths, "mean", "median", "std"]
    assert all(float(x) == 1.0 for r in rows[1:4] for x in r[1:])
    # the terminal table shows every case and the aggregates
    for name in (*truths, "mean", "median", "std", "dice_multi"):
        assert name in result.output


def test_perturbed_predictions_match_kits_scores_and_layouts(dataset, tmp_path):
    gt, truths = dataset
    pred = tmp_path / "pred"
    expected = {}
    layouts = ["{cid}.nii.gz", "{cid}/segmentation.nii.gz", "{cid}/prediction.nii.gz"]
    for (cid, lab), layout in zip(truths.items(), layouts, strict=True):
        p = lab.copy()
        p[p == 2] = 1 if cid.endswith("0") else 2  # case 0 misses its tumour
        p = np.roll(p, 2, axis=2)
        write(pred / layout.format(cid=cid), p)
        expected[cid] = kits_scores(p, lab, SPACING, 1.5)
    assert set(find_predictions(pred)) == set(truths)
    report = evaluate_dirs(pred, gt, out=tmp_path / "r.csv", tolerance_mm=1.5, show_progress=False, echo=False)
    for case in report["cases"]:
        for k, v in expected[case["case_id"]].items():
            assert case["metrics"][k] == pytest.approx(v, abs=1e-12), k
    means = {k: np.mean([expected[c][k] for c in truths]) for k in expected["case_00000"]}
    for k, v in means.items():
        assert report["aggregate"][k]["mean"] == pytest.approx(v)
    assert report["cases"][0]["metrics"]["tumour_dice"] == 0.0
    assert (tmp_path / "r.json").is_file() and (tmp_path / "r.csv").is_file()


def test_prediction_in_another_orientation_of_the_same_grid_is_accepted(dataset, tmp_path):
    gt, truths = dataset
    pred = tmp_path / "pred"
    to_lpi = nib.orientations.ornt_transform(nib.orientations.io_orientation(AFFINE),
                                             nib.orientations.axcodes2ornt(("L", "P", "I")))
    for cid, lab in truths.items():
        # the same voxels stored as (col, row, slice), with the affine that says so
        img = nib.Nifti1Image(lab, AFFINE).as_reoriented(to_lpi)
        assert img.shape == lab.shape[::-1]
        write(pred / f"{cid}.nii.gz", np.asarray(img.dataobj), img.affine)
    report = evaluate_dirs(pred, gt, show_progress=False, echo=False)
    assert all(v == 1.0 for c in report["cases"] for v in c["metrics"].values())


def run(args):
    return CliRunner().invoke(cli.main, ["evaluate", *args])


def one_error_line(output):
    """The error is one line (the progress bar may have drawn before it), no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("kidedge: error:")]
    return len(errors) == 1 and "Traceback" not in output


def test_missing_prediction_is_a_one_line_error_naming_the_case(dataset, tmp_path):
    gt, truths = dataset
    pred = tmp_path / "pred"
    for cid in list(truths)[:2]:
        write(pred / f"{cid}.nii.gz", truths[cid])
    out = tmp_path / "eval.json"
    result = run(["--pred", str(pred), "--gt", str(gt), "--out", str(out)])
    assert result.exit_code == 2
    assert "case_00002" in result.output and one_error_line(result.output)
    assert not out.exists()


def test_shape_or_affine_mismatch_is_a_one_line_error_without_output(dataset, tmp_path):
    gt, truths = dataset
    pred = tmp_path / "pred"
    cids = list(truths)
    write(pred / f"{cids[0]}.nii.gz", truths[cids[0]])
    write(pred / f"{cids[1]}.nii.gz", truths[cids[1]][:, :, :-1])  # wrong shape
    write(pred / f"{cids[2]}.nii.gz", truths[cids[2]])
    out = tmp_path / "eval.json"
    result = run(["--pred", str(pred), "--gt", str(gt), "--out", str(out)])
    assert result.exit_code == 2 and "shape" in result.output and cids[1] in result.output
    assert one_error_line(result.output)
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval")]

    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0  # same shape, 5 mm off
    write(pred / f"{cids[1]}.nii.gz", truths[cids[1]], shifted)
    result = run(["--pred", str(pred), "--gt", str(gt), "--out", str(out)])
    assert result.exit_code == 2 and "affine" in result.output and one_error_line(result.output)
    assert not out.exists()


def test_unmatched_prediction_and_empty_folder_are_user_errors(dataset, tmp_path):
    gt, truths = dataset
    pred = tmp_path / "pred"
    for cid, lab in truths.items():
        write(pred / f"{cid}.nii.gz", lab)
    write(pred / "case_00099.nii.gz", truths["case_00000"])
    result = run(["--pred", str(pred), "--gt", str(gt)])
    assert result.exit_code == 2 and "case_00099" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(["--pred", str(empty), "--gt", str(gt)])
    assert result.exit_code == 2 and "no predictions" in result.output


def test_existing_output_is_replaced_only_by_a_complete_one(dataset, tmp_path):
    gt, truths = dataset
    pred = tmp_path / "pred"
    for cid, lab in truths.items():
        write(pred / f"{cid}.nii.gz", lab)
    out = tmp_path / "eval.json"
    out.write_text("old")
    write(pred / "case_00001.nii.gz", truths["case_00001"][:-1])
    assert run(["--pred", str(pred), "--gt", str(gt), "--out", str(out)]).exit_code == 2
    assert out.read_text() == "old"  # a failed run leaves the previous result alone
    write(pred / "case_00001.nii.gz", truths["case_00001"])
    assert run(["--pred", str(pred), "--gt", str(gt), "--out", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["kidedge_evaluation"] == 1
