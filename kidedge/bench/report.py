"""Benchmark report: ``bench.json``, ``bench.md`` and two PNG plots in one results folder.

The input is the result set :func:`kidedge.bench.run_bench` assembles (see
:func:`write_report` for its shape). Everything in the report is read from that set: the
writer computes no numbers of its own beyond formatting, so the JSON and the Markdown
always agree. Files are written to temporary names and renamed, so an interrupted run
never leaves a half-written report over a good one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kidedge.environment import int8_pairs_saturate
from kidedge.io.writer import save_png_atomic, write_text_atomic

#: Plot colours by variant kind, so baselines and kidedge read apart at a glance.
KIND_COLOURS = {"floor": "#999999", "baseline": "#d62728", "kidedge": "#1f77b4"}


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _dice_cell(d: dict | None, key: str) -> str:
    if not d or d.get(key) is None:
        return "-"
    return f"{d[key]:.3f}"


def _machine_lines(machine: dict) -> list[str]:
    cpu = machine.get("cpu", {})
    gpus = machine.get("gpus") or []
    lines = [
        f"- CPU: {cpu.get('model', '?')} ({cpu.get('architecture', '?')}), "
        f"{cpu.get('usable_cores', '?')} usable of {cpu.get('logical_cores', '?')} logical cores; "
        f"instruction sets: {' '.join(cpu.get('instruction_sets', [])) or 'none of interest'}",
        "- GPU: " + (", ".join(f"{g['name']} ({g.get('memory_mib', '?')} MiB)" for g in gpus) if gpus else "none"),
    ]
    if cpu.get("instruction_sets") and int8_pairs_saturate(cpu):
        lines.append("- int8 on this CPU: AVX2 without VNNI, where ONNX Runtime's int8 kernel can saturate with "
                     "8-bit int8-cpu weights; the int8 rows run the package's int8-cpu model all the same "
                     "(`kidedge infer`'s auto would run fp32 here; export with --int8-cpu-weight-bits 7 for such CPUs)")
    libs = machine.get("libraries") or {}
    if libs:
        lines.append("- libraries: " + ", ".join(f"{k} {v or 'missing'}" for k, v in libs.items()))
    ort = (machine.get("backends") or {}).get("onnxruntime") or {}
    if ort:
        lines.append(f"- onnxruntime {ort.get('version')} providers: {', '.join(ort.get('providers', []))}")
    if machine.get("python"):
        lines.append(f"- python {machine['python']} on {machine.get('platform', '?')}")
    return lines


def markdown_report(results: dict) -> str:
    """The human summary of a result set, as Markdown."""
    variants = {v["name"]: v for v in results["variants"]}
    lines = [f"# kidedge latency benchmark{' (quick)' if results.get('quick') else ''}", ""]
    lines.append(f"Machine `{results['machine_label']}`, run {results.get('created', '?')}.")
    load = results.get("load_average")
    if load:
        lines.append(f"Load average (1 min) at start {load['start']:.1f}, at end {load['end']:.1f} on "
                     f"{load['cores']} cores: other jobs shared the machine, so wall times stretch with their "
                     "load; CPU seconds and ratios within one scan are steadier.")
    lines.append("")
    lines += _machine_lines(results.get("machine", {}))
    model = results.get("model", {})
    lines += ["", f"Model package: `{model.get('name', '?')}` ({model.get('source', '?')}); stages: "
              + ", ".join(f"{s['name']} ({s.get('role', '?')}, {s.get('arch', '?')}, "
                          f"{s.get('input', '?')})" for s in model.get("stages", [])), ""]
    if results.get("method"):
        lines += ["## Method", ""] + [f"- {m}" for m in results["method"]] + [""]

    lines += ["## Scans", "", "| scan | slices | shape | spacing (mm) | label geometry from | file (MB) |",
              "| --- | ---: | --- | --- | --- | ---: |"]
    for s in results["scans"]:
        lines.append(f"| {s['name']} | {s['slices']} | {'x'.join(str(v) for v in s['shape'])} | "
                     f"{', '.join(f'{v:.2f}' for v in s['spacing_mm'])} | {s.get('source', '-')} | "
                     f"{_fmt(s.get('file_mb'), 1)} |")
    lines.append("")

    targets = results.get("targets") or []
    if targets:
        lines += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
        for t in targets:
            met = {True: "yes", False: "**no**", None: "n/a"}[t.get("met")]
            lines.append(f"| {t['name']} | {t['measured']} | {met} |")
        lines.append("")

    lines += ["## Results per scan", "",
              "Seconds are end to end per scan in a fresh process (read, preprocess, infer, "
              "post-process, write; model loading reported apart as setup), median of the repeats; "
              "CPU s is the process's CPU time over the same span (all threads; less sensitive than wall "
              "time to other load on a shared machine). "
              "Speed-ups are baseline seconds / variant seconds; x floor is variant seconds / the "
              "time to merely read and decompress the scan. Dice is the KiTS hierarchical "
              "kidney (1+2+3) and masses (2+3) Dice against the fp32 reference (the papers' way) "
              "and against the phantom's truth.", ""]
    by_scan: dict[str, list[dict]] = {}
    for row in results["summary"]:
        by_scan.setdefault(row["scan"], []).append(row)
    for scan in results["scans"]:
        rows = by_scan.get(scan["name"], [])
        lines += [f"### {scan['name']} ({scan['slices']} slices)", "",
                  "| variant | s/scan | CPU s | slices/s | setup s | x vs papers | x vs MONAI | x floor | peak RSS MB | "
                  "kidney vs ref | masses vs ref | kidney vs truth | masses vs truth | runs |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            if r.get("error"):
                lines.append(f"| {variants[r['variant']]['label']} | failed: {r['error']} |" + " |" * 12)
                continue
            lines.append(
                f"| {variants[r['variant']]['label']} | {_fmt(r['seconds'])} | {_fmt(r.get('cpu_s'), 1)} | {_fmt(r.get('slices_per_s'), 1)} | "
                f"{_fmt(r.get('setup_s'))} | {_fmt(r.get('speedup_vs_papers'), 1, 'x')} | "
                f"{_fmt(r.get('speedup_vs_monai'), 1, 'x')} | {_fmt(r.get('ratio_to_floor'), 1, 'x')} | "
                f"{_fmt(r.get('peak_rss_mb'), 0)} | {_dice_cell(r.get('dice_vs_reference'), 'kidney')} | "
                f"{_dice_cell(r.get('dice_vs_reference'), 'masses')} | {_dice_cell(r.get('dice_vs_truth'), 'kidney')} | "
                f"{_dice_cell(r.get('dice_vs_truth'), 'masses')} | {r.get('repeats', 1)} |")
        lines.append("")
        staged = [r for r in rows if r.get("stages")]
        if staged:
            lines += ["Per-stage wall time (s, median run):", ""]
            for r in staged:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items() if isinstance(v, (int, float)))
                extra = ""
                if r.get("gate_fraction") is not None:
                    extra = f"; stage 2 ran on {100 * r['gate_fraction']:.0f}% of slices"
                    px = (r.get("gating") or {}).get("skipped_pixel_fraction")
                    if px is not None:
                        extra += f", {100 * (1 - px):.1f}% of pixels"
                lines.append(f"- {variants[r['variant']]['label']}: {parts}{extra}")
            lines.append("")

    lines += _curve_lines(results.get("curve"))
    plots = results.get("plots") or {}
    if plots:
        lines += ["## Plots", ""]
        for title, name in plots.items():
            lines += [f"![{title}]({name})", ""]
    if results.get("not_measured"):
        lines += ["## Not measured here", ""] + [f"- {n}" for n in results["not_measured"]] + [""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def _curve_lines(curve: dict | None) -> list[str]:
    """The curve as a table: seconds and peak RSS per scan length and variant."""
    if not curve or not curve.get("rows"):
        return []
    labels = {v["name"]: v["label"] for v in curve["variants"]}
    by = {(r["slices"], r["variant"]): r for r in curve["rows"]}
    slices = sorted({r["slices"] for r in curve["rows"]})
    names = [v["name"] for v in curve["variants"]]
    lines = ["## Time and memory against scan length", "",
             "One run per scan and variant (fresh process each), phantoms of "
             + ", ".join(f"{s['slices']} slices ({s.get('source', '?')})" for s in curve.get("scans", []))
             + f", {', '.join(sorted({r['layout'] for r in curve['rows']}))} file layout; seconds per scan / "
             "peak RSS in MB. Plot: curve.png."
             + (f" The baselines ran on scans up to {curve['baseline_max_slices']} slices only (time)."
                if curve.get("baseline_max_slices") else ""), "",
             "| variant | " + " | ".join(f"{n} slices" for n in slices) + " |",
             "| --- |" + " ---: |" * len(slices)]
    for name in names:
        cells = []
        for n in slices:
            r = by.get((n, name))
            cells.append("-" if r is None else ("failed" if not r["ok"] else
                                                f"{r['seconds']:.1f} s / {r['peak_rss_mb']:.0f} MB"))
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_curve(curve: dict, path: Path, machine_label: str) -> None:
    """Two panels against slices per scan: seconds per scan, and peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.5))
    for v in curve["variants"]:
        pts = sorted((r["slices"], r["seconds"], r["peak_rss_mb"]) for r in curve["rows"]
                     if r["variant"] == v["name"] and r["ok"])
        if not pts:
            continue
        style = "--" if v["kind"] == "baseline" else (":" if v["kind"] == "floor" else "-")
        for ax, k in ((ax_t, 1), (ax_m, 2)):
            ax.plot([p[0] for p in pts], [p[k] for p in pts], style, marker="o", label=v["label"])
    ax_t.set_ylabel("seconds per scan")
    ax_t.set_yscale("log")
    ax_m.set_ylabel("peak RSS (MB)")
    for ax in (ax_t, ax_m):
        ax.set_xlabel("slices in scan (512 x 512)")
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize=7)
    fig.suptitle(f"Time and memory against scan length ({machine_label})", fontsize=10)
    fig.tight_layout()
    save_png_atomic(fig, path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict, path: Path) -> None:
    """Horizontal bars: seconds per scan for every variant, one panel per scan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = {v["name"]: v for v in results["variants"]}
    scans = results["scans"]
    fig, axes = plt.subplots(1, len(scans), figsize=(5.5 * len(scans), 0.45 * len(variants) + 1.6),
                             squeeze=False)
    for ax, scan in zip(axes[0], scans, strict=True):
        rows = [r for r in results["summary"] if r["scan"] == scan["name"] and r.get("seconds") is not None]
        labels = [variants[r["variant"]]["label"] for r in rows]
        secs = [r["seconds"] for r in rows]
        colours = [KIND_COLOURS.get(variants[r["variant"]]["kind"], "#2ca02c") for r in rows]
        ax.barh(range(len(rows)), secs, color=colours)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("seconds per scan (log)")
        ax.set_title(f"{scan['name']}: {scan['slices']} slices", fontsize=10)
        for i, s in enumerate(secs):
            ax.text(s, i, f" {s:.2f}", va="center", fontsize=7)
    fig.suptitle(f"End-to-end latency by backend and precision ({results['machine_label']})", fontsize=10)
    fig.tight_layout()
    save_png_atomic(fig, path, dpi=110)
    plt.close(fig)


def plot_memory(results: dict, path: Path) -> None:
    """Peak RSS against scan length, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = {s["name"]: s["slices"] for s in results["scans"]}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in results["variants"]:
        pts = sorted((slices[r["scan"]], r["peak_rss_mb"]) for r in results["summary"]
                     if r["variant"] == v["name"] and r.get("peak_rss_mb") is not None)
        if not pts:
            continue
        style = "--" if v["kind"] == "baseline" else (":" if v["kind"] == "floor" else "-")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=v["label"])
    ax.set_xlabel("slices in scan")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title(f"Peak memory against scan length ({results['machine_label']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png_atomic(fig, path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md``, ``latency.png`` and ``memory.png`` into ``out_dir``.

    Args:
        results: the result set: ``machine_label``, ``machine`` (kidedge.environment.describe()),
            ``scans`` (name, slices, shape, spacing_mm, ...), ``variants`` (name, label, kind in
            floor|baseline|kidedge, ...), ``summary`` (one row per scan x variant: seconds,
            slices_per_s, peak_rss_mb, stages, dice_vs_reference, dice_vs_truth, speed-ups),
            and optionally ``runs``, ``targets``, ``method``, ``not_measured``, ``notes``.
        out_dir: the results folder (created).

    Returns:
        The paths written, by kind ("json", "md", "latency", "memory").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    results["plots"] = {"Latency by backend and precision": "latency.png",
                        "Peak RSS against scan length": "memory.png"}
    paths = {"json": out / "bench.json", "md": out / "bench.md",
             "latency": out / "latency.png", "memory": out / "memory.png"}
    plot_latency(results, paths["latency"])
    plot_memory(results, paths["memory"])
    if (results.get("curve") or {}).get("rows"):
        paths["curve"] = out / "curve.png"
        results["plots"]["Seconds per scan and peak RSS against scan length"] = "curve.png"
        plot_curve(results["curve"], paths["curve"], results["machine_label"])
    write_text_atomic(paths["json"], json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")
    write_text_atomic(paths["md"], markdown_report(results))
    return paths
