"""SyncBatchNorm under DDP on every device: CVRL (``use_sync_bn: true``) and CtP's RotNet
(``syncbn = True``) compute BN statistics over the global batch.

On GPU this is torch.nn.SyncBatchNorm. torch refuses it on CPU (its forward and DDP both do), so
on CPU every BN layer becomes a :class:`CPUSyncBatchNorm`, which computes the same statistics
with two differentiable all-reduces (gloo). Either way the layers keep their parameters and
buffers (the optimiser keeps working) and state dicts are those of plain BatchNorm, so a
checkpoint loads into an unconverted backbone.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every process's input is the summed gradient."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm over the batches of every process (B×C×…, any number of trailing dims);
    plain BN when not training or without a process group."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # sum and count over every process, then the centred sum of squares (stable variance)
        count = x.new_tensor([x.numel() // x.shape[1]])
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        xc = x - mean.view(shape)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / n  # biased: what BN normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1),
                                                  alpha=m)
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised across processes, in place for a module
    that is not itself a BN layer; returns the converted module. GPU modules: torch's
    SyncBatchNorm (``convert_sync_batchnorm``, parameters shared); CPU: CPUSyncBatchNorm."""
    p = next(module.parameters(), None)
    if p is not None and p.device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm):
            m.__class__ = CPUSyncBatchNorm  # same attributes: parameters and buffers stay
    return module


def count_sync_batchnorm(module: nn.Module) -> int:
    """Number of BN layers of ``module`` that synchronise across processes."""
    return sum(isinstance(m, (nn.SyncBatchNorm, CPUSyncBatchNorm)) for m in module.modules())
