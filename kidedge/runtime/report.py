"""The run report: the profile as JSON, and a short human summary for the terminal."""

from __future__ import annotations

import os

from kidedge.io.writer import write_json_atomic


def write_report_json(report: dict, path: str | os.PathLike) -> None:
    """Write ``report`` as JSON atomically (temporary name, then rename)."""
    write_json_atomic(path, report)


def _fmt(v, unit: str = "", nd: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def format_summary(scan_report: dict) -> str:
    """A few aligned lines summarising one scan's run (``run_scan``'s report dict)."""
    p = scan_report.get("profile", {})
    lat = p.get("latency_ms", {})
    rows = [
        ("scan", f"{scan_report.get('scan')}  {tuple(scan_report.get('shape', ()))}"),
        ("backend", scan_report.get("backend", "?")),
        ("wall", f"{_fmt(p.get('wall_s'), ' s', 2)}   {_fmt(p.get('slices_per_s'), ' slices/s', 1)}"),
        # a 3D package's latency is per window (its patch), the 2D runtime's per slice
        ("latency/window" if "window" in str(p.get("info", {}).get("latency_unit", "")) else "latency/slice",
         f"p50 {_fmt(lat.get('p50'), ' ms')}  p95 {_fmt(lat.get('p95'), ' ms')}  p99 {_fmt(lat.get('p99'), ' ms')}"),
        ("stages", "  ".join(f"{k} {1000 * v:.0f}ms" for k, v in p.get("stages_s", {}).items())),
        ("peak RSS", f"{_fmt(p.get('peak_rss_mb'), ' MiB')} (process high-water mark {_fmt(p.get('max_rss_mb'), ' MiB')})"),
    ]
    gpu = p.get("gpu")
    if gpu:
        rows.append(("peak GPU mem", f"{_fmt(gpu.get('peak_memory_mb'), ' MiB')} ({gpu.get('name')})"))
    energy = p.get("energy") or {}
    rows.append(("energy", f"{_fmt(energy.get('joules'), ' J', 2)} ({energy.get('source')})" if energy.get("joules") is not None else "n/a (no power sensor)"))
    gate = scan_report.get("gating")
    if gate and gate.get("enabled"):
        rows.append(("gating", f"stage 2 skipped {100 * gate['skipped_slice_fraction']:.1f}% of slices, "
                               f"{100 * gate['skipped_pixel_fraction']:.1f}% of pixels"))
    vol = scan_report.get("volumes_ml")
    if vol:
        rows.append(("volumes", "  ".join(f"{k} {v:.1f} mL" for k, v in vol.items() if isinstance(v, (int, float)))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
