"""Where ONNX Runtime (CPU, float32 and int8) spends the time of MEMO ResNet-32 at T tasks, and two variants.

One randomly initialised ``MemoNet("resnet32")`` expanded T times by 10 classes (speed does not
depend on the weights), its graphs made by ``memo_edge.export.graphs`` (BatchNorm folded, uint8 input,
preprocessing inside), each run in a plain ``onnxruntime.InferenceSession`` (CPU, ORT_ENABLE_ALL,
threads at ONNX Runtime's default), on random uint8 CIFAR-sized batches:

- work: multiply-accumulates per image of every Conv2d and Linear (forward hooks), and the rate
  they imply at the measured batch-64 throughput;
- profile: the share of convolution kernels (ONNX Runtime's ``Conv``/``FusedConv`` nodes, and
  ``QLinearConv`` in ``export --int8``'s graph (``quantize_full``, calibrated on 256 random images),
  from its profiler; PyTorch eager's ops with "conv" in their name, from ``torch.profiler``, self CPU
  time) in the time of batch-64 calls of the full model, and the convolution kernels' time per image;
- branch fusion: ``full`` as exported (one conv stack per branch) against a fused graph with the
  same arithmetic (the first conv of every branch stacked into one, the later convs grouped with
  groups = T), batch-1 p50 and batch-64 throughput;
- thread spinning: the split path (trunk session, then T branch sessions, then the head in numpy)
  with ``session.intra_op.allow_spinning`` on (ONNX Runtime's default) and off in every session.

    .venv/bin/python benchmarks/ort_cpu_profile.py [--tasks 10] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import Tensor, nn

from memo_edge.data.datasets import CIFAR100_MEAN, CIFAR100_STD
from memo_edge.export import graphs
from memo_edge.export.quantize import quantize_full
from memo_edge.model import MemoNet

from _report import cpu_name, load_average, timings, write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

MEAN, STD = CIFAR100_MEAN, CIFAR100_STD
SHAPE = (32, 32, 3)
Fn = Callable[[np.ndarray], np.ndarray]


def build(tasks: int) -> MemoNet:
    torch.manual_seed(0)
    model = MemoNet("resnet32")
    for _ in range(tasks):
        model.expand(10)
    return model.eval()


def macs_per_image(module: nn.Module, example: Tensor, kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> int:
    """Multiply-accumulates of every Conv2d and Linear (of ``kinds`` of them) for one image of ``example``."""
    total = 0

    def hook(m: nn.Module, _: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out[0].numel() * (m.in_channels // m.groups) * kh * kw
        else:
            total += out[0].numel() * m.in_features  # type: ignore[operator]

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        module(example[:1])
    for h in handles:
        h.remove()
    return total


class _FusedBlock(nn.Module):
    """T CIFAR basic blocks (BatchNorm already folded) computed as one: channels t*P..(t+1)*P are branch t's."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        t, first = len(blocks), blocks[0]
        self.stacked_input = isinstance(first.shortcut, nn.Module) and not isinstance(first.shortcut, nn.Identity)
        self.stride = first.conv_a.stride[0]
        self.conv_a = self._fuse([b.conv_a for b in blocks], groups=1 if self.stacked_input else t)
        self.conv_b = self._fuse([b.conv_b for b in blocks], groups=t)
        self.tasks = t

    @staticmethod
    def _fuse(convs: list[nn.Conv2d], groups: int) -> nn.Conv2d:
        c = convs[0]
        fused = nn.Conv2d(c.in_channels * groups, c.out_channels * len(convs), c.kernel_size, c.stride, c.padding,
                          groups=groups, bias=True)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([conv.weight for conv in convs]))
            fused.bias.copy_(torch.cat([conv.bias for conv in convs]))  # folded BatchNorm gave every conv a bias
        return fused

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.conv_a(x))
        out = self.conv_b(out)
        if self.stacked_input:  # option-A shortcut of every branch: subsample, zero channels appended
            s = x[:, :, :: self.stride, :: self.stride]
            shortcut = torch.cat([s, torch.zeros_like(s)] * self.tasks, dim=1)
        else:
            shortcut = x
        return torch.relu(out + shortcut)


class FusedFull(nn.Module):
    """The full graph with all branches computed by one stack of stacked/grouped convolutions."""

    def __init__(self, model: MemoNet) -> None:
        super().__init__()
        folded = graphs.fold_batchnorm(model)
        self.preprocess = graphs.Preprocess(MEAN, STD)
        self.trunk, self.fc = folded.trunk, folded.fc
        stages = [list(b.stages) for b in folded.branches]  # resnet32, split 2: one stage of 5 blocks per branch
        self.blocks = nn.Sequential(*(_FusedBlock([s[0][k] for s in stages]) for k in range(len(stages[0][0]))))

    def forward(self, image: Tensor) -> Tensor:
        x = self.blocks(self.trunk(self.preprocess(image)))
        return self.fc(torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1))


def session(data: bytes, *, spinning: bool = True, profile: str | None = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def runner(s: onnxruntime.InferenceSession) -> Fn:
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def speed(fn: Fn, one: np.ndarray, many: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    b1 = timings(fn, one, args.iterations, args.warmup) * 1e3
    b64 = timings(fn, many, args.iterations_64, args.warmup)
    return {"b1_p50": float(np.percentile(b1, 50)), "b64_ips": len(many) * len(b64) / float(b64.sum()),
            "b64_ms": float(np.median(b64)) * 1e3}


CONV_OPS = ("Conv", "FusedConv", "QLinearConv")  # the float32 graph's (fused with their ReLU), the int8 graph's


def ort_conv_share(data: bytes, many: np.ndarray, calls: int, workdir: Path) -> dict[str, float]:
    """Share of convolution kernel time in all node kernel time and in the runs' wall time, and the
    convolution kernels' time per image."""
    s = session(data, profile=str(workdir / "ort-profile"))
    fn = runner(s)
    fn(many)  # warm-up, profiled too but dropped below
    for _ in range(calls):
        fn(many)
    events = json.loads(Path(s.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[0]["ts"] + runs[0]["dur"]  # after the warm-up run
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]
    conv = sum(e["dur"] for e in nodes if e["args"].get("op_name") in CONV_OPS)
    wall = sum(e["dur"] for e in runs[1:])
    return {"of_kernels": conv / sum(e["dur"] for e in nodes), "of_wall": conv / wall,
            "ms_per_image": conv / 1e3 / (len(runs) - 1) / len(many)}


def eager_conv_share(model: MemoNet, many: np.ndarray, calls: int) -> float:
    """Share of ops with "conv" in their name in the self CPU time of eager batch-64 calls."""
    preprocess = graphs.Preprocess(MEAN, STD)
    x = torch.from_numpy(many)
    with torch.inference_mode():
        model(preprocess(x))  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(preprocess(x))
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    return sum(e.self_cpu_time_total for e in averages if "conv" in e.key.lower()) / total


def split_path(model: MemoNet, spinning: bool) -> Fn:
    trunk = runner(session(graphs.trunk_graph(model, MEAN, STD, SHAPE).data, spinning=spinning))
    with torch.no_grad():
        trunk_shape = tuple(model.trunk(torch.zeros(1, 3, 32, 32)).shape[1:])
    branches = [runner(session(graphs.branch_graph(model, t, trunk_shape).data, spinning=spinning))
                for t in range(model.num_branches)]
    weight, bias = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()  # type: ignore[union-attr]

    def run(images: np.ndarray) -> np.ndarray:
        shared = trunk(images)
        return np.concatenate([b(shared) for b in branches], axis=1) @ weight.T + bias

    return run


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    start_load = load_average()
    model = build(args.tasks)
    rng = np.random.default_rng(1)
    one = rng.integers(0, 256, (1, *SHAPE), dtype=np.uint8)
    many = rng.integers(0, 256, (64, *SHAPE), dtype=np.uint8)
    full = graphs.full_graph(model, MEAN, STD, SHAPE).data
    int8 = quantize_full(full, rng.integers(0, 256, (256, *SHAPE), dtype=np.uint8))  # export --int8's graph
    fused = graphs.export_graph(FusedFull(model).eval(), torch.zeros((2, *SHAPE), dtype=torch.uint8), "fused",
                                graphs.IMAGE, graphs.LOGITS).data
    # Each variant gets its own sessions, freed before the next is timed: an idle session's threads
    # would otherwise compete with the one being timed.
    reference = runner(session(full))(many)
    fused_diff = float(np.abs(runner(session(fused))(many) - reference).max())
    assert fused_diff < 1e-3, f"the fused graph computes something else (max |diff| {fused_diff})"

    example = graphs.Preprocess(MEAN, STD)(torch.from_numpy(many))
    trunk_macs = macs_per_image(model.trunk, example)
    with torch.no_grad():
        shared = model.trunk(example[:1])
    branch_macs = macs_per_image(model.branches[0], shared)  # every branch is the same module code
    fc = model.fc
    assert fc is not None
    row: dict[str, object] = {
        "tasks": args.tasks, "trunk_macs": trunk_macs, "branch_macs": branch_macs,
        # what full.onnx computes: the auxiliary classifier, a training aid, is not in it
        "macs": trunk_macs + args.tasks * branch_macs + fc.in_features * fc.out_features, "fused_diff": fused_diff,
        "as_exported": speed(runner(session(full)), one, many, args),
        "int8": speed(runner(session(int8)), one, many, args),
        "fused": speed(runner(session(fused)), one, many, args),
    }
    for spinning in (True, False):
        fn = split_path(model, spinning)
        assert np.allclose(fn(many), reference, atol=1e-3), "split path and full graph disagree"
        row[f"split_spin_{'on' if spinning else 'off'}"] = speed(fn, one, many, args)
        del fn
    preprocess = graphs.Preprocess(MEAN, STD)

    def eager(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(preprocess(torch.from_numpy(images))).logits.numpy()

    assert np.allclose(eager(many), reference, atol=1e-3), "ORT and eager disagree"
    row["eager"] = speed(eager, one, many, args)
    row["ort_conv"] = ort_conv_share(full, many, args.profile_calls, workdir)
    row["ort_int8_conv"] = ort_conv_share(int8, many, args.profile_calls, workdir)
    row["eager_conv"] = eager_conv_share(model, many, args.profile_calls)
    row["load"] = f"1-min load average {start_load} before the run, {load_average()} after it (counting the run itself)"
    return row


def to_markdown(r: dict, args: argparse.Namespace) -> str:  # type: ignore[type-arg]
    t = r["tasks"]
    gmacs = lambda ips: r["macs"] * ips / 1e9  # noqa: E731
    lines = [
        f"## ONNX Runtime on the CPU at T = {t}: where the time goes, branch fusion, thread spinning",
        "",
        f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- where: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} intra-op threads), onnxruntime {onnxruntime.__version__} "
        f"(intra-op threads at its default); {r['load']}",
        f"- what: MEMO ResNet-32 with T = {t} branches, random weights, float32; graphs from `memo_edge.export.graphs` "
        f"in plain `onnxruntime.InferenceSession`s (CPU, ORT_ENABLE_ALL); random uint8 32x32x3 images, preprocessing "
        f"inside; {args.warmup} warm-up calls, then {args.iterations} timed calls at batch 1 and {args.iterations_64} "
        f"at batch 64; profiles over {args.profile_calls} batch-64 calls",
        f"- command: `.venv/bin/python benchmarks/ort_cpu_profile.py --tasks {t} --iterations {args.iterations} "
        f"--iterations-64 {args.iterations_64} --write {args.write}`",
        "",
        f"Work per image: trunk {r['trunk_macs'] / 1e6:.2f} M + {t} x {r['branch_macs'] / 1e6:.2f} M (one branch) "
        f"+ classifier = **{r['macs'] / 1e6:.1f} M multiply-accumulates** (Conv2d and Linear).",
        "",
        "| at batch 64 | images/s | GMAC/s | convolution share of the time | convolution kernels alone (ms/img) |",
        "|---|---|---|---|---|",
    ]
    for key, conv, label, ops in (("as_exported", "ort_conv", "full.onnx", "Conv/FusedConv"),
                                  ("int8", "ort_int8_conv", "full-int8.onnx (`export --int8`'s graph)", "QLinearConv")):
        c = r[conv]
        lines.append(f"| ONNX Runtime, {label} | {r[key]['b64_ips']:.0f} | {gmacs(r[key]['b64_ips']):.1f} | "
                     f"{100 * c['of_wall']:.1f}% of run time ({100 * c['of_kernels']:.1f}% of kernel time; {ops} nodes, "
                     f"ONNX Runtime's profiler) | {c['ms_per_image']:.3f} ({gmacs(1e3 / c['ms_per_image']):.0f} GMAC/s) |")
    lines += [
        f"| PyTorch eager | {r['eager']['b64_ips']:.0f} | {gmacs(r['eager']['b64_ips']):.1f} | "
        f"{100 * r['eager_conv']:.1f}% of self CPU time (ops named *conv*, torch.profiler) | - |",
        "",
        f"Branch fusion (largest logit difference to full.onnx: {r['fused_diff']:.1e}):",
        "",
        "| variant of full.onnx | batch 1 p50 (ms) | batch 64 (img/s) |",
        "|---|---|---|",
        f"| as exported (one conv stack per branch) | {r['as_exported']['b1_p50']:.2f} | {r['as_exported']['b64_ips']:.0f} |",
        f"| branches fused (first conv of all branches stacked, later convs grouped, groups = {t}) | "
        f"{r['fused']['b1_p50']:.2f} | {r['fused']['b64_ips']:.0f} |",
        "",
        f"Thread spinning, split path (trunk, then {t} branch sessions, then the head in numpy):",
        "",
        "| `session.intra_op.allow_spinning` | batch 1 p50 (ms) | batch 64 median (ms) | batch 64 (img/s) |",
        "|---|---|---|---|",
    ]
    for key, label in (("split_spin_on", "1 (ONNX Runtime's default)"), ("split_spin_off", "0 (what ort-cpu sets)")):
        s = r[key]
        lines.append(f"| {label} | {s['b1_p50']:.2f} | {s['b64_ms']:.0f} | {s['b64_ips']:.0f} |")
    full = r["as_exported"]
    lines.append(f"| (full.onnx, one session, for reference) | {full['b1_p50']:.2f} | {full['b64_ms']:.0f} | "
                 f"{full['b64_ips']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100, help="timed calls at batch 1")
    parser.add_argument("--iterations-64", type=int, default=20, help="timed calls at batch 64")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-calls", type=int, default=10, help="batch-64 calls profiled")
    parser.add_argument("--write", type=Path, help="Markdown file whose section to replace, e.g. docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memo-ort-profile-") as tmp:
        section = to_markdown(measure(args, Path(tmp)), args)
    print(section)
    if args.write:
        write_section(args.write, "ort_cpu_profile", section)


if __name__ == "__main__":
    main()
