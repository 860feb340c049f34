"""``memo-edge bench``: latency, throughput and peak memory of a package per backend and batch size.

Each (backend, batch size) runs in a fresh ``python -m memo_edge.runtime.bench`` process that prints
one JSON line, so its peak RSS (VmHWM, see :func:`peak_rss_mb`) is its own: one backend's libraries, sessions and
buffers never count against another, nor the batch before. In the process: open the package,
create the backend, run ``warmup`` untimed batches of random uint8 images of the package's input
shape, then ``iterations`` timed ones (``time.perf_counter`` around ``backend.logits``, which
returns host memory, so GPU work is finished inside the timing). Torch-free, like all inference.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.utils.process import child_env

__all__ = ["BenchRow", "bench", "measure", "format_bench", "peak_rss_mb"]


@dataclass(frozen=True)
class BenchRow:
    backend: str  # the backend that ran ("auto" resolved)
    precision: str  # of the graph that ran (fp32, fp16, int8)
    batch: int
    p50_ms: float  # median latency of one batch
    p95_ms: float
    images_per_s: float  # images of all timed batches / their total time
    peak_rss_mb: float  # peak resident memory of the measuring process, MiB


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    On Linux, VmHWM of /proc/self/status: ``ru_maxrss`` keeps the parent's peak across fork and
    exec (a worker started from a 900 MiB process reports >= 900 MiB), VmHWM is this image's own.
    Elsewhere ``ru_maxrss`` (bytes on macOS, KiB on the BSDs).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure(package: Path, backend: str, batch: int, *, iterations: int, warmup: int, seed: int = 0,
            precision: str = "auto") -> BenchRow:
    """Time ``backend`` on ``package`` at one batch size, in this process."""
    from memo_edge.runtime.backends import create_backend, precision_options
    from memo_edge.runtime.package import open_package

    version = open_package(package)
    runner = create_backend(backend, version, **precision_options(precision))
    images = np.random.default_rng(seed).integers(0, 256, (batch, *version.manifest.input.shape), dtype=np.uint8)
    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        runner.logits(images)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    p50, p95 = np.percentile(np.array(times) * 1e3, [50, 95])
    return BenchRow(runner.name, runner.precision, batch, float(p50), float(p95), batch * len(times) / sum(times),
                    peak_rss_mb())


def _check(backends: Sequence[str], batches: Sequence[int], iterations: int, warmup: int) -> None:
    if not backends:
        raise InputError("bench needs at least one backend")
    if not batches or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batches):
        raise InputError(f"batch sizes must be positive integers, got {list(batches)}")
    if iterations < 1 or warmup < 0:
        raise InputError(f"need iterations >= 1 and warmup >= 0, got {iterations} and {warmup}")


def _run_worker(package: Path, backend: str, batch: int, iterations: int, warmup: int, precision: str) -> BenchRow:
    cmd = [sys.executable, "-m", "memo_edge.runtime.bench", str(package), "--backend", backend, "--precision", precision,
           "--batch", str(batch), "--iterations", str(iterations), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    lines = proc.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if proc.returncode != 0 or "row" not in result:
        reason = result.get("error") or (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise MemoEdgeError(f"bench {backend} at batch {batch} failed: {reason}")
    return BenchRow(**result["row"])


def bench(
    package: Path,
    *,
    backends: Sequence[str] = ("auto",),
    batches: Sequence[int] = (1, 8, 64),
    iterations: int = 50,
    warmup: int = 5,
    precision: str = "auto",
) -> list[BenchRow]:
    """One row per backend and batch size, each measured in its own process."""
    _check(backends, batches, iterations, warmup)
    return [_run_worker(Path(package), name, int(b), iterations, warmup, precision) for name in backends for b in batches]


def format_bench(rows: Sequence[BenchRow]) -> str:
    header = f"{'backend':<10} {'precision':<9} {'batch':>5} {'p50 ms':>9} {'p95 ms':>9} {'images/s':>10} {'peak RSS MiB':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.backend:<10} {r.precision:<9} {r.batch:>5} {r.p50_ms:>9.2f} {r.p95_ms:>9.2f} {r.images_per_s:>10.0f} "
                     f"{r.peak_rss_mb:>13.1f}")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    """The worker: measure one (backend, batch) and print {"row": ...} or {"error": ...} as JSON."""
    parser = argparse.ArgumentParser(prog="python -m memo_edge.runtime.bench", description=_main.__doc__)
    parser.add_argument("package", type=Path)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        _check([args.backend], [args.batch], args.iterations, args.warmup)
        row = measure(args.package, args.backend, args.batch, iterations=args.iterations, warmup=args.warmup,
                      precision=args.precision)
    except MemoEdgeError as exc:  # a user-facing failure: one line for the parent to show
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"row": asdict(row)}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
