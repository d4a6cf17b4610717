"""Export benchmark: file sizes, CPU latency per 512x512 slice and Dice of each precision.

For the SqueezeNet U-Net and the ResNet34 U-Net (kidedge.train.models), each briefly
trained on phantom slices (random 128x128 crops of 256x256 slices at 1.56 mm, i.e. a
512x512 scan at half resolution, kidney-centred half the time) so that its outputs mean
something, this script:

1. writes a run directory and exports it with ``export_run`` (fp32, fp16, int8-cpu QDQ,
   int8-trt QDQ; calibration on phantoms, the chosen method), exactly as
   ``kidedge export RUN --out PKG --fp16 --int8`` does;
2. builds the other int8-cpu format (QOperator) from the same calibration data, so both
   CPU formats are measured side by side;
3. times one 512x512 slice (batch 1, a full-resolution phantom slice) in ONNX Runtime CPU
   for every ONNX file and in PyTorch eager, interleaved round by round in one process
   with the same thread count (this machine is shared; interleaving keeps the ratios
   fair), and reports medians;
4. scores every precision on held-out phantom cases: Dice against fp32 (what quantisation
   changes) and against the phantom ground truth (how much it matters).

Training, calibration and Dice run on 256x256 slices (the models are fully convolutional,
so the same ONNX files run at 512x512 for timing): the 2-core machine this was written on
is shared with a training job, and 512x512 scoring of seven precisions of a ResNet34
U-Net would take most of an hour there. Quantisation error is a per-activation effect,
so it does not depend on the slice size; the Dice numbers are for 256x256 inputs.

Writes benchmarks/results/export.json and export.md, naming the machine.

    .venv/bin/python benchmarks/bench_export.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kidedge.export.calibration import SliceCalibrationReader, calibration_inputs
from kidedge.export.fidelity import region_dice, segment_volume
from kidedge.export.held_out import held_out_volumes, phantom_volume
from kidedge.export.onnx_export import ort_session, run_onnx, run_torch
from kidedge.export.package_writer import export_run
from kidedge.export.quantize import float_node_rule, prepare_for_quantization, quantize_int8
from kidedge.export.stage_inputs import slice_inputs
from kidedge.package import ModelPackage
from kidedge.preprocess import PreprocessSpec

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {
    "squeezenet_unet": {"in_channels": 1, "classes": 4},
    "resnet34_unet": {"in_channels": 1, "classes": 4},
}
#: Brief training per model (steps, batch, crop): sized so that the whole benchmark ends in
#: about 20 minutes on the shared 2-core machine (a ResNet34 U-Net step costs ~10x a
#: SqueezeNet U-Net step there). These models are test subjects for the precisions, not
#: good segmenters: their Dice against the phantom truth says how far from trained they are.
TRAINING = {"squeezenet_unet": (30, 6, 128), "resnet34_unet": (10, 4, 96)}
QUICK_TRAINING = {"squeezenet_unet": (10, 4, 96), "resnet34_unet": (3, 2, 64)}
SPEC = PreprocessSpec(hu_window=(-200.0, 400.0), normalisation="range", in_plane="native", pad_multiple=32)
#: Training / calibration / scoring geometry (a 512x512 scan at 0.78 mm, halved).
SPACING = (3.0, 1.56, 1.56)
SIZE = 256
#: Timing geometry: one full-resolution slice.
TIMING_SHAPE, TIMING_SPACING = (4, 512, 512), (3.0, 0.78, 0.78)


def machine() -> dict:
    from kidedge.environment import describe

    try:
        d = describe()
    except Exception:  # the description is informative only
        d = {}
    from kidedge.environment import cpu_description

    return {"cpu": cpu_description()["model"], "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_average_at_start": os.getloadavg(),
            "kidedge_info": d.get("cpu") if isinstance(d, dict) else None}


def train_briefly(model: torch.nn.Module, steps: int, batch: int, crop: int = 128, seed: int = 0) -> list[float]:
    """Adam on random crops of phantom slices (cross-entropy, classes weighted)."""
    rng = np.random.default_rng(seed)
    stage = {"preprocess": SPEC.to_dict()}
    vols = [phantom_volume(s, (24, SIZE, SIZE), SPACING) for s in (1, 2, 3)]
    xs, ys = [], []
    for v in vols:
        xs.append(slice_inputs(v, stage, range(v.array.shape[0])))
        ys.append(v.labels)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
    fg = [np.argwhere(y > 0) for y in y_all]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.tensor([0.1, 1.0, 2.0, 2.0])
    losses = []
    model.train()
    for _ in range(steps):
        bx, by = [], []
        for _ in range(batch):
            i = int(rng.integers(len(x_all)))
            if len(fg[i]) and rng.random() < 0.5:
                r, c = fg[i][rng.integers(len(fg[i]))]
                r0 = int(np.clip(r - crop // 2, 0, SIZE - crop))
                c0 = int(np.clip(c - crop // 2, 0, SIZE - crop))
            else:
                r0, c0 = (int(v) for v in rng.integers(0, SIZE - crop, 2))
            bx.append(x_all[i, :, r0:r0 + crop, c0:c0 + crop])
            by.append(y_all[i, r0:r0 + crop, c0:c0 + crop])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.stack(bx))),
                                                 torch.from_numpy(np.stack(by)), weight=weights)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def write_run(root: Path, arch: str, model: torch.nn.Module) -> Path:
    run = root / f"run-{arch}"
    (run / "seg").mkdir(parents=True)
    torch.save(model.state_dict(), run / "seg" / "best.pt")
    (run / "run.json").write_text(json.dumps({
        "kidedge_run": 1, "recipe": f"bench-{arch}", "dimensionality": "2d",
        "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
        "stages": [{"name": "seg", "role": "segment", "arch": arch, "model_kwargs": MODELS[arch],
                    "preprocess": SPEC.to_dict(), "output": {"activation": "softmax", "labels": [0, 1, 2, 3]},
                    "checkpoint": "seg/best.pt", "metrics": {}}],
        "split": {}, "data": "phantoms (benchmark)", "metrics": {},
    }))
    return run


def time_interleaved(runners: dict, x: np.ndarray, rounds: int, warmup: int = 1) -> dict:
    """Median/min/p90 seconds per call of each runner, rounds interleaved."""
    for _ in range(warmup):
        for run in runners.values():
            run(x)
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            t = time.perf_counter()
            run(x)
            times[k].append(time.perf_counter() - t)
    return {k: {"median_ms": 1000 * statistics.median(v), "min_ms": 1000 * min(v),
                "p90_ms": 1000 * sorted(v)[max(0, int(0.9 * len(v)) - 1)], "rounds": len(v)}
            for k, v in times.items()}


def bench_model(arch: str, work: Path, args) -> dict:
    from kidedge.train.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, **MODELS[arch]).eval()
    steps, batch, crop = (QUICK_TRAINING if args.quick else TRAINING)[arch]
    if args.train:
        steps, batch, crop = (int(v) for v in args.train.split(","))
    if args.latency_only:
        steps = 0  # untrained: same graph, same latency and file sizes; no Dice
    t = time.time()
    losses = train_briefly(model, steps, batch, crop) if steps else [float("nan")]
    train_s = time.time() - t
    print(f"[{arch}] trained {steps} steps (batch {batch}, {crop}x{crop}) in {train_s:.0f} s, "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    run = write_run(work, arch, model)
    pkg_dir = work / f"pkg-{arch}"
    t = time.time()
    # The package's own fidelity report uses 1 held-out case; the full scoring is below.
    small = args.latency_only
    export_run(run, pkg_dir, fp16=True, int8=True, calib_method=args.calib_method,
               volume_shape=(4 if small else args.slices, SIZE, SIZE), spacing=SPACING, held_out_cases=1,
               calib_cases=1 if small else args.calib_cases, slices_per_case=4 if small else 8,
               parity_slices=2 if small else 4, threads=args.threads, cpu_format="QDQ", quiet=True)
    export_s = time.time() - t
    pkg = ModelPackage.load(pkg_dir)
    stage = pkg.stage("seg").to_dict()  # export's helpers read a stage in its JSON form
    files = {p: pkg.file_path("seg", p) for p in ("fp32", "fp16", "int8-cpu", "int8-trt")}

    full = phantom_volume(20_000, TIMING_SHAPE, TIMING_SPACING)
    x = slice_inputs(full, stage, [TIMING_SHAPE[0] // 2])
    assert x.shape == (1, 1, 512, 512), x.shape
    if args.latency_only:
        ort = {k: (lambda x, s=ort_session(p, args.threads): run_onnx(s, x, batch=len(x))) for k, p in files.items()}
        print(f"[{arch}] timing {len(ort) + 1} runners x {args.rounds} rounds (latency only)", flush=True)
        latency = time_interleaved({"torch-eager-fp32": lambda x: run_torch(model, x, batch=len(x)), **ort}, x, args.rounds)
        sizes = {k: p.stat().st_size for k, p in files.items()}
        sizes["torch-state-dict"] = pkg.file_path("seg", "torch").stat().st_size
        return {"arch": arch, "params": int(sum(p.numel() for p in model.parameters())),
                "training": {"steps": 0, "batch": 0, "crop": 0, "seconds": 0.0, "loss_first": float("nan"),
                             "loss_last": float("nan")},
                "latency_only": True, "export_seconds": time.time() - t, "sizes_bytes": sizes,
                "latency_per_512_slice_batch1": latency, "dice_vs_fp32": {}, "dice_vs_ground_truth": {},
                "quantisation": pkg.manifest.export_report["quantisation"]["seg"], "parity": stage["parity"]}

    # The other CPU format, from the same calibration set (same seeds as export_run).
    qwork = work / f"qop-{arch}"
    qwork.mkdir()
    prepared = prepare_for_quantization(files["fp32"], qwork / "prepared.onnx")
    vols = (phantom_volume(1000 + i, (args.slices, SIZE, SIZE), SPACING) for i in range(args.calib_cases))
    cin, _ = calibration_inputs(vols, stage, "2d", 8, 16)
    files["int8-cpu-qoperator"] = qwork / "int8-cpu-qoperator.onnx"
    quantize_int8(prepared, files["int8-cpu-qoperator"], SliceCalibrationReader(cin), "int8-cpu", args.calib_method,
                  float_node_rule(prepared), cpu_format="QOperator")
    # Layer-sensitivity check of the float rule: int8-cpu with every Conv quantised.
    files["int8-cpu-allconv"] = qwork / "int8-cpu-allconv.onnx"
    quantize_int8(prepared, files["int8-cpu-allconv"], SliceCalibrationReader(cin), "int8-cpu", args.calib_method,
                  [], cpu_format="QDQ")

    # Calibration-method check of the TensorRT variant (scored, not timed: same graph).
    for method in ("minmax", "entropy"):
        if method != args.calib_method:
            files[f"int8-trt-{method}"] = qwork / f"int8-trt-{method}.onnx"
            quantize_int8(prepared, files[f"int8-trt-{method}"], SliceCalibrationReader(cin), "int8-trt", method,
                          float_node_rule(prepared))

    ort = {k: (lambda x, s=ort_session(p, args.threads): run_onnx(s, x, batch=len(x))) for k, p in files.items()}
    runners = {"torch-eager-fp32": lambda x: run_torch(model, x, batch=len(x)),
               **{k: v for k, v in ort.items() if not k.startswith("int8-trt-")}}

    held = held_out_volumes(args.cases, (args.slices, SIZE, SIZE), SPACING)
    print(f"[{arch}] timing {len(runners)} runners x {args.rounds} rounds", flush=True)
    latency = time_interleaved(runners, x, args.rounds)

    print(f"[{arch}] scoring on {args.cases} held-out cases", flush=True)
    # Each precision segments each held-out volume once; Dice against fp32 and against truth.
    labels = {k: [segment_volume(ort[k], v, stage)[0] for v in held] for k in files}
    fid, vs_gt = {}, {}
    for k in files:
        against_fp32 = [region_dice(a, b) for a, b in zip(labels[k], labels["fp32"], strict=True)]
        against_truth = [region_dice(a, v.labels) for a, v in zip(labels[k], held, strict=True)]
        if k != "fp32":
            fid[k] = {m: float(np.mean([c[m] for c in against_fp32])) for m in against_fp32[0]}
            fid[k]["pixel_agreement"] = float(np.mean([(a == b).mean() for a, b in zip(labels[k], labels["fp32"], strict=True)]))
        vs_gt[k] = {m: float(np.mean([c[m] for c in against_truth])) for m in against_truth[0]}
    sizes = {k: p.stat().st_size for k, p in files.items()}
    sizes["torch-state-dict"] = pkg.file_path("seg", "torch").stat().st_size
    return {
        "arch": arch, "params": int(sum(p.numel() for p in model.parameters())),
        "training": {"steps": steps, "batch": batch, "crop": crop, "seconds": train_s,
                     "loss_first": losses[0], "loss_last": losses[-1]},
        "export_seconds": export_s,
        "sizes_bytes": sizes,
        "latency_per_512_slice_batch1": latency,
        "dice_vs_fp32": fid,
        "dice_vs_ground_truth": vs_gt,
        "quantisation": pkg.manifest.export_report["quantisation"]["seg"],
        "parity": stage["parity"],
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# Export benchmark", "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['platform']}; "
        f"ONNX Runtime and PyTorch with {res['settings']['threads']} threads; load average at start "
        f"{', '.join(f'{v:.1f}' for v in m['load_average_at_start'])} (shared machine: compare ratios within a table, "
        "not absolute times across runs). No GPU: TensorRT plans were not built or timed here.", "",
        *(["Runs (made in parallel, one model each): " + "; ".join(
            f"{', '.join(run['models'])}: {run.get('wall_seconds', 0) / 60:.0f} min, load average at start "
            f"{run['machine']['load_average_at_start'][0]:.1f}" for run in res["runs"]), ""] if res.get("runs") else []),
        "Models briefly trained on phantoms (Adam; steps x batch, crop: "
        + ", ".join(f"{r['arch']} {r['training']['steps']} x {r['training']['batch']}, {r['training']['crop']}px, "
                    f"loss {r['training']['loss_first']:.2f} -> {r['training']['loss_last']:.2f}"
                    for r in res["models"] if not r.get("latency_only"))
        + f"); held-out "
        f"phantoms: {res['settings']['cases']} cases x {res['settings']['slices']} slices of {SIZE}x{SIZE} at {SPACING[1]} mm; calibration: "
        f"{res['settings']['calib_method']} on {res['settings']['calib_cases']} phantom cases x 8 slices "
        f"(kidney/tumour slices oversampled), {SIZE}x{SIZE}. Latency: one 512x512 slice, batch 1, median of "
        f"{res['settings']['rounds']} interleaved rounds. int8 variants keep the first and last Conv in float "
        "except `int8-cpu-allconv`.", "",
    ]
    for r in res["models"]:
        lat = r["latency_per_512_slice_batch1"]
        base = lat["fp32"]["median_ms"]
        lines += [f"## {r['arch']} ({r['params'] / 1e6:.2f} M parameters)", ""]
        if r.get("latency_only"):
            cal = r["quantisation"]["calibration"]
            lines += [f"Latency and file sizes only (`--latency-only`): untrained weights (a graph's latency and "
                      f"size do not depend on its weights), int8 calibrated with {cal['method']} on {cal['inputs']} "
                      "phantom slices; no Dice (an untrained model's labels are noise).", ""]
        lines += [
                  "| precision | file MB | latency ms (median) | vs ORT fp32 | kidney Dice vs fp32 | masses Dice vs fp32 | tumour Dice vs fp32 | kidney Dice vs truth | tumour Dice vs truth |",
                  "|---|---|---|---|---|---|---|---|---|"]
        extra = [k for k in r["sizes_bytes"] if k.startswith("int8-trt-")]
        for k in ("torch-eager-fp32", "fp32", "fp16", "int8-cpu", "int8-cpu-qoperator", "int8-cpu-allconv", "int8-trt", *extra):
            size = r["sizes_bytes"].get(k if k != "torch-eager-fp32" else "torch-state-dict", 0) / 1e6
            if k not in lat and k not in r["dice_vs_fp32"]:
                continue  # not measured in this run (latency-only)
            if k not in lat:
                dv, gt = r["dice_vs_fp32"][k], r["dice_vs_ground_truth"][k]
                lines.append(f"| {k} | {size:.2f} | (= int8-trt) | | {dv['kidney_dice']:.4f} | {dv['masses_dice']:.4f} | "
                             f"{dv['tumour_dice']:.4f} | {gt['kidney_dice']:.4f} | {gt['tumour_dice']:.4f} |")
                continue
            ms = lat[k]["median_ms"]
            dv = r["dice_vs_fp32"].get(k, {"kidney_dice": 1.0, "masses_dice": 1.0, "tumour_dice": 1.0}) if k != "torch-eager-fp32" else None
            gt = r["dice_vs_ground_truth"].get(k if k != "torch-eager-fp32" else "fp32", {})
            if r.get("latency_only"):
                dv = None
            dvs = f"{dv['kidney_dice']:.4f} | {dv['masses_dice']:.4f} | {dv['tumour_dice']:.4f}" if dv else "(not scored) | | "
            gts = (f"{gt['kidney_dice']:.4f} | {gt['tumour_dice']:.4f}" if gt else " | ")
            lines.append(f"| {k} | {size:.2f} | {ms:.1f} | {base / ms:.2f}x | {dvs} | {gts} |")
        lines += ["", "`int8-cpu` is QDQ (the format the package ships), `int8-cpu-qoperator` the same "
                  "calibration as QOperator, `int8-cpu-allconv` quantises every Conv (no float layers). "
                  "`int8-trt-<method>` is the TensorRT variant calibrated with another method (scored only; "
                  "its graph, hence its ORT latency, is int8-trt's). fp16 is for GPUs; on this CPU ORT runs "
                  "most fp16 ops via casts. Dice of empty-vs-empty regions counts 1.0.", ""]
    lines += ["## Verdict", ""] + [f"- {v}" for v in res["verdict"]] + [""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Latency per 512x512 slice by precision, one panel per model (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = ("torch-eager-fp32", "fp32", "fp16", "int8-cpu", "int8-cpu-qoperator", "int8-trt")
    fig, axes = plt.subplots(1, len(res["models"]), figsize=(5.5 * len(res["models"]), 3.8), squeeze=False)
    for ax, r in zip(axes[0], res["models"], strict=True):
        lat = r["latency_per_512_slice_batch1"]
        ks = [k for k in keys if k in lat]
        ms = [lat[k]["median_ms"] for k in ks]
        lo = [lat[k]["median_ms"] - lat[k]["min_ms"] for k in ks]
        hi = [lat[k]["p90_ms"] - lat[k]["median_ms"] for k in ks]
        colors = ["#888" if k.startswith("torch") else "#cc6677" if k.startswith("int8") else "#4477aa" for k in ks]
        ax.bar(range(len(ks)), ms, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_xticks(range(len(ks)), ks, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ms per 512x512 slice (median, min-p90)")
        ax.set_title(f"{r['arch']} ({r['params'] / 1e6:.1f} M params)", fontsize=10)
    fig.suptitle(f"CPU latency, {res['settings']['threads']} threads, {res['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, cases and rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--latency-only", action="store_true",
                    help="untrained models: file sizes and latency of fp32/fp16/int8-cpu/int8-trt, no Dice")
    ap.add_argument("--train", metavar="STEPS,BATCH,CROP", help="override the brief training of the models run")
    ap.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                    help="only merge the models of these result files (runs made in parallel) into --out")
    ap.add_argument("--note", action="append", default=[], help="a note for the report (with --combine)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models of an existing results file (re-run one model)")
    args = ap.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out, args.note)
    args.cases, args.slices, args.calib_cases = (1, 6, 2) if args.quick else (2, 8, 3)
    args.rounds = 3 if args.quick else 5
    torch.set_num_threads(args.threads)
    res = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"models": args.models},
           "models": []}
    res["settings"]["out"] = os.path.relpath(args.out, RESULTS.parent.parent)  # never a path of this machine
    name = "export-quick" if args.quick else "export"
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    previous = {}
    if args.merge and (args.out / f"{name}.json").is_file():
        old = json.loads((args.out / f"{name}.json").read_text())
        previous = {r["arch"]: r for r in old["models"]}
        res["earlier_runs"] = old.get("earlier_runs", []) + [{k: old[k] for k in ("machine", "settings", "wall_seconds") if k in old}]
    with tempfile.TemporaryDirectory(prefix="kidedge-bench-export-") as tmp:
        for arch in args.models.split(","):
            r = bench_model(arch, Path(tmp), args)
            r["wall_seconds"] = time.time() - t0
            previous[arch] = r
            res["models"] = [previous[a] for a in MODELS if a in previous]
            # Written after each model: a run cut short keeps what it measured.
            (args.out / f"{name}.partial.json").write_text(json.dumps(res, indent=2) + "\n")
    res["wall_seconds"] = time.time() - t0
    res["load_average_at_end"] = os.getloadavg()
    write_results(res, args.out, name)
    return 0


def combine(files: list[Path], out: Path, notes: list[str] | None = None) -> int:
    """One results file from runs of single models made in parallel (each keeps its machine
    load and settings under ``runs``)."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    for run in runs:  # a partial file (run cut short) has the time per model only
        run.setdefault("wall_seconds", max(r.get("wall_seconds", 0.0) for r in run["models"]))
    models = {r["arch"]: r for run in runs for r in run["models"]}
    res = {**runs[0], "models": [models[a] for a in MODELS if a in models],
           "runs": [{k: run[k] for k in ("machine", "settings", "wall_seconds", "load_average_at_end") if k in run}
                    | {"models": [r["arch"] for r in run["models"]]} for run in runs]}
    res["wall_seconds"] = max(run.get("wall_seconds", 0.0) for run in runs)
    res["notes"] = list(notes or [])
    write_results(res, out, "export")
    return 0


def write_results(res: dict, out: Path, name: str) -> None:
    verdict = []
    for r in res["models"]:
        lat = r["latency_per_512_slice_batch1"]
        if r.get("latency_only"):
            verdict.append(f"{r['arch']} (untrained, latency only): ORT fp32 {lat['fp32']['median_ms']:.1f} ms, "
                           f"int8-cpu {lat['int8-cpu']['median_ms']:.1f} ms, int8-trt {lat['int8-trt']['median_ms']:.1f} ms, "
                           f"PyTorch eager {lat['torch-eager-fp32']['median_ms']:.1f} ms per slice; no Dice measured.")
            continue
        qdq, qop = lat["int8-cpu"]["median_ms"], lat["int8-cpu-qoperator"]["median_ms"]
        verdict.append(f"{r['arch']}: int8-cpu QDQ {qdq:.1f} ms vs QOperator {qop:.1f} ms per slice "
                       f"-> {'QDQ' if qdq <= qop else 'QOperator'} is faster on this CPU; ORT fp32 "
                       f"{lat['fp32']['median_ms']:.1f} ms, PyTorch eager {lat['torch-eager-fp32']['median_ms']:.1f} ms.")
        for k in ("int8-cpu", "int8-cpu-qoperator", "int8-cpu-allconv", "int8-trt",
                  *[k for k in r["dice_vs_fp32"] if k.startswith("int8-trt-")]):
            parts, strict, vs_truth = [], True, True
            for region in ("kidney", "masses", "tumour"):
                m = f"{region}_dice"
                d = r["dice_vs_fp32"][k][m]
                loss_gt = r["dice_vs_ground_truth"]["fp32"][m] - r["dice_vs_ground_truth"][k][m]
                strict &= d >= 0.995
                vs_truth &= loss_gt <= 0.005
                parts.append(f"{region} Dice {d:.4f} vs fp32, {-loss_gt:+.4f} vs truth")
            verdict.append(f"{r['arch']} {k}: " + "; ".join(parts) + ". Target (loses <= 0.005 Dice): "
                           f"{'met' if strict else 'NOT met'} against fp32 (Dice >= 0.995), "
                           f"{'met' if vs_truth else 'NOT met'} against the phantom truth.")
    res["verdict"] = verdict
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{name}.partial.json").unlink(missing_ok=True)
    (out / f"{name}.md").write_text(markdown(res))
    plot(res, out / f"{name}.png")
    print(markdown(res))


if __name__ == "__main__":
    sys.exit(main())
