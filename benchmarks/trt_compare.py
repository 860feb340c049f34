"""Compare TensorRT engines of a package with ONNX Runtime (CPU) on the package's own images.

Used by benchmarks/gpu_check.sh on a machine with an NVIDIA GPU and tensorrt. Runs every cached
engine of the current GPU/TensorRT (built by `memo-edge export --trt`) with the TensorRT 10 Python
API, using torch CUDA tensors as device buffers, and reports the largest absolute difference of each
graph's output from ONNX Runtime's and the end-to-end top-1 agreement.

    python benchmarks/trt_compare.py PKG [--fp16] [--max-batch 32] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch

from memo_edge.export.exporter import torch_gpu_probe
from memo_edge.runtime.engine_cache import (
    EngineOptions,
    ShapeProfile,
    engine_graphs,
    find_engine,
    load_tensorrt,
    probe_environment,
)
from memo_edge.runtime.backends import OrtCpuBackend
from memo_edge.runtime.package import open_package

from _report import write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "UINT8": torch.uint8, "INT32": torch.int32}


class TrtGraph:
    """One deserialized engine with a single input and a single output (our graphs' shape)."""

    def __init__(self, trt, path: Path) -> None:  # noqa: ANN001
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        stream = torch.cuda.current_stream()
        inp = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        self.context.set_input_shape(self.input, tuple(inp.shape))
        dtype = _TORCH_DTYPES[self.engine.get_tensor_dtype(self.output).name]
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=dtype, device="cuda")
        self.context.set_tensor_address(self.input, inp.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.float().cpu().numpy()


def compare(package: Path, options: EngineOptions, batch: int) -> dict:
    trt, env = load_tensorrt(), probe_environment(gpu_probe=torch_gpu_probe)
    version = open_package(package)
    ort = OrtCpuBackend(version)
    images = version.exemplars()[0].images[:batch]
    engines = {g.name: find_engine(package, g, env, options) for g in engine_graphs(version)}
    missing = [name for name, path in engines.items() if path is None]
    if missing:
        raise SystemExit(f"no cached engine for {missing}: run memo-edge export --trt first")
    run = {name: TrtGraph(trt, path) for name, path in engines.items()}
    shared_ort, shared_trt = ort.trunk(images), run["trunk"](images)
    rows = {"trunk": float(np.abs(shared_trt - shared_ort).max())}
    feats = []
    for t in range(len(version.manifest.branches())):
        out = run[f"branch-{t}"](shared_ort)
        rows[f"branch-{t}"] = float(np.abs(out - ort.branch(t, shared_ort)).max())
        feats.append(run[f"branch-{t}"](shared_trt))
    reference = ort.head(ort.features(images))
    split = ort.head(np.concatenate(feats, axis=1))
    rows["end_to_end"] = float(np.abs(split - reference).max())
    agreement = {"end_to_end": float(np.mean(split.argmax(1) == reference.argmax(1)))}
    if "full" in run:
        full = run["full"](images)
        rows["full"] = float(np.abs(full - reference).max())
        agreement["full"] = float(np.mean(full.argmax(1) == reference.argmax(1)))
    return {"env": env.to_json(), "precision": options.precision, "images": len(images),
            "max_abs_diff": rows, "top1_agreement": agreement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--min-batch", type=int, default=1)
    parser.add_argument("--opt-batch", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    options = EngineOptions("fp16" if args.fp16 else "fp32", ShapeProfile(args.min_batch, args.opt_batch, args.max_batch))
    report = compare(args.package, options, args.max_batch)
    print(json.dumps(report, indent=2))
    if args.write:
        lines = [f"## TensorRT vs ONNX Runtime ({options.precision})", "",
                 f"- when: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                 f"- where: {report['env']['gpu_name']} (sm {report['env']['compute_capability']}), "
                 f"TensorRT {report['env']['tensorrt_version']}",
                 f"- command: `bash benchmarks/gpu_check.sh` ({report['images']} package exemplar images)", "",
                 "| graph | max abs difference | top-1 agreement |", "|---|---|---|"]
        for name, diff in report["max_abs_diff"].items():
            agree = report["top1_agreement"].get(name)
            lines.append(f"| {name} | {diff:.2e} | {'' if agree is None else f'{100 * agree:.1f}%'} |")
        write_section(args.write, f"trt_compare_{options.precision}", "\n".join(lines))


if __name__ == "__main__":
    main()
