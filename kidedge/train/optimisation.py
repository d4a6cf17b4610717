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


#: ``kidedge train --precision`` choices.
PRECISIONS = ("auto", "fp32", "bf16")
#: CPU flags of native bf16 arithmetic (x86, then Arm's ``bf16``); without them torch
#: emulates bf16 on the CPU (slower than fp32).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


class Precision:
    """Autocast and gradient scaling for the device.

    ``auto``: bf16 autocast on CUDA GPUs that support it, fp16 + GradScaler on older ones,
    plain fp32 on the CPU (the shipped recipes' CPU runs were fp32). ``fp32``: no autocast
    anywhere. ``bf16``: bf16 autocast on either device; on a CPU with native bf16
    (``CPU_BF16_FLAGS``, e.g. AMD Zen 4, Intel Cooper Lake and later) training steps ran
    1.3-1.6x as fast as fp32 for the 2D U-Nets and 4.5-6.5x for the 3D networks
    (``benchmarks/results/train_throughput.md``). The weights, the optimiser state and the
    loss stay fp32 either way.
    """

    def __init__(self, device: torch.device, mode: str = "auto"):
        if mode not in PRECISIONS:
            raise KidedgeError(f"--precision {mode}: expected one of {', '.join(PRECISIONS)}")
        self.device = device
        self.mode = mode
        self.dtype = None
        self.scaler = None
        self.note = None
        if mode == "fp32":
            return
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                self.dtype = torch.bfloat16
            elif mode == "bf16":
                raise KidedgeError("--precision bf16: this GPU has no bf16 support (use auto: fp16 with a GradScaler)")
            else:
                self.dtype = torch.float16
                self.scaler = torch.amp.GradScaler("cuda")
        elif mode == "bf16":
            self.dtype = torch.bfloat16
            if not cpu_has_native_bf16():
                self.note = ("this CPU has no native bf16 (" + ", ".join(CPU_BF16_FLAGS) + "): bf16 autocast is "
                             "emulated and may be slower than fp32")

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast+gradscaler"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (its /proc/cpuinfo flags)."""
    from kidedge.environment import cpu_description

    return bool(set(cpu_description().get("instruction_sets") or ()) & set(CPU_BF16_FLAGS))


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
