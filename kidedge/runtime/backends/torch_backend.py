"""The torch reference backend: the training-time model, rebuilt from the package.

It rebuilds the stage's network with ``kidedge.train.models.build_model(arch,
**model_kwargs)`` and loads the package's ``torch`` state_dict. It is the reference the
exported engines are compared with, and the way to run a package on a GPU without
TensorRT. torch (and kidedge.train) are imported inside :meth:`activate` only: importing
this module, or kidedge.runtime, never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kidedge.runtime.backends.base import Backend, BackendOutOfMemory, BackendUnavailable


def torch_devices() -> list[str]:
    """Devices torch could run on here, without importing torch when it is absent."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return []
    import torch  # only reached when the caller asked about torch explicitly

    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


class TorchBackend(Backend):
    """A stage's torch model.

    Args:
        arch: architecture name for ``build_model`` (the stage's ``arch``).
        model_kwargs: keyword arguments of ``build_model`` (the stage's ``model_kwargs``).
        state_dict_path: the package's ``torch`` file (a plain state_dict).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"`` or ``"fp16"`` (fp16 uses autocast, so only the matmuls and
            convolutions run in half precision, as the exported fp16 engines do).
        threads: torch intra-op threads on CPU (None: leave torch's default).
    """

    name = "torch"

    def __init__(self, arch: str, model_kwargs: dict, state_dict_path: str | Path,
                 device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> None:
        super().__init__()
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"torch backend precision must be fp32 or fp16, got {precision!r}")
        self.arch = arch
        self.model_kwargs = dict(model_kwargs or {})
        self.state_dict_path = Path(state_dict_path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.description = f"torch ({device}, {precision})"

    def _activate(self) -> None:
        try:
            import torch

            from kidedge.train.models import build_model
        except ImportError as exc:
            raise BackendUnavailable(f"the torch backend needs {exc.name}: pip install 'kidedge[train]'") from exc
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch here has no CUDA device")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise BackendUnavailable("the torch backend runs fp16 on CUDA only")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._torch = torch
        model = build_model(self.arch, **self.model_kwargs)
        state = torch.load(self.state_dict_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self.model = model.eval().to(self.device)
        self.description = f"torch {torch.__version__} ({self.device}, {self.precision})"

    def _infer(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        try:
            with torch.inference_mode():
                t = torch.from_numpy(x).to(self.device)
                if self.precision == "fp16":
                    with torch.autocast(dev_type, dtype=torch.float16):
                        y = self.model(t)
                else:
                    y = self.model(t)
                return y.float().cpu().numpy()
        except torch.cuda.OutOfMemoryError as exc:
            # free the failed batch's cached blocks before the engine retries smaller
            torch.cuda.empty_cache()
            raise BackendOutOfMemory(f"GPU out of memory at micro-batch {x.shape[0]} (torch {self.device})") from exc

    def _deactivate(self) -> None:
        self.model = None
        torch = self._torch
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
