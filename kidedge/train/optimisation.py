"""Where and how a stage trains: the device, mixed precision, seeding, and the optimiser
and learning-rate schedule a recipe's ``[stages.train]`` asks for."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from kidedge.errors import KidedgeError
from kidedge.train import distributed as ddp


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    d = (device or "auto").lower()
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KidedgeError(f"--device {device}: CUDA is not available on this machine")
        _, _, local = ddp.env_world()
        if d == "cuda":
            d = f"cuda:{local}" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else "cuda"
    elif d != "cpu":
        raise KidedgeError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return torch.device(d)


class Precision:
    """Autocast and gradient scaling for the device: bf16 autocast on CUDA GPUs that
    support it, fp16 + GradScaler on older ones, plain fp32 on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.dtype = None
        self.scaler = None
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                self.dtype = torch.bfloat16
            else:
                self.dtype = torch.float16
                self.scaler = torch.amp.GradScaler("cuda")

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast+gradscaler"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def make_optimizer(params, t: dict):
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                               nesterov=bool(t["nesterov"]))
    cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=t["lr"], betas=tuple(t["betas"]), weight_decay=t["weight_decay"])


def make_scheduler(opt, t: dict, epochs: int, steps_per_epoch: int):
    """(scheduler, when): when is "epoch", "step" or "val" (plateau on validation loss)."""
    if t["schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=t["plateau_factor"], patience=t["plateau_patience"], min_lr=t["min_lr"]), "val"
    if t["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=t["min_lr"]), "epoch"
    if t["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=t["lr"], total_steps=max(1, epochs * steps_per_epoch)), "step"
    return None, None
