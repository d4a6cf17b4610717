"""``kidedge bench``: kidedge's runtime against the baselines users would otherwise run.

Same model package, same scans, one run: every variant (the read-only floor, the papers'
way, MONAI's SliceInferer, kidedge per backend / precision / gating) runs on every scan in
a fresh child process (:mod:`.measure`), interleaved and repeated, and the report
(:mod:`.report`) gives medians, ratios, per-stage times, peak RSS and Dice.

Modules: :mod:`.scans` (phantoms on real KiTS19 label geometry), :mod:`.baselines` (torch
and MONAI, torch imported only inside them), :mod:`.kidedge_variant` (``kidedge infer``'s
per-scan path), :mod:`.measure` (child processes), :mod:`.report` (JSON, Markdown, PNG).
Importing this package does not import torch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from kidedge import metrics
from kidedge.bench.scans import FULL_TARGETS, QUICK_TARGETS, BenchScan, make_bench_scans
from kidedge.errors import KidedgeError

__all__ = ["Variant", "plan_variants", "run_bench", "summarise"]

#: A single run longer than this is stopped and reported as a failure.
CHILD_TIMEOUT_S = 3600.0


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of segmenting a scan.

    Args:
        name: identifier (file names, JSON keys).
        label: what the report calls it.
        kind: ``floor`` (read only), ``baseline`` (papers / MONAI) or ``kidedge``.
        runner: ``floor``, ``papers``, ``monai`` or ``kidedge`` (the child's runner).
        backend, precision, gate: for kidedge variants.
        expensive: runs every slice at full resolution (repeated less on long scans).
    """

    name: str
    label: str
    kind: str
    runner: str
    backend: str | None = None
    precision: str | None = None
    gate: bool | None = None
    expensive: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_variants(package, quick: bool = False, monai: bool | None = None, torch: bool | None = None) -> list[Variant]:
    """The variants to run for ``package`` on this machine.

    kidedge runs onnxruntime (CPU here) for each ONNX precision the package carries (fp16
    only where a GPU exists: onnxruntime's CPU provider has no fast fp16), gated and not
    gated for a cascade; the torch backend fp32 (gated). The quick bench keeps the floor,
    both baselines and kidedge fp32 and int8 with gating.
    """
    from kidedge.runtime.backends.registry import has_nvidia_gpu

    have_torch = importlib.util.find_spec("torch") is not None if torch is None else torch
    have_monai = importlib.util.find_spec("monai") is not None if monai is None else monai
    every = set.intersection(*(set(s.files) for s in package.stages))
    cascade = len(package.stages) > 1
    out = [Variant("floor", "read + decompress only (floor)", "floor", "floor")]
    if have_torch and "torch" in every:
        out.append(Variant("papers", "papers' way (torch eager fp32, whole volume)", "baseline", "papers",
                           expensive=True))
        if have_monai:
            out.append(Variant("monai", "MONAI SliceInferer (torch fp32)", "baseline", "monai", expensive=True))
    precisions = [p for p in ("fp32", "int8-cpu", "int8-trt", "fp16") if p in every]
    if "fp16" in precisions and not has_nvidia_gpu():
        precisions.remove("fp16")
    gates = (True, False) if cascade else (True,)
    gpu = has_nvidia_gpu()
    for p in precisions:
        for g in gates:
            if quick and (not g or p not in ("fp32", "int8-cpu")):
                continue
            if p == "int8-trt" and not g and not gpu:
                # the TensorRT-flavoured QDQ model on onnxruntime's CPU provider: run it gated
                # for its latency and Dice, but not also over every slice at full resolution
                # (the slowest kind of run; int8-cpu no-gate already shows int8 without gating)
                continue
            tag = "" if not cascade else (" gated" if g else " no gate")
            out.append(Variant(f"ort-{p}{'-gated' if g and cascade else ''}{'-nogate' if not g else ''}",
                               f"kidedge onnxruntime {p}{tag}", "kidedge", "kidedge", "onnxruntime", p, g,
                               expensive=not g and cascade))
    if have_torch and "torch" in every and not quick:
        out.append(Variant(f"torch-fp32{'-gated' if cascade else ''}", f"kidedge torch fp32{' gated' if cascade else ''}",
                           "kidedge", "kidedge", "torch", "fp32", True))
    return out


def repeats_for(scan: BenchScan, variant: Variant, repeats: int) -> int:
    """How many times to run ``variant`` on ``scan``: cheap runs are repeated (medians of a
    noisy shared machine), full-resolution runs of long scans once."""
    if variant.expensive and scan.slices > 100:
        return 1
    if scan.slices > 400:
        return min(repeats, 2)
    return repeats


def _default_labels() -> Path | None:
    """``../shared/data/kits19-labels`` beside the repository (or the working folder)."""
    here = Path(__file__).resolve().parents[2]
    for root in (here, Path.cwd()):
        p = root.parent / "shared" / "data" / "kits19-labels"
        if p.is_dir():
            return p
    return None


def _package_id(package) -> str:
    text = json.dumps(package.manifest.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.uint8)


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


def evaluate_targets(scans: list[BenchScan], variants: list[Variant], summary: list[dict]) -> list[dict]:
    """The issue's targets, each with what was measured and whether it was met."""
    names = {v.name for v in variants}
    fast = next((n for n in ("ort-int8-cpu-gated", "ort-int8-cpu", "ort-int8-trt-gated") if n in names), None)
    rows = {(r["scan"], r["variant"]): r for r in summary}
    targets = []
    if fast is None:
        return [{"name": "kidedge int8 with gating", "measured": "the package has no int8 model", "met": None}]
    label = next(v.label for v in variants if v.name == fast)
    # A gated run whose stage 2 never ran (an untrained localiser that finds no kidney)
    # timed the localiser alone: its speed-up says nothing about the target.
    idle_stage2 = [s.slices for s in scans
                   if ((rows.get((s.name, fast)) or {}).get("gating") or {}).get("enabled")
                   and rows[(s.name, fast)]["gating"].get("skipped_slice_fraction") == 1.0]
    for base, need, what in (("papers", 10.0, "the papers' way"), ("monai", 5.0, "MONAI SliceInferer")):
        vals = [(s.slices, rows.get((s.name, fast), {}).get(f"speedup_vs_{base}")) for s in scans]
        vals = [(n, x) for n, x in vals if x is not None]
        measured = ", ".join(f"{x:.1f}x ({n} slices)" for n, x in vals) or "not measured"
        met = all(x >= need for _, x in vals) if vals else None
        if idle_stage2:
            measured += (f"; NOT REPRESENTATIVE: stage 2 ran on no slice of the {', '.join(map(str, idle_stage2))}-slice "
                         "scan(s) (the localiser found no kidney), so this timed the localiser alone")
            met = None
        targets.append({"name": f"{label} >= {need:g}x faster end to end than {what}", "measured": measured,
                        "met": met})
    nogate = fast.replace("-gated", "-nogate")
    if nogate != fast and nogate in names:
        # the same work as the baselines (segmenter on every slice): the runtime's own speed-up
        nlabel = next(v.label for v in variants if v.name == nogate)
        parts = []
        for base, what in (("papers", "papers' way"), ("monai", "MONAI")):
            vals = [(s.slices, rows.get((s.name, nogate), {}).get(f"speedup_vs_{base}")) for s in scans]
            parts += [f"{x:.1f}x vs {what} ({n} slices)" for n, x in vals if x is not None]
        targets.append({"name": f"for reference, {nlabel} (every slice at full resolution, the baselines' work)",
                        "measured": ", ".join(parts) or "not measured", "met": None})
    gaps, no_reference = [], False
    for s in scans:
        r, ref = rows.get((s.name, fast)), rows.get((s.name, "papers"))
        if not r or not ref or not r.get("dice_vs_truth") or not ref.get("dice_vs_truth"):
            continue
        if (ref["dice_vs_truth"].get("kidney") or 0.0) < 0.1:
            no_reference = True  # the fp32 model itself finds no kidney: nothing to hold int8 to
            continue
        for region in ("kidney", "masses"):
            a, b = r["dice_vs_truth"].get(region), ref["dice_vs_truth"].get(region)
            if a is not None and b is not None:
                gaps.append((s.slices, region, a - b, (r.get("dice_vs_reference") or {}).get(region)))
    targets.append({
        "name": f"{label}: Dice against truth within 0.01 of the fp32 reference (papers' way)",
        "measured": "; ".join(f"{reg} {d:+.4f} ({n} slices; agreement with fp32 {'-' if agr is None else f'{agr:.3f}'})"
                              for n, reg, d, agr in gaps) or ("not meaningful: the fp32 reference finds no kidney "
                                                              "(untrained model?)" if no_reference else "not measured"),
        "met": (all(abs(d) <= 0.01 for _, _, d, _ in gaps) if gaps else None)})
    if len(scans) >= 2:
        small, large = min(scans, key=lambda s: s.slices), max(scans, key=lambda s: s.slices)
        voxels = (large.slices - small.slices) * large.shape[1] * large.shape[2]
        for v in variants:
            if v.kind == "floor" or v.name not in (fast, "papers"):
                continue
            a, b = rows.get((small.name, v.name)), rows.get((large.name, v.name))
            if not a or not b or a.get("peak_rss_mb") is None or b.get("peak_rss_mb") is None:
                continue
            growth = b["peak_rss_mb"] - a["peak_rss_mb"]
            per_voxel = growth * 1e6 / voxels if voxels else 0.0
            item = {"name": f"{v.label}: peak RSS against scan length",
                    "measured": f"{a['peak_rss_mb']:.0f} MB ({small.slices} slices) -> {b['peak_rss_mb']:.0f} MB "
                                f"({large.slices} slices): +{growth:.0f} MB, {per_voxel:.2f} bytes per added voxel",
                    "met": None}
            if v.name == fast:
                # kidedge holds no whole-scan array of its own (labels are kept sparsely,
                # kidedge.runtime.labelmap): growth is the kidneys' crops plus run-to-run noise
                # of the in-flight buffers; a dense uint8 label volume alone would add 1 byte
                # per voxel, a float volume 4-8. A file whose slice axis is not the slowest
                # (KiTS19's own layout) cannot be streamed: the reader holds it as int16.
                if _streams(large):
                    item["name"] += " (streaming layout; flat: < 1 byte per added voxel)"
                    item["met"] = per_voxel < 1.0
                else:
                    item["name"] += (" (KiTS layout, slice axis fastest: read whole as int16, 2 bytes per voxel; "
                                     "flat beyond that: < 3 bytes per added voxel; streaming layouts: "
                                     "benchmarks/results/runtime_memory.md)")
                    item["met"] = per_voxel < 3.0
            targets.append(item)
    return targets


def _streams(scan: BenchScan) -> bool:
    """Whether kidedge's reader streams this scan's file slab by slab (slice axis slowest)."""
    from kidedge.io import SlabReader, load_scan

    try:
        return SlabReader(load_scan(scan.image), slab_size=16).strategy != "whole"
    except Exception:  # the target's wording only; the scan was read fine by the runs
        return False


def _method_lines(quick: bool, threads: int | None) -> list[str]:
    return [
        "Every variant runs on every scan in its own fresh Python process "
        "(`python -m kidedge.bench.measure`), so peak RSS is the variant's own; "
        "variants are interleaved (the order rotates each repeat) because the machine is shared and noisy.",
        "Timed 'scan' phase: from the scan's path to the written label map; model loading is 'setup'. "
        "Peak RSS: the kernel's VmHWM of the child process (libraries and model included).",
        "Same model for all: the package's torch state_dicts for the baselines, its ONNX files for kidedge; "
        "same preprocessing (kidedge.preprocess) and post-processing (kidedge.postprocess.postprocess_labels).",
        "Cascade packages: the baselines run both stages on every slice and keep the segmenter's labels inside "
        "the localiser's kidney box (the same CascadeGate box kidedge uses); 'no gate' kidedge runs the "
        "segmenter alone on every slice, as `kidedge infer --no-gate` does.",
        f"Threads: {threads or 'library default'} for torch and onnxruntime.",
        "Dice: KiTS hierarchical kidney (1+2+3) / masses (2+3); reference = the papers' way output (torch fp32); "
        "truth = the phantom's label map (the real KiTS19 label geometry it was built on).",
    ] + (["Quick mode: one small scan, one run per variant; not for conclusions."] if quick else [])


def run_bench(quick: bool = False, out: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
              labels: str | os.PathLike | None = None, *, work_dir: str | os.PathLike | None = None,
              targets: tuple[int, ...] | None = None, repeats: int | None = None,
              synthetic_shape: tuple[int, int] | None = None, synthetic: bool = False,
              only: list[str] | None = None, notes: list[str] | None = None,
              threads: int | None = None, echo=None) -> int:
    """Run the benchmark and write its report; returns 0.

    Args:
        quick: one small scan, few variants, one repeat (well under two minutes on 2 cores).
        out: results folder (default ``benchmarks/results/<machine>``, ``.../quick`` for quick).
        model: model package (default: the one shipped in kidedge).
        labels: real label maps for the phantoms' geometry (default
            ``../shared/data/kits19-labels`` when present, else synthetic anatomy).
        work_dir: cache for scans and label maps (default ``~/.cache/kidedge/bench``).
        targets: slice counts of the scans (default 60, 250, 600; quick: 40).
        repeats: runs per variant on short scans (default 3; quick 1).
        synthetic_shape: (rows, cols) of synthetic scans (tests use tiny ones).
        synthetic: synthetic anatomy even where real label maps are at hand.
        only: run just these variant names.
        notes: extra lines for the report's notes (e.g. why a run was cut short).
        threads: CPU threads for every engine (default: all usable cores).
        echo: progress printer (default: print to stderr).

    Raises:
        KidedgeError: no model package, or bad inputs.
    """
    from kidedge.bench.measure import measure
    from kidedge.bench.report import write_report
    from kidedge.environment import describe, machine_label
    from kidedge.package import ModelPackage, default_package_path

    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if model is None:
        if not default_package_path().exists():
            raise KidedgeError(f"{default_package_path()}: no built-in model package in this kidedge; "
                               "pass --model PACKAGE (a package made by kidedge export)")
        model, model_source = default_package_path(), "the package shipped in kidedge"
    else:
        model_source = "--model"
    package = ModelPackage.load(model)
    machine = describe()
    label = machine_label(machine)
    out = Path(out) if out else Path("benchmarks") / "results" / label / ("quick" if quick else "")
    work = Path(work_dir) if work_dir else Path(os.environ.get("KIDEDGE_BENCH_CACHE", Path.home() / ".cache" / "kidedge" / "bench"))
    labels_root = None if synthetic else (Path(labels) if labels else _default_labels())
    targets = tuple(targets or (QUICK_TARGETS if quick else FULL_TARGETS))
    repeats = int(repeats or (1 if quick else 3))
    threads = threads or machine["cpu"].get("usable_cores")

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    echo(f"kidedge bench: making {len(targets)} scan(s) in {work / 'scans'}")
    scans = make_bench_scans(work / "scans", labels_root=labels_root, targets=targets,
                             synthetic_shape=synthetic_shape)
    variants = plan_variants(package, quick=quick)
    if only:
        variants = [v for v in variants if v.name in set(only)]
    pid = _package_id(package)
    outputs = work / "outputs" / pid
    outputs.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    max_rep = max(repeats_for(s, v, repeats) for s in scans for v in variants)
    for rep in range(max_rep):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]  # rotate: interleave
        for scan in scans:
            for v in order:
                if rep >= repeats_for(scan, v, repeats):
                    continue
                keep = outputs / scan.name / f"{v.name}.nii.gz"
                keep.parent.mkdir(parents=True, exist_ok=True)
                dest = keep if rep == 0 else keep.with_name(f"{v.name}.repeat.nii.gz")
                spec = {"kind": v.runner, "image": str(scan.image), "out": str(dest), "model": str(model),
                        "backend": v.backend, "precision": v.precision, "gate": v.gate, "threads": threads}
                result = measure(spec, timeout_s=CHILD_TIMEOUT_S)
                result.update({"scan": scan.name, "variant": v.name, "repeat": rep})
                runs.append(result)
                state = f"{result['scan_s']:.2f} s, peak {result['peak_rss_mb']:.0f} MB" if result.get("ok") \
                    else f"FAILED: {result.get('error')}"
                echo(f"  [{rep + 1}/{max_rep}] {scan.name} {v.name}: {state}")
                if rep > 0:
                    dest.unlink(missing_ok=True)

    dice = {}
    for scan in scans:
        truth = _load_labels(scan.truth)
        ref_path = outputs / scan.name / "papers.nii.gz"
        ok_ref = any(r["scan"] == scan.name and r["variant"] == "papers" and r.get("ok") for r in runs)
        ref = _load_labels(ref_path) if ok_ref and ref_path.exists() else None
        for v in variants:
            p = outputs / scan.name / f"{v.name}.nii.gz"
            if v.kind == "floor" or not p.exists() or not any(
                    r["scan"] == scan.name and r["variant"] == v.name and r.get("ok") for r in runs):
                continue
            pred = _load_labels(p)
            dice[(scan.name, v.name)] = {"vs_truth": hierarchical_dice(pred, truth),
                                         "vs_reference": hierarchical_dice(pred, ref) if ref is not None else None}
    summary = summarise(scans, variants, runs, dice)
    results = {
        "kidedge_bench": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "machine_label": label,
        "load_average": ({"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()}
                         if load_start is not None else None),
        "machine": machine,
        "model": {"name": package.name, "path": str(model), "source": model_source, "package_id": pid,
                  "stages": [{"name": s.name, "role": s.role, "arch": s.arch,
                              "input": s.preprocess.in_plane + (f" {list(s.preprocess.size)}" if s.preprocess.size else ""),
                              "files": sorted(s.files)} for s in package.stages]},
        "method": _method_lines(quick, threads),
        "scans": [s.to_dict() for s in scans],
        "variants": [v.to_dict() for v in variants],
        "summary": summary,
        "targets": evaluate_targets(scans, variants, summary),
        "not_measured": _not_measured(machine),
        "notes": _notes(package) + list(notes or []),
        "runs": [{k: v for k, v in r.items() if k != "profile"} for r in runs],
    }
    paths = write_report(results, out)
    echo(f"kidedge bench: wrote {paths['md']} and {paths['json']}")
    return 0


def _notes(package) -> list[str]:
    notes = []
    if "untrained" in package.name:
        notes.append("This package has untrained (random) weights: latency and memory per slice are those of the "
                     "trained networks (same architecture and input sizes), but Dice against the truth is "
                     "meaningless and cascade gating is not representative (an untrained localiser finds "
                     "'kidney' nowhere or everywhere, so stage 2 runs on none or all of the slices).")
    return notes


def _not_measured(machine: dict) -> list[str]:
    notes = []
    if not machine.get("gpus"):
        notes += ["Peak GPU memory: no GPU on this machine.",
                  "fp16 and TensorRT: need an NVIDIA GPU (TensorRT plans, onnxruntime CUDA/TensorRT providers); "
                  "none here. The int8-trt QDQ model is run on onnxruntime's CPU provider instead (gated only).",
                  "Energy: no readable power sensor (no NVML GPU, no Jetson tegrastats) on this machine."]
    return notes
