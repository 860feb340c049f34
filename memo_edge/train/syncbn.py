"""BatchNorm over the global batch of a distributed run, on GPUs (NCCL) and CPUs (Gloo).

On a GPU this is ``torch.nn.SyncBatchNorm``: batch statistics over every process's part of the batch,
as one process computes them over the whole batch. torch refuses CPU tensors there (and DDP refuses
the class in a CPU module), so on the CPU ``CpuSyncBatchNorm`` does the same with all-reduces of the
per-channel sums whose backward all-reduces the gradient: the statistics and the gradients are those
of the global batch. Its sums are torch.sum's (pairwise), which on the CPU are more exact than the
float32 accumulation of one process's BatchNorm kernel (docs/distributed.md, "Equivalence").

The converters swap modules in place and keep the same parameter and buffer tensors, so an optimizer
built before or after the swap updates the same weights, and the model converted back has the plain
BatchNorm layers (and state-dict keys) that export and checkpoints expect.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CpuSyncBatchNorm", "to_sync_batchnorm", "to_plain_batchnorm"]


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward is an all-reduce too: every process's loss depends on the sum,
    so the gradient reaching each process's share is the sum of all processes' gradients."""

    @staticmethod
    def forward(ctx: object, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def _sum_over_processes(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _SumOverProcesses.apply(t)
    return t


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span all processes (CPU tensors, Gloo); in eval, plain BatchNorm.

    Trains with the same arithmetic in a single process (no group), which the equivalence tests use.
    """

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002  (torch's parameter name)
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        return self._forward_sync(input) if self.training else super().forward(input)

    def _forward_sync(self, x: Tensor) -> Tensor:
        # Statistics in float32 whatever the autocast precision (a bf16 sum or count would round), the
        # output in the input's dtype, as torch's BatchNorm under autocast; a no-op for float32 input.
        dtype, x = x.dtype, x.float()
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        # One all-reduce for the sums and the element count, a second for the centred squares: the
        # two-pass variance, as exact as one process's BatchNorm on the same batch.
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() // channels)])
        total = _sum_over_processes(local)
        count = total[-1].detach()
        mean = total[:channels] / count
        centred = x - mean.view(shape)
        var = _sum_over_processes((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self._update_running_stats(mean.detach(), var.detach() * count / (count - 1))
        return y.to(dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        # As F.batch_norm: cumulative average when momentum is None, else exponential (unbiased variance).
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var, alpha=factor)


def _swap(old: _BatchNorm, new: _BatchNorm) -> _BatchNorm:
    """``new`` holding ``old``'s very tensors (parameters and buffers) and training mode."""
    if old.affine:
        new.weight, new.bias = old.weight, old.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, name, getattr(old, name))
    new.train(old.training)
    return new


_SYNCED = (nn.SyncBatchNorm, CpuSyncBatchNorm)


def to_sync_batchnorm(module: nn.Module, device: torch.device) -> None:
    """Replace every BatchNorm layer inside ``module`` by a synchronised one sharing its tensors:
    torch's ``SyncBatchNorm`` on a GPU, ``CpuSyncBatchNorm`` on the CPU."""
    cls = CpuSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, _SYNCED):
            sync = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.plain_class = type(child)  # what ``to_plain_batchnorm`` turns it back into
            setattr(module, name, _swap(child, sync))
        else:
            to_sync_batchnorm(child, device)


def to_plain_batchnorm(module: nn.Module) -> None:
    """Undo ``to_sync_batchnorm``: every synchronised layer back to the BatchNorm class it replaced."""
    for name, child in module.named_children():
        if isinstance(child, _SYNCED):
            plain_class = getattr(child, "plain_class", nn.BatchNorm2d)
            plain = plain_class(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            setattr(module, name, _swap(child, plain))
        else:
            to_plain_batchnorm(child)
