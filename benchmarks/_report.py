"""Shared by benchmark scripts: time a call, and replace one script's section of docs/benchmarks.md in place."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def write_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between ``<!-- name:begin -->`` and ``<!-- name:end -->``, appending it if new."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text if text.endswith("\n") else text + "\n")


def cpu_name() -> str:
    """The CPU model as the kernel reports it (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """The machine a torch device is, for a "where" line: the GPU with its CUDA and cuDNN, or the CPU with
    its cores and torch's threads (torch is imported only by the scripts that pass a device)."""
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def load_average() -> str:
    """The 1-minute load average, for the "where" line: other work on the machine slows every figure."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def timings(fn: Callable[[np.ndarray], object], images: np.ndarray, iterations: int, warmup: int) -> np.ndarray:
    """Seconds of each of ``iterations`` calls of ``fn(images)``, after ``warmup`` untimed ones."""
    out = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        fn(images)
        if i >= warmup:
            out.append(time.perf_counter() - start)
    return np.array(out)
