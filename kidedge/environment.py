"""What this machine offers kidedge: library versions, importable backends, CPU vector and
int8 instruction sets, GPUs. Backs ``kidedge info`` and the machine line of every
benchmark report.

Probing never fails: a library that is missing or broken is reported as such.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from kidedge import __version__

# CPU flags that decide int8 and fp16 speed: VNNI gives int8 dot products on x86 (what
# ONNX Runtime's uint8 x int8 kernels use), AMX int8/bf16 tiles on Sapphire Rapids and
# later; on Arm, dotprod/i8mm give int8 dot products (Jetson Orin has both).
X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
ARM_FLAGS = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    try:  # the distribution's metadata: some packages deprecate __version__
        return importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(mod, "__version__", "unknown"))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all logical cores off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_description() -> dict:
    """CPU model, logical cores and the vector / int8 instruction sets it reports."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Hardware", "Model") and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    wanted = X86_FLAGS if platform.machine() in ("x86_64", "AMD64", "i686") else ARM_FLAGS
    return {
        "model": model,
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "instruction_sets": [f for f in wanted if f in flags],
    }


#: x86 flags with int8 dot products that sum in 32 bits (VNNI, and AMX which implies it).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_pairs_saturate(cpu: dict | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 convolutions may saturate on this CPU.

    On x86 CPUs with AVX2 but no VNNI (Haswell to Coffee Lake, AMD Zen 1-3) ONNX Runtime
    multiplies uint8 activations by int8 weights with ``vpmaddubsw``, which adds each pair
    of products in 16 bits: 255 x 127 x 2 overflows it, so weights quantised to the full
    int8 range can saturate there; 7-bit weights (``reduce_range``) cannot. VNNI, AMX and
    Arm's dot products accumulate in 32 bits. False when the flags cannot be read.
    """
    cpu = cpu or cpu_description()
    sets = set(cpu["instruction_sets"])
    return "avx2" in sets and not sets & set(INT8_DOT_FLAGS)


def jetson_model() -> str | None:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            text = Path(path).read_text(errors="ignore").strip("\x00 \n")
        except OSError:
            continue
        if "jetson" in text.lower() or "nvidia" in text.lower():
            return text
    return None


def gpu_description() -> list[dict]:
    """GPUs seen by nvidia-smi (name, memory, driver, compute capability); [] if none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    fields = "name,memory.total,driver_version,compute_cap"
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"name": parts[0], "memory_mib": parts[1], "driver": parts[2], "compute_capability": parts[3]})
    return gpus


def backend_description() -> dict:
    """Which inference and training backends import, and what they can run on."""
    backends: dict = {}
    try:
        import onnxruntime as ort

        backends["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    except Exception as exc:  # noqa: BLE001
        backends["onnxruntime"] = {"version": None, "error": type(exc).__name__}
    backends["tensorrt"] = {"version": _version("tensorrt")}
    backends["pycuda"] = {"version": _version("pycuda")}
    torch_info: dict = {"version": _version("torch")}
    if torch_info["version"]:
        import torch

        cuda = torch.cuda.is_available()
        torch_info["cuda_usable"] = cuda
        torch_info["cuda_build"] = torch.version.cuda
        if cuda:
            torch_info["cuda_device"] = torch.cuda.get_device_name(0)
            torch_info["bf16_supported"] = torch.cuda.is_bf16_supported()
    backends["torch"] = torch_info
    return backends


def cpu_inference_calls() -> dict:
    """How onnxruntime on this CPU runs a 2D stage: ``calls`` side by side,
    ``threads_per_call`` each (None: onnxruntime's own default, one per physical core), as
    :func:`kidedge.runtime.backends.registry.cpu_parallel_calls` decides with
    ``KIDEDGE_THREADS`` and ``KIDEDGE_PARALLEL_CALLS``."""
    from kidedge.runtime.backends.registry import cpu_parallel_calls, default_threads

    calls, per_call = cpu_parallel_calls(default_threads())
    return {"calls": calls, "threads_per_call": per_call}


def describe() -> dict:
    libs = {name: _version(mod) for name, mod in (
        ("numpy", "numpy"), ("nibabel", "nibabel"), ("scipy", "scipy"), ("click", "click"),
        ("onnx", "onnx"), ("pydicom", "pydicom"), ("torchvision", "torchvision"),
        ("segmentation_models_pytorch", "segmentation_models_pytorch"),
    )}
    return {
        "kidedge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": libs,
        "backends": backend_description(),
        "cpu": {**cpu_description(), "onnxruntime_calls": cpu_inference_calls()},
        "jetson": jetson_model(),
        "gpus": gpu_description(),
    }


def machine_label(d: dict | None = None) -> str:
    """A short folder-safe name for benchmark results, e.g. 'cpu-2core-intel-xeon-platinum'."""
    d = d or {"cpu": cpu_description(), "gpus": gpu_description()}
    if d.get("gpus"):
        base = d["gpus"][0]["name"]
    else:
        base = f"cpu-{d['cpu']['usable_cores']}core-{d['cpu']['model']}"
    slug = "".join(c.lower() if c.isalnum() else "-" for c in base)
    return "-".join(filter(None, slug.split("-")))[:60]


def format_description(d: dict) -> str:
    b = d["backends"]
    ort = b["onnxruntime"]
    torch = b["torch"]
    lines = [
        f"kidedge {d['kidedge']}  (python {d['python']}, {d['platform']})",
        "libraries: " + ", ".join(f"{k} {v or 'missing'}" for k, v in d["libraries"].items()),
        "backends:",
        f"  onnxruntime  {ort.get('version') or 'missing'}  providers: {', '.join(ort.get('providers', [])) or '-'}",
        f"  tensorrt     {b['tensorrt']['version'] or 'missing'}",
        f"  pycuda       {b['pycuda']['version'] or 'missing'}",
        f"  torch        {torch['version'] or 'missing'}"
        + (f"  CUDA usable: {'yes (' + torch.get('cuda_device', '') + ')' if torch.get('cuda_usable') else 'no'}"
           if torch["version"] else ""),
        f"cpu: {d['cpu']['model']} ({d['cpu']['architecture']}, {d['cpu']['usable_cores']} usable of {d['cpu']['logical_cores']} logical cores)",
        f"  instruction sets: {' '.join(d['cpu']['instruction_sets']) or 'none of interest'}",
        "  int8 on CPU: " + ("AVX2 without VNNI: packages with 8-bit int8-cpu weights run fp32 by default "
                             "(export with --int8-cpu-weight-bits 7 for this CPU)" if int8_pairs_saturate(d["cpu"])
                             else "8-bit int8-cpu weights run as int8"),
    ]
    calls = d["cpu"].get("onnxruntime_calls")
    if calls:
        n, t = calls["calls"], calls["threads_per_call"]
        how = f"{n} calls side by side" if n > 1 else "one call at a time"
        threads = ("onnxruntime's default threads (one per physical core)" if t is None else
                   f"{t} thread{'s' if t > 1 else ''}{' each' if n > 1 else ''}")
        lines.append(f"  onnxruntime on CPU: {how}, {threads} (KIDEDGE_PARALLEL_CALLS, KIDEDGE_THREADS)")
    if d["jetson"]:
        lines.append(f"jetson: {d['jetson']}")
    if d["gpus"]:
        for g in d["gpus"]:
            lines.append(f"gpu: {g['name']} ({g['memory_mib']} MiB, compute {g['compute_capability']}, driver {g['driver']})")
    else:
        lines.append("gpu: none found")
    return "\n".join(lines)
