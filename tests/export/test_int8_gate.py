"""The int8 fidelity gate: what it measures, what it refuses, what the manifest says."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import numpy_helper

from kidedge.export.fidelity import MAX_DICE_LOSS, drop_refused_variants, int8_gate, stage_regions


def _report(loss_cpu: float, loss_trt: float) -> dict:
    def entry(loss):
        return {"kidney_dice": 0.99, "masses_dice": 0.98, "tumour_dice": 0.97,
                "truth_loss": {"kidney": loss, "masses": loss / 2, "tumour": loss / 2}}

    return {"seg": {"int8-cpu": entry(loss_cpu), "int8-trt": entry(loss_trt)}}


def test_gate_passes_within_the_loss_and_refuses_beyond():
    gate = int8_gate(_report(0.004, 0.02), ("int8-cpu", "int8-trt"))
    cpu, trt = gate["variants"]["int8-cpu"], gate["variants"]["int8-trt"]
    assert gate["max_dice_loss"] == MAX_DICE_LOSS == 0.005
    assert cpu["passed"] and cpu["shipped"] and cpu["failures"] == []
    assert not trt["passed"] and not trt["shipped"]
    assert trt["failures"] == ["seg kidney loses 0.0200 Dice against the truth",
                               "seg masses loses 0.0100 Dice against the truth",
                               "seg tumour loses 0.0100 Dice against the truth"]
    assert trt["measured"]["seg"]["kidney"] == {"loss": 0.02, "against": "truth"}
    # A gain against the truth is not a loss.
    assert int8_gate(_report(-0.03, 0.0), ("int8-cpu",))["variants"]["int8-cpu"]["passed"]


def test_gate_can_be_overridden_and_says_so():
    gate = int8_gate(_report(0.0, 0.02), ("int8-trt",), allow_loss=True)
    trt = gate["variants"]["int8-trt"]
    assert not trt["passed"] and trt["shipped"] and "despite" in trt["decision"]
    assert gate["allow_fidelity_loss"] is True


def test_gate_without_truth_judges_agreement_with_fp32():
    rep = {"seg": {"int8-cpu": {"kidney_dice": 0.999, "masses_dice": 0.99, "tumour_dice": 1.0}}}
    v = int8_gate(rep, ("int8-cpu",))["variants"]["int8-cpu"]
    assert not v["passed"] and v["failures"] == ["seg masses loses 0.0100 Dice against the fp32"]
    assert v["measured"]["seg"]["kidney"]["against"] == "fp32"
    assert not int8_gate({}, ("int8-cpu",))["variants"]["int8-cpu"]["shipped"]  # nothing measured


def test_gate_regions_follow_the_stage_labels():
    assert stage_regions({"output": {"labels": [0, 1]}}) == ["kidney"]
    assert stage_regions({"output": {"labels": [0, 1, 2, 3]}}) == ["kidney", "masses", "tumour"]


def test_refused_variant_files_and_int8_plans_leave_the_package(tmp_path):
    (tmp_path / "seg").mkdir()
    names = ["int8-cpu.onnx", "int8-trt.onnx", "a.plan", "a.cache", "b.plan"]
    for f in names:
        (tmp_path / "seg" / f).write_bytes(b"x")
    stages = [{"files": {"int8-cpu": {"path": "seg/int8-cpu.onnx"}, "int8-trt": {"path": "seg/int8-trt.onnx"},
                         "tensorrt": {"a": {"path": "seg/a.plan", "timing_cache": {"path": "seg/a.cache"},
                                            "precision": "int8"},
                                      "b": {"path": "seg/b.plan", "precision": "fp16"}}}}]
    gate = int8_gate(_report(0.0, 0.02), ("int8-cpu", "int8-trt"))
    assert drop_refused_variants(stages, gate, tmp_path) == ["int8-trt"]
    assert sorted(stages[0]["files"]) == ["int8-cpu", "tensorrt"] and list(stages[0]["files"]["tensorrt"]) == ["b"]
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["b.plan", "int8-cpu.onnx"]


def _break_int8_heads(monkeypatch):
    """Make every int8 file paint background everywhere (variants that must fail)."""
    import kidedge.export.quantize as quantize

    real = quantize.quantize_int8

    def broken(prepared, out_path, reader, variant, *args, **kwargs):
        info = real(prepared, out_path, reader, variant, *args, **kwargs)
        if out_path.name != f"{variant}.onnx":  # a working file (the ranges probe), not the package's
            return info
        m = onnx.load(str(out_path))
        head = [n for n in m.graph.node if n.op_type == "Conv"][-1]
        for init in m.graph.initializer:
            if init.name == head.input[2] and init.data_type == onnx.TensorProto.FLOAT:
                b = numpy_helper.to_array(init).copy()
                b[0] += 1e4
                init.CopyFrom(numpy_helper.from_array(b, init.name))
                break
        else:
            raise AssertionError("the float head's bias was not found")
        onnx.save(m, str(out_path))
        return info

    monkeypatch.setattr(quantize, "quantize_int8", broken)


@pytest.fixture(scope="module")
def finding_run(tmp_path_factory):
    """A tiny run whose fp32 model finds the held-out phantom's kidney (Dice ~0.5), so a
    broken int8 variant has Dice to lose. Seeded from its initialisation on: the shared
    ``run_dir`` fixture's model is initialised unseeded and, after 12 steps, finds the kidney
    in some sessions and nothing in others."""
    import torch

    from .conftest import TinyUNet, _train_briefly, make_run

    torch.manual_seed(0)
    run = make_run(tmp_path_factory.mktemp("gate-run"), train=False)
    model = TinyUNet()
    _train_briefly(model, json.loads((run / "run.json").read_text())["stages"][0], steps=40)
    torch.save(model.state_dict(), run / "seg" / "best.pt")
    return run


@pytest.mark.parametrize("allow", [False, True])
def test_export_refuses_a_broken_variant_unless_allowed(finding_run, tmp_path, monkeypatch, allow):
    from kidedge.export.package_writer import export_run
    from kidedge.package import ModelPackage

    from .conftest import EXPORT_KW

    _break_int8_heads(monkeypatch)
    out = tmp_path / "pkg"
    export_run(finding_run, out, int8=True, calib_method="minmax", allow_int8_fidelity_loss=allow, **EXPORT_KW)
    manifest = json.loads((out / "manifest.json").read_text())
    gate = manifest["export_report"]["int8_gate"]
    fid = manifest["export_report"]["fidelity"]["seg"]["int8-trt"]
    assert fid["fp32_vs_truth"]["kidney"] > 0.05  # the model finds kidney: there is Dice to lose
    assert fid["vs_truth"]["kidney"] == 0.0 and fid["truth_loss"]["kidney"] > MAX_DICE_LOSS
    trt, cpu = gate["variants"]["int8-trt"], gate["variants"]["int8-cpu"]
    assert not trt["passed"] and trt["shipped"] is allow
    assert trt["measured"]["seg"]["kidney"]["loss"] == pytest.approx(fid["truth_loss"]["kidney"], abs=1e-6)
    assert not cpu["passed"] and cpu["shipped"] is allow
    files = manifest["stages"][0]["files"]
    for variant in ("int8-cpu", "int8-trt"):
        assert (variant in files) is allow and (out / "seg" / f"{variant}.onnx").is_file() is allow
    assert int8_gate(manifest["export_report"]["fidelity"], ("int8-trt",))["variants"]["int8-trt"]["failures"] \
        == trt["failures"]  # the manifest holds what the decision was made on
    assert fid["scored_as"].startswith("TensorRT stand-in")

    # The runtime: 'auto' falls back to fp32 without int8; asking for int8 says why there is none.
    from kidedge.errors import KidedgeError
    from kidedge.runtime.backends.registry import select_backend

    package = ModelPackage.load(out)  # loadable and hash-consistent either way
    assert select_backend(package, "onnxruntime", "auto").files["seg"] == ("int8-cpu" if allow else "fp32")
    if not allow:
        with pytest.raises(KidedgeError, match="fidelity gate"):
            select_backend(package, "onnxruntime", "int8")


def test_cli_flag_needs_int8(tmp_path):
    from click.testing import CliRunner

    from kidedge.cli import main

    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "p"), "--allow-int8-fidelity-loss"])
    assert r.exit_code == 2 and "add --int8" in r.output and not (tmp_path / "p").exists()
    assert "--allow-int8-fidelity-loss" in CliRunner().invoke(main, ["export", "--help"]).output
