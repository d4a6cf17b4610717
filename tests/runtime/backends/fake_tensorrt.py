"""Stand-ins for ``tensorrt`` and ``pycuda.driver`` with the TensorRT 10 / pycuda call
signatures and return conventions the TensorRT backend relies on, so its profile
selection, call checking, DLA handling, buffers and out-of-memory mapping run without a
GPU. They test kidedge's use of the API, not TensorRT.

A "plan" is JSON: ``{"profiles": [[min_shape, max_shape], ...], "classes": K, "dtype":
"float32"|"float16"}``. The fake engine's output for an input batch ``x`` (N, C, H, W) is
``K`` channels: channel k = ``x[:, 0] * (k + 1)``, computed from the bytes copied to the
fake device, so a test can check that data went in and came back per item.
"""

from __future__ import annotations

import itertools
import json
import types

import numpy as np


class FakeCuda(types.ModuleType):
    """``pycuda.driver``: devices, contexts, streams, pinned and device memory."""

    class MemoryError(Exception):  # noqa: A001 - pycuda's name
        pass

    def __init__(self, memory_limit: int | None = None, devices: int = 1):
        super().__init__("pycuda.driver")
        self.memory_limit = memory_limit
        self.devices = devices
        self.device_mem: dict[int, np.ndarray] = {}
        self._addr = itertools.count(0x1000, 0x1000)
        self.log: list = []
        fake = self

        class Stream:
            def __init__(self):
                self.handle = 4242

            def synchronize(self):
                fake.log.append(("synchronize",))

        class Context:
            def push(self):
                fake.log.append(("push",))

            def pop(self):
                fake.log.append(("pop",))

        class Device:
            def __init__(self, index):
                if index >= fake.devices:
                    raise RuntimeError(f"invalid device ordinal {index}")
                self.index = index

            @staticmethod
            def count():
                return fake.devices

            def name(self):
                return "Fake GPU"

            def retain_primary_context(self):
                return Context()

        class DevicePtr:
            def __init__(self, nbytes):
                self.addr = next(fake._addr)
                fake.device_mem[self.addr] = np.zeros(nbytes, np.uint8)

            def __int__(self):
                return self.addr

            def free(self):
                fake.device_mem.pop(self.addr, None)

        self.Stream, self.Device, self._DevicePtr = Stream, Device, DevicePtr

    def init(self):
        pass

    def pagelocked_empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def mem_alloc(self, nbytes):
        used = sum(a.nbytes for a in self.device_mem.values())
        if self.memory_limit is not None and used + nbytes > self.memory_limit:
            raise FakeCuda.MemoryError("cuMemAlloc failed: out of memory")
        self.log.append(("mem_alloc", int(nbytes)))
        return self._DevicePtr(int(nbytes))

    def memcpy_htod_async(self, dest, src, stream=None):
        raw = np.ascontiguousarray(src).view(np.uint8).ravel()
        self.device_mem[int(dest)][: raw.size] = raw

    def memcpy_dtoh_async(self, dest, src, stream=None):
        raw = dest.view(np.uint8).reshape(-1)
        raw[...] = self.device_mem[int(src)][: raw.size]


class FakeTensorRT(types.ModuleType):
    """``tensorrt``: Runtime, ICudaEngine, IExecutionContext (TensorRT 10 names)."""

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self):
            pass

    ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC=0, ON_PROFILE_CHANGE=1, USER_MANAGED=2)

    def __init__(self, cuda: FakeCuda, version: str = "10.3.0", num_dla: int = 0, **failures):
        super().__init__("tensorrt")
        self.__version__ = version
        self.cuda = cuda
        self.num_dla = num_dla
        self.failures = failures  # e.g. set_input_shape=False, execute=False, context=None, oom_on_execute=True
        self.calls: list = []
        trt = self

        class Runtime:
            def __init__(self, logger):
                self.logger = logger
                self.num_DLA_cores = trt.num_dla
                self._dla = -1

            @property
            def DLA_core(self):  # noqa: N802 - TensorRT's name
                return self._dla

            @DLA_core.setter
            def DLA_core(self, core):  # noqa: N802
                trt.calls.append(("runtime.DLA_core", core))
                self._dla = core

            def deserialize_cuda_engine(self, serialized_engine):
                trt.calls.append(("deserialize", self._dla))
                try:
                    spec = json.loads(bytes(serialized_engine))
                except ValueError:
                    return None  # "or None if it could not be deserialized"
                return Engine(spec, self.logger)

        class Engine:
            def __init__(self, spec, logger):
                self.spec, self.logger = spec, logger
                self.num_io_tensors = 2
                self.num_optimization_profiles = len(spec["profiles"])

            def get_tensor_name(self, index):
                return ["image", "logits"][index]

            def get_tensor_mode(self, name):
                return trt.TensorIOMode.INPUT if name == "image" else trt.TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return np.dtype(self.spec.get("dtype", "float32"))

            def get_tensor_profile_shape(self, name, profile_index):
                mn, mx = self.spec["profiles"][profile_index]
                return [tuple(mn), tuple(mx), tuple(mx)]

            def create_execution_context(self, strategy=0):
                trt.calls.append(("create_execution_context", strategy))
                if "context" in trt.failures:
                    return trt.failures["context"]
                return Context(self)

        class Context:
            def __init__(self, engine):
                self.engine = engine
                self.profile = 0
                self.shape = None
                self.addr = {}

            def set_optimization_profile_async(self, profile_index, stream_handle):
                trt.calls.append(("set_optimization_profile_async", profile_index, stream_handle))
                if not 0 <= profile_index < self.engine.num_optimization_profiles or trt.failures.get("profile"):
                    raise RuntimeError("Error in set optimization profile async.")
                self.profile = profile_index
                return True

            def set_input_shape(self, name, shape):
                trt.calls.append(("set_input_shape", name, tuple(shape)))
                mn, mx = self.engine.spec["profiles"][self.profile]
                ok = all(a <= v <= b for v, a, b in zip(shape, mn, mx, strict=True))
                if trt.failures.get("set_input_shape") is False or not ok:
                    return False
                self.shape = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                if self.shape is None:
                    return (-1, -1, -1, -1)
                n, _c, h, w = self.shape
                return (n, self.engine.spec["classes"], h, w)

            def set_tensor_address(self, name, memory):
                self.addr[name] = int(memory)
                return True

            def execute_async_v3(self, stream_handle):
                trt.calls.append(("execute_async_v3", stream_handle, self.profile, self.shape))
                if trt.failures.get("oom_on_execute"):
                    self.engine.logger.log(trt.ILogger.ERROR, "[executionContext.cpp] Error: out of memory")
                    return False
                if trt.failures.get("execute") is False:
                    return False
                dt = np.dtype(self.engine.spec.get("dtype", "float32"))
                n, c, h, w = self.shape
                x = trt.cuda.device_mem[self.addr["image"]][: n * c * h * w * dt.itemsize].view(dt).reshape(self.shape)
                k = self.engine.spec["classes"]
                y = np.stack([x[:, 0] * (i + 1) for i in range(k)], axis=1).astype(dt)
                raw = y.view(np.uint8).ravel()
                trt.cuda.device_mem[self.addr["logits"]][: raw.size] = raw
                return True

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return np.dtype(dtype).type


def write_plan(path, buckets, batch=(1, 4), classes=2, channels=1, dtype="float32", min_side=None):
    """A fake plan with one profile per bucket, batch ``(min, max)``; with ``min_side``
    each profile admits heights and widths from it up to its bucket."""
    lo = (lambda h, w: (h, w)) if min_side is None else (lambda h, w: (min_side, min_side))
    profiles = [[[batch[0], channels, *lo(h, w)], [batch[1], channels, h, w]] for h, w in buckets]
    path.write_text(json.dumps({"profiles": profiles, "classes": classes, "dtype": dtype}))
    return path


def expected_logits(x, classes=2):
    return np.stack([x[:, 0] * (k + 1) for k in range(classes)], axis=1)
