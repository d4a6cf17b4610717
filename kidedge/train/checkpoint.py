"""Checkpoints: plain state_dicts (loadable with ``torch.load(p, weights_only=True)``) for
the model, and a separate resume file (optimizer, scheduler, scaler, epoch, history).

Everything is written to a temporary name and renamed, so an interrupted run never
leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kidedge.errors import KidedgeError
from kidedge.io.writer import atomic_target


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / compiled wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` through :func:`kidedge.io.writer.atomic_target` (never a partial file)."""
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_weights(model: torch.nn.Module, path) -> Path:
    """Save the model's state_dict (CPU tensors) atomically."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return atomic_torch_save(state, path)


def load_weights(path, map_location="cpu") -> dict[str, torch.Tensor]:
    """Load a state_dict saved by :func:`save_weights` (weights only, no pickled code)."""
    p = Path(path)
    if not p.is_file():
        raise KidedgeError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise KidedgeError(f"{p}: unreadable checkpoint ({type(exc).__name__})") from exc


def save_resume_state(path, *, epoch: int, optimizer, scheduler=None, scaler=None, history=None,
                      best: float | None = None, best_epoch: int = -1, stale_epochs: int = 0) -> Path:
    """What ``--resume`` needs besides the last weights."""
    state = {
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history or [],
        "best": best,
        "best_epoch": int(best_epoch),
        "stale_epochs": int(stale_epochs),
    }
    return atomic_torch_save(state, path)


def load_resume_state(path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=True)
