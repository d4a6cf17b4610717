"""TensorRT backend: a serialized engine (plan) run with pycuda buffers and one stream.

Written to the TensorRT 10 Python API (``num_io_tensors`` / ``get_tensor_name`` /
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``); the older binding API
was removed in TensorRT 10. ``tensorrt`` and ``pycuda`` are imported in :meth:`activate`
only, so this module imports on any machine. Checked against NVIDIA's Python API pages
(docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/...):
``Runtime.html`` (``trt.Runtime(logger).deserialize_cuda_engine(buffer)`` returns the
engine, or None if it cannot be deserialized, e.g. another TensorRT version or GPU);
``Engine.html`` (``num_io_tensors``, ``get_tensor_name(i)``, ``get_tensor_mode(name)`` ->
``TensorIOMode.INPUT/OUTPUT``, ``get_tensor_dtype``, ``get_tensor_shape`` with -1 for
dynamic axes, ``get_tensor_profile_shape(name, profile)`` -> [min, opt, max]);
``ExecutionContext.html`` (``set_input_shape(name, shape)``, ``get_tensor_shape`` of the
output once input shapes are set, ``set_tensor_address(name, device_ptr)``,
``execute_async_v3(stream_handle)`` -> bool, enqueued on the given CUDA stream).

Not exercised on the development machine of this project (no GPU, no TensorRT there): its
logic is unit-tested only where it does not need a GPU (plan selection, buffer sizing);
the GPU path runs on a machine with TensorRT 10, pycuda and an NVIDIA GPU.

Memory discipline: page-locked host buffers and device buffers are allocated once, at the
largest shape of the engine's optimisation profile (or the first batch's shape if that is
smaller than the profile allows), and reused for every micro-batch; one CUDA stream carries
the host->device copy, the inference and the device->host copy asynchronously, with one
synchronise per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kidedge.package import PlanKey
from kidedge.runtime.backends.base import Backend, BackendUnavailable


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
               precisions: tuple[str, ...] = ("fp16", "fp32", "int8")) -> str | None:
    """Pick the key of a TensorRT plan built for this TensorRT version and GPU.

    A plan only runs on the TensorRT version (major.minor.patch) and GPU it was built for
    (:class:`kidedge.package.PlanKey`). Among matching plans the first precision in
    ``precisions`` wins. Returns None when no plan matches.
    """
    found = {}
    for key in plans:
        parsed = PlanKey.parse(key)
        if parsed is not None and parsed.runs_on(trt_version, gpu):
            found.setdefault(parsed.precision, key)
    for p in precisions:
        if p in found:
            return found[p]
    return None


class TensorRTBackend(Backend):
    """A TensorRT engine with one input (``image``) and one output (``logits``).

    Args:
        plan_path: the serialized engine (``.plan``), hash-checked by the package.
        max_batch: micro-batch size to size buffers for when the engine's batch axis is
            dynamic (larger batches are split).
        device_index: CUDA device to run on.
    """

    name = "tensorrt"

    def __init__(self, plan_path: str | Path, max_batch: int = 8, device_index: int = 0) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        self.max_batch = int(max_batch)
        self.device_index = int(device_index)
        self.description = "tensorrt"

    def _activate(self) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(f"the TensorRT backend needs {exc.name}: pip install 'kidedge[tensorrt]'") from exc
        self._cuda, self._trt = cuda, trt
        try:
            cuda.init()
            self._ctx = cuda.Device(self.device_index).retain_primary_context()
        except Exception as exc:
            raise BackendUnavailable(f"no CUDA device {self.device_index}: {exc}") from exc
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if self._engine is None:
                raise BackendUnavailable(
                    f"TensorRT {trt.__version__} cannot deserialize {self.plan_path} "
                    "(built by another TensorRT version or for another GPU?)")
            self._context = self._engine.create_execution_context()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if len(ins) != 1 or len(outs) != 1:
                raise BackendUnavailable(f"{self.plan_path}: expected one input and one output, got {ins} {outs}")
            self._in, self._out = ins[0], outs[0]
            self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._in)))
            self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out)))
            shape = tuple(self._engine.get_tensor_shape(self._in))
            if any(d < 0 for d in shape):
                # Dynamic axes: size buffers for the profile's maximum (batch capped by us).
                _, _, mx = self._engine.get_tensor_profile_shape(self._in, 0)
                mx = tuple(int(d) for d in mx)
                self._max_shape = (min(mx[0], self.max_batch),) + mx[1:]
            else:
                self._max_shape = shape
            self._stream = cuda.Stream()
            self._capacity_in = int(np.prod(self._max_shape))
            self._context.set_input_shape(self._in, self._max_shape)
            out_shape = tuple(self._context.get_tensor_shape(self._out))
            self._capacity_out = int(np.prod(out_shape))
            self._h_in = cuda.pagelocked_empty(self._capacity_in, self._in_dtype)
            self._h_out = cuda.pagelocked_empty(self._capacity_out, self._out_dtype)
            self._d_in = cuda.mem_alloc(self._h_in.nbytes)
            self._d_out = cuda.mem_alloc(self._h_out.nbytes)
            self._context.set_tensor_address(self._in, int(self._d_in))
            self._context.set_tensor_address(self._out, int(self._d_out))
            self.description = f"tensorrt {trt.__version__} ({cuda.Device(self.device_index).name()})"
        except BaseException:
            self._ctx.pop()
            raise
        # The context stays current on this thread while the backend is active.

    def _infer(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        step = self._max_shape[0]
        if n > step:  # larger than the buffers: split, reusing the same buffers
            return np.concatenate([self._infer(x[i:i + step]) for i in range(0, n, step)])
        if x[0].size * n > self._capacity_in or any(
                a > b for a, b in zip(x.shape[1:], self._max_shape[1:], strict=True)):
            raise ValueError(f"batch shape {x.shape} exceeds the engine's maximum {self._max_shape}")
        cuda = self._cuda
        self._context.set_input_shape(self._in, tuple(x.shape))
        out_shape = tuple(self._context.get_tensor_shape(self._out))
        h_in = self._h_in[: x.size].reshape(x.shape)
        h_in[...] = x  # converts to the engine's input dtype (fp16 engines) in place
        h_out = self._h_out[: int(np.prod(out_shape))].reshape(out_shape)
        cuda.memcpy_htod_async(self._d_in, h_in, self._stream)
        if not self._context.execute_async_v3(self._stream.handle):
            raise RuntimeError(f"TensorRT execution failed for {self.plan_path}")
        cuda.memcpy_dtoh_async(h_out, self._d_out, self._stream)
        self._stream.synchronize()
        return h_out.astype(np.float32, copy=True)  # the pinned buffer is reused next batch

    def _deactivate(self) -> None:
        for attr in ("_d_in", "_d_out"):
            buf = getattr(self, attr, None)
            if buf is not None:
                buf.free()
        self._h_in = self._h_out = self._d_in = self._d_out = None
        self._context = self._engine = self._runtime = self._stream = None
        try:
            self._ctx.pop()
        except Exception:
            pass
