"""Which backend runs a package here: availability checks and ``--backend auto``.

``auto`` walks :data:`AUTO_ORDER`, fastest kind of engine first, and takes the first one
that is installed, has a device, and for which the package has a usable model file for
every stage. The ranking is by kind of engine (a TensorRT plan built for this GPU, then
onnxruntime on the GPU, then torch on the GPU, then onnxruntime on the CPU, which for the
small 2D U-Nets of kidedge is faster than eager torch on the CPU); the choice and the
reason for skipping the others are reported to the user.

Nothing here imports torch unless an NVIDIA GPU is present (or ``--backend torch`` is
asked for), so ``auto`` on a CPU-only or Jetson install stays torch-free.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from kidedge.environment import int8_pairs_saturate, usable_cores
from kidedge.errors import KidedgeError
from kidedge.package import PlanKey, Stage
from kidedge.runtime.backends.base import Backend
from kidedge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from kidedge.runtime.backends.onnxruntime_backend import available_devices as ort_devices
from kidedge.runtime.backends.tensorrt_backend import (
    TensorRTBackend,
    gpu_name,
    match_plan,
    tensorrt_version,
)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
USER_PRECISIONS = ("auto", "fp32", "fp16", "int8")
#: (backend, device) in the order ``--backend auto`` tries them.
AUTO_ORDER = (("tensorrt", "cuda"), ("onnxruntime", "tensorrt"), ("onnxruntime", "cuda"),
              ("torch", "cuda"), ("onnxruntime", "cpu"))


@dataclasses.dataclass
class BackendChoice:
    """What will run: backend, device, and the package file key used for each stage.

    Attributes:
        backend: ``onnxruntime``, ``tensorrt`` or ``torch``.
        device: ``cpu`` or ``cuda`` (for onnxruntime also ``tensorrt``: its TensorRT EP).
        files: stage name -> key in the stage's ``files`` (``fp32``, ``int8-cpu``, ...,
            ``torch``, or a TensorRT plan key).
        precision: the resolved precision, e.g. ``int8`` (one word for the report).
        reason: why this backend, and why not the faster ones (and, with ``--dla-core``,
            which stages fell back to their GPU plan).
        dla_core: the DLA core asked for (``kidedge infer --dla-core``), or None.
    """

    backend: str
    device: str
    files: dict[str, str]
    precision: str
    reason: str = ""
    skipped: list[str] = dataclasses.field(default_factory=list)
    dla_core: int | None = None

    def describe(self) -> str:
        return f"{self.backend} ({self.device}, {self.precision})"


def has_nvidia_gpu() -> bool:
    """Cheap check for an NVIDIA driver and device, without importing any CUDA library."""
    return Path("/proc/driver/nvidia/version").exists() or any(
        Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvgpu/igpu0"))


def _torch_cuda() -> bool:
    if not has_nvidia_gpu() or importlib.util.find_spec("torch") is None:
        return False
    import torch  # only with an NVIDIA GPU present

    return bool(torch.cuda.is_available())


def device_available(backend: str, device: str) -> str | None:
    """None if ``backend`` can run on ``device`` here, else a short reason why not."""
    if backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        return None if device in ort_devices() else f"onnxruntime here has no {device} execution provider"
    if backend == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
            return "TensorRT and pycuda are not installed (pip install 'kidedge[tensorrt]')"
        return None if gpu_name() else "no CUDA GPU"
    if backend == "torch":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'kidedge[train]')"
        if device == "cuda":
            return None if _torch_cuda() else "torch has no CUDA GPU here"
        return None
    return f"unknown backend {backend!r}"


def _onnx_keys(device: str, precision: str) -> tuple[str, ...]:
    """Package file keys to try, in order, for onnxruntime on ``device``."""
    gpu = device != "cpu"
    if precision == "auto":
        return ("fp16", "fp32") if gpu else ("int8-cpu", "fp32")
    if precision == "int8":
        return ("int8-trt", "int8-cpu") if device == "tensorrt" else ("int8-cpu",)
    return (precision,)


#: Why a package may lack int8 (said when --precision int8 finds none).
_NO_INT8 = ("; export leaves out an int8 variant that fails its fidelity gate (the manifest's "
            "export_report.int8_gate says why): use --precision auto, fp16 or fp32")


def _may_saturate(stage: Stage) -> bool:
    """The stage's int8-cpu model has full-range weights and this CPU's int8 kernel may
    saturate with them (:func:`kidedge.environment.int8_pairs_saturate`). Packages without
    ``weight_bits`` were written when export used 7-bit weights."""
    entry = stage.files.get("int8-cpu")
    return entry is not None and entry.extra.get("weight_bits", 7) == 8 and int8_pairs_saturate()


_SATURATION = ("int8-cpu has 8-bit weights and this x86 CPU has AVX2 without VNNI, where ONNX Runtime's "
               "int8 kernel can saturate with them; re-export with --int8-cpu-weight-bits 7 for this CPU")


def float_localisers(package) -> list[str]:
    """Names of a cascade's localisers without int8 beside an int8 stage: export keeps the
    localiser float by default (it decides the segmenter's crop), and int8 runs it in fp32
    (fp16 on a GPU)."""
    def has_int8(st: Stage) -> bool:
        return any(k.startswith("int8") for k in st.files) or any(
            k.base_precision == "int8" for k in st.plan_keys.values())

    return [st.name for st in package.stages if st.role == "localise" and not has_int8(st) and any(
        has_int8(other) for other in package.stages if other is not st)]


def _resolve_files(package, backend: str, device: str, precision: str, dla_core: int | None = None,
                   notes: list[str] | None = None) -> dict[str, str]:
    """Stage name -> file key for this backend, or KidedgeError naming what is missing.

    With ``dla_core`` a stage takes its plan built for that DLA core where it has one, else
    its GPU plan, and ``notes`` says which stages fell back. On a CPU whose int8 kernel may
    saturate with the package's full-range int8 weights, ``auto`` takes fp32 and
    ``--precision int8`` runs int8 with a warning in ``notes``.
    """
    notes = [] if notes is None else notes
    files, saturating, floats = {}, [], float_localisers(package)
    for stage in package.stages:
        # int8 asked of a float localiser: its float model, as auto would take
        stage_precision = "auto" if precision == "int8" and stage.name in floats else precision
        if backend == "onnxruntime":
            keys = _onnx_keys(device, stage_precision)
            key = next((k for k in keys if k in stage.files), None)
            if key is None:
                raise KidedgeError(
                    f"{package.source}: stage {stage.name!r} has no {precision if precision != 'auto' else keys[-1]} "
                    f"ONNX model for onnxruntime on {device} (has {stage.precisions}){_NO_INT8 if precision == 'int8' else ''}")
            if key == "int8-cpu" and device == "cpu" and _may_saturate(stage):
                saturating.append(stage.name)
                if precision == "auto" and "fp32" in stage.files:
                    key = "fp32"
        elif backend == "torch":
            if precision == "int8":
                raise KidedgeError("the torch backend has no int8; use --backend onnxruntime or tensorrt")
            if "torch" not in stage.files:
                raise KidedgeError(f"{package.source}: stage {stage.name!r} has no torch state_dict for --backend torch")
            key = "torch"
        elif backend == "tensorrt":
            order = {"auto": ("fp16", "fp32", "int8")}.get(stage_precision, (stage_precision,))
            key = None
            if dla_core is not None:
                key = match_plan(stage.plans, tensorrt_version(), gpu_name(), order, dla_core=dla_core)
                if key is None:
                    notes.append(f"stage {stage.name!r} has no plan for DLA core {dla_core} here: its GPU plan runs")
            key = key or match_plan(stage.plans, tensorrt_version(), gpu_name(), order)
            if key is None:
                raise KidedgeError(
                    f"{package.source}: stage {stage.name!r} has no {'' if precision == 'auto' else precision + ' '}"
                    f"TensorRT plan for TensorRT {tensorrt_version()} on {gpu_name()} "
                    f"(plans: {sorted(stage.plans) or 'none'}); use --backend onnxruntime"
                    f"{_NO_INT8 if precision == 'int8' else ''}")
        else:
            raise KidedgeError(f"unknown backend {backend!r} (one of {BACKENDS})")
        files[stage.name] = key
    # int8 (asked, or taken by auto) beside a localiser the package keeps float: say so
    if floats and any("int8" in files[st.name] for st in package.stages if st.name not in floats):
        notes.extend(f"stage {name!r} runs {files[name]}: the package keeps its localiser float" for name in floats)
    if saturating:
        one, auto = len(saturating) == 1, precision == "auto"
        notes.append(f"{'' if auto else 'warning: '}{'stage' if one else 'stages'} {', '.join(saturating)} "
                     f"{'runs' if one else 'run'} {'fp32, not int8' if auto else 'int8'}: {_SATURATION}")
    return files


def _precision_word(backend: str, device: str, files: dict[str, str], precision: str) -> str:
    if backend == "torch":
        return "fp16" if (precision in ("auto", "fp16") and device == "cuda") else "fp32"
    key = list(files.values())[-1]  # the last stage: a cascade's segmenter (its localiser may stay float)
    if backend == "tensorrt":
        return PlanKey.parse(key).base_precision
    return key.split("-")[0]  # int8-cpu / int8-trt -> int8


def select_backend(package, backend: str = "auto", precision: str = "auto",
                   dla_core: int | None = None) -> BackendChoice:
    """Choose the backend, device and model files for ``package``.

    Args:
        package: a :class:`kidedge.package.ModelPackage`.
        backend: ``auto`` (fastest available, see :data:`AUTO_ORDER`) or a backend name.
        precision: ``auto`` (int8 on CPU, fp16 on GPU, fp32 when those are missing),
            ``fp32``, ``fp16`` or ``int8``.
        dla_core: prefer TensorRT plans built for this Jetson DLA core (GPU fallback per
            stage where a package has none); only TensorRT runs on a DLA.

    Raises:
        KidedgeError: the backend cannot run here, or the package lacks its files.
    """
    if precision not in USER_PRECISIONS:
        raise KidedgeError(f"--precision must be one of {USER_PRECISIONS}, got {precision!r}")
    if dla_core is not None and backend not in ("auto", "tensorrt"):
        raise KidedgeError(f"--dla-core runs TensorRT plans on a Jetson's DLA; it does not apply to --backend {backend}")
    notes: list[str] = []
    if backend == "auto":
        skipped = []
        for name, device in AUTO_ORDER:
            why = device_available(name, device)
            if why is None:
                try:
                    files = _resolve_files(package, name, device, precision, dla_core, notes)
                except KidedgeError as exc:
                    why = str(exc).split(": ", 1)[-1]
            if why is None:
                reason = "auto: fastest available" + (
                    f"; not available: {', '.join(s.split(':')[0] for s in skipped)}" if skipped else "")
                if dla_core is not None and name != "tensorrt":
                    notes.append(f"--dla-core {dla_core} unused: TensorRT cannot run this package here")
                return BackendChoice(name, device, files, _precision_word(name, device, files, precision),
                                     "; ".join([reason, *notes]), skipped, dla_core)
            skipped.append(f"{name}/{device}: {why}")
        raise KidedgeError(f"no backend can run {package.source} here: {'; '.join(skipped)}")
    if backend not in BACKENDS:
        raise KidedgeError(f"--backend must be auto or one of {BACKENDS}, got {backend!r}")
    devices = {"onnxruntime": ("cuda", "cpu"), "tensorrt": ("cuda",), "torch": ("cuda", "cpu")}[backend]
    why = None
    for device in devices:
        why = device_available(backend, device)
        if why is None:
            break
    if why is not None:
        raise KidedgeError(f"--backend {backend}: {why}")
    if backend == "torch" and precision == "fp16" and device != "cuda":
        raise KidedgeError("--backend torch --precision fp16 needs a CUDA GPU")
    files = _resolve_files(package, backend, device, precision, dla_core, notes)
    return BackendChoice(backend, device, files, _precision_word(backend, device, files, precision),
                         "; ".join([f"--backend {backend}", *notes]), dla_core=dla_core)


def create_backend(choice: BackendChoice, package, stage: Stage, max_batch: int = 8,
                   threads: int | None = None, parallel_calls: int = 1) -> Backend:
    """The (not yet activated) backend of one stage; the model file's hash is checked here.

    Args:
        choice: from :func:`select_backend`.
        package: the :class:`kidedge.package.ModelPackage`.
        stage: one of ``package.stages`` (a :class:`kidedge.package.Stage`).
        max_batch: micro-batch size (TensorRT sizes its buffers for it).
        threads: CPU threads for onnxruntime / torch on CPU (None: library default); per
            call when ``parallel_calls`` > 1.
        parallel_calls: onnxruntime on CPU only: infer calls the pipeline may run side by
            side (:attr:`kidedge.runtime.backends.base.Backend.parallel_calls`).
    """
    key = choice.files[stage.name]
    path = package.file_path(stage.name, key)
    if choice.backend == "onnxruntime":
        return OnnxRuntimeBackend(path, device=choice.device, threads=threads, parallel_calls=parallel_calls)
    if choice.backend == "tensorrt":
        parsed, entry = PlanKey.parse(key), stage.plans.get(key)
        # the buckets the plan was built for (its profiles are checked against them)
        buckets = (entry.extra.get("buckets") if entry is not None else None) or stage.input.buckets or None
        return TensorRTBackend(path, max_batch=max_batch, dla_core=parsed.dla_core if parsed else None,
                               buckets=buckets)
    from kidedge.runtime.backends.torch_backend import TorchBackend

    return TorchBackend(stage.arch or package.manifest.architecture, dict(stage.model_kwargs), path, device=choice.device, precision=choice.precision, threads=threads)


def default_threads() -> int | None:
    """CPU threads for inference: ``KIDEDGE_THREADS`` if set, else the library default."""
    v = os.environ.get("KIDEDGE_THREADS")
    return int(v) if v and v.isdigit() and int(v) > 0 else None


#: At most this many side-by-side infer calls (:func:`cpu_parallel_calls`): more would only
#: multiply the micro-batches in flight (memory) on a many-core machine.
MAX_PARALLEL_CALLS = 4
#: Side-by-side calls by default (where there are at least as many threads).
DEFAULT_PARALLEL_CALLS = 2


def cpu_parallel_calls(threads: int | None) -> tuple[int, int | None]:
    """``(calls, threads per call)`` for a 2D package on onnxruntime's CPU provider.

    By default two calls side by side, the ``threads`` (or the usable cores) shared between
    them; one call on all of them where there is a single thread. Why: the pipeline's reader
    and labeller threads share the cores with the engine, and an onnxruntime call on two
    intra-op threads waits at every operator for whichever of its threads the scheduler
    took away, while two one-thread calls each go on at their own pace. On the 2-core
    machine, the 602-slice bench scan, alternating fresh-process runs (int8, gated; same
    labels): medians 3.14 s side by side against 3.55 s one two-thread call at a time, with
    less CPU time (5.75 against 6.34 s; 5 runs each, benchmarks/results/cpu-2core-amd-epyc/
    threads.md), 3.51 against 3.90 s (4 each) and 3.21 against 3.51 s (6 each) the same day;
    two runs of 3 on an earlier day gave 4.27 against 3.98 s and 3.76 against 4.35 s.
    Measured on 2 cores only. ``KIDEDGE_PARALLEL_CALLS`` = N runs N calls side by side
    (``1``: one call at a time on all threads); ``auto``: ``threads`` one-thread calls, or
    one call per usable core up to :data:`MAX_PARALLEL_CALLS`.
    """
    v = os.environ.get("KIDEDGE_PARALLEL_CALLS", "")
    if v == "auto":
        if threads:
            return threads, 1
        cores = usable_cores()
        calls = max(1, min(cores, MAX_PARALLEL_CALLS))
        return calls, max(1, cores // calls)
    total = threads or usable_cores()
    calls = int(v) if v.isdigit() and int(v) > 0 else min(DEFAULT_PARALLEL_CALLS, max(1, total))
    return calls, (threads if calls == 1 else max(1, total // calls))
