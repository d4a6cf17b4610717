"""TensorRT backend: a serialized engine (plan) run with pycuda buffers and one stream,
one optimisation profile per input shape bucket (a GPU 2D plan's profiles admit every size
up to their bucket; older plans' and DLA plans' only the bucket itself).

Written to the TensorRT 10 API (named tensors: ``num_io_tensors`` / ``get_tensor_name`` /
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``; the binding API was
removed in 10.0). :func:`check_tensorrt_version` refuses older TensorRT in one line.
``tensorrt`` and ``pycuda`` are imported in :meth:`activate` only, so this module imports
on any machine. Each call, its page (``py-api/`` = docs.nvidia.com/deeplearning/tensorrt/
latest/_static/python-api/infer/Core/) and how its result is checked (return types as in
the Python bindings' sources, NVIDIA/TensorRT python/src/infer/pyCore.cpp):

* ``runtime.DLA_core = n`` before deserialising a DLA plan, ``runtime.num_DLA_cores``
  bounds ``n`` (py-api/Runtime.html; guide/dla-build-and-run.html).
* ``runtime.deserialize_cuda_engine(blob)`` -> engine, or None "if it could not be
  deserialized" (Runtime.html): checked.
* ``engine.num_optimization_profiles``, ``engine.get_tensor_profile_shape(name, i)`` ->
  [min, opt, max] (Engine.html): the backend reads the buckets from the engine itself.
* ``engine.create_execution_context(trt.ExecutionContextAllocationStrategy.
  ON_PROFILE_CHANGE)`` ("Reallocate for a profile when it's selected", py-api/
  RuntimeConfig.html; the default STATIC allocates "the maximum size across all
  profiles"): device memory follows the bucket in use, which matters on a Jetson's shared
  memory. None on failure: checked.
* ``context.set_optimization_profile_async(index, stream.handle)`` -> bool (raises
  RuntimeError in the bindings on failure; ExecutionContext.html): checked, on the same
  stream as the inference, so no extra synchronisation is needed.
* ``context.set_input_shape(name, shape)`` -> bool, ``context.set_tensor_address(name,
  ptr)`` -> bool, ``context.execute_async_v3(stream_handle)`` -> bool (ExecutionContext.html;
  c-api/classnvinfer1_1_1_i_execution_context.html ``setInputShape``/``enqueueV3``):
  every result checked; ``context.get_tensor_shape(out)`` after the input shape is set.

Profiles of a fixed size are the engine's :attr:`input_buckets`: the runtime pads every
input to one of them. A plan whose profiles take a range of sizes (kidedge's GPU 2D plans)
has none: the runtime pads to a multiple of 32 and each input runs in the smallest profile
that admits it. A shape no profile admits is refused in one line (:class:`KidedgeError`):
a crop wider than the largest bucket, or a package whose plans do not match its manifest.
GPU out-of-memory (pycuda's ``MemoryError``, or a failed allocation reported by TensorRT)
is raised as :class:`BackendOutOfMemory`, which the engine answers by retrying the scan at
a smaller micro-batch.

Not exercised on the development machine of this project (no GPU, no TensorRT there): the
profile selection, call checking, DLA selection and buffer sizing are unit-tested against
a stand-in of ``tensorrt``/``pycuda`` with the real signatures; the ``tensorrt``-marked
integration test runs the real thing where TensorRT and a GPU exist.

Memory discipline: page-locked host buffers and device buffers grow to the largest
micro-batch seen (never shrink) and are reused; one CUDA stream carries the host->device
copy, the inference and the device->host copy, with one synchronise per micro-batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError
from kidedge.package import PlanKey
from kidedge.runtime.backends.base import Backend, BackendOutOfMemory, BackendUnavailable
from kidedge.shape_buckets import describe

#: The oldest TensorRT whose API this backend and the builder use (named tensors,
#: ``set_input_shape``, ``execute_async_v3``, explicit batch only).
MIN_TENSORRT = (10, 0)


def check_tensorrt_version(version: str) -> None:
    """One-line KidedgeError unless ``version`` is TensorRT >= :data:`MIN_TENSORRT`."""
    try:
        major_minor = tuple(int(v) for v in str(version).split(".")[:2])
    except ValueError:
        raise KidedgeError(f"TensorRT version {version!r} is not a version number") from None
    if major_minor < MIN_TENSORRT:
        raise KidedgeError(
            f"TensorRT {version} is too old: kidedge uses the TensorRT {MIN_TENSORRT[0]} API (named tensors, "
            f"set_input_shape, execute_async_v3); install TensorRT >= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} "
            "(JetPack 6 on a Jetson) or use --backend onnxruntime")


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def gpu_name() -> str | None:
    """Name of CUDA device 0 as pycuda reports it, or None without pycuda or a GPU."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() < 1:
            return None
        return str(cuda.Device(0).name())
    except Exception:  # no driver, no device: simply not available
        return None


def match_plan(plans: dict, trt_version: str | None, gpu: str | None,
               precisions: tuple[str, ...] = ("fp16", "fp32", "int8"),
               dla_core: int | None = None) -> str | None:
    """Pick the key of a TensorRT plan built for this TensorRT version and GPU.

    A plan only runs on the TensorRT version (major.minor.patch) and GPU it was built for
    (:class:`kidedge.package.PlanKey`). Among matching plans the first precision in
    ``precisions`` wins; with ``dla_core`` only plans built for that DLA core
    (``fp16dla0``...) count, without it only GPU plans. Returns None when no plan matches.
    """
    found = {}
    for key in plans:
        parsed = PlanKey.parse(key)
        if parsed is not None and parsed.runs_on(trt_version, gpu):
            found.setdefault(parsed.precision, key)
    suffix = "" if dla_core is None else f"dla{int(dla_core)}"
    for p in precisions:
        if p + suffix in found:
            return found[p + suffix]
    return None


@dataclasses.dataclass(frozen=True)
class EngineProfile:
    """One optimisation profile of an engine's input: its index, the (h, w) it runs (a
    range when an older plan was built with dynamic spatial size), and its batch range."""

    index: int
    min_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    @property
    def bucket(self) -> tuple[int, int]:
        return self.max_shape[-2], self.max_shape[-1]

    @property
    def batch_range(self) -> tuple[int, int]:
        return self.min_shape[0], self.max_shape[0]

    def admits(self, item_shape: tuple[int, ...]) -> bool:
        """Whether one item (C, [D,] H, W) fits this profile (some batch size)."""
        return len(item_shape) == len(self.max_shape) - 1 and all(
            lo <= v <= hi for v, lo, hi in zip(item_shape, self.min_shape[1:], self.max_shape[1:], strict=True))


def read_profiles(engine, input_name: str) -> list[EngineProfile]:
    """Every optimisation profile of ``engine`` for its input (Engine.html:
    ``num_optimization_profiles``, ``get_tensor_profile_shape(name, index)``)."""
    out = []
    for i in range(int(engine.num_optimization_profiles)):
        mn, _opt, mx = engine.get_tensor_profile_shape(input_name, i)
        out.append(EngineProfile(i, tuple(int(d) for d in mn), tuple(int(d) for d in mx)))
    return out


#: Words TensorRT and CUDA use when an allocation fails.
_OOM_WORDS = ("out of memory", "outofmemory", "failed to allocate", "memory allocation", "cudaerrormemoryallocation")


def _make_logger(trt):
    """A ``trt.ILogger`` that prints warnings and errors to stderr, as ``trt.Logger`` does,
    and remembers the errors so a failed call can be told apart as out-of-memory (the
    TensorRT calls only return False). Subclassing ILogger: py-api/Logger.html."""
    import sys

    class RecordingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.WARNING):  # ILogger.Severity: 0 internal error .. 4 verbose
                print(f"TensorRT: {msg}", file=sys.stderr)
            if int(severity) <= int(trt.ILogger.ERROR):
                self.errors = (self.errors + [str(msg)])[-20:]

        def saw_oom(self) -> bool:
            return any(w in e.lower() for e in self.errors for w in _OOM_WORDS)

    return RecordingLogger()


def profile_for(profiles: list[EngineProfile], item_shape: tuple[int, ...]) -> EngineProfile | None:
    """The profile that runs items of ``item_shape`` (C, [D,] H, W): an exact bucket first,
    else the smallest profile whose range admits it; None when none does."""
    fits = [p for p in profiles if p.admits(tuple(item_shape))]
    if not fits:
        return None
    return min(fits, key=lambda p: (p.bucket != tuple(item_shape[-2:]), int(np.prod(p.max_shape[1:]))))


class TensorRTBackend(Backend):
    """A TensorRT engine with one input (``image``) and one output (``logits``).

    Args:
        plan_path: the serialized engine (``.plan``), hash-checked by the package.
        max_batch: the runtime's micro-batch (buffers are sized for it up front; larger
            batches are split at the profile's batch limit).
        device_index: CUDA device to run on.
        dla_core: the plan is a DLA plan for this core: set on the runtime before
            deserialising (a DLA engine has fixed shapes; partial batches are padded).
        buckets: the manifest's buckets for this plan: each must have a profile in the
            engine (a plan that does not match its package is refused at activation).
    """

    name = "tensorrt"

    def __init__(self, plan_path: str | Path, max_batch: int = 8, device_index: int = 0,
                 dla_core: int | None = None, buckets=None) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        self.max_batch = int(max_batch)
        self.device_index = int(device_index)
        self.dla_core = None if dla_core is None else int(dla_core)
        self.expected_buckets = [tuple(int(v) for v in b) for b in buckets] if buckets else None
        self.description = "tensorrt"
        self._d_in = self._d_out = None
        self._nbytes_in = self._nbytes_out = 0

    # -- activation ---------------------------------------------------------------------
    def _activate(self) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(f"the TensorRT backend needs {exc.name}: pip install 'kidedge[tensorrt]'") from exc
        check_tensorrt_version(str(trt.__version__))
        self._cuda, self._trt = cuda, trt
        try:
            cuda.init()
            self._ctx = cuda.Device(self.device_index).retain_primary_context()
        except Exception as exc:
            raise BackendUnavailable(f"no CUDA device {self.device_index}: {exc}") from exc
        self._ctx.push()
        try:
            self._load_engine(trt)
            self._stream = cuda.Stream()
            self._active_profile = None
            where = f"DLA core {self.dla_core}" if self.dla_core is not None else cuda.Device(self.device_index).name()
            self.description = f"tensorrt {trt.__version__} ({where})"
        except BaseException:
            self._ctx.pop()
            raise
        # The context stays current on this thread while the backend is active.

    def _load_engine(self, trt) -> None:
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if self.dla_core is not None:
            if self.dla_core >= int(self._runtime.num_DLA_cores):
                raise BackendUnavailable(f"{self.plan_path.name} is a DLA plan for core {self.dla_core}, but this "
                                         f"device has {self._runtime.num_DLA_cores} DLA cores")
            self._runtime.DLA_core = self.dla_core  # before deserialising (Runtime.html)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT {trt.__version__} cannot deserialize {self.plan_path} "
                                     "(built by another TensorRT version or for another GPU?)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise BackendUnavailable(f"{self.plan_path}: expected one input and one output, got {ins} {outs}")
        self._in, self._out = ins[0], outs[0]
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out)))
        self.profiles = read_profiles(self._engine, self._in)
        if not self.profiles:
            raise BackendUnavailable(f"{self.plan_path}: the engine has no optimisation profile")
        self.input_buckets = sorted({p.bucket for p in self.profiles if p.min_shape[-2:] == p.max_shape[-2:]})
        if self.expected_buckets:
            channels = self.profiles[0].max_shape[1:-2]
            missing = [b for b in self.expected_buckets if profile_for(self.profiles, (*channels, *b)) is None]
            if missing:
                raise BackendUnavailable(f"{self.plan_path.name} has no profile for input buckets {describe(missing)} "
                                         "listed in the package; re-export the package's TensorRT plans")
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "ON_PROFILE_CHANGE", None)
        self._context = (self._engine.create_execution_context(strategy) if strategy is not None
                         else self._engine.create_execution_context())
        if self._context is None:
            raise BackendUnavailable(f"TensorRT could not create an execution context for {self.plan_path.name} "
                                     "(not enough GPU memory?)")

    # -- inference ----------------------------------------------------------------------
    def _infer(self, x: np.ndarray) -> np.ndarray:
        prof = profile_for(self.profiles, tuple(x.shape[1:]))
        if prof is None:
            have = describe(p.bucket for p in self.profiles)
            raise KidedgeError(f"{self.plan_path.name}: no profile of the plan admits input {x.shape[-2]}x{x.shape[-1]} "
                               f"(its input buckets: {have}); use --backend onnxruntime")
        lo, hi = prof.batch_range
        if x.shape[0] > hi:  # split at the profile's batch limit, reusing the same buffers
            return np.concatenate([self._infer(x[i:i + hi]) for i in range(0, x.shape[0], hi)])
        n = x.shape[0]
        if n < lo:  # fixed-batch (DLA) profile: pad with zeros, drop their outputs
            x = np.concatenate([x, np.zeros((lo - n, *x.shape[1:]), x.dtype)])
        self._logger.errors = []
        try:
            return self._run(x, prof)[:n]
        except self._cuda.MemoryError as exc:  # pycuda's allocation failure
            raise BackendOutOfMemory(f"GPU out of memory at micro-batch {len(x)} ({exc})") from exc
        except RuntimeError as exc:
            if self._logger.saw_oom():
                raise BackendOutOfMemory(f"GPU out of memory at micro-batch {len(x)} ({self._logger.errors[-1]})") from exc
            raise

    def _select_profile(self, prof: EngineProfile) -> None:
        if self._active_profile == prof.index:
            return
        try:
            ok = self._context.set_optimization_profile_async(prof.index, self._stream.handle)
        except RuntimeError as exc:  # the bindings raise instead of returning False
            raise RuntimeError(f"TensorRT cannot select profile {prof.index} of {self.plan_path.name}: {exc}") from exc
        if not ok:
            raise RuntimeError(f"TensorRT cannot select profile {prof.index} of {self.plan_path.name}")
        self._active_profile = prof.index

    def _ensure_buffers(self, nbytes_in: int, nbytes_out: int) -> None:
        """Grow (never shrink) the pinned host and device buffers."""
        cuda = self._cuda
        if nbytes_in > self._nbytes_in:
            if self._d_in is not None:
                self._d_in.free()
            self._d_in, self._nbytes_in = None, 0
            self._h_in = cuda.pagelocked_empty(nbytes_in // self._in_dtype.itemsize, self._in_dtype)
            self._d_in, self._nbytes_in = cuda.mem_alloc(nbytes_in), nbytes_in
        if nbytes_out > self._nbytes_out:
            if self._d_out is not None:
                self._d_out.free()
            self._d_out, self._nbytes_out = None, 0
            self._h_out = cuda.pagelocked_empty(nbytes_out // self._out_dtype.itemsize, self._out_dtype)
            self._d_out, self._nbytes_out = cuda.mem_alloc(nbytes_out), nbytes_out

    def _run(self, x: np.ndarray, prof: EngineProfile) -> np.ndarray:
        cuda, ctx = self._cuda, self._context
        self._select_profile(prof)
        if not ctx.set_input_shape(self._in, tuple(int(v) for v in x.shape)):
            raise RuntimeError(f"TensorRT rejected input shape {x.shape} for profile {prof.index} of {self.plan_path.name}")
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out))
        if any(d < 0 for d in out_shape):
            raise RuntimeError(f"TensorRT gave no output shape for input {x.shape} ({self.plan_path.name})")
        self._ensure_buffers(x.size * self._in_dtype.itemsize, int(np.prod(out_shape)) * self._out_dtype.itemsize)
        if not (ctx.set_tensor_address(self._in, int(self._d_in)) and ctx.set_tensor_address(self._out, int(self._d_out))):
            raise RuntimeError(f"TensorRT rejected the buffer addresses of {self.plan_path.name}")
        h_in = self._h_in[: x.size].reshape(x.shape)
        h_in[...] = x  # converts to the engine's input dtype (fp16 engines) in place
        h_out = self._h_out[: int(np.prod(out_shape))].reshape(out_shape)
        cuda.memcpy_htod_async(self._d_in, h_in, self._stream)
        if not ctx.execute_async_v3(self._stream.handle):
            raise RuntimeError(f"TensorRT execution failed for {self.plan_path.name} (input {x.shape}); "
                               "see the TensorRT log above")
        cuda.memcpy_dtoh_async(h_out, self._d_out, self._stream)
        self._stream.synchronize()
        return h_out.astype(np.float32, copy=True)  # the pinned buffer is reused next batch

    def _deactivate(self) -> None:
        for attr in ("_d_in", "_d_out"):
            buf = getattr(self, attr, None)
            if buf is not None:
                buf.free()
        self._h_in = self._h_out = self._d_in = self._d_out = None
        self._nbytes_in = self._nbytes_out = 0
        self._context = self._engine = self._runtime = self._stream = None
        try:
            self._ctx.pop()
        except Exception:
            pass
