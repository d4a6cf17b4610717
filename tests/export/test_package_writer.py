"""export_run: the whole package (fp32, fp16, int8 variants), atomic writing, bad runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from kidedge.errors import KidedgeError
from kidedge.export import onnx_export
from kidedge.export.package_writer import export_run
from kidedge.package import ModelPackage

from .conftest import EXPORT_KW, make_run


def test_full_package_manifest(full_package):
    pkg = ModelPackage.load(full_package)
    m = pkg.manifest.to_dict()  # the JSON as written
    assert m["format"] == "kidedge.package" and m["dimensionality"] == "2d" and m["input_layout"] == "NCHW"
    assert m["classes"]["2"] == "tumour" and m["architecture"] == "tiny_unet"
    (stage,) = pkg.stages
    assert pkg.available_precisions("seg") == ["fp32", "fp16", "int8-cpu", "int8-trt", "torch"]
    assert stage.input.to_dict() == {"name": "image", "channels": 1, "height": 96, "width": 96, "dtype": "float32",
                                     "layout": "NCHW", "buckets": [[96, 96]]}
    assert stage.output.name == "logits" and stage.output.labels == (0, 1, 2, 3)
    assert pkg.preprocess_spec("seg").size == (96, 96)
    assert all(v == "ok" for v in pkg.verify_hashes().values())
    assert stage.parity["fp32"]["max_abs_diff"] < 1e-3
    # Provenance and the export report.
    prov = m["provenance"]
    assert prov["recipe"] == "tiny-test" and prov["training_metrics"] == {"val_dice": 0.5}
    assert {"torch", "onnx", "onnxruntime"} <= set(prov["library_versions"])
    rep = m["export_report"]
    sizes = rep["sizes"]["seg"]
    assert sizes["fp32"] == (full_package / "seg/fp32.onnx").stat().st_size
    q = rep["quantisation"]["seg"]
    assert q["int8-cpu"]["float_nodes"] and q["int8-trt"]["float_nodes"] == q["int8-cpu"]["float_nodes"]
    # full-range int8-cpu weights by default, recorded where the runtime looks
    assert m["stages"][0]["files"]["int8-cpu"]["weight_bits"] == 8 and not q["int8-cpu"]["reduce_range"]
    assert q["calibration"]["method"] == "minmax" and q["calibration"]["inputs"] == 12
    assert set(rep["fidelity"]["seg"]) == {"fp16", "int8-cpu", "int8-trt"}
    for precision in ("fp16", "int8-cpu", "int8-trt"):
        f = rep["fidelity"]["seg"][precision]
        assert 0.0 <= f["kidney_dice"] <= 1.0 and f["cases"]
        assert f["cases"][0]["case"] == rep["held_out_cases"][0]
    # fp16 rounding changes almost no pixel.
    assert rep["fidelity"]["seg"]["fp16"]["pixel_agreement"] > 0.999
    # The tiny model trained a few steps: int8 stays close to fp32.
    assert rep["fidelity"]["seg"]["int8-cpu"]["kidney_dice"] > 0.9


def test_int8_package_runs_in_onnxruntime(full_package):
    pkg = ModelPackage.load(full_package)
    with np.load(pkg.file_path("seg", "reference")) as ref:
        x, logits = ref["input"], ref["logits"]
    for precision in ("int8-cpu", "int8-trt", "fp16"):
        sess = ort.InferenceSession(str(pkg.file_path("seg", precision)), providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], {"image": x})[0]
        assert got.shape == logits.shape and got.dtype == np.float32
        assert (got.argmax(1) == logits.argmax(1)).mean() > 0.95


def test_refuses_to_overwrite(full_package, run_dir):
    before = (full_package / "manifest.json").read_bytes()
    with pytest.raises(KidedgeError, match="already exists"):
        export_run(run_dir, full_package, **EXPORT_KW)
    assert (full_package / "manifest.json").read_bytes() == before


def test_failed_export_leaves_nothing(tmp_path, run_dir, monkeypatch):
    monkeypatch.setattr("kidedge.export.package_writer.FP32_TOLERANCE", 0.0)
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", 0.0)
    with pytest.raises(KidedgeError, match="differs from PyTorch"):
        export_run(run_dir, tmp_path / "pkg", **EXPORT_KW)
    assert list(tmp_path.iterdir()) == []


def test_zip_output_loads(tmp_path, run_dir, monkeypatch):
    monkeypatch.setenv("KIDEDGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "pkg.zip"
    export_run(run_dir, out, **EXPORT_KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.zip"]  # no partial leftovers
    pkg = ModelPackage.load(out)
    assert pkg.available_precisions("seg") == ["fp32", "torch"]
    assert pkg.file_path("seg", "fp32").is_file()


def test_cascade_exports_both_stages_with_roi(tmp_path):
    run = make_run(tmp_path, stages=("localise", "segment"), train=False)
    export_run(run, tmp_path / "pkg", **EXPORT_KW)
    pkg = ModelPackage.load(tmp_path / "pkg")
    assert [s.role for s in pkg.stages] == ["localise", "segment"]
    assert pkg.stage("segment").roi.source_stage == "localise"
    assert pkg.file_path("localise", "fp32") != pkg.file_path("segment", "fp32")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("stages"), "missing 'stages'"),
    (lambda r: r.update(kidedge_run=7), "not a kidedge run"),
    (lambda r: r["stages"][0].pop("checkpoint"), "missing checkpoint"),
    (lambda r: r["stages"][0]["preprocess"].update(hu_window=[5, 1]), "bad preprocess spec"),
])
def test_bad_run_json(tmp_path, run_dir, mutate, message):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    r = json.loads((bad / "run.json").read_text())
    mutate(r)
    (bad / "run.json").write_text(json.dumps(r))
    with pytest.raises(KidedgeError, match=message):
        export_run(bad, tmp_path / "pkg", **EXPORT_KW)
    assert not (tmp_path / "pkg").exists()


def test_missing_run_and_tensorrt_without_tensorrt(tmp_path, run_dir, monkeypatch):
    with pytest.raises(KidedgeError, match="does not exist"):
        export_run(tmp_path / "nope", tmp_path / "pkg", **EXPORT_KW)
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(KidedgeError, match="TensorRT"):
        export_run(run_dir, tmp_path / "pkg", tensorrt=True, **EXPORT_KW)
    assert list(tmp_path.iterdir()) == []


def _write_kits_case(folder, volume):
    """imaging.nii.gz + segmentation.nii.gz with the KiTS19 axis convention (I, P, L)."""
    import nibabel as nib

    s, r, c = volume.spacing
    affine = np.array([[0, 0, -c, 0], [0, -r, 0, 0], [-s, 0, 0, 0], [0, 0, 0, 1]], float)
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.asarray(volume.array, np.int16), affine), folder / "imaging.nii.gz")
    nib.save(nib.Nifti1Image(volume.labels.astype(np.uint8), affine), folder / "segmentation.nii.gz")


def test_calibration_from_a_ct_dataset(tmp_path, run_dir):
    from kidedge.export.held_out import simple_synthetic_volume

    data = tmp_path / "calib"
    for i in range(2):
        _write_kits_case(data / f"case_{i:05d}", simple_synthetic_volume(50 + i, (12, 96, 96), (3.0, 3.0, 3.0)))
    out = tmp_path / "pkg"
    export_run(run_dir, out, int8=True, calib=data, calib_method="entropy", **EXPORT_KW)
    cal = ModelPackage.load(out).manifest.export_report["quantisation"]["seg"]["calibration"]
    assert cal["source"] == str(data) and cal["method"] == "entropy" and cal["cases"] == 2
    assert [p.split("/")[-2] for p in cal["sources"]] == ["case_00000", "case_00001"]
    assert cal["slices_by_category"]["tumour_or_cyst"] > 0


def test_calib_without_int8_is_refused(tmp_path, run_dir):
    with pytest.raises(KidedgeError, match="add --int8"):
        export_run(run_dir, tmp_path / "pkg", calib=tmp_path, **EXPORT_KW)
