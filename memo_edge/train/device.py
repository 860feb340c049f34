"""The torch device a command runs on, from what the user typed."""

from __future__ import annotations

import torch

from memo_edge.errors import InputError

__all__ = ["select_device"]


def select_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but no CUDA GPU is available to torch")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r} asked for, but torch sees {_gpus_present()}")
    return device


def _gpus_present() -> str:
    """``1 CUDA GPU: cuda:0 (NVIDIA H100 80GB HBM3)``: what a mistaken index can be corrected to."""
    count = torch.cuda.device_count()
    names = ", ".join(f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
    return f"{count} CUDA GPU{'s' if count != 1 else ''}: {names}"
