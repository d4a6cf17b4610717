"""TensorRT engines (plans) from the package's ONNX files: one optimisation profile per
input shape bucket (GPU 2D plans: each admitting every smaller size).

Written to the TensorRT 10 Python API. Each call was checked against NVIDIA's
documentation; the page is named beside the call (``py-api/`` abbreviates docs.nvidia.com/
deeplearning/tensorrt/latest/_static/python-api/, ``c-api/`` the C++ pages of the same
release, ``guide/`` docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/). Return
values were checked against the Python bindings' sources (NVIDIA/TensorRT, python/src/
infer/pyCore.cpp): ``build_serialized_network`` and ``create_network`` return None on
failure, ``add_optimization_profile`` the profile's index (-1 if invalid),
``set_timing_cache`` a bool, ``IOptimizationProfile.set_shape`` raises on inconsistent
shapes. Every one is checked here.

Profiles and batch (why this shape of engine):

* Each of the stage's shape buckets (:mod:`kidedge.shape_buckets`) gets its own profile,
  tuned for the bucket (opt = max = the bucket: "The builder selects the kernels that
  result in the lowest runtime for the optimum input tensor dimensions, and are valid for
  all input tensor sizes in the valid range": py-api/infer/Core/OptimizationProfile.html).
* GPU 2D plans: a profile's spatial range runs from ``min_side`` (the stage's
  ``pad_multiple``) up to its bucket, so the runtime pads a crop only to a multiple of 32,
  as for ONNX Runtime, and the backend runs it in the smallest profile that admits it.
  Padding each crop to its bucket with the window's low value instead cost the built-in
  segmenter kidney Dice (mean 0.833 against 0.861 on 7 phantom scans, ONNX Runtime fed the
  same inputs standing in for TensorRT: benchmarks/results/cpu-2core-amd-epyc/
  bucket_context.md), and does more work (66% more pixels on average,
  benchmarks/results/shape_buckets.md). Plans built before this had fixed-size profiles; the
  runtime still pads to their buckets.
* GPU plans: batch is dynamic within each profile, min 1, opt = max = the runtime's
  micro-batch (default 16, ``kidedge infer``'s GPU default). Full micro-batches run at the
  tuned shape; the last, partial one of a scan runs without padding. Larger ``--batch`` is
  split by the backend.
* DLA plans and 3D windows: fixed sizes. DLA plans also a fixed batch (min = opt = max),
  because "DLA does not support dynamic dimensions, so the profile's min, max, and opt
  values must be equal for wildcard dimensions. The runtime dimensions must be the same as
  the dimensions used for building" (guide/dla-layer-restrictions.html); the backend pads a
  partial micro-batch with zeros. The same page allows "only 16 DLA loadable ...
  concurrently per core", and every profile needs its own, so a DLA build is refused above
  :data:`MAX_DLA_PROFILES` buckets.

Calls:

* ``trt.Builder(logger).create_network(flags)`` (py-api/infer/Core/Builder.html): every
  network is explicit batch in TensorRT 10 (``EXPLICIT_BATCH`` is "[DEPRECATED] Ignored"),
  so the one flag used is ``1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)``
  for the QDQ int8 model on a GPU: explicit quantisation, no calibrator, no INT8 flag
  ("Use explicit quantization with Strong Typing. Precision-control build flags are not
  required and should not be specified": guide/quantized-types-explicit-quantization.html).
* fp16 plans: weakly typed from the fp32 ONNX with ``config.set_flag(trt.BuilderFlag.FP16)``
  (py-api/infer/Core/BuilderConfig.html).
* ``trt.OnnxParser(network, logger).parse_from_file(path)`` -> bool; errors via
  ``num_errors`` / ``get_error(i)`` (py-api/parsers/Onnx/pyOnnx.html).
* ``config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)`` (BuilderConfig
  page: the workspace "defaults to max device memory", so it is capped).
* ``builder.create_optimization_profile()``, ``profile.set_shape(name, min, opt, max)``,
  ``config.add_optimization_profile(profile)`` -> index (OptimizationProfile page;
  c-api/classnvinfer1_1_1_i_builder_config.html ``addOptimizationProfile``).
* Timing cache (guide/../performance/builder-performance.html "Timing Cache";
  py-api/infer/Core/TimingCache.html): ``config.create_timing_cache(blob)`` (empty blob:
  new cache), ``config.set_timing_cache(cache, ignore_mismatch=False)``, and
  ``cache.serialize()`` saved beside the plan under the plan's key (a cache is specific to
  the device, CUDA and TensorRT version).
* DLA (guide/dla-build-and-run.html "Using the TensorRT API"; BuilderConfig page):
  ``config.default_device_type = trt.DeviceType.DLA``, ``config.DLA_core = n``,
  ``config.set_flag(trt.BuilderFlag.GPU_FALLBACK)``; ``builder.num_DLA_cores`` bounds ``n``.
  DLA runs fp16 and int8 only. TensorRT 10.7 is the last release with DLA on JetPack
  ("If DLA is required on any of these platforms, remain on TensorRT 10.7":
  guide/work-with-dla.html of 11.x); there DLA builds stay weakly typed, so a DLA int8
  plan is the QDQ model with the INT8 and FP16 flags.
* ``builder.build_serialized_network(network, config)`` -> ``IHostMemory`` or None.

The runtime side is :mod:`kidedge.runtime.backends.tensorrt_backend`.

TensorRT cannot be installed on the machine this was written on (no GPU): ``tensorrt`` is
imported lazily, :func:`require_tensorrt` is a one-line :class:`KidedgeError` without it.
Unit tests record the calls made here against a stand-in with the real API's signatures;
the real build is tested by the ``tensorrt``-marked tests where TensorRT and a GPU exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from kidedge.errors import KidedgeError
from kidedge.export.onnx_export import INPUT_NAME
from kidedge.package import PlanKey, sha256_file, tensorrt_key
from kidedge.runtime.backends.tensorrt_backend import check_tensorrt_version
from kidedge.shape_buckets import check_buckets, describe, stage_buckets

#: Micro-batch the GPU profiles are tuned for (``kidedge infer``'s GPU default).
DEFAULT_BATCH = 16
DEFAULT_WORKSPACE = 2 << 30
#: DLA loadables per core (guide/dla-layer-restrictions.html); one per profile at least.
MAX_DLA_PROFILES = 16


def require_tensorrt():
    """The ``tensorrt`` module (TensorRT 10.x) and a visible CUDA GPU, or a one-line
    KidedgeError."""
    try:
        import tensorrt as trt
    except ImportError:
        raise KidedgeError("--tensorrt needs the TensorRT Python API and an NVIDIA GPU: "
                           "pip install 'kidedge[tensorrt]' on the GPU machine") from None
    version = str(trt.__version__)
    check_tensorrt_version(version)
    if int(version.split(".")[0]) >= 11:
        raise KidedgeError(f"TensorRT {version}: kidedge builds fp16 plans weakly typed (the FP16 builder flag), "
                           "which TensorRT 11 removed; build the plans with TensorRT 10.x")
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
        buckets: the stage's input shape buckets, (height, width) each: one profile each.
        batch: micro-batch of every profile (GPU: max and opt, min 1; DLA: fixed).
        depth: 3D stages: slices per block (input NCDHW); None for 2D.
        workspace_bytes: builder workspace memory pool limit.
        dla_core: build for this Jetson DLA core (with GPU fallback); None for GPU only.
        min_side: GPU 2D plans: each profile admits heights and widths from this up to its
            bucket (the stage's ``pad_multiple``); None: the bucket's size only.
    """

    precision: str
    channels: int
    buckets: tuple[tuple[int, int], ...]
    batch: int = DEFAULT_BATCH
    depth: int | None = None
    workspace_bytes: int = DEFAULT_WORKSPACE
    dla_core: int | None = None
    min_side: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8", "fp32"):
            raise KidedgeError(f"TensorRT precision must be fp16, int8 or fp32, got {self.precision!r}")
        if int(self.batch) < 1:
            raise KidedgeError(f"TensorRT profile batch must be >= 1, got {self.batch}")
        buckets = tuple((int(h), int(w)) for h, w in self.buckets)
        if not buckets or any(min(b) < 1 for b in buckets) or len(set(buckets)) != len(buckets):
            raise KidedgeError(f"TensorRT build needs distinct positive input buckets, got {list(self.buckets)}")
        object.__setattr__(self, "buckets", buckets)
        if self.min_side is not None and not 1 <= int(self.min_side) <= min(min(b) for b in buckets):
            raise KidedgeError(f"TensorRT profiles' smallest side must be 1 to the smallest bucket side, got {self.min_side}")
        if self.dla_core is not None:
            if self.precision == "fp32":
                raise KidedgeError("DLA runs fp16 or int8 only; pick --precision fp16 or int8 for a DLA build")
            if len(buckets) > MAX_DLA_PROFILES:
                raise KidedgeError(
                    f"a DLA plan loads one DLA loadable per profile and a DLA core holds {MAX_DLA_PROFILES}; "
                    f"{len(buckets)} input buckets are too many (export with fewer, coarser buckets)")


def profile_shapes(s: BuildSettings) -> list[dict]:
    """One ``{"bucket", "min", "opt", "max"}`` per bucket, in profile-index order."""
    lo = s.batch if s.dla_core is not None else 1  # DLA: no dynamic dimensions at all
    lead = (s.channels,) if s.depth is None else (s.channels, int(s.depth))
    ranged = s.min_side is not None and s.dla_core is None and s.depth is None
    return [{"bucket": (h, w), "min": (lo, *lead, *((s.min_side, s.min_side) if ranged else (h, w))),
             "opt": (s.batch, *lead, h, w), "max": (s.batch, *lead, h, w)} for h, w in s.buckets]


def network_flags(trt, precision: str, dla: bool = False) -> int:
    """create_network flags: STRONGLY_TYPED for QDQ int8 on a GPU, none otherwise."""
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
    """The precision part of a plan key (:meth:`kidedge.package.PlanKey.precision_label`)."""
    return PlanKey.precision_label(precision, dla_core)


def _add_profiles(trt, builder, config, settings: BuildSettings) -> list[dict]:
    shapes = profile_shapes(settings)
    for i, shp in enumerate(shapes):
        profile = builder.create_optimization_profile()
        try:
            profile.set_shape(INPUT_NAME, shp["min"], shp["opt"], shp["max"])
        except (ValueError, RuntimeError, TypeError) as exc:
            raise KidedgeError(f"TensorRT refused the profile of bucket {shp['bucket']}: {exc}") from None
        index = config.add_optimization_profile(profile)
        if index != i:  # -1: the profile is invalid for this network
            raise KidedgeError(f"TensorRT refused the optimisation profile of input bucket "
                               f"{shp['bucket'][0]}x{shp['bucket'][1]} (index {index})")
    return shapes


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
        Plan facts for the manifest (precision, profiles, flags, DLA, versions).
    """
    trt = trt or require_tensorrt()
    timing_cache_path = Path(timing_cache_path or Path(plan_path).with_suffix(".timing-cache"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    dla = settings.dla_core is not None
    flags = network_flags(trt, settings.precision, dla)
    network = builder.create_network(flags)
    if network is None:
        raise KidedgeError(f"{onnx_path}: TensorRT could not create a network definition")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise KidedgeError(f"{onnx_path}: TensorRT cannot parse it: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_bytes))
    if dla:
        if settings.dla_core >= builder.num_DLA_cores:
            raise KidedgeError(f"DLA core {settings.dla_core} requested but this device has "
                               f"{builder.num_DLA_cores} DLA cores (DLA needs a Jetson and TensorRT <= 10.7)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings.dla_core)
    flag_names = builder_flags(settings.precision, dla)
    for name in flag_names:
        config.set_flag(getattr(trt.BuilderFlag, name))
    shapes = _add_profiles(trt, builder, config, settings)

    previous = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    if cache is None or not config.set_timing_cache(cache, False):
        if not previous:
            raise KidedgeError("TensorRT could not create a timing cache")
        print(f"kidedge export: {timing_cache_path.name} does not fit this GPU/TensorRT; building without it")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise KidedgeError("TensorRT could not create a timing cache")

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise KidedgeError(f"{onnx_path}: TensorRT engine build failed ({settings.precision}, buckets "
                           f"{describe(settings.buckets)}); see the TensorRT log above")
    Path(plan_path).write_bytes(bytes(plan))
    timing_cache_path.write_bytes(bytes(cache.serialize()))
    return {
        "precision": settings.precision,
        "strongly_typed": bool(flags),
        "builder_flags": flag_names,
        "buckets": [list(b) for b in settings.buckets],
        "profiles": [{k: list(v) for k, v in s.items()} for s in shapes],
        "batch": {"max": settings.batch, "fixed": dla},
        "workspace_bytes": int(settings.workspace_bytes),
        "dla_core": settings.dla_core,
        "gpu_fallback": dla,
        "tensorrt_version": str(trt.__version__),
        "onnx_sha256": sha256_file(onnx_path),
    }


def build_stage_plans(stage_dir: Path, rel_dir: str, onnx_files: dict[str, Path], settings: dict,
                      trt=None, gpu: tuple[str, tuple[int, int]] | None = None) -> dict:
    """Build every plan a stage gets and return its ``files["tensorrt"]`` entries.

    GPU plans are always built; with ``settings["dla_core"]`` the same precisions are also
    built for that DLA core, so a Jetson can run either (the runtime falls back to the GPU
    plan when no DLA plan fits).

    Args:
        stage_dir: the stage's folder inside the package being written.
        rel_dir: that folder relative to the package root (manifest paths).
        onnx_files: ``{"fp16": fp32.onnx path, "int8": int8-trt.onnx path}`` (present keys
            are built).
        settings: keyword arguments of :class:`BuildSettings` except ``precision``
            (``buckets`` and ``channels`` required).
        gpu: (name, compute capability); default: :func:`gpu_identity`.

    Returns:
        ``{key: {"path", "timing_cache": {"path"}, ...facts}}`` keyed by
        :func:`kidedge.package.tensorrt_key`.
    """
    trt = trt or require_tensorrt()
    name, cc = gpu or gpu_identity()
    cores = [None] + ([int(settings["dla_core"])] if settings.get("dla_core") is not None else [])
    entries = {}
    for core in cores:
        for precision, onnx_path in onnx_files.items():
            s = BuildSettings(precision=precision, **{**settings, "dla_core": core})
            key = tensorrt_key(str(trt.__version__), name, cc, plan_precision_label(precision, core),
                               sha256_file(onnx_path))
            plan = Path(stage_dir) / f"{key}.plan"
            cache = Path(stage_dir) / f"{key}.timing-cache"
            facts = build_engine(onnx_path, plan, s, trt, cache)
            entries[key] = {"path": f"{rel_dir}/{plan.name}", "timing_cache": {"path": f"{rel_dir}/{cache.name}"},
                            "gpu": name, "compute_capability": f"{cc[0]}.{cc[1]}", **facts}
    return entries


def stage_build_settings(channels: int, buckets: Sequence[Sequence[int]], depth: int | None = None,
                         **extra) -> dict:
    """The ``settings`` of :func:`build_stage_plans` for a stage (extra: batch, dla_core,
    min_side, ...)."""
    return {"channels": int(channels), "buckets": tuple((int(h), int(w)) for h, w in buckets),
            "depth": None if depth is None else int(depth), **extra}


def input_buckets(spec, input_shape: Sequence[int], dim: str, given=None) -> list[tuple[int, int]]:
    """A stage's input shape buckets for the manifest and its plans: ``given`` (checked)
    when the exporter names them, the patch (h, w) of a 3D stage, else the default list
    for its preprocessing (:func:`kidedge.shape_buckets.stage_buckets`)."""
    if given:
        try:
            return check_buckets([list(b) for b in given], spec if dim == "2d" else None)
        except ValueError as exc:
            raise KidedgeError(f"TensorRT buckets: {exc}") from None
    if dim == "3d":
        return [(int(input_shape[-2]), int(input_shape[-1]))]
    return stage_buckets(spec)
