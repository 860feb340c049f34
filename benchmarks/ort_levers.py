"""ONNX Runtime CPU levers at T tasks, batch 64: session options, graph forms and int8 formats, interleaved.

One randomly initialised ``MemoNet("resnet32")`` expanded T times by 10 classes (speed does not
depend on the weights; int8 accuracy is ``benchmarks/int8_accuracy.py``'s), its full graph from
``memo_edge.export.graphs``, and from it:

- float32: as exported, and with ``shortcuts_as_convs`` (the option-A shortcuts as 1x1 convolutions);
- int8: ``quantize_full`` of that graph with several ``Int8Options`` (QDQ vs QOperator, weights per
  channel vs per tensor, reduce_range, the shortcut rewrite), calibrated on the same 256 random images;
- session options on the float32 graph and on the product's int8 graph: graph optimization level,
  intra-op threads, sequential vs parallel execution, memory pattern, CPU arena, thread spinning,
  ``session.dynamic_block_base``, a graph optimized offline.

Every variant is timed in blocks: a fresh session (its creation timed), ``--warmup`` calls, ``--calls``
timed calls of a batch of 64 random uint8 images, then the session is dropped (an idle session's
spinning threads would compete with the next). The blocks go round robin over the variants,
``--repeats`` times, the order reversed every other round (A B C C B A A B C ...), so slow minutes of
a shared machine hit every variant alike. Per variant: median and p95 of all its timed calls, ms
per image = median / 64, and the spread of its block medians. The "vs" column compares with the
first variant of its precision, the runtime's behaviour before this benchmark.

    .venv/bin/python benchmarks/ort_levers.py [--tasks 10] [--repeats 6] [--calls 8] [--only fp32,int8]
        [--write docs/benchmarks.md]

``--only 1thread``: the graph forms and int8 formats only, each session with one intra-op thread
(section ``ort_levers_1thread``): steadier ratios when other work shares the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from memo_edge.data.datasets import CIFAR100_MEAN, CIFAR100_STD
from memo_edge.export import graphs
from memo_edge.export.quantize import DEFAULT_INT8, Int8Options, quantize_full, shortcuts_as_convs
from memo_edge.model import MemoNet

from _report import cpu_name, load_average, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from ort_cpu_profile import build, macs_per_image  # noqa: E402

MEAN, STD = CIFAR100_MEAN, CIFAR100_STD
SHAPE = (32, 32, 3)
OLD_INT8 = Int8Options(shortcut_conv=False, reduce_range=False)  # what export --int8 made before this benchmark


@dataclass
class Variant:
    label: str
    precision: str
    graph: str  # key into the graphs dict
    session: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    blocks: list[float] = field(default_factory=list)
    create_s: list[float] = field(default_factory=list)


def session_options(*, level: str = "all", threads: int | None = None, parallel: bool = False,
                    inter: int | None = None, mem_pattern: bool = True, arena: bool = True,
                    spinning: bool = True, dynamic_block: int | None = None) -> onnxruntime.SessionOptions:
    """ONNX Runtime session options; the defaults are what ort-cpu set before this benchmark."""
    ort = onnxruntime
    options = ort.SessionOptions()
    options.graph_optimization_level = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if threads is not None:
        options.intra_op_num_threads = threads
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if inter is not None:
            options.inter_op_num_threads = inter
    options.enable_mem_pattern, options.enable_cpu_mem_arena = mem_pattern, arena
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if dynamic_block is not None:  # intra-op work handed out in shrinking blocks instead of fixed shares
        options.add_session_config_entry("session.dynamic_block_base", str(dynamic_block))
    return options


def full_graph_macs(model: MemoNet, image: np.ndarray) -> float:
    """Multiply-accumulates per image of what full.onnx computes: trunk, every branch, classifier (no aux one)."""
    example = graphs.Preprocess(MEAN, STD)(torch.from_numpy(image))
    with torch.no_grad():
        shared = model.trunk(example)
    fc = model.fc
    assert fc is not None
    return float(macs_per_image(model.trunk, example) + sum(macs_per_image(b, shared) for b in model.branches)
                 + fc.in_features * fc.out_features)


def build_graphs(model: MemoNet, only: set[str]) -> dict[str, bytes]:
    full = graphs.full_graph(model, MEAN, STD, SHAPE).data
    rewritten = onnx.load_from_string(full)
    shortcuts_as_convs(rewritten)
    out = {"fp32": full, "fp32-sc": rewritten.SerializeToString()}
    if only & {"int8", "1thread"}:
        calibration = np.random.default_rng(0).integers(0, 256, (256, *SHAPE), dtype=np.uint8)
        for key, options in int8_graphs().items():
            out[key] = quantize_full(full, calibration, options=options)
    for key in [k for k in ("fp32", "int8") if k in out]:
        out[f"{key}-offline"] = optimized_offline(out[key])
    return out


def optimized_offline(data: bytes) -> bytes:
    """The graph as ONNX Runtime's ORT_ENABLE_ALL leaves it (saved once, loaded with optimizations off)."""
    with tempfile.TemporaryDirectory(prefix="memo-ort-levers-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = session_options()
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3  # its warning: NCHWc-optimized graphs are for this CPU only
        onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        return path.read_bytes()


def int8_graphs() -> dict[str, Int8Options]:
    return {
        "int8-old": OLD_INT8,
        "int8": DEFAULT_INT8,
        "int8-qop": Int8Options(format="qoperator"),
        "int8-qop-nosc": Int8Options(format="qoperator", shortcut_conv=False),
        "int8-tensor": Int8Options(per_channel=False),
        "int8-full": Int8Options(reduce_range=False),
    }


def one_thread_variants() -> list[Variant]:
    """The graph forms with one intra-op thread: steadier than two threads on a machine others share
    (a call does not wait for a second thread that lost its core)."""
    one = {"threads": 1}
    return [
        Variant("as exported, 1 intra-op thread", "fp32", "fp32", one),
        Variant("option-A shortcuts as 1x1 convs, 1 intra-op thread", "fp32", "fp32-sc", one),
        *(Variant(f"{Int8Options(**o).describe()}, 1 intra-op thread", "int8", key, one) for key, o in (
            ("int8-old", {"shortcut_conv": False, "reduce_range": False}), ("int8", {}),
            ("int8-qop", {"format": "qoperator"}), ("int8-tensor", {"per_channel": False}),
            ("int8-full", {"reduce_range": False}))),
    ]


def variants(only: set[str]) -> list[Variant]:
    if "1thread" in only:
        return one_thread_variants()
    out = []
    if "fp32" in only:
        out += [
            Variant("as exported, ort-cpu's previous options (ORT_ENABLE_ALL, default threads, spinning)", "fp32", "fp32"),
            Variant("option-A shortcuts as 1x1 convs", "fp32", "fp32-sc"),
            Variant("ORT_ENABLE_EXTENDED (no NCHWc layout)", "fp32", "fp32", {"level": "extended"}),
            Variant("1 intra-op thread", "fp32", "fp32", {"threads": 1}),
            Variant("parallel execution, 2 inter-op x 1 intra-op threads", "fp32", "fp32",
                    {"parallel": True, "inter": 2, "threads": 1}),
            Variant("optimized offline (ORT_ENABLE_ALL saved), loaded with ORT_DISABLE_ALL", "fp32", "fp32-offline",
                    {"level": "none"}),
            Variant("memory pattern off", "fp32", "fp32", {"mem_pattern": False}),
            Variant("CPU memory arena off", "fp32", "fp32", {"arena": False}),
            Variant("spinning off", "fp32", "fp32", {"spinning": False}),
            Variant("session.dynamic_block_base = 4", "fp32", "fp32", {"dynamic_block": 4}),
        ]
    if "int8" in only:
        out += [
            Variant(f"previous export --int8 ({OLD_INT8.describe()})", "int8", "int8-old"),
            Variant(DEFAULT_INT8.describe(), "int8", "int8"),
            Variant(Int8Options(format="qoperator").describe(), "int8", "int8-qop"),
            Variant(Int8Options(format="qoperator", shortcut_conv=False).describe(), "int8", "int8-qop-nosc"),
            Variant(Int8Options(per_channel=False).describe(), "int8", "int8-tensor"),
            Variant(Int8Options(reduce_range=False).describe(), "int8", "int8-full"),
            Variant("default graph, ORT_ENABLE_EXTENDED", "int8", "int8", {"level": "extended"}),
            Variant("default graph, 1 intra-op thread", "int8", "int8", {"threads": 1}),
            Variant("default graph, parallel execution, 2 inter-op x 1 intra-op threads", "int8", "int8",
                    {"parallel": True, "inter": 2, "threads": 1}),
            Variant("default graph optimized offline, loaded with ORT_DISABLE_ALL", "int8", "int8-offline",
                    {"level": "none"}),
            Variant("default graph, memory pattern off", "int8", "int8", {"mem_pattern": False}),
            Variant("default graph, CPU memory arena off", "int8", "int8", {"arena": False}),
            Variant("default graph, spinning off", "int8", "int8", {"spinning": False}),
            Variant("default graph, session.dynamic_block_base = 4", "int8", "int8", {"dynamic_block": 4}),
        ]
    return out


def block(v: Variant, data: bytes, images: np.ndarray, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    s = onnxruntime.InferenceSession(data, sess_options=session_options(**v.session), providers=["CPUExecutionProvider"])
    v.create_s.append(time.perf_counter() - start)
    feed = {s.get_inputs()[0].name: images}
    times = []
    for i in range(args.warmup + args.calls):
        start = time.perf_counter()
        s.run(None, feed)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    v.times += times
    v.blocks.append(float(np.median(times)))
    del s
    gc.collect()


def check_outputs(data: dict[str, bytes], images: np.ndarray) -> dict[str, float]:
    """Largest logit difference of each graph to the float32 one (int8: top-1 agreement too)."""
    run = {k: onnxruntime.InferenceSession(v, sess_options=session_options(level="none" if "offline" in k else "all"),
                                           providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
           for k, v in data.items()}
    ref = run["fp32"]
    out = {k: float(np.abs(v - ref).max()) for k, v in run.items()}
    assert out["fp32-sc"] < 1e-3, f"the shortcut rewrite changed the float32 logits by {out['fp32-sc']}"
    return out


def measure(args: argparse.Namespace) -> tuple[list[Variant], dict[str, float], list[str]]:
    only = set(args.only.split(","))
    model = build(args.tasks)
    data = build_graphs(model, only)
    images = np.random.default_rng(1).integers(0, 256, (64, *SHAPE), dtype=np.uint8)
    diffs = check_outputs(data, images)
    todo = variants(only)
    loads = [load_average()]
    for r in range(args.repeats):
        for v in (todo if r % 2 == 0 else todo[::-1]):
            block(v, data[v.graph], images, args)
        loads.append(load_average())
        print(f"round {r + 1}/{args.repeats} done, load {loads[-1]}", file=sys.stderr)
    diffs["macs"] = full_graph_macs(model, images[:1])
    return todo, diffs, loads


def to_markdown(todo: list[Variant], diffs: dict[str, float], loads: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"## ONNX Runtime CPU levers at T = {args.tasks}, batch 64: "
        + ("graph forms and int8 formats at 1 intra-op thread" if "1thread" in args.only
           else "session options, graph forms, int8 formats"),
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, onnxruntime "
        f"{onnxruntime.__version__}; 1-minute load average before the run and after each round: {', '.join(loads)}",
        f"- what: MEMO ResNet-32, T = {args.tasks}, random weights (speed only), full graph (image -> logits, "
        "preprocessing and head inside); one fresh session per block, "
        f"{args.warmup} warm-up + {args.calls} timed calls of a random uint8 batch of 64 per block, blocks round robin "
        f"over the variants {args.repeats} times (order reversed every other round); int8 graphs calibrated on 256 "
        "random images",
        f"- command: `.venv/bin/python benchmarks/ort_levers.py --tasks {args.tasks} --repeats {args.repeats} "
        f"--calls {args.calls} --only {args.only}" + (f" --write {args.write}`" if args.write else "`"),
        "",
        "| precision | variant | ms/img (median) | GMAC/s | p95 call (ms) | block medians min-max (ms) | vs first row of its precision | session creation (s) | max logit diff to fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    macs = diffs["macs"]
    lines[-3:-3] = [
        "",
        f"Work per image: {macs / 1e6:.1f} M multiply-accumulates; the fp32 target of 2.2 ms/img needs "
        f"{macs / 2.2e-3 / 1e9:.0f} GMAC/s (this CPU's peak rates: `benchmarks/cpu_peak.py`). GMAC/s column: work per "
        "image / ms per image.",
    ]
    first: dict[str, float] = {}
    for v in todo:
        med = float(np.median(v.times))
        first.setdefault(v.precision, med)
        lines.append(
            f"| {v.precision} | {v.label} | {med / 64 * 1e3:.3f} | {macs * 64 / med / 1e9:.0f} | "
            f"{np.percentile(v.times, 95) * 1e3:.0f} | "
            f"{min(v.blocks) * 1e3:.0f}-{max(v.blocks) * 1e3:.0f} | {first[v.precision] / med:.2f}x | "
            f"{np.median(v.create_s):.2f} | {diffs[v.graph]:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=6, help="rounds over all variants")
    parser.add_argument("--calls", type=int, default=8, help="timed batch-64 calls per block")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", default="fp32,int8",
                        help="fp32, int8 or both; or 1thread: the graph forms with one intra-op thread")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    section = to_markdown(*measure(args), args)
    print(section)
    if args.write:
        write_section(args.write, "ort_levers" + ("_1thread" if "1thread" in args.only else ""), section)


if __name__ == "__main__":
    main()
