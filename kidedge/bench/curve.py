"""Seconds per scan and peak RSS against scan length: the read floor, both same-work
baselines and kidedge's default, on phantoms of KiTS19 label geometry from about 100 to
1000 slices, one fresh process per run (:func:`kidedge.bench.measure.measure`).

One run per scan and variant, scans in order of length, variants interleaved within each
scan; the report draws it as ``curve.png`` (:func:`kidedge.bench.report.plot_curve`).
"""

from __future__ import annotations

from pathlib import Path

from kidedge.bench.measure import measure
from kidedge.bench.scans import make_bench_scans
from kidedge.bench.variants import CHILD_TIMEOUT_S, plan_variants


def _layout(image: Path) -> str:
    """``KiTS`` (slice axis fastest: read whole) or ``streaming`` (slice axis slowest)."""
    from kidedge.io import SlabReader, load_scan

    return "KiTS" if SlabReader(load_scan(image), slab_size=16).strategy == "whole" else "streaming"


def run_curve(package, model, targets: tuple[int, ...], work: Path, outputs: Path, labels_root,
              threads: int | None, synthetic_shape, echo, baseline_max_slices: int | None = None) -> dict:
    """Measure the curve; returns ``{"scans": [...], "variants": [...], "rows": [...]}``
    (rows: variant, scan, slices, seconds, cpu_s, peak_rss_mb, layout, ok, error).

    ``baseline_max_slices``: run the baselines only on scans up to this length (they take
    minutes per long scan on a loaded 2-core CPU); None: on every scan.
    """
    scans = sorted(make_bench_scans(work / "scans", labels_root=labels_root, targets=targets,
                                    synthetic_shape=synthetic_shape), key=lambda s: s.slices)
    variants = plan_variants(package, curve=True)
    rows = []
    for i, scan in enumerate(scans):
        layout = _layout(scan.image)
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for v in order:
            if v.kind == "baseline" and baseline_max_slices is not None and scan.slices > baseline_max_slices:
                continue
            dest = outputs / scan.name / f"curve-{v.name}.nii.gz"
            dest.parent.mkdir(parents=True, exist_ok=True)
            spec = {"kind": v.runner, "image": str(scan.image), "out": str(dest), "model": str(model),
                    "backend": v.backend, "precision": v.precision, "gate": v.gate, "threads": threads,
                    "region": v.region}
            r = measure(spec, timeout_s=CHILD_TIMEOUT_S)
            rows.append({"variant": v.name, "scan": scan.name, "slices": scan.slices, "layout": layout,
                         "ok": bool(r.get("ok")), "error": r.get("error"),
                         "seconds": round(r["scan_s"], 3) if r.get("ok") else None,
                         "cpu_s": round(r["scan_cpu_s"], 2) if r.get("ok") else None,
                         "setup_s": round(r["setup_s"], 2) if r.get("ok") else None,
                         "peak_rss_mb": round(r["peak_rss_mb"], 1) if r.get("ok") else None})
            state = f"{r['scan_s']:.2f} s, peak {r['peak_rss_mb']:.0f} MB" if r.get("ok") else f"FAILED: {r.get('error')}"
            echo(f"  [curve] {scan.name} {v.name}: {state}")
            dest.unlink(missing_ok=True)
            dest.with_name(f"curve-{v.name}.volumes.json").unlink(missing_ok=True)
    from kidedge.bench.run import portable_scan

    return {"scans": [portable_scan(s.to_dict(), work) for s in scans], "variants": [v.to_dict() for v in variants],
            "rows": rows,
            "baseline_max_slices": baseline_max_slices}
