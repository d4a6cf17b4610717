"""Several GPUs (or CPU processes) through torchrun and DistributedDataParallel.

Run ``kidedge train`` under torchrun: ``torchrun --nproc_per_node=N -m kidedge.cli train
--recipe NAME --data DIR --out RUN_DIR [...]``; ``train_recipe`` notices ``WORLD_SIZE > 1``
in the environment by itself. Backend: NCCL on CUDA, gloo on
CPU. Rank 0 writes every file and runs validation; the ranks agree on early stopping
through a broadcast, and at the end of each stage they check that their weights are
bit-identical (recorded in run.json under ``ddp``).
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when absent)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> bool:
    """Join the process group when launched by torchrun; True when distributed."""
    rank, world, local = env_world()
    if world <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP averages the
    gradients, so the parameters agree, but each rank updates its running statistics on
    its own batches after DDP's per-forward buffer broadcast; without this the ranks end
    an epoch with different statistics (and rank 0 checkpoints only its own)."""
    if not active():
        return
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's parameters and buffers (in state_dict order)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_in_sync(model: torch.nn.Module) -> tuple[bool, list[str]]:
    """Whether every rank holds the same weights (and each rank's digest)."""
    d = weights_digest(model)
    if not active():
        return True, [d]
    out = [None] * world_size()
    dist.all_gather_object(out, d)
    return len(set(out)) == 1, out


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
