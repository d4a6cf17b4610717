"""The lead's export path: a 2-stage cascade run like kidedge_default (low-res localiser,
native-resolution segmenter inside the kidney box) exported with --fp16 --int8, calibrated
and scored on the run's own dataset split; the CLI's export options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kidedge.cli import main
from kidedge.errors import KidedgeError
from kidedge.export.held_out import simple_synthetic_volume
from kidedge.export.package_writer import export_run
from kidedge.export.verify import verify_package
from kidedge.package import ModelPackage
from kidedge.preprocess import PreprocessSpec
from kidedge.runtime.backends.registry import select_backend

from .conftest import TinyUNet, tiny_factory
from .test_package_writer import _write_kits_case

LOCALISE = PreprocessSpec(hu_window=(-200.0, 400.0), normalisation="range", in_plane="size", size=(64, 64))
SEGMENT = PreprocessSpec(hu_window=(-200.0, 400.0), normalisation="range", in_plane="native", pad_multiple=8)


def _cascade_run(root, data_dir):
    """run.json + checkpoints of an (untrained) 2-stage cascade whose data folder exists."""
    torch.manual_seed(0)
    run = root / "run"
    stages = [
        {"name": "localise", "role": "localise", "arch": "tiny_unet", "model_kwargs": {"classes": 2},
         "preprocess": LOCALISE.to_dict(), "output": {"activation": "softmax", "labels": [0, 1],
                                                      "regions": [[0], [1, 2, 3]]},
         "checkpoint": "localise/best.pt"},
        {"name": "segment", "role": "segment", "arch": "tiny_unet", "model_kwargs": {"classes": 4},
         "preprocess": SEGMENT.to_dict(), "output": {"activation": "softmax", "labels": [0, 1, 2, 3],
                                                     "through_plane_sigma_mm": 6.0},
         "roi": {"source_stage": "localise", "labels": [1, 2, 3], "margin_mm": 6.0},
         "checkpoint": "segment/best.pt"},
    ]
    for st in stages:
        (run / st["name"]).mkdir(parents=True)
        torch.save(TinyUNet(classes=st["model_kwargs"]["classes"]).state_dict(), run / st["checkpoint"])
    split = {"train": ["case_00000", "case_00001"], "val": [], "test": ["case_00002"]}
    (run / "run.json").write_text(json.dumps({
        "kidedge_run": 1, "recipe": "tiny-cascade", "dimensionality": "2d",
        "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
        "stages": stages, "split": split, "data": str(data_dir), "metrics": {},
    }))
    return run


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    data = root / "data"
    # Different scan sizes and spacings: the segment stage's kidney boxes differ in size.
    shapes = [((10, 96, 96), (3.0, 3.0, 3.0)), ((10, 128, 128), (3.0, 2.2, 2.2)), ((10, 96, 96), (3.0, 3.0, 3.0))]
    for i, (shape, spacing) in enumerate(shapes):
        _write_kits_case(data / f"case_{i:05d}", simple_synthetic_volume(70 + i, shape, spacing))
    run = _cascade_run(root, data)
    out = root / "pkg"
    export_run(run, out, fp16=True, int8=True, calib_method="percentile", held_out_cases=1, calib_cases=2,
               slices_per_case=4, parity_slices=3, model_factory=tiny_factory, quiet=True)
    return run, data, out


def test_cascade_int8_percentile_calibrates_on_the_run_split(cascade):
    run, data, out = cascade
    pkg = ModelPackage.load(out)
    rep = pkg.manifest.export_report
    assert rep["held_out_source"] == f"run split 'test' of {data}"
    assert rep["held_out_cases"][0].endswith("case_00002/imaging.nii.gz")
    # the localiser stays float by default (--int8-localiser quantises it: see below)
    assert pkg.available_precisions("localise") == ["fp32", "fp16", "torch"]
    assert rep["quantisation"]["localise"]["int8"].startswith("kept float")
    assert set(rep["fidelity"]["localise"]) == {"fp16"}
    assert pkg.available_precisions("segment") == ["fp32", "fp16", "int8-cpu", "int8-trt", "torch"]
    cal = rep["quantisation"]["segment"]["calibration"]
    assert cal["source"] == f"run split 'train' of {data}" and cal["method"] == "percentile"
    assert [s.split("/")[-2] for s in cal["sources"]] == ["case_00000", "case_00001"]
    assert set(rep["fidelity"]["segment"]) == {"fp16", "int8-cpu", "int8-trt"}
    q = rep["quantisation"]["segment"]["int8-cpu"]
    assert q["float_nodes"] == ["/enc/enc.0/Conv", "/head/Conv"]  # first and last Conv
    # ONNX Runtime's CPU optimiser runs a float Conv int8 when its input and output are both
    # quantised; the tiny net's image feeds only its first Conv (the built-in U-Net also
    # concatenates it in its last block), so nothing quantises it and both stay float
    assert q["ort_cpu_runs_int8_anyway"] == []
    for variant in ("int8-cpu", "int8-trt"):  # biases corrected for int8's mean shift, in both files
        bc = rep["quantisation"]["segment"][variant]["bias_correction"]
        assert bc["layers"] >= 2 and bc["max_mean_error_after"] < bc["max_mean_error_before"]
    # Kidney boxes of different sizes were brought to one size for the histogram calibrator.
    assert len(cal["cropped_to"]) == 2 and all(v % 8 == 0 for v in cal["cropped_to"])
    assert pkg.stage("segment").input.height is None  # native: any size
    assert verify_package(out, quiet=True) == 0


def test_phantoms_when_asked_and_float_layers_none(cascade, tmp_path):
    run, _, _ = cascade
    out = tmp_path / "pkg"
    kw = dict(int8=True, calib_method="minmax", data="phantoms", float_nodes="none",
              volume_shape=(8, 96, 96), spacing=(3.0, 3.0, 3.0), held_out_cases=1, calib_cases=1,
              slices_per_case=3, parity_slices=2, model_factory=tiny_factory, quiet=True)
    with pytest.raises(KidedgeError, match="weight bits must be one of"):
        export_run(run, tmp_path / "bad", int8_cpu_weight_bits=6, **kw)
    assert not (tmp_path / "bad").exists()
    export_run(run, out, int8_cpu_weight_bits=7, int8_localiser=True, bias_correction=False, **kw)
    pkg = ModelPackage.load(out)
    rep = pkg.manifest.export_report
    assert rep["held_out_source"] == "phantoms"
    for stage in ("localise", "segment"):
        q = rep["quantisation"][stage]
        assert q["calibration"]["source"] == "phantoms"
        assert q["int8-cpu"]["float_nodes"] == [] and q["float_nodes_rule"] == "none"
        assert "bias_correction" not in q["int8-cpu"] and "bias_correction" not in q["int8-trt"]
        assert q["int8-cpu"]["reduce_range"] and pkg.stage(stage).files["int8-cpu"].extra["weight_bits"] == 7
    assert "cropped_to" not in rep["quantisation"]["localise"]["calibration"]  # a fixed size
    assert select_backend(pkg, "onnxruntime", "int8").files == {"localise": "int8-cpu", "segment": "int8-cpu"}


def test_cli_export_options(tmp_path, cascade):
    run, _, _ = cascade
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "p"), "--dla-core", "0"])
    assert r.exit_code == 2 and "add --tensorrt" in r.output and not (tmp_path / "p").exists()
    r = CliRunner().invoke(main, ["export", "--help"])
    assert r.exit_code == 0
    for opt in ("--calib-method", "--float-layers", "--dla-core", "--verify", "--tensorrt", "--no-int8-bias-correction"):
        assert opt in r.output


def test_export_again_from_the_package(cascade, tmp_path):
    """The shipped model has no run folder: its package's weights and recorded run stand in
    (here to make the 7-bit CPU variant for AVX2 CPUs without VNNI)."""
    run, data, out = cascade
    again = tmp_path / "again"
    export_run(out, again, int8=True, calib_method="percentile", int8_cpu_weight_bits=7, held_out_cases=1,
               calib_cases=2, slices_per_case=4, parity_slices=3, model_factory=tiny_factory, quiet=True)
    first, pkg = ModelPackage.load(out), ModelPackage.load(again)
    prov = pkg.manifest.provenance
    assert prov["exported_from_package"]["path"] == str(out) and prov["run_dir"] == str(run)
    assert prov["split"] == first.manifest.provenance["split"] and prov["data"] == str(data)
    for stage in ("localise", "segment"):  # the same weights, the same preprocessing and ROI
        assert first.stage(stage).files["torch"].sha256 == pkg.stage(stage).files["torch"].sha256
        assert first.stage(stage).preprocess == pkg.stage(stage).preprocess
    raw = [json.loads((p / "manifest.json").read_text())["stages"][1] for p in (out, again)]
    assert raw[0]["roi"] == raw[1]["roi"] and raw[0]["arch"] == raw[1]["arch"] == "tiny_unet"
    rep = pkg.manifest.export_report
    assert rep["held_out_source"] == f"run split 'test' of {data}"
    assert rep["quantisation"]["segment"]["calibration"]["source"] == f"run split 'train' of {data}"
    assert pkg.stage("segment").files["int8-cpu"].extra["weight_bits"] == 7
    assert verify_package(again, quiet=True) == 0
    # the run's through-plane smoothing travels into the package and on into its re-export
    assert first.stage("segment").output.through_plane_sigma_mm == pkg.stage("segment").output.through_plane_sigma_mm == 6.0
    assert first.stage("localise").output.through_plane_sigma_mm == 0.0


def test_export_from_a_package_checks_its_weights(cascade, tmp_path):
    import shutil

    _, _, out = cascade
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "segment" / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(KidedgeError, match="does not match the manifest"):
        export_run(copy, tmp_path / "p", model_factory=tiny_factory, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["stages"][1]["files"]["torch"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KidedgeError, match="no PyTorch weights"):
        export_run(copy, tmp_path / "p", model_factory=tiny_factory, quiet=True)
    assert not (tmp_path / "p").exists()


def test_export_from_a_zipped_package(cascade, tmp_path):
    import shutil

    _, _, out = cascade
    zipped = Path(shutil.make_archive(str(tmp_path / "pkg"), "zip", out))
    export_run(zipped, tmp_path / "again", parity_slices=2, held_out_cases=1, model_factory=tiny_factory, quiet=True)
    again = ModelPackage.load(tmp_path / "again")
    assert again.manifest.provenance["exported_from_package"]["path"] == str(zipped)
    assert again.stage("segment").files["torch"].sha256 == ModelPackage.load(out).stage("segment").files["torch"].sha256


def test_export_from_a_package_without_its_data_says_so(cascade, tmp_path, capsys):
    import shutil

    _, _, out = cascade
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["provenance"]["data"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    export_run(copy, tmp_path / "p", int8=True, calib_method="minmax", held_out_cases=1, calib_cases=1,
               slices_per_case=3, parity_slices=2, model_factory=tiny_factory, quiet=True)
    said = capsys.readouterr().out
    assert "is not here: int8 is calibrated on procedural phantoms" in said and str(tmp_path / "gone") in said
    rep = ModelPackage.load(tmp_path / "p").manifest.export_report
    assert rep["quantisation"]["segment"]["calibration"]["source"] == "phantoms"
