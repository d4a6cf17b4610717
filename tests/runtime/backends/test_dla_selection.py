"""``kidedge infer --dla-core N``: TensorRT plans built for that DLA core are chosen per
stage, a stage without one runs its GPU plan (said in the choice's reason, which the
command prints on stderr), and the backend is created with the DLA core and the plan's
buckets. TensorRT is absent here: its presence is stood in for in the registry."""

from __future__ import annotations

import json

import pytest

from kidedge.errors import KidedgeError
from kidedge.package import ModelPackage, PlanKey, tensorrt_key, write_manifest
from kidedge.runtime.backends import registry
from kidedge.runtime.backends.registry import create_backend, select_backend
from kidedge.runtime.backends.tensorrt_backend import TensorRTBackend

from ..synthetic import make_cascade_package

TRT, GPU = "10.3.0", "Orin"


@pytest.fixture
def jetson_package(tmp_path, monkeypatch):
    """A cascade package whose localiser has GPU and DLA-core-0 fp16 plans and whose
    segmenter has a GPU plan only; a Jetson with TensorRT 10.3 stood in."""
    d = make_cascade_package(tmp_path / "p")
    m = json.loads((d / "manifest.json").read_text())
    sha = "cd" * 32
    for st in m["stages"]:
        plans = {}
        cores = (None, 0) if st["name"] == "localise" else (None,)
        for core in cores:
            key = tensorrt_key(TRT, GPU, (8, 7), PlanKey.precision_label("fp16", core), sha)
            (d / f"{key}.plan").write_bytes(b"plan")
            plans[key] = {"path": f"{key}.plan", "buckets": [[64, 64]], "dla_core": core}
        st["files"]["tensorrt"] = plans
        st["input"]["buckets"] = [[64, 64], [96, 96]]
    write_manifest(d, m)
    monkeypatch.setattr(registry, "device_available", lambda backend, device: None if backend == "tensorrt" else "no")
    monkeypatch.setattr(registry, "tensorrt_version", lambda: TRT)
    monkeypatch.setattr(registry, "gpu_name", lambda: GPU)
    return ModelPackage.load(d)


def test_dla_plans_where_the_package_has_them_gpu_plans_elsewhere(jetson_package):
    choice = select_backend(jetson_package, "tensorrt", "auto", dla_core=0)
    assert PlanKey.parse(choice.files["localise"]).dla_core == 0
    assert PlanKey.parse(choice.files["segment"]).dla_core is None
    assert "stage 'segment' has no plan for DLA core 0 here: its GPU plan runs" in choice.reason
    assert choice.precision == "fp16" and choice.dla_core == 0
    # auto picks TensorRT first and says the same
    assert "no plan for DLA core 0" in select_backend(jetson_package, "auto", dla_core=0).reason


def test_without_dla_core_only_gpu_plans_run(jetson_package):
    choice = select_backend(jetson_package, "tensorrt")
    assert all(PlanKey.parse(k).dla_core is None for k in choice.files.values())
    assert "DLA" not in choice.reason
    choice = select_backend(jetson_package, "tensorrt", dla_core=1)  # no plan for core 1 at all
    assert all(PlanKey.parse(k).dla_core is None for k in choice.files.values())
    assert choice.reason.count("no plan for DLA core 1") == 2


def test_backend_gets_the_dla_core_and_the_plans_buckets(jetson_package):
    choice = select_backend(jetson_package, "tensorrt", dla_core=0)
    loc = create_backend(choice, jetson_package, jetson_package.stage("localise"), max_batch=4)
    seg = create_backend(choice, jetson_package, jetson_package.stage("segment"), max_batch=4)
    assert isinstance(loc, TensorRTBackend) and loc.dla_core == 0 and seg.dla_core is None
    assert loc.expected_buckets == [(64, 64)]  # the plan's own record wins over the stage's list
    assert loc.max_batch == 4


def test_dla_core_with_a_backend_that_cannot_use_it_is_refused(jetson_package):
    with pytest.raises(KidedgeError, match="--dla-core runs TensorRT plans on a Jetson's DLA; it does not apply "
                                           "to --backend onnxruntime"):
        select_backend(jetson_package, "onnxruntime", dla_core=0)


def test_infer_dla_core_option_reaches_the_backend_choice(tmp_path):
    from click.testing import CliRunner

    from kidedge.cli import main

    from ..synthetic import kits_affine, make_ct, make_single_package, write_nifti

    hu, _ = make_ct(shape=(8, 16, 16), kidney_slices=(2, 6))
    scan = write_nifti(tmp_path / "ct.nii.gz", hu, kits_affine())
    pkg = make_single_package(tmp_path / "pkg")
    r = CliRunner().invoke(main, ["infer", str(scan), "-o", str(tmp_path / "o"), "--model", str(pkg),
                                  "--backend", "onnxruntime", "--dla-core", "0"])
    assert r.exit_code == 2 and "--dla-core runs TensorRT plans on a Jetson's DLA" in r.stderr
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, ["infer", str(scan), "-o", str(tmp_path / "o2"), "--model", str(pkg), "--dla-core", "0"])
    assert r.exit_code == 0, r.output  # auto: no TensorRT here, onnxruntime runs and says the DLA went unused
    assert "--dla-core 0 unused" in r.stderr
