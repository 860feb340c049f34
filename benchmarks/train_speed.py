"""Training throughput of MEMO ResNet-32 at T = 1, 5, 10 tasks (images per second).

Times the real training step (`memo_edge.train.task.train_step`) on batches of random CIFAR-sized
uint8 images, augmented as in training, with old branches frozen and the trunk trained (a B0 run) or
frozen too (`--trunk frozen`: a B50 run, `--freeze-base`). Warm-up steps first, then repeated timed
steps; reports median and p95 per step. Dimensions (comma-separated lists, every combination):
`--precision fp32,bf16` (autocast, as `train --train-precision`), `--path plain,stacked` (the frozen old
branches as one grouped network, `MemoNet.stack_frozen_branches`; T > 1 only), `--memory-format
nchw,nhwc,contiguous` (nchw: the trainer's CPU default, weights contiguous and the batch as augmented,
whose strides are channels_last ones; nhwc: channels_last everywhere; contiguous: the batch copied to
NCHW order), `--trunk trained,frozen` (T > 1 only).

Distributed mode (`--nproc 1,2`): the same step at one global batch, in 1 process (the plain trainer)
and in N processes started by torch's elastic launcher as `memo-edge train --nproc N` starts them
(DistributedDataParallel, synchronised BatchNorm, each process its share of the global batch; Gloo and
cores / N threads each on the CPU, NCCL and one GPU each on GPUs). Step times are rank 0's.

    .venv/bin/python benchmarks/train_speed.py [--device cpu] [--steps 20] [--write docs/benchmarks.md]
    .venv/bin/python benchmarks/train_speed.py --tasks 1,10 --trunk trained,frozen --precision fp32,bf16 \
        --path plain,stacked --memory-format nchw,nhwc --write docs/benchmarks.md
    .venv/bin/python benchmarks/train_speed.py --nproc 1,2 --tasks 1 [--device cpu] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from memo_edge.model import MemoNet
from memo_edge.train.augment import CifarAugment
from memo_edge.train.precision import make_scaler, to_memory_format
from memo_edge.train.distributed import current_world, distributed_session, shard_bounds, wrap_for_training
from memo_edge.train.recipe import build_optimizer, paper_recipe
from memo_edge.train.task import train_step

from _report import device_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def setup(tasks: int, *, batch: int, device: torch.device, precision: str = "fp32", path: str = "plain",
          trunk: str = "trained", memory_format: str = "nchw", compile: str = "off", tf32: str = "off",
          edit: Callable[[MemoNet], None] | None = None) -> tuple[Callable[[], None], dict]:
    """A model in one configuration and its timed step (augment + train_step); in a process group, this
    rank's share of the global batch. ``edit`` changes the model before anything else (an ablation)."""
    torch.manual_seed(0)
    world = current_world()
    model = MemoNet("resnet32")
    for _ in range(tasks):
        model.expand(10)
    if edit is not None:
        edit(model)
    device = world.device_for(device)
    model.to(device)
    model.freeze_old_branches()
    if trunk == "frozen" and tasks > 1:
        model.freeze_trunk()
    if memory_format not in ("nchw", "nhwc", "contiguous"):
        raise SystemExit(f"--memory-format: nchw, nhwc or contiguous, not {memory_format}")
    nhwc = memory_format == "nhwc"
    to_memory_format(model, nhwc)  # before stacking, as the trainer does: the stack takes the weights' layout
    if path == "stacked" and not model.stack_frozen_branches():
        raise SystemExit(f"cannot stack the frozen branches at T = {tasks}")
    net = wrap_for_training(model, device)
    if compile == "on":  # torch.compile (inductor): the first step pays the compilation
        net = torch.compile(net)
    net.train()
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], paper_recipe(min(tasks - 1, 1)))
    augment, gen = CifarAugment(CIFAR_MEAN, CIFAR_STD), torch.Generator().manual_seed(0)
    lo, hi = shard_bounds(batch, world.rank, world.size)
    images = torch.randint(0, 256, (hi - lo, 32, 32, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, model.num_classes, (hi - lo,), device=device)
    scaler = make_scaler(precision, device)

    def step() -> None:
        # fp32 as the trainer runs it (TF32 off, train/precision.py), or TF32 on: the lever it gives up.
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
        x = augment.apply(images, augment.sample_params(hi - lo, 32, 32, gen))
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        elif memory_format == "contiguous":  # not what the trainer does: the batch copied to NCHW order
            x = x.contiguous()
        train_step(net, optimizer, x, labels, model.known_classes, loss_scale=(hi - lo) * world.size / batch,
                   precision=precision, scaler=scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if tf32 not in ("off", "on"):
        raise SystemExit(f"--tf32: off or on (or off,on), not {tf32}")
    row = {"tasks": tasks, "precision": precision, "path": path if tasks > 1 else "-",
           "trunk": trunk if tasks > 1 else "trained", "memory_format": memory_format, "compile": compile,
           "tf32": tf32 if device.type == "cuda" else "-"}
    return step, row


def summarise(row: dict, times: list[float], batch: int, first: float = float("nan")) -> dict:
    median = statistics.median(times)
    p95 = sorted(times)[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {**row, "median_s": median, "p95_s": p95, "best_s": min(times), "images_per_s": batch / median,
            "best_images_per_s": batch / min(times), "first_s": first}


def measure(tasks: int, *, batch: int, steps: int, warmup: int, device: torch.device, **combo: str) -> dict:
    """Median/p95 step time of one configuration, its steps in a row (the distributed mode's rows)."""
    step, row = setup(tasks, batch=batch, device=device, **combo)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return summarise(row, times, batch)


def measure_interleaved(combos: list[dict], args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every configuration's steps in turn (round robin), so a load that comes and goes on a shared
    machine hits all rows alike; median and best step per row."""
    steps = [setup(batch=args.batch, device=device, **combo) for combo in combos]
    times: list[list[float]] = [[] for _ in combos]
    first: list[float] = []
    for i in range(args.warmup + args.steps):
        for k, (step, _) in enumerate(steps):
            start = time.perf_counter()
            step()
            if i >= args.warmup:
                times[k].append(time.perf_counter() - start)
            elif i == 0:
                first.append(time.perf_counter() - start)
    return [summarise(row, t, args.batch, f) for (_, row), t, f in zip(steps, times, first)]


def _ddp_worker(tasks: int, batch: int, steps: int, warmup: int, device: str, threads: int | None) -> dict[str, float]:
    if threads is not None:
        torch.set_num_threads(threads)
    with distributed_session(device, timeout_s=120):
        return measure(tasks, batch=batch, steps=steps, warmup=warmup, device=torch.device(device))


def measure_ddp(nproc: int, tasks: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One row of the distributed table: 1 = this process as the plain trainer runs; N = N workers."""
    cores = os.cpu_count() or 1
    if nproc == 1:
        row = measure(tasks, batch=args.batch, steps=args.steps, warmup=args.warmup, device=device)
        return {**row, "nproc": 1, "threads": torch.get_num_threads() if device.type == "cpu" else 0}
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = max(1, cores // nproc) if device.type == "cpu" else None
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0)
    rows = elastic_launch(launch, _ddp_worker)(tasks, args.batch, args.steps, args.warmup, device.type, threads)
    return {**rows[0], "nproc": nproc, "threads": threads or 0}


def to_markdown(rows: list[dict], args: argparse.Namespace, device: torch.device) -> str:
    lines = [
        "## Training speed: MEMO ResNet-32, CIFAR-sized images"
        + ("" if args.section == "train_speed" else f" ({args.section.removeprefix('train_speed_')})"),
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {device.type} ({device_name(device)}), Python {platform.python_version()}, torch {torch.__version__}; "
        f"1-min load average {args.load_before} before the run, {load_average()} after it (counting the run itself)",
        f"- what: one training step (augment + forward + backward + SGD) at batch {args.batch}, old branches frozen, "
        f"the trunk trained or frozen; {args.warmup} warm-up steps, {args.steps} timed, the rows of one T interleaved "
        "step by step (a load that comes and goes hits them alike). precision: autocast "
        "(weights fp32); path: plain = one module per frozen branch (under no_grad when nothing flows back), "
        "stacked = the frozen branches as one grouped network with BatchNorm folded; memory format: nchw = "
        "weights contiguous, the batch as the augmentation returns it (what the trainer does on a CPU; the batch "
        "is a permuted NHWC tensor, so its strides are channels_last ones and oneDNN keeps the activations "
        "channels_last), nhwc = weights and batch converted to channels_last, contiguous = the batch copied "
        "to NCHW order (what the trainer does on a GPU without channels_last); compile: torch.compile (inductor) of "
        "the training module; tf32: TF32 for float32 convolutions and matrix products (GPUs; the trainer keeps it "
        "off); first step: the first warm-up step (with compile: its compilation)",
        f"- command: `.venv/bin/python benchmarks/train_speed.py --device {device.type} --tasks {args.tasks} "
        f"--trunk {args.trunk} --precision {args.precision} --path {args.path} --memory-format {args.memory_format} "
        f"--compile {args.compile} --tf32 {args.tf32} --steps {args.steps} --warmup {args.warmup}"
        f"{f' --write {args.write} --section {args.section}' if args.write else ''}`",
        "",
        "| tasks (branches) | trunk | precision | frozen path | memory format | compile | tf32 | first step (s) "
        "| median step (s) | p95 step (s) | images/s (median) | images/s (best step) | vs first row of its T (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = []
    cpu_targets = ((1, "trained", 690), (10, "frozen", 370)) if device.type == "cpu" else ()
    for tasks, trunk, target in cpu_targets:  # issue 13's, for the 2-core CPU, batch 128
        best = max((r for r in rows if r["tasks"] == tasks and r["trunk"] == trunk), default=None,
                   key=lambda r: r["images_per_s"])
        if best is not None:
            targets.append(f"T = {tasks} ({trunk} trunk) >= {target} img/s: {'met' if best['images_per_s'] >= target else 'NOT met'}"
                           f" ({best['images_per_s']:.0f} median, {best['best_images_per_s']:.0f} best step, "
                           f"{best['precision']} {best['path']} {best['memory_format']} compile {best['compile']})")
    if targets:
        lines.insert(lines.index("") + 5, f"- targets: {'; '.join(targets)}")
    base: dict[tuple, float] = {}
    for r in rows:
        key = (r["tasks"], r["trunk"])
        base.setdefault(key, r["images_per_s"])
        lines.append(f"| {r['tasks']} | {r['trunk']} | {r['precision']} | {r['path']} | {r['memory_format']} | "
                     f"{r['compile']} | {r['tf32']} | {r['first_s']:.2f} | {r['median_s']:.3f} | {r['p95_s']:.3f} | {r['images_per_s']:.0f} | "
                     f"{r['best_images_per_s']:.0f} | {r['images_per_s'] / base[key]:.2f}x |")
    return "\n".join(lines) + "\n"


def matrix(args: argparse.Namespace) -> list[dict]:
    """Every combination of the dimensions that means something (no trunk/path choice at T = 1)."""
    combos = []
    for tasks in (int(t) for t in args.tasks.split(",")):
        trunks = args.trunk.split(",") if tasks > 1 else ["trained"]
        paths = args.path.split(",") if tasks > 1 else ["plain"]
        for trunk, precision, path, memory_format, compile, tf32 in itertools.product(
                trunks, args.precision.split(","), paths, args.memory_format.split(","), args.compile.split(","),
                args.tf32.split(",")):
            combo = dict(tasks=tasks, trunk=trunk, precision=precision, path=path, memory_format=memory_format,
                         compile=compile, tf32=tf32)
            if combo not in combos:
                combos.append(combo)
    return combos


def ddp_markdown(rows: list[dict[str, float]], args: argparse.Namespace, device: torch.device) -> str:
    backend = "Gloo" if device.type == "cpu" else "NCCL"
    lines = [
        f"## Distributed training speed: MEMO ResNet-32, {device.type.upper()}, 1 vs N processes",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {device.type} ({device_name(device)}), Python {platform.python_version()}, torch {torch.__version__}; "
        f"1-min load average {args.load_before} before the run, {load_average()} after it (counting the run itself)",
        f"- what: one training step at a global batch of {args.batch} (T = {args.tasks}), 1 process = the plain trainer, "
        f"N processes = DistributedDataParallel + synchronised BatchNorm over {backend}, each its share of the batch; "
        f"{args.warmup} warm-up steps, {args.steps} timed, rank 0's clock",
        f"- command: `.venv/bin/python benchmarks/train_speed.py --nproc {args.nproc} --tasks {args.tasks.split(',')[0]} "
        f"--device {device.type} --steps {args.steps}{f' --write {args.write}' if args.write else ''}`",
        "",
        "| processes | torch threads each | median step (s) | p95 step (s) | images/s | vs 1 process |",
        "|---|---|---|---|---|---|",
    ]
    base = rows[0]["images_per_s"]
    for r in rows:
        threads = r["threads"] or "-"
        lines.append(f"| {r['nproc']} | {threads} | {r['median_s']:.3f} | {r['p95_s']:.3f} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s'] / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tasks", default="1,5,10")
    parser.add_argument("--trunk", default="trained", help="trained, frozen or both (T > 1)")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 (GPU), comma-separated")
    parser.add_argument("--path", default="plain", help="plain, stacked or both (T > 1)")
    parser.add_argument("--memory-format", default="nchw",
                        help="nchw (weights contiguous, the batch as augmented), nhwc (channels_last), contiguous "
                             "(the batch copied to NCHW order), comma-separated")
    parser.add_argument("--compile", default="off", help="off, on or both: torch.compile of the training module")
    parser.add_argument("--tf32", default="off", help="off (what the trainer runs: float32 is float32), on, or "
                        "off,on: TF32 in cuDNN and cuBLAS for the float32 work (GPUs only)")
    parser.add_argument("--section", default="train_speed", help="the section of --write to replace")
    parser.add_argument("--nproc", help="Distributed mode: process counts to compare, e.g. 1,2 (one --tasks value)")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here (benchmarks/gpu_session.py reads it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.nproc:
        args.load_before = load_average()
        rows = [measure_ddp(int(n), int(args.tasks.split(",")[0]), args, device) for n in args.nproc.split(",")]
        section = ddp_markdown(rows, args, device)
        print(section)
        if args.write:
            write_section(args.write, f"train_speed_ddp_{device.type}", section)
        return
    args.load_before = load_average()
    rows = []
    for tasks in dict.fromkeys(c["tasks"] for c in matrix(args)):  # interleaved within one T (memory stays small)
        rows += measure_interleaved([c for c in matrix(args) if c["tasks"] == tasks], args, device)
        for r in rows:
            if r["tasks"] == tasks:
                print(f"T={r['tasks']} trunk {r['trunk']} {r['precision']} {r['path']} {r['memory_format']}: "
                      f"{r['images_per_s']:.0f} img/s median, {r['best_images_per_s']:.0f} best", flush=True)
    section = to_markdown(rows, args, device)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.write:
        write_section(args.write, args.section, section)


if __name__ == "__main__":
    main()
