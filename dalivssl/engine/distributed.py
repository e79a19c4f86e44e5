"""Distributed setup for ``torchrun --nproc_per_node=N -m dalivssl pretrain …``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we then start one DDP process group (NCCL on GPU,
gloo on CPU). Without them everything runs in one process and these helpers are no-ops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # torch device string: 'cpu' or 'cuda:<LOCAL_RANK % visible GPUs>'

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def gpu_index(self) -> int | None:
        """The CUDA ordinal of this rank (DDP's ``device_ids=[...]``), None on CPU. Not
        ``local_rank``: a rank that sees one GPU uses cuda:0 whatever its LOCAL_RANK."""
        return int(self.device.split(":")[1]) if self.device.startswith("cuda:") else None


def setup(device: str = "cpu") -> DistInfo:
    """Read the torchrun environment and start the process group if WORLD_SIZE > 1.
    ``device``: 'cpu' or 'gpu' (the dalivssl device names). The GPU is LOCAL_RANK modulo the
    visible GPUs (G10): under SLURM each task may see only its own GPU, as cuda:0."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "gpu":
        if not torch.cuda.is_available():
            from dalivssl.errors import DalivsslError

            raise DalivsslError("--device gpu: no CUDA GPU is visible to torch")
        from dalivssl.devices import local_device_id

        gpu = local_device_id()
        torch.cuda.set_device(gpu)
        tdev = f"cuda:{gpu}"
    else:
        tdev = "cpu"
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "gpu" else "gloo",
                                    timeout=timedelta(minutes=10))
    return DistInfo(rank, world, local, tdev)


def cleanup() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, …] ([obj] without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank (a no-op without a
    process group). DDP broadcasts buffers at the start of each forward and the training forward
    then updates BN running statistics from the rank's own batch, so after training the ranks'
    statistics differ; a sharded evaluation must score rank 0's model, the one checkpointed."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for t in module.state_dict().values():  # detached views of the live tensors
            if isinstance(t, torch.Tensor):
                dist.broadcast(t, src=0)
