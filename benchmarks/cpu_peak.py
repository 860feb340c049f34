"""The CPU's peak multiply-accumulate rates, and what issue 13's speed targets ask of them.

Compiles ``benchmarks/cpu_peak.c`` with gcc (AVX-512 FMA, AVX-512 BF16 and AVX-512 VNNI kernels
with no memory traffic: the most multiply-accumulates per second these units can do) and runs each at
1 thread and at one thread per logical CPU. Then counts the multiply-accumulates (MACs) of MEMO
ResNet-32 per image (hooks on every Conv2d and Linear) and turns each target into the rate it needs:

- inference at T = 10 (full graph: trunk, 10 branches, classifier): fp32 <= 2.2 ms/img against the
  fp32 peak, int8 <= 0.8 ms/img against the int8 (VNNI) peak;
- training at T = 1 (trunk and branch trained, batch 128): >= 690 img/s against the bf16 peak, the
  work being the forward pass and, for every Conv2d and Linear, the gradient of its weights and of
  its input (except the image's), i.e. 3 x forward - the first convolution.

A target whose rate is above the peak cannot be met by any schedule of the same arithmetic; one
close to it can be met only by kernels that run at that fraction of the peak for the whole step.

    .venv/bin/python benchmarks/cpu_peak.py [--iterations 100000000] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from ort_cpu_profile import build, macs_per_image  # noqa: E402

SOURCE = Path(__file__).with_name("cpu_peak.c")
KINDS = {"fp32": "avx512f", "bf16": "avx512_bf16", "int8": "avx512_vnni"}  # kernel -> /proc/cpuinfo flag it needs
CIFAR = (3, 32, 32)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def compile_kernels(out: Path) -> Path:
    if shutil.which("gcc") is None:
        raise SystemExit("cpu_peak needs gcc (with OpenMP) to build benchmarks/cpu_peak.c")
    binary = out / "cpu_peak"
    subprocess.run(["gcc", "-O2", "-mavx512f", "-mavx512bf16", "-mavx512vnni", "-fopenmp", str(SOURCE), "-o",
                    str(binary)], check=True)
    return binary


def peak(binary: Path, kind: str, threads: int, iterations: int, repeats: int) -> float:
    """MACs per second of ``kind`` on ``threads`` OpenMP threads (the fastest of ``repeats`` runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "spread"}
    done = subprocess.run([str(binary), kind, str(iterations), str(repeats)], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.split()[2])


def model_macs(tasks: int) -> tuple[int, int]:
    """(MACs per image of a forward pass, MACs of its first convolution) of MEMO ResNet-32 with ``tasks`` branches."""
    model = build(tasks)
    example = torch.zeros((1, *CIFAR))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return macs_per_image(model, example), macs_per_image(first, example)


def to_markdown(peaks: dict[tuple[str, int], float], needs: list[dict], args: argparse.Namespace,
                loads: tuple[str, str]) -> str:
    threads = sorted({t for _, t in peaks})
    lines = [
        "## CPU peak multiply-accumulate rates, and what the speed targets ask of them (issue 13)",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, {os.cpu_count()} logical CPUs, gcc; 1-min load average {loads[0]} before the run, "
        f"{loads[1]} after it",
        "- what: `benchmarks/cpu_peak.c`, 16 independent 512-bit multiply-accumulate chains per thread, no memory "
        f"traffic, {args.iterations:,} rounds, the fastest of {args.repeats} runs: fp32 = VFMADD (16 MACs an "
        "instruction), bf16 = VDPBF16PS (32), int8 = VPDPBUSD (64, u8 x s8, what ONNX Runtime's int8 "
        "convolutions use); MACs per image counted by hooks on every Conv2d and Linear of MEMO ResNet-32",
        f"- command: `.venv/bin/python benchmarks/cpu_peak.py --iterations {args.iterations} --repeats {args.repeats}"
        + (f" --write {args.write}`" if args.write else "`"),
        "",
        "| unit | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} (GMAC/s)" for t in threads) + " |",
        "|---|" + "---|" * len(threads),
    ]
    for kind in KINDS:
        cells = [f"{peaks[(kind, t)] / 1e9:.1f}" if (kind, t) in peaks else "not on this CPU" for t in threads]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| target (issue 13) | work | MACs per image | rate it needs (GMAC/s) | peak of its unit (GMAC/s) | needs this share of the peak |",
        "|---|---|---|---|---|---|",
    ]
    for n in needs:
        have = peaks.get((n["unit"], max(threads)))
        unit = f"{have / 1e9:.1f} ({n['unit']}) | **{n['rate'] / have:.0%}**" if have else "- | -"
        lines.append(f"| {n['target']} | {n['work']} | {n['macs'] / 1e6:.1f} M | {n['rate'] / 1e9:.1f} | {unit} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=100_000_000, help="rounds of 16 multiply-accumulates per thread")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    flags = cpu_flags()
    kinds = [k for k, flag in KINDS.items() if flag in flags]
    if not kinds:
        raise SystemExit("this CPU has none of AVX-512 F, BF16 and VNNI (/proc/cpuinfo): cpu_peak measures those units")
    loads = [load_average()]
    with tempfile.TemporaryDirectory(prefix="memo-cpu-peak-") as tmp:
        binary = compile_kernels(Path(tmp))
        peaks = {(k, t): peak(binary, k, t, args.iterations, args.repeats)
                 for t in sorted({1, os.cpu_count() or 1}) for k in kinds}
    loads.append(load_average())
    forward_t10, _ = model_macs(10)
    forward_t1, first_conv = model_macs(1)
    train_t1 = 3 * forward_t1 - first_conv
    needs = [
        {"target": "ORT fp32, T = 10, batch 64: <= 2.2 ms/img", "work": "forward", "macs": forward_t10,
         "rate": forward_t10 / 2.2e-3, "unit": "fp32"},
        {"target": "ORT int8, T = 10, batch 64: <= 0.8 ms/img", "work": "forward", "macs": forward_t10,
         "rate": forward_t10 / 0.8e-3, "unit": "int8"},
        {"target": "training, T = 1, batch 128: >= 690 img/s (bf16)", "work": "forward + both gradients",
         "macs": train_t1, "rate": train_t1 * 690, "unit": "bf16"},
    ]
    section = to_markdown(peaks, needs, args, (loads[0], loads[1]))
    print(section)
    if args.write:
        write_section(args.write, "cpu_peak", section)


if __name__ == "__main__":
    main()
