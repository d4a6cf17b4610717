"""One prepared GPU check (under 8 minutes on a data-centre GPU): the torch CUDA backend end
to end in fp32 and fp16 on a 600-slice phantom (wall time, slices/s, peak GPU memory), and
training throughput with AMP and channels_last against fp32 for the SqueezeNet U-Net, the
ResNet34 U-Net and the 3D recipes' networks.

Written for a machine that has Python 3.12 and torch with CUDA but not nibabel,
segmentation-models-pytorch or pydicom: those travel as wheels (``../shared/tools/
gpu-wheels.sh .whl`` here, then on the GPU machine ``python3 -m pip install -q --no-index
--no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD``). It has NOT
run on a GPU yet: no GPU machine was lent to the task that wrote it. Its CPU path is tested
with ``--tiny --device cpu`` (tiny sizes, fp32 only, seconds).

Steps, each in a fresh process so one's GPU memory does not count in the next:
1. a phantom CT of ``--slices`` slices of 512 x 512 (KiTS19's in-plane size) at 0.8 mm
   pixels and 1.5 mm slices, written as .nii.gz;
2. ``kidedge infer SCAN --backend torch --precision fp32|fp16 --profile P.json`` with the
   built-in package, gated, ``--repeats`` times each, alternating fp32/fp16 (the first run
   of each also pays CUDA/cuDNN start-up: all runs are kept); the profile gives the wall
   time per scan, slices/s and the peak GPU memory (NVML, device-wide, minus the memory in
   use at start);
3. ``benchmarks/bench_train_throughput.py --device cuda --sizes paper`` (fp32 and AMP, each
   with channels_last off and on, interleaved rounds) for the models listed.

Writes ``benchmarks/results/<gpu name>/gpu_check.json`` and ``.md`` (and the training
throughput files beside them). A step that fails is recorded with its error and the rest go
on; steps that no longer fit ``--budget-s`` are skipped and say so.

    python benchmarks/gpu_check.py                      # on the GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu  # the CPU path, here
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_MODELS = "squeezenet_unet,resnet34_unet,kidney_net3d,masses_net3d,msrn3d"


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cmd: list[str], timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), env=_env(), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "wall_s": round(time.perf_counter() - t0, 2)}
    out = {"ok": p.returncode == 0, "returncode": p.returncode, "wall_s": round(time.perf_counter() - t0, 2)}
    if p.returncode != 0:
        out["error"] = (p.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return out


def make_scan(path: Path, slices: int, size: int, seed: int = 11) -> dict:
    """A phantom CT written as .nii.gz (needs nibabel: carried as a wheel on the GPU machine)."""
    import nibabel as nib
    import numpy as np

    from kidedge.phantom.generate import make_phantom

    t0 = time.perf_counter()
    ph = make_phantom(seed, shape=(slices, size, size), spacing=(1.5, 0.8, 0.8))
    img = nib.Nifti1Image(ph.hu.astype(np.int16), ph.affine)
    nib.save(img, str(path))
    return {"path": path.name, "shape": list(ph.hu.shape), "spacing_mm": [1.5, 0.8, 0.8],
            "kidney_voxels": int((ph.labels > 0).sum()), "seconds": round(time.perf_counter() - t0, 1)}


def infer_once(scan: Path, work: Path, precision: str, batch: int, timeout: float, tag: str) -> dict:
    prof = work / f"profile_{tag}.json"
    cmd = [sys.executable, "-c", "from kidedge.cli import main; main()", "infer", str(scan),
           "-o", str(work / f"seg_{tag}.nii.gz"), "--backend", "torch", "--precision", precision,
           "--batch", str(batch), "--profile", str(prof)]
    r = _run(cmd, timeout)
    if r["ok"] and prof.is_file():
        rep = json.loads(prof.read_text())
        scan_rep = rep["scans"][0]
        p = scan_rep["profile"]
        gpu = p.get("gpu") or {}
        r.update({"engine": rep["backend"].get("engine"), "scan_wall_s": p["wall_s"], "slices_per_s": p["slices_per_s"],
                  "stages_s": p["stages_s"], "latency_ms": p["latency_ms"], "peak_rss_mb": p["peak_rss_mb"],
                  "gpu": gpu, "energy": p.get("energy") or {}, "gating": {k: scan_rep["gating"].get(k) for k in
                                         ("slices_total", "slices_run_stage2", "skipped_pixel_fraction")},
                  "volumes_ml": scan_rep.get("volumes_ml")})
    return r


def summarise_infer(runs: list[dict]) -> dict:
    out = {}
    for prec in sorted({r["precision"] for r in runs}):
        ok = [r for r in runs if r["precision"] == prec and r.get("ok")]
        if not ok:
            continue
        def most(key, ok=ok):
            vals = [r["gpu"].get(key) for r in ok if isinstance(r.get("gpu"), dict)]
            vals = [v for v in vals if v is not None]
            return max(vals) if vals else None

        out[prec] = {"runs": len(ok), "median_scan_wall_s": round(statistics.median(r["scan_wall_s"] for r in ok), 3),
                     "best_scan_wall_s": min(r["scan_wall_s"] for r in ok),
                     "median_slices_per_s": round(statistics.median(r["slices_per_s"] for r in ok), 2),
                     # NVML, device-wide: the whole GPU's peak, and the peak above the memory in use
                     # when the scan started (model weights and CUDA context already loaded)
                     "peak_gpu_memory_mb": most("peak_memory_mb"),
                     "peak_gpu_memory_above_start_mb": most("peak_memory_above_start_mb"),
                     "energy_j": [r.get("energy", {}).get("joules") for r in ok]}
    if "fp32" in out and "fp16" in out:
        out["fp16_speedup_vs_fp32"] = round(out["fp32"]["median_scan_wall_s"] / out["fp16"]["median_scan_wall_s"], 3)
    return out


def markdown(res: dict) -> str:
    lines = ["# GPU check", "", f"Device: {res['device_name']} ({res['device']}); torch {res['torch']}, Python "
             f"{res['python']}; load average {res['loadavg_start']} at start, {res['loadavg_end']} at end.", "",
             f"Scan: phantom {res.get('scan', {}).get('shape')} at {res.get('scan', {}).get('spacing_mm')} mm "
             f"(kidedge phantom, seed 11), built-in package, gated, torch backend.", "",
             "| precision | runs | median s/scan | best s/scan | slices/s | peak GPU memory MB (above start) | energy J |",
             "|---|---|---|---|---|---|---|"]
    for prec in ("fp32", "fp16"):
        s = res.get("infer_summary", {}).get(prec)
        if s:
            lines.append(f"| {prec} | {s['runs']} | {s['median_scan_wall_s']} | {s['best_scan_wall_s']} | "
                         f"{s['median_slices_per_s']} | {s['peak_gpu_memory_mb']} ({s['peak_gpu_memory_above_start_mb']}) | "
                         f"{s['energy_j']} |")
    if "fp16_speedup_vs_fp32" in res.get("infer_summary", {}):
        lines += ["", f"fp16 runs the scan {res['infer_summary']['fp16_speedup_vs_fp32']}x as fast as fp32 (median wall time)."]
    fails = [r for r in res.get("infer_runs", []) if not r.get("ok")]
    for r in fails:
        lines.append(f"- infer {r['precision']} failed: {r.get('error')}")
    t = res.get("train")
    if t:
        lines += ["", f"Training throughput: {'see ' + t['report'] if t.get('ok') else 'failed: ' + str(t.get('error'))}."]
    lines += ["", *[f"- {n}" for n in res.get("notes", [])]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (to test this script's CPU path)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (24 slices of 128 x 128, one training round of "
                    "two models), results under --work: tests the script")
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=2, help="kidedge infer runs per precision")
    ap.add_argument("--batch", type=int, default=16, help="kidedge infer --batch")
    ap.add_argument("--train-models", default=TRAIN_MODELS)
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip steps that no longer fit (8 minutes = 480 s)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<gpu name>)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kidedge_gpu_check"))
    args = ap.parse_args()
    t_start = time.perf_counter()

    import torch

    from kidedge.environment import machine_label

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    # --tiny never writes into benchmarks/results (it measures nothing)
    out = args.out or (args.work / "results" if args.tiny else ROOT / "benchmarks" / "results" / machine_label())
    if args.tiny and args.train_models == TRAIN_MODELS:
        args.train_models = "squeezenet_unet,kidney_net3d"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": "gpu_check", "device": args.device, "device_name": name, "torch": torch.__version__,
           "python": platform.python_version(), "loadavg_start": loadavg(), "tiny": args.tiny,
           "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]), "notes": []}
    if args.tiny:
        res["notes"].append("--tiny: sizes far below a real scan; this tests the script, it measures nothing")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    slices, size = (24, 128) if args.tiny else (args.slices, 512)
    scan = args.work / "phantom.nii.gz"
    try:
        res["scan"] = make_scan(scan, slices, size)
        print(f"scan: {res['scan']}", flush=True)
    except Exception as exc:  # noqa: BLE001 - recorded, the training part still runs
        res["scan"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"scan failed: {exc}", file=sys.stderr)

    precisions = ["fp32", "fp16"] if cuda else ["fp32"]  # torch runs fp16 on CUDA only
    runs = []
    if "error" not in res["scan"]:
        for rep in range(args.repeats):
            for prec in precisions:
                if left() < 60:
                    res["notes"].append(f"infer {prec} run {rep + 1} skipped: budget")
                    continue
                r = infer_once(scan, args.work, prec, args.batch, min(240.0, left() - 30), f"{prec}_{rep}")
                r.update(precision=prec, repeat=rep + 1)
                runs.append(r)
                print(f"infer {prec} #{rep + 1}: {r.get('scan_wall_s', r.get('error'))} s/scan", flush=True)
    res["infer_runs"] = runs
    res["infer_summary"] = summarise_infer(runs)

    if left() > 40:
        train_out = out
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train_throughput.py"), "--device", args.device,
               "--models", args.train_models, "--out", str(train_out),
               "--note", f"run by benchmarks/gpu_check.py; load average at start {res['loadavg_start']}"]
        cmd += (["--sizes", "cpu", "--rounds", "1"] if args.tiny else ["--sizes", "paper", "--rounds", "3", "--steps", "3"])
        r = _run(cmd, left() - 10)
        stem = "train_throughput" if not cuda else "train_throughput_" + machine_label()
        r["report"] = f"{stem}.md"
        res["train"] = r
        print(f"training throughput: {'ok' if r['ok'] else r.get('error')}", flush=True)
    else:
        res["train"] = {"ok": False, "error": "skipped: budget"}
    res["loadavg_end"] = loadavg()
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(res))
    print(markdown(res))
    ok = res["infer_summary"] and res["train"].get("ok")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
