"""Host-to-device copies that do not stall the GPU.

A copy from ordinary (pageable) host memory makes the host wait for the GPU: CUDA first stages the
bytes in a pinned buffer, so ``.to("cuda", non_blocking=True)`` on such a tensor still blocks. A
pinned source makes the copy asynchronous; torch's caching host allocator reuses pinned blocks (and
keeps one alive until the copy that reads it has finished), so pinning every batch costs no
``cudaHostAlloc`` after the first few steps. On the CPU nothing is copied at all.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` (on the host) on ``device``: pinned and asynchronous to a GPU, unchanged for the CPU.

    The caller must not write into ``tensor`` afterwards (the copy may still be reading it), which
    holds for the fresh batch and draw tensors the trainer passes.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
