"""TensorRT engines (plans) from the package's ONNX files.

Written to the TensorRT 10 Python API. Each call below was checked against NVIDIA's
documentation; the page that confirms it is named next to it (docs.nvidia.com/deeplearning/
tensorrt/latest/_static/python-api/... is abbreviated ``py-api/``):

* ``trt.Builder(logger).create_network(flags)`` (py-api/infer/Core/Builder.html): in
  TensorRT 10 every network is explicit batch; ``NetworkDefinitionCreationFlag.
  EXPLICIT_BATCH`` is listed there as "[DEPRECATED] Ignored because networks are always
  explicit batch in TensorRT 10.0", so it is never set. The one flag used is
  ``1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)`` for the QDQ int8 model on
  a GPU: the Q/DQ nodes then fix every int8 tensor (explicit quantisation) and the rest
  runs in the ONNX's float type, with no calibrator and no INT8 builder flag ("Use
  explicit quantization with Strong Typing. Precision-control build flags are not required
  and should not be specified": inference-library/quantized-types-explicit-quantization.html).
  TensorRT 11 makes strong typing the default and ignores the flag (same Builder page of
  11.x), so this stays correct there.
* fp16 plans are built weakly typed from the fp32 ONNX with ``config.set_flag(
  trt.BuilderFlag.FP16)`` (py-api/infer/Core/BuilderConfig.html, BuilderFlag), letting
  TensorRT pick fp16 kernels where faster; weak typing is deprecated from 10.12 and gone
  in 11 (where fp16 needs an fp16-typed ONNX: the package's fp16.onnx).
* ``trt.OnnxParser(network, logger).parse_from_file(path)`` returns False on failure;
  errors via ``parser.num_errors`` / ``parser.get_error(i)`` (py-api/parsers/Onnx/
  pyOnnx.html).
* ``builder.create_builder_config()``; ``config.set_memory_pool_limit(
  trt.MemoryPoolType.WORKSPACE, bytes)`` (py-api/infer/Core/BuilderConfig.html;
  MemoryPoolType.WORKSPACE "defaults to max device memory", so it is capped here).
* ``builder.create_optimization_profile()``, ``profile.set_shape(name, min, opt, max)``,
  ``config.add_optimization_profile(profile)`` (py-api/infer/Core/OptimizationProfile.html:
  kernels are chosen for ``opt`` and valid for every shape between ``min`` and ``max``).
* Timing cache (performance/builder-performance.html, "Timing Cache"; py-api/infer/Core/
  TimingCache.html): ``config.create_timing_cache(blob)`` (an empty blob makes a new
  cache), ``config.set_timing_cache(cache, ignore_mismatch=False)``, and after the build
  ``cache.serialize()`` is saved next to the plan. The cache is specific to the device,
  CUDA and TensorRT versions, so it is stored under the same key as the plan.
* DLA (Jetson; inference-library/dla-build-and-run.html "Using the TensorRT API",
  BuilderConfig page): ``config.default_device_type = trt.DeviceType.DLA``,
  ``config.DLA_core = n``, ``config.set_flag(trt.BuilderFlag.GPU_FALLBACK)`` ("Enable
  layers marked to execute on GPU if layer cannot execute on DLA"); ``builder.
  num_DLA_cores`` (Builder page) bounds ``n``. DLA runs only fp16 and int8, so a DLA build
  is never fp32. TensorRT 10.7 is the last 10.x release with DLA (Working with DLA, 11.x
  pages), and DLA there is built weakly typed: a DLA int8 plan is the QDQ model with the
  INT8 and FP16 flags (float layers in fp16 on DLA) instead of strong typing.
* ``builder.build_serialized_network(network, config)`` returns the plan (``IHostMemory``)
  or None on failure (Builder page).

The runtime side (``trt.Runtime(logger).deserialize_cuda_engine(plan)``, returns None if
the plan cannot be deserialized: py-api/infer/Core/Runtime.html; ``num_io_tensors`` /
``get_tensor_name`` / ``get_tensor_mode``: py-api/infer/Core/Engine.html;
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3(stream_handle)``:
py-api/infer/Core/ExecutionContext.html) is :mod:`kidedge.runtime.backends.tensorrt_backend`.

A plan runs only on the TensorRT version and GPU it was built for, so it is stored under
:func:`kidedge.package.tensorrt_key`: TensorRT version, GPU name, compute capability,
precision (with ``dla<n>`` appended for a DLA plan) and the first 12 hex digits of the
ONNX file's sha256.

TensorRT cannot be installed on the machine this was written on (no GPU): the module
imports ``tensorrt`` lazily; :func:`require_tensorrt` is a one-line :class:`KidedgeError`
without it. The unit tests check the decisions made here (flags, profile shapes, keys)
against a recording stand-in of the ``tensorrt`` module; the real build is tested only by
the ``tensorrt``-marked integration test, which runs where TensorRT and a GPU exist.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kidedge.errors import KidedgeError
from kidedge.export.onnx_export import INPUT_NAME
from kidedge.package import sha256_file, tensorrt_key

#: Micro-batch sizes the runtime uses (``kidedge infer --batch``'s range of use).
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_WORKSPACE = 2 << 30


def require_tensorrt():
    """The ``tensorrt`` module and a visible CUDA GPU, or a one-line KidedgeError."""
    try:
        import tensorrt as trt
    except ImportError:
        raise KidedgeError("--tensorrt needs the TensorRT Python API and an NVIDIA GPU: "
                           "pip install 'kidedge[tensorrt]' on the GPU machine") from None
    gpu_identity()
    return trt


def gpu_identity(device: int = 0) -> tuple[str, tuple[int, int]]:
    """(name, (major, minor) compute capability) of the GPU the plan is built on.

    torch (an export dependency) reports both; pynvml (the ``[tensorrt]`` extra) is the
    fallback.
    """
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device))
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(device)
        name = pynvml.nvmlDeviceGetName(h)
        cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        return (name.decode() if isinstance(name, bytes) else name), (int(cc[0]), int(cc[1]))
    except Exception:
        raise KidedgeError("--tensorrt needs an NVIDIA GPU, and none is visible") from None


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """What to build.

    Args:
        precision: ``"fp16"`` (weakly typed + FP16 flag, from fp32 ONNX), ``"int8"``
            (strongly typed, from the int8-trt QDQ ONNX) or ``"fp32"``.
        channels: input channels.
        height, width: optimisation-profile spatial size (the stage's preprocessed size);
            ``max_height``/``max_width`` widen the profile for dynamic inputs.
        batches: (min, opt, max) batch sizes of the optimisation profile.
        depth: 3D stages: slices per block (input NCDHW); None for 2D.
        workspace_bytes: builder workspace memory pool limit.
        dla_core: build for this Jetson DLA core (with GPU fallback); None for GPU only.
    """

    precision: str
    channels: int
    height: int
    width: int
    batches: tuple[int, int, int] = DEFAULT_BATCHES
    max_height: int | None = None
    max_width: int | None = None
    depth: int | None = None
    workspace_bytes: int = DEFAULT_WORKSPACE
    dla_core: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8", "fp32"):
            raise KidedgeError(f"TensorRT precision must be fp16, int8 or fp32, got {self.precision!r}")
        b = self.batches
        if len(b) != 3 or not (1 <= b[0] <= b[1] <= b[2]):
            raise KidedgeError(f"TensorRT batch profile must be min <= opt <= max >= 1, got {b}")
        if self.dla_core is not None and self.precision == "fp32":
            raise KidedgeError("DLA runs fp16 or int8 only; pick --precision fp16 or int8 for a DLA build")


def profile_shapes(s: BuildSettings) -> dict[str, tuple[int, ...]]:
    """min/opt/max input shapes of the optimisation profile."""
    mh, mw = s.max_height or s.height, s.max_width or s.width
    if s.depth is not None:
        return {"min": (s.batches[0], s.channels, s.depth, s.height, s.width),
                "opt": (s.batches[1], s.channels, s.depth, s.height, s.width),
                "max": (s.batches[2], s.channels, s.depth, mh, mw)}
    return {"min": (s.batches[0], s.channels, s.height, s.width),
            "opt": (s.batches[1], s.channels, s.height, s.width),
            "max": (s.batches[2], s.channels, mh, mw)}


def network_flags(trt, precision: str, dla: bool = False) -> int:
    """create_network flags: STRONGLY_TYPED for QDQ int8 on a GPU, none otherwise.

    EXPLICIT_BATCH is never passed: deprecated and ignored in TensorRT 10 (Builder page).
    DLA builds stay weakly typed (see the module docstring).
    """
    if precision == "int8" and not dla:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def builder_flags(precision: str, dla: bool = False) -> list[str]:
    """Names of the ``trt.BuilderFlag`` members a build sets."""
    if dla:
        # DLA has no fp32; int8 QDQ weakly typed needs INT8, its float layers run fp16.
        return (["INT8", "FP16"] if precision == "int8" else ["FP16"]) + ["GPU_FALLBACK"]
    if precision == "fp16":
        return ["FP16"]
    return []  # fp32, or int8 strongly typed (precision flags not allowed there)


def plan_precision_label(precision: str, dla_core: int | None) -> str:
    """The precision part of a plan key: ``fp16``, ``int8``, or ``fp16dla0`` for DLA core 0.

    A DLA plan must never be mistaken for a GPU plan of the same precision (the runtime
    picks plans by precision), so the core is part of the label.
    """
    return precision if dla_core is None else f"{precision}dla{int(dla_core)}"


def build_engine(onnx_path: Path, plan_path: Path, settings: BuildSettings, trt=None,
                 timing_cache_path: Path | None = None) -> dict:
    """Build a TensorRT plan from ``onnx_path`` and write it to ``plan_path``.

    Args:
        onnx_path: fp32 ONNX (fp16/fp32 plans) or the int8-trt QDQ ONNX (int8 plans).
        plan_path: the serialized engine to write.
        settings: :class:`BuildSettings`.
        trt: the tensorrt module (default: imported via :func:`require_tensorrt`).
        timing_cache_path: timing cache read if present and written after the build
            (default: ``plan_path`` with suffix ``.timing-cache``).

    Returns:
        Plan facts for the manifest (precision, profile, flags, DLA, versions).
    """
    trt = trt or require_tensorrt()
    timing_cache_path = Path(timing_cache_path or Path(plan_path).with_suffix(".timing-cache"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    dla = settings.dla_core is not None
    flags = network_flags(trt, settings.precision, dla)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise KidedgeError(f"{onnx_path}: TensorRT cannot parse it: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_bytes))
    if dla:
        if settings.dla_core >= builder.num_DLA_cores:
            raise KidedgeError(f"DLA core {settings.dla_core} requested but this device has "
                               f"{builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings.dla_core)
    flag_names = builder_flags(settings.precision, dla)
    for name in flag_names:
        config.set_flag(getattr(trt.BuilderFlag, name))

    shapes = profile_shapes(settings)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    previous = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    config.set_timing_cache(cache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise KidedgeError(f"{onnx_path}: TensorRT engine build failed ({settings.precision}); see the TensorRT log above")
    Path(plan_path).write_bytes(bytes(plan))
    timing_cache_path.write_bytes(bytes(cache.serialize()))
    return {
        "precision": settings.precision,
        "strongly_typed": bool(flags),
        "builder_flags": flag_names,
        "profile": {k: list(v) for k, v in shapes.items()},
        "workspace_bytes": int(settings.workspace_bytes),
        "dla_core": settings.dla_core,
        "gpu_fallback": dla,
        "tensorrt_version": str(trt.__version__),
        "onnx_sha256": sha256_file(onnx_path),
    }


def build_stage_plans(stage_dir: Path, rel_dir: str, onnx_files: dict[str, Path], settings: dict,
                      trt=None, gpu: tuple[str, tuple[int, int]] | None = None) -> dict:
    """Build every plan a stage gets and return its ``files["tensorrt"]`` entries.

    Args:
        stage_dir: the stage's folder inside the package being written.
        rel_dir: that folder relative to the package root (manifest paths).
        onnx_files: ``{"fp16": fp32.onnx path, "int8": int8-trt.onnx path}`` (present keys
            are built).
        settings: keyword arguments of :class:`BuildSettings` except ``precision``.
        gpu: (name, compute capability); default: :func:`gpu_identity`.

    Returns:
        ``{key: {"path", "timing_cache": {"path"}, ...facts}}`` keyed by
        :func:`kidedge.package.tensorrt_key`.
    """
    trt = trt or require_tensorrt()
    name, cc = gpu or gpu_identity()
    entries = {}
    for precision, onnx_path in onnx_files.items():
        label = plan_precision_label(precision, settings.get("dla_core"))
        key = tensorrt_key(str(trt.__version__), name, cc, label, sha256_file(onnx_path))
        plan = Path(stage_dir) / f"{key}.plan"
        cache = Path(stage_dir) / f"{key}.timing-cache"
        facts = build_engine(onnx_path, plan, BuildSettings(precision=precision, **settings), trt, cache)
        entries[key] = {"path": f"{rel_dir}/{plan.name}", "timing_cache": {"path": f"{rel_dir}/{cache.name}"},
                        "gpu": name, "compute_capability": f"{cc[0]}.{cc[1]}", **facts}
    return entries
