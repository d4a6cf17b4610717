"""The bench report writer and the summary arithmetic, on a small synthetic result set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kidedge.bench.report import markdown_report, write_report
from kidedge.bench.scans import BenchScan
from kidedge.bench.summary import evaluate_targets, hierarchical_dice, summarise
from kidedge.bench.variants import Variant

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scans(tmp_path: Path) -> list[BenchScan]:
    return [BenchScan(f"s{n:04d}-case", tmp_path / f"{n}.nii.gz", tmp_path / f"{n}-seg.nii.gz", n,
                      (n, 512, 512), (3.0, 0.8, 0.8), "synthetic") for n in (60, 600)]


VARIANTS = [
    Variant("floor", "read only", "floor", "floor"),
    Variant("papers", "papers' way", "baseline", "papers", expensive=True),
    Variant("monai", "MONAI", "baseline", "monai", expensive=True),
    Variant("ort-int8-cpu-gated", "kidedge int8 gated", "kidedge", "kidedge", "onnxruntime", "int8-cpu", True),
]


def _run(scan, variant, secs, rss, rep=0, ok=True, **extra):
    return {"scan": scan, "variant": variant, "repeat": rep, "ok": ok, "scan_s": secs, "scan_cpu_s": secs * 1.5,
            "setup_s": 1.0, "peak_rss_mb": rss, "scan_peak_rss_mb": rss, "rss_before_scan_mb": 100.0,
            "stages": {"read": secs / 4, "infer": secs / 2}, **extra}


def _runs():
    runs = []
    for name, scale, rss_small, rss_large in (("floor", 0.5, 90, 95), ("papers", 100.0, 2000, 9000),
                                               ("monai", 60.0, 2100, 9500)):
        runs.append(_run("s0060-case", name, scale, rss_small))
        runs.append(_run("s0600-case", name, scale * 10, rss_large))
    # kidedge: three repeats on each scan; the median must be picked, not the mean.
    for i, s in enumerate((4.0, 5.0, 100.0)):
        runs.append(_run("s0060-case", "ort-int8-cpu-gated", s, 300.0, rep=i,
                         gating={"enabled": True, "skipped_slice_fraction": 0.75}))
    for i, s in enumerate((40.0, 50.0, 45.0)):
        runs.append(_run("s0600-case", "ort-int8-cpu-gated", s, 420.0, rep=i,
                         gating={"enabled": True, "skipped_slice_fraction": 0.8}))
    return runs


def test_summary_medians_ratios_and_targets(tmp_path):
    scans = _scans(tmp_path)
    dice = {("s0060-case", "papers"): {"vs_truth": {"kidney": 0.9, "masses": 0.5}, "vs_reference": {"kidney": 1.0}},
            ("s0060-case", "ort-int8-cpu-gated"): {"vs_truth": {"kidney": 0.895, "masses": 0.48},
                                                   "vs_reference": {"kidney": 0.99, "masses": 0.97}}}
    rows = summarise(scans, VARIANTS, _runs(), dice)
    by = {(r["scan"], r["variant"]): r for r in rows}
    small = by[("s0060-case", "ort-int8-cpu-gated")]
    assert small["seconds"] == 5.0 and small["repeats"] == 3
    assert small["speedup_vs_papers"] == 20.0
    assert small["speedup_vs_monai"] == 12.0
    assert small["ratio_to_floor"] == 10.0
    assert small["slices_per_s"] == 12.0
    assert small["gate_fraction"] == pytest.approx(0.25)
    assert small["cpu_s"] == pytest.approx(7.5)
    large = by[("s0600-case", "ort-int8-cpu-gated")]
    assert large["seconds"] == 45.0 and large["speedup_vs_papers"] == pytest.approx(22.22, abs=0.01)

    targets = {t["name"]: t for t in evaluate_targets(scans, VARIANTS, rows)}
    speed = next(t for n, t in targets.items() if "10x" in n)
    assert speed["met"] is True and "20.0x (60 slices)" in speed["measured"]
    monai = next(t for n, t in targets.items() if "5x" in n)
    assert monai["met"] is True
    dice_t = next(t for n, t in targets.items() if "within 0.01" in n)
    # masses differ by 0.02 against truth: the target is missed, and the report says so.
    assert dice_t["met"] is False and "masses -0.0200" in dice_t["measured"]
    flat = next(t for n, t in targets.items() if "flat" in n)
    # +120 MB over 540 x 512 x 512 added voxels = 0.85 bytes per voxel: flat enough.
    assert flat["met"] is True and "+120 MB" in flat["measured"]
    papers_mem = next(t for n, t in targets.items() if n.startswith("papers' way: peak RSS"))
    assert "+7000 MB" in papers_mem["measured"]


def test_a_failed_variant_is_reported_not_dropped(tmp_path):
    runs = _runs() + [{"scan": "s0060-case", "variant": "monai", "repeat": 1, "ok": False, "error": "timed out"}]
    runs = [r for r in runs if not (r["variant"] == "monai" and r["scan"] == "s0600-case")]
    runs.append({"scan": "s0600-case", "variant": "monai", "repeat": 0, "ok": False, "error": "out of memory"})
    rows = summarise(_scans(tmp_path), VARIANTS, runs)
    failed = [r for r in rows if r.get("error")]
    assert [(r["scan"], r["error"]) for r in failed] == [("s0600-case", "out of memory")]
    assert "speedup_vs_monai" not in next(r for r in rows if r["scan"] == "s0600-case" and r["variant"] == "papers")


def test_hierarchical_dice_regions():
    import numpy as np

    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = 1
    ref[0, 2, 2] = 2
    pred = ref.copy()
    pred[0, 2, 2] = 3  # tumour called cyst: kidney and masses agree, tumour does not
    d = hierarchical_dice(pred, ref)
    assert d["kidney"] == 1.0 and d["masses"] == 1.0 and d["tumour"] == 0.0
    assert hierarchical_dice(np.zeros_like(ref), np.zeros_like(ref))["kidney"] is None


def test_report_files_written_and_consistent(tmp_path):
    scans = _scans(tmp_path)
    rows = summarise(scans, VARIANTS, _runs())
    results = {
        "kidedge_bench": 1, "created": "2026-01-01 00:00 UTC", "quick": False,
        "machine_label": "cpu-2core-test-cpu",
        "machine": {"cpu": {"model": "Test CPU 9000", "architecture": "x86_64", "usable_cores": 2,
                            "logical_cores": 2, "instruction_sets": ["avx2"]}, "gpus": []},
        "model": {"name": "pkg", "source": "--model", "stages": [{"name": "segment", "role": "segment",
                                                                   "arch": "squeezenet_unet", "input": "native"}]},
        "scans": [dict(s.to_dict(), file_mb=1.0) for s in scans],
        "variants": [v.to_dict() for v in VARIANTS],
        "summary": rows,
        "targets": evaluate_targets(scans, VARIANTS, rows),
        "not_measured": ["Peak GPU memory: no GPU on this machine."],
    }
    out = tmp_path / "results"
    paths = write_report(results, out)
    assert set(paths) == {"json", "md", "latency", "memory"}
    data = json.loads(paths["json"].read_text())
    assert data["summary"] == json.loads(json.dumps(rows))
    md = paths["md"].read_text()
    assert "Test CPU 9000" in md and "cpu-2core-test-cpu" in md and "GPU: none" in md
    for v in VARIANTS:
        assert v.label in md
    assert "| kidedge int8 gated | 5.00 |" in md  # the median, as in the JSON
    assert "20.0x" in md and "no GPU on this machine" in md
    assert "![Latency by backend and precision](latency.png)" in md
    for key in ("latency", "memory"):
        blob = paths[key].read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 5000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert markdown_report(data) == md  # the Markdown is a pure function of the JSON


def test_speed_target_not_judged_when_stage2_never_ran():
    """An untrained localiser that finds no kidney skips stage 2 everywhere: the gated
    run then times the localiser alone, and the speed targets must not count as met."""
    scan = BenchScan("s1", Path("i.nii.gz"), Path("t.nii.gz"), 30, (30, 64, 64), (3.0, 1.0, 1.0), "synthetic")
    variants = [Variant("papers", "papers", "baseline", "papers"),
                Variant("ort-int8-cpu-gated", "kidedge int8 gated", "kidedge", "kidedge", "onnxruntime", "int8-cpu", True),
                Variant("ort-int8-cpu-nogate", "kidedge int8 no gate", "kidedge", "kidedge", "onnxruntime", "int8-cpu",
                        False)]
    rows = [{"scan": "s1", "variant": "papers", "seconds": 40.0},
            {"scan": "s1", "variant": "ort-int8-cpu-gated", "seconds": 2.0, "speedup_vs_papers": 20.0,
             "gating": {"enabled": True, "skipped_slice_fraction": 1.0, "slices_run_stage2": 0}},
            {"scan": "s1", "variant": "ort-int8-cpu-nogate", "seconds": 8.0, "speedup_vs_papers": 5.0}]
    targets = evaluate_targets([scan], variants, rows)
    speed = next(t for t in targets if "10x" in t["name"])
    assert speed["met"] is None and "NOT REPRESENTATIVE" in speed["measured"]
    ref = next(t for t in targets if t["name"].startswith("for reference"))
    assert "5.0x vs papers' way (30 slices)" in ref["measured"] and ref["met"] is None
