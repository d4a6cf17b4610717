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
    Variant("ort-fp32-gated", "kidedge fp32 gated", "kidedge", "kidedge", "onnxruntime", "fp32", True),
    Variant("papers-wholeslice", "extra: papers' whole slices", "baseline", "papers", expensive=True,
            region=False, extra=True),
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
    for scan, secs in (("s0060-case", 6.0), ("s0600-case", 50.0)):
        runs.append(_run(scan, "ort-fp32-gated", secs, 500.0))
        runs.append(_run(scan, "papers-wholeslice", secs * 40, 9000.0))
    return runs


def test_summary_medians_ratios_and_targets(tmp_path):
    scans = _scans(tmp_path)
    dice = {("s0060-case", "papers"): {"vs_truth": {"kidney": 0.9, "masses": 0.5}, "vs_reference": {"kidney": 1.0}},
            ("s0060-case", "ort-int8-cpu-gated"): {"vs_truth": {"kidney": 0.895, "masses": 0.48},
                                                   "vs_reference": {"kidney": 0.99, "masses": 0.97}},
            ("s0060-case", "ort-fp32-gated"): {"vs_truth": {"kidney": 0.897, "masses": 0.50},
                                               "vs_reference": {"kidney": 0.998, "masses": 0.985}}}
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

    curve = {"rows": [{"variant": "ort-int8-cpu-gated", "slices": n, "peak_rss_mb": m, "layout": "KiTS"}
                      for n, m in ((100, 300.0), (810, 700.0), (1000, 850.0))]}
    targets = evaluate_targets(scans, VARIANTS, rows, curve)
    speed = next(t for t in targets if "5x faster end to end than the papers' way (same work)" in t["name"])
    assert speed["met"] is True and "20.0x (60 slices)" in speed["measured"]
    assert "judged on the 600-slice scan" in speed["name"]
    # the issue sets the ratios on the 600-slice scan: a short scan below 5x is listed, not judged
    small["speedup_vs_papers"] = 3.0
    speed = next(t for t in evaluate_targets(scans, VARIANTS, rows, curve) if "papers' way" in t["name"])
    assert speed["met"] is True and "3.0x (60 slices)" in speed["measured"]
    large["speedup_vs_papers"] = 4.0
    speed = next(t for t in evaluate_targets(scans, VARIANTS, rows, curve) if "papers' way" in t["name"])
    assert speed["met"] is False
    small["speedup_vs_papers"], large["speedup_vs_papers"] = 20.0, 22.22
    monai = next(t for t in targets if "MONAI SliceInferer (same work)" in t["name"])
    assert monai["met"] is True
    floor = next(t for t in targets if "read floor" in t["name"])
    # 45 s against a 5 s read on the 600-slice scan: 9x, missed, and said so
    assert "600-slice" in floor["name"] and floor["met"] is False and "9.00x (600 slices)" in floor["measured"]
    same = next(t for t in targets if t["name"].startswith("same work"))
    assert same["met"] is False and "masses 0.9850 (60 slices)" in same["measured"]  # 0.985 < 0.99
    int8 = next(t for t in targets if "within 0.005" in t["name"])
    # masses differ by 0.02 against truth: the target is missed, and the report says so.
    assert int8["met"] is False and "masses -0.0200" in int8["measured"] and "kidney -0.0020" in int8["measured"]
    rss = next(t for t in targets if "peak RSS" in t["name"])
    assert rss["met"] is True and "700 MB at 810 slices" in rss["measured"] and "+0.61 MB per slice" in rss["measured"]
    extra = next(t for t in targets if "not the same work" in t["name"])
    assert extra["met"] is None and "48.0x (60 slices)" in extra["measured"]


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
        "curve": {"scans": [{"slices": n, "source": "synthetic"} for n in (100, 200)],
                  "variants": [v.to_dict() for v in VARIANTS[:4]],
                  "rows": [{"variant": v.name, "scan": f"s{n}", "slices": n, "layout": "KiTS", "ok": True,
                            "seconds": n / 10 * (i + 1), "peak_rss_mb": 100.0 + n * (i + 1)}
                           for n in (100, 200) for i, v in enumerate(VARIANTS[:4])]},
    }
    out = tmp_path / "results"
    paths = write_report(results, out)
    assert set(paths) == {"json", "md", "latency", "memory", "curve"}
    data = json.loads(paths["json"].read_text())
    assert data["summary"] == json.loads(json.dumps(rows))
    md = paths["md"].read_text()
    assert "Test CPU 9000" in md and "cpu-2core-test-cpu" in md and "GPU: none" in md
    for v in VARIANTS:
        assert v.label in md
    assert "| kidedge int8 gated | 5.00 |" in md  # the median, as in the JSON
    assert "20.0x" in md and "no GPU on this machine" in md
    assert "![Latency by backend and precision](latency.png)" in md
    assert "## Time and memory against scan length" in md and "| papers' way | 20.0 s / 300 MB | 40.0 s / 500 MB |" in md
    assert "(curve.png)" in md
    for key in ("latency", "memory", "curve"):
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
                        False, extra=True)]
    rows = [{"scan": "s1", "variant": "papers", "seconds": 40.0},
            {"scan": "s1", "variant": "ort-int8-cpu-gated", "seconds": 2.0, "speedup_vs_papers": 20.0,
             "gating": {"enabled": True, "skipped_slice_fraction": 1.0, "slices_run_stage2": 0}},
            {"scan": "s1", "variant": "ort-int8-cpu-nogate", "seconds": 8.0, "speedup_vs_papers": 5.0}]
    targets = evaluate_targets([scan], variants, rows)
    speed = next(t for t in targets if "papers' way" in t["name"] and "faster" in t["name"])
    assert speed["met"] is None and "NOT REPRESENTATIVE" in speed["measured"]


@pytest.mark.parametrize("sets, says", [(["avx2", "fma"], True), (["avx2", "avx512_vnni"], False), ([], False)])
def test_the_report_says_when_this_cpus_int8_kernel_can_saturate(sets, says):
    """An AVX2-only host runs the bench's int8 rows with the package's 8-bit weights, which
    kidedge infer's auto would not there: the report's machine lines say so."""
    from kidedge.bench.report import _machine_lines

    lines = _machine_lines({"cpu": {"model": "x", "architecture": "x86_64", "usable_cores": 2, "logical_cores": 2,
                                    "instruction_sets": sets}})
    assert any("int8 on this CPU: AVX2 without VNNI" in line for line in lines) == says
