"""The backend interface, in the style of Polygraphy's runners.

A backend wraps one model (one stage of a package) on one engine. It is created cheaply
(no engine loaded), :meth:`Backend.activate` loads the engine and allocates buffers,
:meth:`Backend.infer` runs a micro-batch, :meth:`Backend.deactivate` frees everything.
Used as a context manager it activates on entry and deactivates on exit, so engines and
device buffers are released even when a scan fails half way.
"""

from __future__ import annotations

import abc

import numpy as np


class BackendUnavailable(RuntimeError):
    """The backend's library, device or model file is not usable on this machine."""


class BackendOutOfMemory(RuntimeError):
    """The device ran out of memory for this micro-batch (TensorRT, onnxruntime's CUDA
    provider and torch on CUDA raise it in place of their own out-of-memory errors); the
    engine retries the scan at a smaller micro-batch."""


class Backend(abc.ABC):
    """One model on one inference engine.

    Subclasses set ``name`` (the ``--backend`` value) and implement :meth:`_activate`,
    :meth:`_infer` and :meth:`_deactivate`. ``infer`` takes float32 ``(N, C, H, W)`` and
    returns float32 logits ``(N, K, H, W)``; fp16 engines convert at the boundary so the
    caller always sees float32.
    """

    name = "base"
    #: The only input (height, width) sizes the engine runs (its shape buckets), set on
    #: activation by engines with fixed shapes (TensorRT); None: any size.
    input_buckets: list[tuple[int, int]] | None = None
    #: How many :meth:`infer` calls may run at once, each on its own thread (the streaming
    #: pipeline runs that many side by side); 1: one call at a time.
    parallel_calls: int = 1

    def __init__(self) -> None:
        self.is_active = False
        #: Human-readable description of what actually runs (provider, device, precision).
        self.description = self.name

    # -- public API -----------------------------------------------------------------
    def activate(self) -> Backend:
        """Load the engine and allocate buffers. Idempotent."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one micro-batch: float32 ``(N, C, H, W)`` -> float32 logits ``(N, K, H, W)``
        (3D stages: ``(N, C, D, H, W)`` patches -> ``(N, K, D, H, W)``)."""
        if not self.is_active:
            raise RuntimeError(f"{type(self).__name__} must be activated before infer()")
        if x.ndim not in (4, 5):
            raise ValueError(f"expected a 4D (N, C, H, W) or 5D (N, C, D, H, W) batch, got shape {x.shape}")
        out = self._infer(np.ascontiguousarray(x, dtype=np.float32))
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def deactivate(self) -> None:
        """Release the engine and its buffers. Idempotent."""
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- for subclasses ---------------------------------------------------------------
    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    def _deactivate(self) -> None:  # noqa: B027 - most engines are freed by dropping references
        return None
