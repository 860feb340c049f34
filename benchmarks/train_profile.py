"""Where a training step's time goes: torch.profiler over `benchmarks/train_speed.py`'s step.

The step is train_speed's (augmentation, forward, loss, backward, SGD at batch 128; default T = 1,
bf16 autocast, channels_last). Its operators' self time (torch.profiler, CPU) is grouped as:
convolution forward, convolution gradients (weights and inputs), BatchNorm forward, BatchNorm
backward, and everything else (ReLU, residual adds, the optimizer, augmentation, the loss, copies).
With the convolutions' MACs (hooks on every Conv2d, as in `benchmarks/cpu_peak.py`) this gives the
rate of the convolution kernels; BatchNorm is also split by stage (16, 32, 64 channels), since its
cost per element differs with the channel count. Since the profiler's own cost per call inflates
short operators, BatchNorm's cost is also measured without it: the same step, interleaved, on a copy
of the model whose BatchNorm2d layers are identities (the same convolutions; for speed only).

    .venv/bin/python benchmarks/train_profile.py [--tasks 1] [--precision bf16] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from memo_edge.model import MemoNet

from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from ort_cpu_profile import build, macs_per_image  # noqa: E402
from train_speed import setup  # noqa: E402

BATCH = 128
TARGET = {1: 690}  # img/s at T = 1 (issue 13)
GROUPS = ("convolution forward", "convolution gradients", "BatchNorm forward", "BatchNorm backward", "everything else")


def group_of(op: str) -> str:
    if op == "aten::convolution_backward":
        return "convolution gradients"
    if op in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d", "aten::_slow_conv2d_forward"):
        return "convolution forward"
    if op == "aten::native_batch_norm_backward":
        return "BatchNorm backward"
    if op == "aten::native_batch_norm":
        return "BatchNorm forward"
    return "everything else"


def conv_macs(tasks: int) -> tuple[int, int]:
    """(forward MACs of every Conv2d for one image, those of the first convolution, whose input needs no gradient)."""
    model, example = build(tasks), torch.zeros((1, 3, 32, 32))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return macs_per_image(model, example, kinds=(torch.nn.Conv2d,)), macs_per_image(first, example)


def without_batchnorm(model: MemoNet) -> None:
    """Every BatchNorm2d replaced by the identity: the same convolutions, minus BatchNorm's work (speed only)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, name, torch.nn.Identity())


def profile_step(args: argparse.Namespace) -> dict:
    combo = {"batch": BATCH, "device": torch.device("cpu"), "precision": args.precision, "memory_format": args.memory_format}
    step, _ = setup(args.tasks, **combo)
    ablated, _ = setup(args.tasks, **combo, edit=without_batchnorm)
    for _ in range(args.warmup):
        step()
        ablated()
    walls: dict[str, list[float]] = {"as trained": [], "without BatchNorm": []}
    for _ in range(args.steps):  # interleaved: a load that comes and goes hits both alike
        for name, fn in (("as trained", step), ("without BatchNorm", ablated)):
            start = time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    seconds: dict[str, float] = defaultdict(float)
    bn_stage: dict[tuple[str, int], float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        per_step = event.self_cpu_time_total / 1e6 / args.steps
        group = group_of(event.key)
        seconds[group] += per_step
        if group.startswith("BatchNorm") and event.input_shapes:
            bn_stage[(group, event.input_shapes[0][1])] += per_step
    return {"wall": statistics.median(walls["as trained"]), "no_bn": statistics.median(walls["without BatchNorm"]),
            "seconds": dict(seconds), "bn_stage": dict(bn_stage)}


def to_markdown(result: dict, args: argparse.Namespace, loads: tuple[str, str]) -> str:
    seconds, wall, no_bn = result["seconds"], result["wall"], result["no_bn"]
    total = sum(seconds.values())
    fwd_macs, first = conv_macs(args.tasks)
    conv_work = {"convolution forward": fwd_macs, "convolution gradients": 2 * fwd_macs - first}
    target = TARGET.get(args.tasks)
    lines = [
        f"## Where a training step's time goes: MEMO ResNet-32, T = {args.tasks}, {args.precision}, batch {BATCH}",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: cpu ({cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads), Python "
        f"{platform.python_version()}, torch {torch.__version__}; 1-min load average {loads[0]} before the run, {loads[1]} after it",
        f"- what: `train_speed.py`'s step (augment + forward + backward + SGD, trunk trained, memory format "
        f"{args.memory_format}), {args.warmup} warm-up steps, then {args.steps} plain steps of the model and of its copy "
        f"without BatchNorm, interleaved (medians), then {args.steps} steps of the model under torch.profiler: each "
        "operator's self time per step, grouped; MACs per image "
        "counted by hooks on every Conv2d (gradients: weights for every convolution, inputs for all but the first)",
        f"- command: `.venv/bin/python benchmarks/train_profile.py --tasks {args.tasks} --precision {args.precision} "
        f"--memory-format {args.memory_format} --steps {args.steps} --warmup {args.warmup}"
        + (f" --write {args.write}`" if args.write else "`"),
        "",
        f"Without the profiler (medians of the interleaved steps): as trained **{wall * 1e3:.0f} ms** a step "
        f"({BATCH / wall:.0f} img/s); with every BatchNorm2d replaced by the identity (the same convolutions; speed "
        f"only) **{no_bn * 1e3:.0f} ms** ({BATCH / no_bn:.0f} img/s): BatchNorm costs {(wall - no_bn) * 1e3:.0f} ms "
        f"a step. Under the profiler the operators' self times add up to {total * 1e3:.0f} ms (its cost per call "
        "weighs most on the many short operators), so the shares below are approximate:",
        "",
        "| operators | ms per step | share | GMAC/s |",
        "|---|---|---|---|",
    ]
    for group in GROUPS:
        s = seconds.get(group, 0.0)
        rate = f"{conv_work[group] * BATCH / s / 1e9:.0f}" if group in conv_work and s else "-"
        lines.append(f"| {group} | {s * 1e3:.1f} | {s / total:.0%} | {rate} |")
    lines += ["", "| BatchNorm by channels (activation) | forward ms per step | backward ms per step |", "|---|---|---|"]
    for channels in sorted({c for _, c in result["bn_stage"]}):
        fwd = result["bn_stage"].get(("BatchNorm forward", channels), 0.0)
        bwd = result["bn_stage"].get(("BatchNorm backward", channels), 0.0)
        size = {16: "32x32", 32: "16x16", 64: "8x8"}.get(channels, "?")
        lines.append(f"| {channels} ({size}) | {fwd * 1e3:.1f} | {bwd * 1e3:.1f} |")
    if target:
        step = BATCH / target
        lines += ["", f"At {target} img/s a step has {step * 1e3:.0f} ms. The step without BatchNorm already takes "
                  f"{no_bn * 1e3:.0f} ms ({no_bn / step:.0%} of it), which would leave BatchNorm "
                  f"{max(0.0, step - no_bn) * 1e3:.0f} ms instead of its {(wall - no_bn) * 1e3:.0f} ms; the "
                  f"convolutions run at the GMAC/s above (the bf16 peak: `benchmarks/cpu_peak.py`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--memory-format", default="nhwc", choices=("nchw", "nhwc"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    before = load_average()
    result = profile_step(args)
    section = to_markdown(result, args, (before, load_average()))
    print(section)
    if args.write:
        write_section(args.write, "train_profile", section)


if __name__ == "__main__":
    main()
