"""The benchmark's numbers: medians over repeats, ratios to the baselines and the read
floor, Dice, and the targets each with what was measured and whether it was met."""

from __future__ import annotations

import statistics

import numpy as np

from kidedge import metrics
from kidedge.bench.scans import BenchScan
from kidedge.bench.variants import Variant
from kidedge.io import SlabReader, load_scan


def hierarchical_dice(pred: np.ndarray, ref: np.ndarray) -> dict:
    """KiTS hierarchical Dice (:func:`kidedge.metrics.hierarchical_dice`) to 4 digits; a
    region empty in both maps scores None (undefined), not 1."""
    return {k: None if v is None else round(float(v), 4)
            for k, v in metrics.hierarchical_dice(pred, ref, empty=None).items()}


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def summarise(scans: list[BenchScan], variants: list[Variant], runs: list[dict],
              dice: dict | None = None) -> list[dict]:
    """One row per scan x variant: medians over the repeats, ratios, Dice.

    Args:
        scans, variants: what ran.
        runs: the measurements (``scan``, ``variant``, ``ok``, ``scan_s``, ``setup_s``,
            ``peak_rss_mb``, ``stages``, ``gating``...).
        dice: ``{(scan, variant): {"vs_reference": {...}, "vs_truth": {...}}}``.
    """
    rows = []
    for scan in scans:
        per = {}
        for v in variants:
            ok = [r for r in runs if r["scan"] == scan.name and r["variant"] == v.name and r.get("ok")]
            bad = [r for r in runs if r["scan"] == scan.name and r["variant"] == v.name and not r.get("ok")]
            if not ok:
                if bad:
                    per[v.name] = {"scan": scan.name, "variant": v.name, "error": bad[-1].get("error", "failed"),
                                   "seconds": None}
                continue
            secs = [r["scan_s"] for r in ok]
            med = _median(secs)
            mid = min(ok, key=lambda r: abs(r["scan_s"] - med))  # the median run, for its breakdown
            gating = mid.get("gating") or {}
            row = {
                "scan": scan.name, "variant": v.name, "repeats": len(ok),
                "seconds": round(med, 4), "seconds_all": [round(s, 4) for s in secs],
                "slices_per_s": round(scan.slices / med, 2) if med else None,
                "cpu_s": round(_median([r["scan_cpu_s"] for r in ok if r.get("scan_cpu_s") is not None]) or 0.0, 3),
                "setup_s": round(_median([r["setup_s"] for r in ok]), 3),
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in ok), 1),
                "scan_peak_rss_mb": round(max(r["scan_peak_rss_mb"] for r in ok), 1),
                "rss_before_scan_mb": mid.get("rss_before_scan_mb"),
                "stages": {k: round(float(val), 4) for k, val in (mid.get("stages") or {}).items()},
                "engine": mid.get("engine"),
                "gate_fraction": (1.0 - gating["skipped_slice_fraction"]) if gating.get("enabled") else None,
                "gating": gating or None,
                "latency_ms": (mid.get("profile") or {}).get("latency_ms"),
                "gpu": (mid.get("profile") or {}).get("gpu"),
                "energy": (mid.get("profile") or {}).get("energy"),
            }
            if dice and (scan.name, v.name) in dice:
                row["dice_vs_reference"] = dice[(scan.name, v.name)].get("vs_reference")
                row["dice_vs_truth"] = dice[(scan.name, v.name)].get("vs_truth")
            per[v.name] = row
        base = {k: per[k]["seconds"] for k in ("floor", "papers", "monai") if k in per and per[k].get("seconds")}
        for v in variants:
            row = per.get(v.name)
            if row is None:
                continue
            if row.get("seconds"):
                if "papers" in base:
                    row["speedup_vs_papers"] = round(base["papers"] / row["seconds"], 2)
                if "monai" in base:
                    row["speedup_vs_monai"] = round(base["monai"] / row["seconds"], 2)
                if "floor" in base:
                    row["ratio_to_floor"] = round(row["seconds"] / base["floor"], 2)
            rows.append(row)
    return rows


#: Issue 13's targets, on this 2-core CPU.
SPEEDUP_TARGET = 5.0          # kidedge's default >= 5x faster than each same-work baseline
FLOOR_TARGET, FLOOR_AIM = 2.0, 1.5  # kidedge's default <= 2.0x the read floor (aim 1.5x)
FLOOR_SCAN_SLICES = 600       # ... judged on the scan of about 600 slices (or the longest)
SAME_WORK_DICE = 0.99         # papers' way and kidedge fp32 agree (Dice per region)
INT8_DICE_GAP = 0.005         # int8 Dice against the truth within this of fp32's
RSS_LIMIT_MB, RSS_AT_SLICES = 1000.0, 800  # peak RSS in the KiTS layout at 800 slices


def evaluate_targets(scans: list[BenchScan], variants: list[Variant], summary: list[dict],
                     curve: dict | None = None) -> list[dict]:
    """The issue's targets, each with what was measured and whether it was met."""
    names = {v.name for v in variants}
    fast = next((n for n in ("ort-int8-cpu-gated", "ort-int8-cpu", "ort-int8-trt-gated") if n in names), None)
    rows = {(r["scan"], r["variant"]): r for r in summary}
    if fast is None:
        return [{"name": "kidedge int8 with gating", "measured": "the package has no int8 model", "met": None}]
    label = next(v.label for v in variants if v.name == fast)
    targets = []
    # A gated run whose stage 2 never ran (an untrained localiser that finds no kidney)
    # timed the localiser alone: its speed-up says nothing about the target.
    idle = [s.slices for s in scans if ((rows.get((s.name, fast)) or {}).get("gating") or {}).get("enabled")
            and rows[(s.name, fast)]["gating"].get("skipped_slice_fraction") == 1.0]
    # issue 13 sets every ratio on the 600-slice scan; the other scans are listed beside it
    floor_scan = min(scans, key=lambda s: (abs(s.slices - FLOOR_SCAN_SLICES), -s.slices))
    for base, what in (("papers", "the papers' way (same work)"), ("monai", "MONAI SliceInferer (same work)")):
        vals = [(s.slices, rows.get((s.name, fast), {}).get(f"speedup_vs_{base}")) for s in scans]
        vals = [(n, x) for n, x in vals if x is not None]
        measured = ", ".join(f"{x:.1f}x ({n} slices)" for n, x in vals) or "not measured"
        judged = next((x for n, x in vals if n == floor_scan.slices), None)
        met = None if judged is None else judged >= SPEEDUP_TARGET
        if idle:
            measured += (f"; NOT REPRESENTATIVE: stage 2 ran on no slice of the {', '.join(map(str, idle))}-slice "
                         "scan(s) (the localiser found no kidney), so this timed the localiser alone")
            met = None
        targets.append({"name": f"{label} >= {SPEEDUP_TARGET:g}x faster end to end than {what}, "
                                f"judged on the {floor_scan.slices}-slice scan",
                        "measured": measured, "met": met})
    vals = [(s.slices, rows.get((s.name, fast), {}).get("ratio_to_floor")) for s in scans]
    vals = [(n, x) for n, x in vals if x is not None]
    judged = next((x for n, x in vals if n == floor_scan.slices), None)
    targets.append({
        "name": f"{label} <= {FLOOR_TARGET:g}x the read floor (nibabel reading the scan; aim {FLOOR_AIM:g}x), "
                f"judged on the {floor_scan.slices}-slice scan",
        "measured": ", ".join(f"{x:.2f}x ({n} slices)" for n, x in vals) or "not measured",
        "met": None if judged is None else judged <= FLOOR_TARGET})
    agree = []
    for s in scans:
        d = (rows.get((s.name, "ort-fp32-gated")) or {}).get("dice_vs_reference") or {}
        agree += [(s.slices, reg, d[reg]) for reg in ("kidney", "masses") if d.get(reg) is not None]
    targets.append({
        "name": f"same work: kidedge onnxruntime fp32 gated and the papers' way give the same labels "
                f"(Dice >= {SAME_WORK_DICE:g} per region)",
        "measured": "; ".join(f"{reg} {d:.4f} ({n} slices)" for n, reg, d in agree) or "not measured",
        "met": all(d >= SAME_WORK_DICE for _, _, d in agree) if agree else None})
    gaps = []
    for s in scans:
        a, b = rows.get((s.name, fast)), rows.get((s.name, "ort-fp32-gated"))
        if not a or not b or not a.get("dice_vs_truth") or not b.get("dice_vs_truth"):
            continue
        for reg in ("kidney", "masses"):
            x, y = a["dice_vs_truth"].get(reg), b["dice_vs_truth"].get(reg)
            if x is not None and y is not None:
                gaps.append((s.slices, reg, x - y))
    targets.append({
        "name": f"{label}: Dice against the truth within {INT8_DICE_GAP:g} of kidedge fp32 gated (same runtime)",
        "measured": "; ".join(f"{reg} {d:+.4f} ({n} slices)" for n, reg, d in gaps) or "not measured",
        "met": all(abs(d) <= INT8_DICE_GAP for _, _, d in gaps) if gaps else None})
    targets += _memory_targets(fast, label, curve)
    extra = [v for v in variants if v.extra]
    for v in extra:
        vals = [(s.slices, rows.get((s.name, v.name), {}).get("seconds"),
                 rows.get((s.name, fast), {}).get("seconds")) for s in scans]
        vals = [(n, a / b) for n, a, b in vals if a and b]
        targets.append({"name": f"for reference only, not the same work: {v.label} / {label}",
                        "measured": ", ".join(f"{x:.1f}x ({n} slices)" for n, x in vals) or "not measured",
                        "met": None})
    return targets


def _memory_targets(fast: str, label: str, curve: dict | None) -> list[dict]:
    """Peak RSS of kidedge's default against scan length, from the curve's scans."""
    if not curve:
        return []
    pts = sorted((r["slices"], r["peak_rss_mb"], r.get("layout")) for r in curve.get("rows", [])
                 if r["variant"] == fast and r.get("peak_rss_mb") is not None)
    if not pts:
        return []
    near = min(pts, key=lambda p: abs(p[0] - RSS_AT_SLICES))
    judged = abs(near[0] - RSS_AT_SLICES) <= 0.2 * RSS_AT_SLICES  # no scan near 800 slices: not judged
    (n0, m0, _), (n1, m1, _) = pts[0], pts[-1]
    per_slice = (m1 - m0) / (n1 - n0) if n1 > n0 else 0.0
    layout = "KiTS layout: read whole as int16, 0.5 MB per 512x512 slice" if near[2] == "KiTS" else f"{near[2]} layout"
    return [{"name": f"{label}: peak RSS <= {RSS_LIMIT_MB:g} MB at about {RSS_AT_SLICES} slices ({layout})",
             "measured": f"{near[1]:.0f} MB at {near[0]} slices; {m0:.0f} MB ({n0} slices) -> {m1:.0f} MB "
                         f"({n1} slices), +{per_slice:.2f} MB per slice",
             "met": (near[1] <= RSS_LIMIT_MB) if judged else None}]


def _streams(scan: BenchScan) -> bool:
    """Whether kidedge's reader streams this scan's file slab by slab (slice axis slowest)."""
    try:
        return SlabReader(load_scan(scan.image), slab_size=16).strategy != "whole"
    except Exception:  # the target's wording only; the scan was read fine by the runs
        return False


