"""ONNX Runtime backend: CPU everywhere; the CUDA and TensorRT execution providers where
the installed onnxruntime build has them (``onnxruntime-gpu``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kidedge.runtime.backends.base import Backend, BackendOutOfMemory, BackendUnavailable

#: ``device`` argument -> execution providers to ask for, most preferred first.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
#: How onnxruntime's CUDA/TensorRT providers word a failed device allocation ("CUDA failure
#: 2: out of memory", "BFCArena ... Failed to allocate memory"); it raises its own
#: RuntimeException/Fail types, so the message is all there is to go by.
_OOM_WORDS = ("out of memory", "failed to allocate memory")


def available_providers() -> list[str]:
    """Execution providers of the installed onnxruntime ([] when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def available_devices() -> list[str]:
    """The ``device`` values this machine's onnxruntime can serve."""
    have = set(available_providers())
    return [d for d, provs in PROVIDERS.items() if provs[0] in have]


class OnnxRuntimeBackend(Backend):
    """One ONNX model in an onnxruntime ``InferenceSession``.

    Args:
        model_path: the ``.onnx`` file (already hash-checked by the package).
        device: ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (the execution provider).
        threads: intra-op threads for the CPU provider, per call (None: onnxruntime's
            default, one per physical core; 1 when ``parallel_calls`` > 1).
        trt_cache_dir: where the TensorRT execution provider caches its engines, so the
            minutes-long engine build happens once per machine, not once per run.
        parallel_calls: on CPU, how many calls the caller may run side by side
            (:attr:`Backend.parallel_calls`); GPU providers take one at a time.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        trt_cache_dir: str | Path | None = None,
        parallel_calls: int = 1,
    ) -> None:
        super().__init__()
        if device not in PROVIDERS:
            raise ValueError(f"device must be one of {sorted(PROVIDERS)}, got {device!r}")
        self.model_path = Path(model_path)
        self.device = device
        self.threads = threads
        # onnxruntime's run() may be called from several threads at once: on CPU the
        # pipeline may run this many calls side by side, ``threads`` threads each
        # (default 1; see kidedge.runtime.backends.registry.cpu_parallel_calls)
        self.parallel_calls = max(1, int(parallel_calls)) if device == "cpu" else 1
        self.trt_cache_dir = trt_cache_dir
        self.session = None
        self.description = f"onnxruntime ({device})"

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed") from exc
        wanted = PROVIDERS[self.device]
        if wanted[0] not in ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime here has no {wanted[0]}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # onnxruntime's warnings are not the user's problem
        if self.threads or self.parallel_calls > 1:
            opts.intra_op_num_threads = int(self.threads or 1)
        if os.environ.get("KIDEDGE_ORT_SPIN", "0") != "1":
            # onnxruntime's pool busy-waits between operators by default; on a small CPU that
            # spinning takes the cores the pipeline's reader and labeller threads need (and
            # other users'): segmenter crops cost 8 instead of 14 ms of CPU per slice on the
            # shared 2-core CPU (benchmarks/results/cpu-2core-amd-epyc/threads.md)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list = []
        for p in wanted:
            if p == "TensorrtExecutionProvider":
                cache = Path(self.trt_cache_dir or Path.home() / ".cache" / "kidedge" / "ort-trt")
                cache.mkdir(parents=True, exist_ok=True)
                fp16 = "fp16" in self.model_path.name
                providers.append((p, {"trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": os.fspath(cache),
                                      "trt_fp16_enable": fp16}))
            else:
                providers.append(p)
        try:
            self.session = ort.InferenceSession(os.fspath(self.model_path), sess_options=opts,
                                                providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BackendUnavailable(f"onnxruntime cannot load {self.model_path}: {msg}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _ORT_TYPES.get(inp.type, np.float32)
        self.output_name = self.session.get_outputs()[0].name
        used = self.session.get_providers()[0].replace("ExecutionProvider", "")
        self.description = f"onnxruntime {ort.__version__} ({used})"

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype != np.float32:
            x = x.astype(self.input_dtype)
        try:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            if self.device != "cpu" and any(w in str(exc).lower() for w in _OOM_WORDS):
                raise BackendOutOfMemory(f"GPU out of memory at micro-batch {x.shape[0]} (onnxruntime {self.device})") from exc
            raise

    def _deactivate(self) -> None:
        self.session = None
