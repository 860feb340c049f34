"""Numeric precision of training and inference: ``fp32``, ``bf16``, ``fp16`` or ``auto``.

Mixed precision by ``torch.autocast`` only: weights, optimizer state and checkpoints stay float32,
matrix work (convolutions, linear layers) runs in the lower precision, losses and reductions in float32.

- ``bf16``: CPUs whose oneDNN runs bf16 natively (AVX-512 BF16 / AMX) and GPUs (Ampere and later run
  it natively; older ones emulate it, slowly).
- ``fp16``: GPUs only, with a gradient scaler (``torch.amp.GradScaler``) so small gradients do not
  underflow. Refused on the CPU with one line.
- ``auto``: the fastest that the hardware runs natively: bf16 on a GPU that supports it (fp16 on older
  GPUs), bf16 on a CPU with native bf16, fp32 otherwise. The resolved choice is what a run records.
- ``fp32``: no autocast at all; the default, and bit for bit the trainer as it was.

``channels_last`` (``use_channels_last``) only on CUDA with a 16-bit precision, the layout tensor cores
want. On a GPU every batch is put in the model's layout (``batch_memory_format``): one layout per run,
never NHWC activations against NCHW weights. On the CPU the weights stay contiguous, yet the activations
are channels_last all the same: the augmented batch is a permuted NHWC tensor, whose strides oneDNN
follows. Converting the model too measured no faster, and copying the batch to NCHW order slower
(docs/benchmarks.md, train_speed and train_speed_layout), so the CPU keeps what it has, and fp32 there
stays bit for bit what it was.

``fp32`` means float32 arithmetic on a GPU too: torch lets cuDNN run float32 convolutions as TF32 (a
10-bit mantissa) by default on Ampere and later, so training turns TF32 off for cuDNN and cuBLAS while
it runs (``exact_float32``) and records the flags in results.json (``numerics``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from memo_edge.errors import InputError
from memo_edge.options import TRAIN_PRECISIONS as PRECISIONS

__all__ = ["PRECISIONS", "resolve_precision", "autocast", "make_scaler", "use_channels_last", "to_memory_format",
           "batch_memory_format", "exact_float32", "numerics", "cpu_bf16_native"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_native() -> bool:
    """Whether this CPU runs bf16 matrix work natively (oneDNN's own check: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``precision`` as it will run on ``device`` (``auto`` resolved); a mistake is an InputError."""
    name = (precision or "fp32").strip().lower()
    if name not in PRECISIONS:
        raise InputError(f"--train-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        return "bf16" if device.type == "cpu" and cpu_bf16_native() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise InputError(f"--train-precision fp16 needs a CUDA GPU (it trains with a gradient scaler there); on {device.type} "
                         "use bf16 or fp32")
    if name == "bf16" and device.type not in ("cpu", "cuda"):
        raise InputError(f"--train-precision bf16 runs on cpu or cuda, not on {device.type}")
    return name


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast to ``precision`` (already resolved) on ``device``; nothing at all for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=_DTYPES[precision]):
        yield


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (on CUDA); None for the other precisions, which need none."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def use_channels_last(precision: str, device: torch.device) -> bool:
    """NHWC on CUDA with a 16-bit precision (tensor cores); elsewhere the model stays contiguous (on the
    CPU the batch's own NHWC strides already make the activations channels_last)."""
    return device.type == "cuda" and precision in ("bf16", "fp16")


def to_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """The model in the chosen memory format (contiguous NCHW when not channels_last)."""
    return module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def batch_memory_format(device: torch.device, channels_last: bool) -> torch.memory_format | None:
    """The layout every training batch is put in: the model's on a GPU (one layout per run; cuDNN given
    NHWC activations and NCHW weights converts one of them on every call), None on the CPU unless the
    model is channels_last (the augmented batch keeps its NHWC strides there: measured fastest)."""
    if channels_last:
        return torch.channels_last
    return torch.contiguous_format if device.type == "cuda" else None


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """float32 work in float32 on a GPU: TF32 off for cuDNN's convolutions (on by default in torch) and
    cuBLAS's matrix products while the block runs, the flags as they were afterwards. Nothing on a CPU.
    Under autocast it concerns the operations autocast leaves in float32."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def numerics(precision: str, device: torch.device) -> dict[str, object]:
    """What the arithmetic of a run on ``device`` is (results.json "numerics"): the autocast type, TF32
    (never: ``exact_float32``), the cuDNN flags, the layout, and torch's float32 matmul precision."""
    cuda = device.type == "cuda"
    return {
        "precision": precision,
        "autocast": None if precision == "fp32" else str(_DTYPES[precision]).removeprefix("torch."),
        "tf32": False,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "channels_last": use_channels_last(precision, device),
        "cudnn": {"version": torch.backends.cudnn.version(), "benchmark": torch.backends.cudnn.benchmark,
                  "deterministic": torch.backends.cudnn.deterministic} if cuda else None,
    }
