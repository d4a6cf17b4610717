"""Export of a 3D cascade (tests/tiny3d.py): patch-shaped ONNX in fp32, fp16 and int8,
parity against PyTorch per stage, ONNX Runtime's int8 support for 3D layers tried and
recorded per layer, fidelity through the runtime's sliding window, the TensorRT bucket."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from kidedge.export.export3d import TRT_BATCHES
from kidedge.export.int8_3d import ort_cpu_float_layers
from kidedge.export.verify import verify_package
from kidedge.package import ModelPackage

from ..tiny3d import export_tiny3d


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    _, out = export_tiny3d(tmp_path_factory.mktemp("export3d"), precisions=("fp32", "fp16", "int8"))
    return ModelPackage.load(out)


def _stage(pkg, name) -> dict:
    s = pkg.stage(name)
    return s if isinstance(s, dict) else s.to_dict()


def test_3d_stages_run_on_their_patch(package):
    m = package.manifest if isinstance(package.manifest, dict) else {"input_layout": package.manifest.input_layout}
    assert m["input_layout"] == "NCDHW"
    loc, seg = _stage(package, "localise"), _stage(package, "segment")
    # the window comes from the recipe: paper 003's stride = half the patch -> overlap 0.5
    assert seg["window"] == {"patch": [8, 16, 16], "overlap": [0.5, 0.5, 0.5], "blend": "gaussian",
                             "sigma_scale": 0.125}
    assert loc["window"]["patch"] == [8, 8, 8] and loc["window"]["overlap"] == [0.5, 0.5, 0.5]
    assert seg["input"]["depth"] == 8 and (seg["input"]["height"], seg["input"]["width"]) == (16, 16)
    assert seg["input"]["buckets"] == [[16, 16]] and loc["input"]["buckets"] == [[8, 8]]
    assert seg["roi"]["per_component"] is True
    for st in (loc, seg):
        graph = onnx.load(str(package.file_path(st["name"], "fp32"))).graph
        dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims[1:] == [1, *st["window"]["patch"]]  # only the batch is dynamic
        assert package.available_precisions(st["name"]) == ["fp32", "fp16", "int8-cpu", "int8-trt", "torch"]
        with np.load(package.file_path(st["name"], "reference")) as ref:
            assert ref["input"].shape[1:] == (1, *st["window"]["patch"])


def test_parity_of_each_3d_stage(package):
    for name in ("localise", "segment"):
        parity = _stage(package, name)["parity"]
        assert parity["fp32"]["max_abs_diff"] < 1e-4 and parity["fp32"]["argmax_agreement"] == 1.0
        assert parity["fp16"]["argmax_agreement"] >= 0.99
        assert parity["int8-cpu"]["argmax_agreement"] >= 0.99
    assert verify_package(package.source, quiet=True) == 0


def test_int8_3d_layers_in_onnx_runtime(package, tmp_path):
    """Conv3d runs as int8 QLinearConv on ONNX Runtime's CPU provider; ConvTranspose3d has
    no int8 kernel there: it runs in float, and the manifest says so per layer."""
    import onnxruntime as ort

    rep = package.manifest["export_report"] if isinstance(package.manifest, dict) else package.manifest.export_report
    for name in ("localise", "segment"):
        q = rep["quantisation"][name]["int8-cpu"]
        assert q["ort_cpu_float_fallback"]["layers"] == {"/up/ConvTranspose": "ConvTranspose"}
        path = package.file_path(name, "int8-cpu")
        assert ort_cpu_float_layers(path) == {"/up/ConvTranspose": "ConvTranspose"}
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{name}.optimised.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
        convs = [n for n in onnx.load(str(package.file_path(name, "fp32"))).graph.node if n.op_type == "Conv"]
        # the Conv3d layers run as int8 QLinearConv (the tiny net's image feeds two convs, so
        # ORT's optimiser quantises the first one too, though the default rule left it float)
        assert len(convs) - len(q["float_nodes"]) <= ops.count("QLinearConv") <= len(convs)
        assert "ConvTranspose" in ops and len(q["float_nodes"]) == 2


def test_fidelity_through_the_sliding_window(package):
    for name in ("localise", "segment"):
        fid = _stage(package, name)["fidelity"]
        assert set(fid) == {"fp16", "int8-cpu", "int8-trt"}
        assert fid["fp16"]["kidney_dice"] == 1.0
        # the tiny volumes' coarse localiser: one flipped voxel is 0.006 of kidney Dice
        assert fid["int8-cpu"]["kidney_dice"] >= 0.98 and fid["int8-cpu"]["pixel_agreement"] >= 0.999


def test_tensorrt_bucket_is_the_patch(tmp_path, monkeypatch):
    """The TensorRT build of a 3D stage gets one shape, the patch, and a few windows per call
    (checked by recording what export asks for; TensorRT itself needs a GPU)."""
    import kidedge.export.tensorrt_build as tb

    from ..tiny3d import make_dataset, make_run_3d, tiny3d_factory

    asked = []
    monkeypatch.setattr(tb, "require_tensorrt", lambda: object())

    def record(stage_dir, rel_dir, onnx_files, settings, *args, **kwargs):
        asked.append((rel_dir, sorted(onnx_files), dict(settings)))
        return {}

    monkeypatch.setattr(tb, "build_stage_plans", record)
    from kidedge.export.package_writer import export_run

    run = make_run_3d(tmp_path, make_dataset(tmp_path / "data", cases=2))
    export_run(run, tmp_path / "pkg", tensorrt=True, held_out_cases=1, model_factory=tiny3d_factory, quiet=True)
    by_stage = {rel: s for rel, _, s in asked}
    for name, patch in (("localise", (8, 8, 8)), ("segment", (8, 16, 16))):
        s = by_stage[name]
        assert s["depth"] == patch[0] and list(s["buckets"]) == [patch[1:]]  # one bucket: the patch
        assert s["batch"] == TRT_BATCHES[-1]
    assert ModelPackage.load(tmp_path / "pkg").stage("segment").input.buckets == ((16, 16),)


def test_fidelity_judged_and_layers_kept_float_when_int8_misses_the_target(package, tmp_path, monkeypatch):
    """The int8 model is judged against fp32 through the sliding window; when it misses the
    Dice target, the most sensitive Conv layers are kept float (forced here: target -1)."""
    import onnxruntime as ort

    import kidedge.export.int8_3d as int8_3d

    rep = package.manifest["export_report"] if isinstance(package.manifest, dict) else package.manifest.export_report
    rec = rep["quantisation"]["segment"]["int8-cpu"]["fidelity_fallback"]
    assert rec["met"] and rec["kept_float"] == [] and 0 <= rec["gap_before"] <= int8_3d.FIDELITY_TARGET

    monkeypatch.setattr(int8_3d, "FIDELITY_TARGET", -1.0)
    _, out = export_tiny3d(tmp_path, precisions=("fp32", "int8"))
    forced = ModelPackage.load(out)
    q = forced.manifest.export_report["quantisation"]["segment"]
    rec = q["int8-cpu"]["fidelity_fallback"]
    convs = [n.name for n in onnx.load(str(forced.file_path("segment", "fp32"))).graph.node if n.op_type == "Conv"]
    free = [c for c in convs if c not in ("/enc/enc.0/Conv", "/head/Conv")]  # the default rule keeps those
    assert rec["met"] is False and sorted(rec["kept_float"]) == sorted(free)  # every round ran, all kept
    assert list(rec["ranking_sqnr_db"]) == rec["kept_float"]  # most sensitive first
    assert set(rec["kept_float"]) <= set(q["int8-cpu"]["float_nodes"]) and set(rec["kept_float"]) <= set(
        q["int8-trt"]["float_nodes"])
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "kept.onnx")
    ort.InferenceSession(str(forced.file_path("segment", "int8-cpu")), so, providers=["CPUExecutionProvider"])
    ops = {n.name: n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    # float where ONNX Runtime honours it; the ones its optimiser re-quantised are named
    for name in rec["kept_float"]:
        assert ops.get(name) in ("Conv", "FusedConv") or name in rec["ort_cpu_runs_int8_anyway"]
    assert rec["ort_cpu_runs_int8_anyway"] == ["/down/down.1/Conv"]  # input from MaxPool, output to ReLU: int8
