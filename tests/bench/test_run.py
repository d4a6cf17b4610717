"""The baselines and the quick bench end to end, on tiny scans with tiny untrained packages.

The packages are kidedge_default's networks with small decoders and random weights,
exported by kidedge.export (as the benchmark does before the shipped package exists).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

TINY = {"model_overrides": {"decoder_channels": [16, 8, 8, 8]},
        "preprocess_overrides": {"localise": {"size": [32, 32]}},
        "volume_shape": (12, 64, 64), "calib_cases": 2, "slices_per_case": 4, "held_out_cases": 1,
        "parity_slices": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(single-stage package, cascade package, a 12 x 64 x 64 phantom scan)."""
    import torch

    from kidedge.bench.scans import make_bench_scans
    from kidedge.bench.untrained_package import export_untrained_package

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("bench")
    single = export_untrained_package(root / "single", only_stage="segment", int8=False, **TINY)
    cascade = export_untrained_package(root / "cascade", int8=True, **TINY)
    (scan,) = make_bench_scans(root / "scans", targets=(12,), synthetic_shape=(64, 64))
    return single, cascade, scan


def _labels(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_baselines_and_kidedge_give_the_same_labels(tiny, tmp_path):
    """Same model, same preprocessing: three execution paths, one segmentation."""
    from kidedge.bench.baselines import MonaiSliceInferer, PapersWay
    from kidedge.bench.kidedge_variant import KidedgeRunner

    single, _, scan = tiny
    outs = {}
    for name, cls in (("papers", PapersWay), ("monai", MonaiSliceInferer)):
        outs[name] = tmp_path / f"{name}.nii.gz"
        info = cls(single, image=scan.image, out=outs[name], batch=4, threads=2).run()
        assert {"read", "segment.infer", "segment.argmax", "postprocess", "write"} <= set(info["stages"])
    outs["kidedge"] = tmp_path / "kidedge.nii.gz"
    runner = KidedgeRunner({"model": str(single), "image": str(scan.image), "out": str(outs["kidedge"]),
                            "backend": "onnxruntime", "precision": "fp32", "gate": True, "threads": 2})
    info = runner.run()
    runner.close()
    assert info["stages"]["segment.infer"] > 0 and info["profile"]["slices"] == 12
    ref = _labels(outs["papers"])
    img = nib.load(str(scan.image))
    assert ref.shape == img.shape and ref.dtype == np.uint8
    assert np.allclose(nib.load(str(outs["papers"])).affine, img.affine)
    for name in ("monai", "kidedge"):
        got = _labels(outs[name])
        assert got.shape == ref.shape
        assert (got == ref).mean() >= 0.999, name  # float rounding may flip a rare tie, nothing more


@pytest.mark.slow
def test_quick_bench_end_to_end(tiny, tmp_path):
    from kidedge.bench.run import run_bench

    _, cascade, _ = tiny
    out = tmp_path / "results"
    code = run_bench(quick=True, out=out, model=cascade, work_dir=tmp_path / "work", targets=(12,),
                     synthetic_shape=(64, 64), synthetic=True, echo=lambda m: None)
    assert code == 0
    data = json.loads((out / "bench.json").read_text())
    names = {v["name"] for v in data["variants"]}
    assert {"floor", "papers", "monai", "ort-fp32-gated", "ort-int8-cpu-gated"} <= names
    assert all(r["ok"] for r in data["runs"]), [r.get("error") for r in data["runs"]]
    rows = {r["variant"]: r for r in data["summary"]}
    assert rows["papers"]["speedup_vs_papers"] == 1.0
    for name in names - {"floor"}:
        assert rows[name]["seconds"] > 0 and rows[name]["peak_rss_mb"] > 50
        assert rows[name]["dice_vs_truth"] is not None
    assert rows["ort-int8-cpu-gated"]["stages"].get("localise.infer", 0) > 0
    assert data["machine"]["cpu"]["model"] and data["machine_label"]
    md = (out / "bench.md").read_text()
    assert "kidedge onnxruntime int8-cpu gated" in md and "## Targets" in md
    assert (out / "latency.png").stat().st_size > 5000 and (out / "memory.png").stat().st_size > 5000


def test_long_scans_repeat_the_floor_and_kidedge_not_the_baselines():
    from pathlib import Path

    from kidedge.bench.scans import BenchScan
    from kidedge.bench.variants import Variant, repeats_for

    def scan(n):
        return BenchScan(f"s{n}", Path("i"), Path("t"), n, (n, 512, 512), (1.0, 1.0, 1.0), "synthetic")

    floor = Variant("floor", "read", "floor", "floor")
    gated = Variant("ort-int8-cpu-gated", "kidedge", "kidedge", "kidedge", "onnxruntime", "int8", True)
    papers = Variant("papers", "papers", "baseline", "papers", expensive=True, region=True)
    monai_cheap = Variant("monai", "monai", "baseline", "monai")
    ungated = Variant("ort-fp32", "kidedge", "kidedge", "kidedge", "onnxruntime", "fp32", False, expensive=True)
    assert [repeats_for(scan(600), v, 5) for v in (floor, gated, papers, monai_cheap, ungated)] == [5, 5, 1, 2, 1]
    assert [repeats_for(scan(60), v, 5) for v in (floor, gated, papers, monai_cheap, ungated)] == [5, 5, 5, 5, 5]


def test_int8_rows_run_a_float_localiser(tiny):
    # export keeps the localiser float: the int8 rows exist and say how they run
    from kidedge.bench.variants import plan_variants
    from kidedge.package import ModelPackage

    pkg = ModelPackage.load(tiny[1])
    assert "int8-cpu" not in pkg.stage("localise").files and "int8-cpu" in pkg.stage("segment").files
    labels = {v.name: v.label for v in plan_variants(pkg, monai=False, torch=False)}
    assert labels["ort-int8-cpu-gated"] == "kidedge onnxruntime int8-cpu gated, localiser fp32"
    assert labels["ort-fp32-gated"] == "kidedge onnxruntime fp32 gated"
