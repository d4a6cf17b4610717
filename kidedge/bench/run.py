"""``kidedge bench``'s run: make the scans, run every variant on every scan in a fresh
process, interleaved and repeated, score the outputs and write the report."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from kidedge.bench.measure import measure
from kidedge.bench.report import write_report
from kidedge.bench.scans import FULL_TARGETS, QUICK_TARGETS, make_bench_scans
from kidedge.bench.summary import evaluate_targets, hierarchical_dice, summarise
from kidedge.bench.variants import CHILD_TIMEOUT_S, plan_variants, repeats_for
from kidedge.environment import describe, machine_label
from kidedge.package import ModelPackage, default_package_path

#: How the report names the package shipped in kidedge (never a path of this machine).
BUILT_IN = "kidedge/models/default (built in)"


def _default_labels() -> Path | None:
    """``../shared/data/kits19-labels`` beside the repository (or the working folder)."""
    here = Path(__file__).resolve().parents[2]  # the repository, in a source checkout
    for root in (here, Path.cwd()):
        p = root.parent / "shared" / "data" / "kits19-labels"
        if p.is_dir():
            return p
    return None


def portable_scan(d: dict, work: Path) -> dict:
    """A scan's dict for the results: its files relative to the benchmark cache, so no path
    of the machine that ran it goes into committed results."""
    out = dict(d)
    for key in ("image", "truth"):
        try:
            out[key] = "<bench cache>/" + Path(d[key]).resolve().relative_to(Path(work).resolve()).as_posix()
        except ValueError:
            out[key] = Path(d[key]).name
    return out


def _package_id(package) -> str:
    text = json.dumps(package.manifest.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.uint8)


def _method_lines(quick: bool, threads: int | None) -> list[str]:
    return [
        "Every variant runs on every scan in its own fresh Python process "
        "(`python -m kidedge.bench.measure`), so peak RSS is the variant's own; "
        "variants are interleaved (the order rotates each repeat) because the machine is shared and noisy.",
        "Timed 'scan' phase: from the scan's path to the written label map; model loading is 'setup'. "
        "Peak RSS: the kernel's VmHWM of the child process (libraries and model included).",
        "Same model for all: the package's torch state_dicts for the baselines, its ONNX files for kidedge; "
        "same preprocessing (kidedge.preprocess), post-processing and volumes (kidedge.postprocess). "
        "Imports and model loading are set-up for every variant (MONAI's import included), not per-scan time.",
        "Same work (cascade packages): the baselines run the localiser on every slice and the segmenter on the "
        "localiser's region only (the same CascadeGate box kidedge uses), as papers 002 and 003 crop; kidedge "
        "runs its localiser on one slice every 4 mm and the segmenter on the region. A test "
        "(tests/bench/test_same_work.py) and the 'same labels' target below show the outputs agree. Rows "
        "marked 'extra' do other work (the segmenter on every whole slice: paper 001's masked slices, and "
        "`kidedge infer --no-gate`) and are never in a headline ratio.",
        f"Threads: {threads or 'library default'} for torch and onnxruntime.",
        "Memory pages: every variant, the read floor included, runs with numpy's transparent-huge-page "
        "advice off where the kernel's THP defrag setting stalls on it (kidedge.runtime.hugepages; "
        "kidedge's engine does this itself), so no ratio credits kidedge with a process setting.",
        "Dice: KiTS hierarchical kidney (1+2+3) / masses (2+3); reference = the papers' way output (torch fp32); "
        "truth = the phantom's label map (the real KiTS19 label geometry it was built on).",
    ] + (["Quick mode: one small scan, one run per variant; not for conclusions."] if quick else [])


def run_bench(quick: bool = False, out: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
              labels: str | os.PathLike | None = None, *, work_dir: str | os.PathLike | None = None,
              targets: tuple[int, ...] | None = None, repeats: int | None = None,
              synthetic_shape: tuple[int, int] | None = None, synthetic: bool = False,
              only: list[str] | None = None, notes: list[str] | None = None,
              threads: int | None = None, curve: tuple[int, ...] | None = None,
              curve_baseline_max: int | None = None, echo=None) -> int:
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
        curve: slice counts for the time-and-memory curve (floor, baselines and kidedge's
            default, one run each; e.g. :data:`kidedge.bench.scans.CURVE_TARGETS`); None: no curve.
        curve_baseline_max: the curve's baselines only on scans up to this many slices.
        echo: progress printer (default: print to stderr).

    Raises:
        KidedgeError: no model package, or bad inputs.
    """
    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    package = ModelPackage.load(model)  # None: the built-in one (a one-line error when missing)
    model_name, model_source = (BUILT_IN, "the package shipped in kidedge") if model is None else (str(model), "--model")
    model = default_package_path() if model is None else model
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
                        "backend": v.backend, "precision": v.precision, "gate": v.gate, "threads": threads,
                        "region": v.region}
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
    curve_result = None
    if curve:
        from kidedge.bench.curve import run_curve

        curve_result = run_curve(package, model, tuple(curve), work, outputs, labels_root, threads,
                                 synthetic_shape, echo, baseline_max_slices=curve_baseline_max)
    results = {
        "kidedge_bench": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "machine_label": label,
        "load_average": ({"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()}
                         if load_start is not None else None),
        "machine": machine,
        "model": {"name": package.name, "path": model_name, "source": model_source, "package_id": pid,
                  "stages": [{"name": s.name, "role": s.role, "arch": s.arch,
                              "input": s.preprocess.in_plane + (f" {list(s.preprocess.size)}" if s.preprocess.size else ""),
                              "files": sorted(s.files)} for s in package.stages]},
        "method": _method_lines(quick, threads),
        "scans": [portable_scan(s.to_dict(), work) for s in scans],
        "variants": [v.to_dict() for v in variants],
        "summary": summary,
        "targets": evaluate_targets(scans, variants, summary, curve_result),
        "curve": curve_result,
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
