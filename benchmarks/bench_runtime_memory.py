"""Peak memory of ``kidedge infer`` against scan length, for streaming NIfTI layouts.

For 100, 250, 500 and 1000 slices of 512 x 512 int16 CT, each ``kidedge infer`` runs in a
fresh Python process (``python -m kidedge.cli infer ... --profile``); its peak RSS is the
kernel's high-water mark of that process (``VmHWM``), read by the runtime's profiler at
the end of the run, and the polled peak during the run. Beside it the benchmark records
an idle baseline: a fresh process that imported the runtime and activated the same
package's engine, and nothing else.

Layouts (both "slice-slowest": the slice axis is the last, slowest NIfTI axis, so each
slice is one contiguous block and :class:`kidedge.io.SlabReader` can stream it):
- ``nii.gz``: (x, y, z) with RAS axis codes, as dcm2niix writes; gzip level 1.
- ``nii``: the same, uncompressed.

Reference sizes drawn on the plot: the int16 volume (slices * 512 * 512 * 2 bytes) and the
dense uint8 label volume (slices * 512 * 512 bytes). kidedge holds neither: it streams the
scan in slabs and keeps the labels sparsely (``kidedge.runtime.labelmap``), so its peak
should stay flat; the report gives the growth between the shortest and longest scan in
bytes per added voxel (a dense uint8 label volume alone would add 1).

Package (``--package``):
- ``tiny`` (default): a small CNN built with onnx.helper, no torch: a 3x3 convolution to 8
  channels, ReLU, and a 1x1 convolution to 4 class logits, with fixed weights that
  threshold the smoothed intensity (kidney above 100 HU), at native 512 x 512. It keeps
  the model's own activation memory small, so the curve shows the runtime's scaling.
- ``squeezenet``: SqueezeNet U-Net (random weights; memory does not depend on them)
  exported to ONNX fp32; torch is needed to export it, in this parent process only.
  About 1 s per 512 x 512 slice on a 2-core CPU, so use it with few slices.
- a path: an existing package.
The measured ``kidedge infer`` children never import torch.

GPU: ``--device cuda`` adds the torch backend's fp32 and fp16 latency per scan on a CUDA
GPU (kidedge infer --backend torch); without a GPU that section records that none was
available.

Usage:
    python benchmarks/bench_runtime_memory.py [--slices 100 250 500 1000] [--layouts nii.gz nii]
        [--package tiny|squeezenet|PATH] [--device cpu|cuda] [--out benchmarks/results]
Writes runtime_memory.json, runtime_memory.md and runtime_memory.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = COLS = 512
SPACING = (0.8, 0.8, 2.0)  # x, y, z mm
KIDNEY_LENGTH_MM = 110.0


def _machine() -> dict:
    try:
        from kidedge.environment import describe

        d = describe()
    except Exception as exc:  # the description is informative, not required
        d = {"error": str(exc)}
    import psutil

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "description": d}


def _phantom_slice(z: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """One axial (x, y) slice in HU: body ellipse; two kidneys 110 mm long (as real ones
    are, whatever the scan's length) around the middle slice."""
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    sl = np.full((ROWS, COLS), -1000, np.int16)
    body = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 230.0) ** 2 <= 1
    sl[body] = 30
    half = KIDNEY_LENGTH_MM / SPACING[2] / 2
    t = (z - n / 2) / half  # -1..1 along the kidneys
    if abs(t) < 1:
        r = np.sqrt(1 - t * t)
        for cx in (150, 362):
            k = ((yy - 300) / (60 * r + 1e-6)) ** 2 + ((xx - cx) / (40 * r + 1e-6)) ** 2 <= 1
            sl[k] = 180
    sl += rng.integers(-20, 21, size=sl.shape).astype(np.int16)
    return sl


def write_streaming_nifti(path: Path, n: int, seed: int = 0) -> Path:
    """Write an (x, y, z) RAS int16 NIfTI slice by slice (the writer never holds the volume)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((COLS, ROWS, n))
    hdr.set_data_dtype(np.int16)
    affine = np.diag([SPACING[0], SPACING[1], SPACING[2], 1.0])
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    hdr["vox_offset"] = 352
    rng = np.random.default_rng(seed)
    opener = gzip.open(path, "wb", compresslevel=1) if path.name.endswith(".gz") else open(path, "wb")
    with opener as f:
        f.write(hdr.binaryblock)
        f.write(b"\0" * 4)  # extension flag: none
        for z in range(n):
            # NIfTI is Fortran-ordered: x varies fastest inside each z slice.
            f.write(np.ascontiguousarray(_phantom_slice(z, n, rng).T).tobytes())
    return path


def make_squeezenet_package(out: Path) -> Path:
    """SqueezeNet U-Net, random weights, exported to ONNX fp32 (needs torch, here only)."""
    import torch

    from kidedge.package import write_manifest
    from kidedge.preprocess import PreprocessSpec
    from kidedge.train.models import build_model

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"in_channels": 1, "classes": 4}
    model = build_model("squeezenet_unet", **kwargs).eval()
    torch.save(model.state_dict(), out / "segment.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, ROWS, COLS),), str(out / "segment.fp32.onnx"),
                          input_names=["image"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N", 2: "H", 3: "W"}},
                          dynamo=False)
    spec = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range", pad_multiple=16)
    write_manifest(out, {
        "name": "bench-squeezenet-unet-random", "architecture": "squeezenet_unet", "dimensionality": "2d",
        "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
        "stages": [{"name": "segment", "role": "segment", "arch": "squeezenet_unet", "model_kwargs": kwargs,
                    "preprocess": spec.to_dict(),
                    "input": {"name": "image", "channels": 1, "height": None, "width": None},
                    "output": {"name": "logits", "activation": "softmax", "labels": [0, 1, 2, 3]},
                    "files": {"fp32": {"path": "segment.fp32.onnx"}, "torch": {"path": "segment.pt"}}}]})
    return out


def make_tiny_package(out: Path) -> Path:
    """3x3 conv (1 -> 8, box filter) + ReLU + 1x1 conv (8 -> 4 logits), fixed weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from kidedge.package import write_manifest
    from kidedge.preprocess import PreprocessSpec

    out.mkdir(parents=True, exist_ok=True)
    hidden = 8
    w1 = np.full((hidden, 1, 3, 3), 1 / 9, np.float32)
    b1 = np.zeros(hidden, np.float32)
    # Range-normalised x = (HU + 100) / 500; logits 0, 10x - 4, 20x - 11, -100 give
    # background below 100 HU, kidney 100..250 HU, tumour above; the 8 identical hidden
    # channels each carry 1/8 of the weight.
    w2 = (np.array([0.0, 10.0, 20.0, 0.0], np.float32)[:, None] / hidden * np.ones((1, hidden), np.float32))
    b2 = np.array([0.0, -4.0, -11.0, -100.0], np.float32)
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"),
             numpy_helper.from_array(w2.reshape(4, hidden, 1, 1), "W2"), numpy_helper.from_array(b2, "B2")]
    nodes = [helper.make_node("Conv", ["image", "W1", "B1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "W2", "B2"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "segment.fp32.onnx"))
    spec = PreprocessSpec(hu_window=(-100.0, 400.0), normalisation="range")
    write_manifest(out, {
        "name": "bench-tiny-cnn", "architecture": "tiny_cnn", "dimensionality": "2d",
        "classes": {"0": "background", "1": "kidney", "2": "tumour", "3": "cyst"},
        "stages": [{"name": "segment", "role": "segment", "arch": "tiny_cnn", "model_kwargs": {},
                    "preprocess": spec.to_dict(),
                    "input": {"name": "image", "channels": 1, "height": None, "width": None},
                    "output": {"name": "logits", "activation": "softmax", "labels": [0, 1, 2, 3]},
                    "files": {"fp32": {"path": "segment.fp32.onnx"}}}]})
    return out


BASELINE_CHILD = """
import sys
from kidedge.package import ModelPackage
from kidedge.runtime.backends.registry import select_backend, create_backend
from kidedge.runtime.profiling import high_water_rss_mb
pkg = ModelPackage.load(sys.argv[1])
choice = select_backend(pkg)
backends = [create_backend(choice, pkg, s).activate() for s in pkg.stages]
print(high_water_rss_mb(), 'torch' in sys.modules)
"""


def measure_baseline(model: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", BASELINE_CHILD, str(model)], capture_output=True, text=True, check=True)
    hwm, torch_loaded = r.stdout.split()
    return {"idle_hwm_mib": float(hwm), "torch_imported": torch_loaded == "True"}


def run_infer(scan: Path, model: Path, work: Path, extra: list[str] = ()) -> dict:
    out = work / "seg.nii.gz"
    prof = work / "profile.json"
    for p in (out, prof):
        p.unlink(missing_ok=True)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "kidedge.cli", "infer", str(scan), "-o", str(out),
                        "--model", str(model), "--profile", str(prof), *extra],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"kidedge infer failed ({r.returncode}): {r.stderr.strip()}")
    scan_rep = json.loads(prof.read_text())["scans"][0]
    p = scan_rep["profile"]
    return {"process_wall_s": round(wall, 2), "run_wall_s": p["wall_s"], "slices_per_s": p["slices_per_s"],
            "latency_ms": p["latency_ms"], "peak_rss_polled_mib": p["peak_rss_mb"],
            "peak_rss_hwm_mib": p["max_rss_mb"], "backend": scan_rep["backend"],
            "stages_s": p["stages_s"]}


def gpu_latency(scan: Path, model: Path, work: Path) -> dict:
    """torch backend fp32 / fp16 on CUDA, when there is one."""
    try:
        import torch

        ok = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if ok else None
    except ImportError:
        ok, name = False, None
    if not ok:
        return {"available": False, "note": "no CUDA GPU on this machine: torch fp16/fp32 GPU latency not measured"}
    res = {"available": True, "gpu": name}
    for prec in ("fp32", "fp16"):
        run_infer(scan, model, work, ["--backend", "torch", "--precision", prec])  # warm-up (cuDNN autotune, caches)
        res[prec] = run_infer(scan, model, work, ["--backend", "torch", "--precision", prec])
    return res


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    slices = np.array(results["slices"])
    for layout, rows in results["runs"].items():
        ax.plot(slices, [r["peak_rss_hwm_mib"] for r in rows], "o-", label=f"kidedge infer, {layout} (peak RSS)")
    ax.plot(slices, slices * ROWS * COLS * 2 / 2**20, "k--", label="int16 volume (reference)")
    ax.plot(slices, slices * ROWS * COLS / 2**20, "k:", label="dense uint8 label volume (reference)")
    ax.axhline(results["baseline"]["idle_hwm_mib"], color="grey", lw=0.8, label="idle: runtime + engine loaded")
    ax.set_xlabel("slices (512 x 512)")
    ax.set_ylabel("MiB")
    ax.set_title(f"kidedge infer peak RSS vs scan length\n{results['package']} on {results['backend']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# kidedge infer: peak memory against scan length",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPU cores, {m['ram_gib']} GiB RAM "
        f"({m['description'].get('cpu', {}).get('model', 'CPU') if isinstance(m['description'].get('cpu'), dict) else 'CPU'}); "
        "shared with other jobs, so times are indicative only. "
        + ("GPU: " + str(results["gpu"].get("gpu")) if results["gpu"].get("available") else "No GPU on this machine."),
        f"Package: {results['package']} (one stage, native 512 x 512, fp32 ONNX; see the script's docstring). "
        f"Backend: {results['backend']}, default micro-batch (4 slices on CPU).",
        f"Idle baseline (fresh process, runtime imported, engine activated): {results['baseline']['idle_hwm_mib']:.0f} MiB; "
        f"torch imported: {results['baseline']['torch_imported']}.",
        "Each run is a fresh `python -m kidedge.cli infer SCAN --profile` process; peak RSS = the process's VmHWM.",
        "",
        "| layout | slices | int16 volume MiB | dense uint8 labels MiB | peak RSS MiB | above idle MiB | slices/s | latency p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    idle = results["baseline"]["idle_hwm_mib"]
    for layout, rows in results["runs"].items():
        for n, r in zip(results["slices"], rows, strict=True):
            lines.append(f"| {layout} | {n} | {n * ROWS * COLS * 2 / 2**20:.0f} | {n * ROWS * COLS / 2**20:.0f} | "
                         f"{r['peak_rss_hwm_mib']:.0f} | {r['peak_rss_hwm_mib'] - idle:.0f} | {r['slices_per_s']:.1f} | "
                         f"{r['latency_ms'].get('p50', float('nan')):.1f} |")
    lines.append("")
    for layout, rows in results["runs"].items():
        n0, n1 = results["slices"][0], results["slices"][-1]
        grow = rows[-1]["peak_rss_hwm_mib"] - rows[0]["peak_rss_hwm_mib"]
        per_voxel = grow * 2**20 / ((n1 - n0) * ROWS * COLS) if n1 > n0 else float("nan")
        peaks = [r["peak_rss_hwm_mib"] for r in rows]
        lines.append(f"- {layout}: {n0} -> {n1} slices: peak RSS {rows[0]['peak_rss_hwm_mib']:.0f} -> "
                     f"{rows[-1]['peak_rss_hwm_mib']:.0f} MiB ({grow:+.0f} MiB, {per_voxel:.3f} bytes per added "
                     f"voxel; range over all lengths {min(peaks):.0f}-{max(peaks):.0f} MiB) while the int16 volume "
                     f"grows by {(n1 - n0) * ROWS * COLS * 2 / 2**20:.0f} MiB.")
    lines += ["", "Single run per length; run-to-run noise of the peak on this shared machine is a few tens of "
              "MiB (how full the bounded queues get when the peak happens), not a trend."]
    g = results["gpu"]
    lines += ["", "## GPU (torch backend, fp32 and fp16)", ""]
    if not g.get("available"):
        lines.append(f"GPU latency: {g['note']}.")
    else:
        for prec in ("fp32", "fp16"):
            r = g[prec]
            lines.append(f"- {g['gpu']} {prec}: {r['run_wall_s']:.2f} s per {results['gpu_scan_slices']}-slice scan, "
                         f"{r['slices_per_s']:.1f} slices/s, p50 {r['latency_ms'].get('p50')} ms/slice")
    if results.get("before"):
        b = results["before"]
        lines += ["", f"Before: {b['note']}: " + ", ".join(
            f"{n} slices {m:.0f} MiB" for n, m in zip(b["slices"], b["peak_rss_hwm_mib"], strict=True)) + "."]
    lines += ["", "Reproduce: `python benchmarks/bench_runtime_memory.py`."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, nargs="+", default=[100, 250, 500, 1000])
    ap.add_argument("--layouts", nargs="+", default=["nii.gz", "nii"], choices=["nii.gz", "nii"])
    ap.add_argument("--package", default="tiny", help="tiny, squeezenet, or the path of an existing package")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only re-write the .md and .png from a results JSON")
    args = ap.parse_args()
    if args.render:
        results = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(results))
        plot(results, args.render.with_suffix(".png"))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="kidedge-bench-rt-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.package == "tiny":
            model = make_tiny_package(work / "package")
        elif args.package == "squeezenet":
            model = make_squeezenet_package(work / "package")
        else:
            model = Path(args.package)
        from kidedge.package import ModelPackage

        pkg_name = ModelPackage.load(model).name
        baseline = measure_baseline(model)
        runs: dict[str, list] = {}
        backend = None
        for layout in args.layouts:
            runs[layout] = []
            for n in args.slices:
                scan = write_streaming_nifti(work / f"scan{n}.{layout}", n)
                r = run_infer(scan, model, work)
                backend = r["backend"]
                r["slices"] = n
                runs[layout].append(r)
                print(f"{layout} {n:5d} slices: peak RSS {r['peak_rss_hwm_mib']:.0f} MiB, "
                      f"{r['slices_per_s']:.1f} slices/s", flush=True)
                scan.unlink()
        gpu_n = 250
        gpu = {"available": False, "note": "not measured in this run: it ran on a CPU-only machine (no GPU was "
                                           "available); run with --device cuda on a GPU machine for torch fp32/fp16 "
                                           "GPU latency"}
        if args.device == "cuda":
            scan = write_streaming_nifti(work / f"scan{gpu_n}.nii.gz", gpu_n)
            gpu = gpu_latency(scan, model, work)
        results = {"benchmark": "runtime_memory", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "machine": _machine(), "package": pkg_name, "backend": backend, "slices": args.slices,
                   "rows": ROWS, "cols": COLS, "baseline": baseline, "runs": runs, "gpu": gpu,
                   "gpu_scan_slices": gpu_n}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "runtime_memory.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "runtime_memory.md").write_text(markdown(results))
        plot(results, args.out / "runtime_memory.png")
        print(f"wrote {args.out / 'runtime_memory.json'}, .md, .png")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
