"""Inference backends behind one small interface (see :mod:`.base`).

Every backend module imports its heavy library (onnxruntime, tensorrt, pycuda, torch)
lazily, so importing this package is cheap and never pulls torch.
"""

from kidedge.runtime.backends.base import Backend, BackendUnavailable

__all__ = ["Backend", "BackendUnavailable"]
