"""MoCo machinery shared by the TDL and RSPNet tasks (He et al., CVPR 2020): EMA key encoders,
a FIFO queue of keys held as buffers (so checkpoints save and restore it), InfoNCE, and a
one-process stand-in for ShuffleBN. Torch only, beside the heads (``models.heads``); it is no task.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def key_copy(module: nn.Module) -> nn.Module:
    """Frozen deep copy used as an EMA key encoder (never receives gradients)."""
    key = copy.deepcopy(module)
    for p in key.parameters():
        p.requires_grad_(False)
    return key


@torch.no_grad()
def ema_update(online: nn.Module, key: nn.Module, momentum: float) -> None:
    """key ← m·key + (1−m)·online, parameters only (the key's BN keeps its own running stats,
    in train mode, as in MoCo and TDL's model_ema)."""
    for p_k, p_q in zip(key.parameters(), online.parameters()):
        p_k.mul_(momentum).add_(p_q.detach(), alpha=1.0 - momentum)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (identity without torch.distributed)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shuffled_encode(encoder, x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """ShuffleBN for one process: encode a random permutation of the key batch in ``groups``
    chunks, so the BN statistics of a key never come from exactly its query's batch (MoCo shuffles
    across GPUs for this; without it the contrastive task can be solved through BN). B×… → B×d."""
    b = x.shape[0]
    groups = max(1, min(groups, b // 2))
    if groups == 1:
        return encoder(x)
    perm = torch.randperm(b, device=x.device)
    out = torch.cat([encoder(chunk) for chunk in x[perm].chunk(groups)])
    return out[torch.argsort(perm)]


class KeyQueue(nn.Module):
    """FIFO queue of K unit-norm keys (K×dim) plus a write pointer, both buffers.

    ``init='normal'``: normalised Gaussian rows (MoCo); ``'uniform'``: U(±1/√(dim/3)) (TDL's
    MemoryMoCo). Under DDP the keys of every process are enqueued, so all queues stay identical.
    """

    def __init__(self, size: int, dim: int, init: str = "normal"):
        super().__init__()
        if init == "uniform":
            bound = 1.0 / math.sqrt(dim / 3.0)
            q = torch.rand(size, dim) * 2 * bound - bound
        else:
            q = F.normalize(torch.randn(size, dim), dim=1)
        self.register_buffer("keys", q)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = all_gather_nograd(keys.detach().to(self.keys.dtype))
        size = self.keys.shape[0]
        keys = keys[-size:]
        idx = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys[idx] = keys
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)


def infonce(q: torch.Tensor, pos: torch.Tensor, queue: torch.Tensor, temperature: float,
            extra_neg: torch.Tensor | None = None):
    """InfoNCE with the positive at index 0: logits [q·pos, q·queue (K), q·extra_neg] / T.
    q, pos, extra_neg B×d (unit norm), queue K×d → (loss, top-1 accuracy of the positive)."""
    cols = [(q * pos).sum(1, keepdim=True), q @ queue.t()]
    if extra_neg is not None:
        cols.append((q * extra_neg).sum(1, keepdim=True))
    logits = torch.cat(cols, dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == 0).float().mean().detach()


def trimmed_size(size: int, batch_size: int | None, world_size: int = 1) -> int:
    """RSPNet's utils/moco.py: K rounded down to a multiple of the global batch (≥ one batch)."""
    if not batch_size:
        return int(size)
    g = int(batch_size) * max(1, int(world_size))
    return max(g, (int(size) // g) * g)
