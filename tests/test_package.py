"""The model package: manifest validation, hashes, zip loading (no torch, no onnx)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kidedge.errors import KidedgeError
from kidedge.package import (
    FORMAT,
    FORMAT_VERSION,
    ModelPackage,
    default_package_path,
    sha256_file,
    tensorrt_key,
    validate_manifest,
    write_manifest,
)
from kidedge.preprocess import PreprocessSpec


def _stage(name="seg", role="segment", **extra):
    spec = PreprocessSpec(hu_window=(-80.0, 300.0), in_plane="size", size=(64, 64))
    d = {
        "name": name,
        "role": role,
        "arch": "tiny",
        "model_kwargs": {},
        "preprocess": spec.to_dict(),
        "input": {"name": "image", "channels": 1, "height": None, "width": None},
        "output": {"name": "logits", "activation": "softmax", "labels": [0, 1, 2, 3]},
        "files": {"fp32": {"path": f"{name}/fp32.onnx"}, "int8-cpu": {"path": f"{name}/int8-cpu.onnx"}},
    }
    d.update(extra)
    return d


def _make_package(tmp_path: Path, stages=None) -> Path:
    pkg = tmp_path / "pkg"
    stages = stages or [_stage()]
    for s in stages:
        (pkg / s["name"]).mkdir(parents=True, exist_ok=True)
        for p in s["files"]:
            (pkg / s["files"][p]["path"]).write_bytes(f"{s['name']}-{p}".encode() * 100)
    manifest = {
        "name": "test",
        "architecture": "tiny",
        "dimensionality": "2d",
        "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
        "input_layout": "NCHW",
        "stages": stages,
    }
    write_manifest(pkg, manifest)
    return pkg


def test_write_manifest_fills_hashes_and_load_round_trips(tmp_path):
    pkg = _make_package(tmp_path)
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["format"] == FORMAT and m["format_version"] == FORMAT_VERSION
    entry = m["stages"][0]["files"]["fp32"]
    assert entry["sha256"] == sha256_file(pkg / "seg/fp32.onnx")
    assert entry["bytes"] == (pkg / "seg/fp32.onnx").stat().st_size
    p = ModelPackage.load(pkg)
    assert p.available_precisions("seg") == ["fp32", "int8-cpu"]
    assert p.file_path("seg", "fp32") == pkg / "seg/fp32.onnx"
    assert p.preprocess_spec("seg") == PreprocessSpec(hu_window=(-80.0, 300.0), in_plane="size", size=(64, 64))
    assert p.verify_hashes() == {"seg/fp32": "ok", "seg/int8-cpu": "ok"}
    assert p.stage(0).name == "seg"


def test_tampered_file_is_refused(tmp_path):
    pkg = _make_package(tmp_path)
    f = pkg / "seg/fp32.onnx"
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))
    p = ModelPackage.load(pkg)
    with pytest.raises(KidedgeError, match="sha256 does not match") as exc:
        p.file_path("seg", "fp32")
    assert "fp32.onnx" in str(exc.value) and "\n" not in str(exc.value)
    assert p.verify_hashes()["seg/fp32"] == "mismatch"
    # The untouched file is still served.
    assert p.file_path("seg", "int8-cpu").is_file()


def test_file_changed_after_first_check_is_refused(tmp_path):
    pkg = _make_package(tmp_path)
    p = ModelPackage.load(pkg)
    p.file_path("seg", "fp32")
    (pkg / "seg/fp32.onnx").write_bytes(b"evil")
    with pytest.raises(KidedgeError, match="does not match"):
        p.file_path("seg", "fp32")


def test_missing_file_and_unknown_precision(tmp_path):
    pkg = _make_package(tmp_path)
    (pkg / "seg/int8-cpu.onnx").unlink()
    p = ModelPackage.load(pkg)
    with pytest.raises(KidedgeError, match="missing"):
        p.file_path("seg", "int8-cpu")
    assert p.verify_hashes()["seg/int8-cpu"] == "missing"
    with pytest.raises(KidedgeError, match="no fp16"):
        p.file_path("seg", "fp16")
    with pytest.raises(KidedgeError, match="unknown precision"):
        p.file_path("seg", "int4")
    with pytest.raises(KidedgeError, match="no stage"):
        p.file_path("nope", "fp32")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("stages"), "missing stages"),
        (lambda m: m.update(format_version=99), "unknown format_version 99"),
        (lambda m: m.update(format="something"), "not a kidedge model package"),
        (lambda m: m.update(dimensionality="4d"), "dimensionality"),
        (lambda m: m["stages"][0].update(role="guess"), "role"),
        (lambda m: m["stages"][0]["preprocess"].update(normalisation="magic"), "preprocessing spec"),
        (lambda m: m["stages"][0]["files"]["fp32"].update(path="../../etc/passwd"), "leaves the package"),
        (lambda m: m["stages"][0]["files"]["fp32"].pop("sha256"), "no sha256"),
        (lambda m: m["stages"][0]["files"].update(int4={"path": "x"}), "unknown precisions"),
        (lambda m: m["stages"][0].update(roi={"source_stage": "absent"}), "roi"),
    ],
)
def test_bad_manifest_is_one_line_error(tmp_path, mutate, message):
    pkg = _make_package(tmp_path)
    m = json.loads((pkg / "manifest.json").read_text())
    mutate(m)
    (pkg / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(KidedgeError, match=message) as exc:
        ModelPackage.load(pkg)
    assert "\n" not in str(exc.value)


def test_not_json_and_not_a_package(tmp_path):
    pkg = _make_package(tmp_path)
    (pkg / "manifest.json").write_text("{not json")
    with pytest.raises(KidedgeError, match="not valid JSON"):
        ModelPackage.load(pkg)
    with pytest.raises(KidedgeError, match="does not exist"):
        ModelPackage.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KidedgeError, match="no manifest.json"):
        ModelPackage.load(tmp_path / "empty")
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(KidedgeError, match="not a model package"):
        ModelPackage.load(tmp_path / "junk.zip")


def test_cascade_roi_validates(tmp_path):
    stages = [
        _stage("localise", role="localise"),
        _stage("segment", roi={"source_stage": "localise", "labels": [1, 2, 3], "margin_mm": 10.0}),
    ]
    p = ModelPackage.load(_make_package(tmp_path, stages))
    assert p.is_cascade and [s.role for s in p.stages] == ["localise", "segment"]


@pytest.mark.parametrize("nested", [False, True])
def test_zip_package_is_extracted_to_cache(tmp_path, monkeypatch, nested):
    monkeypatch.setenv("KIDEDGE_CACHE_DIR", str(tmp_path / "cache"))
    pkg = _make_package(tmp_path)
    z = tmp_path / "pkg.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in pkg.rglob("*"):
            if f.is_file():
                arc = f.relative_to(pkg.parent if nested else pkg)
                zf.write(f, arc.as_posix())
    p = ModelPackage.load(z)
    assert p.root.parent == tmp_path / "cache" / "packages"
    assert p.root.name == sha256_file(z)
    assert p.file_path("seg", "fp32").read_bytes() == (pkg / "seg/fp32.onnx").read_bytes()
    # Second load reuses the extraction.
    assert ModelPackage.load(z).root == p.root


def test_zip_with_path_traversal_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KIDEDGE_CACHE_DIR", str(tmp_path / "cache"))
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("manifest.json", "{}")
        zf.writestr("../outside.txt", "x")
    with pytest.raises(KidedgeError, match="leaves the package"):
        ModelPackage.load(z)
    assert not (tmp_path / "outside.txt").exists()


def test_tensorrt_plans_are_keyed_and_hashed(tmp_path):
    key = tensorrt_key("10.3.0", "NVIDIA H100 80GB HBM3", (9, 0), "fp16", "ab" * 32)
    assert key == "trt10.3.0-nvidia_h100_80gb_hbm3-sm90-fp16-abababababab"
    stage = _stage()
    stage["files"]["tensorrt"] = {key: {"path": f"seg/{key}.plan", "timing_cache": {"path": f"seg/{key}.cache"}}}
    pkg = tmp_path / "pkg"
    (pkg / "seg").mkdir(parents=True)
    for rel in ("seg/fp32.onnx", "seg/int8-cpu.onnx", f"seg/{key}.plan", f"seg/{key}.cache"):
        (pkg / rel).write_bytes(rel.encode())
    manifest = {"name": "t", "architecture": "tiny", "dimensionality": "2d", "classes": {"0": "background"}, "stages": [stage]}
    write_manifest(pkg, manifest)
    p = ModelPackage.load(pkg)
    assert list(p.tensorrt_plans("seg")) == [key]
    assert p.file_path("seg", key).name == f"{key}.plan"
    assert set(p.verify_hashes()) == {"seg/fp32", "seg/int8-cpu", f"seg/tensorrt/{key}", f"seg/tensorrt/{key}/timing_cache"}


def test_write_manifest_refuses_missing_listed_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    m = {"name": "t", "architecture": "a", "dimensionality": "2d", "classes": {"0": "bg"}, "stages": [_stage()]}
    with pytest.raises(KidedgeError, match="missing"):
        write_manifest(tmp_path / "pkg", m)
    assert not (tmp_path / "pkg/manifest.json").exists()


def test_validate_manifest_accepts_written_manifest(tmp_path):
    pkg = _make_package(tmp_path)
    m = json.loads((pkg / "manifest.json").read_text())
    assert validate_manifest(m) is m


def test_default_package_path_and_missing_default():
    p = default_package_path()
    assert p.parts[-3:] == ("kidedge", "models", "default")
    if not p.exists():
        with pytest.raises(KidedgeError, match="no built-in model package"):
            ModelPackage.load()


def test_package_module_does_not_import_torch_or_onnx():
    code = "import sys, kidedge.package; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_shipped_manifest_round_trips_through_the_typed_manifest():
    from kidedge.package import Manifest

    raw = json.loads((default_package_path() / "manifest.json").read_text())
    m = Manifest.from_dict(raw)
    assert m.to_dict() == raw
    seg = m.stage("segment")
    assert seg.roi.source_stage == "localise" and seg.roi.margin_mm == 15.0
    assert seg.input.fixed_size is None and m.stage("localise").input.fixed_size == (96, 96)
    assert seg.output.activation == "softmax" and seg.output.labels == (0, 1, 2, 3)
    assert seg.reference_tolerance == pytest.approx(1e-3)


def test_input_buckets_are_optional_and_round_trip(tmp_path):
    from kidedge.package import Manifest

    stage = _stage()
    stage["input"]["buckets"] = [[128, 160], [256, 256]]
    raw = json.loads((_make_package(tmp_path, [stage]) / "manifest.json").read_text())
    m = Manifest.from_dict(raw)
    assert m.stages[0].input.buckets == ((128, 160), (256, 256))
    assert m.to_dict() == raw
    raw["stages"][0]["input"]["buckets"] = [[128]]
    with pytest.raises(KidedgeError, match="buckets"):
        Manifest.from_dict(raw)


def test_plan_key_is_formatted_and_parsed_in_one_place():
    from kidedge.package import PlanKey

    key = tensorrt_key("10.3.0", "NVIDIA Orin", (8, 7), "fp16dla0", "cd" * 32)
    parsed = PlanKey.parse(key)
    assert (parsed.trt_version, parsed.gpu, parsed.sm, parsed.precision) == ("10.3.0", "nvidia_orin", "87", "fp16dla0")
    assert str(parsed) == key
    assert parsed.runs_on("10.3.0.26", "NVIDIA Orin") and not parsed.runs_on("10.4.0", "NVIDIA Orin")
    assert not parsed.runs_on("10.3.0", "NVIDIA A100") and not parsed.runs_on(None, None)
    assert PlanKey.parse("model.plan") is None


def test_unparseable_plan_key_is_refused_on_load(tmp_path):
    pkg = _make_package(tmp_path)
    m = json.loads((pkg / "manifest.json").read_text())
    m["stages"][0]["files"]["tensorrt"] = {"my-engine": dict(m["stages"][0]["files"]["fp32"])}
    (pkg / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(KidedgeError, match="plan key 'my-engine'"):
        ModelPackage.load(pkg)
