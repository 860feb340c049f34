"""Would torch's dynamo ONNX exporter do for the package's graphs? Prints what it produces, next to ours.

``memo_edge.export.graphs`` uses the TorchScript exporter (``dynamo=False``), deprecated in torch 2.14.
This exports the trunk, one branch and the full graph of a MemoNet ("resnet32", 2 tasks, BatchNorm
statistics made non-trivial) both ways, with the settings the package needs (opset ``graphs.OPSET``,
dynamic batch, our tensor names, uint8 input), and prints per graph: the opset it came out at, the
input dtype, the node types that differ, whether the initializer names are ours, and the largest
difference to PyTorch in ONNX Runtime. No timings. Needs ``pip install onnxscript`` (not a
dependency of memo-edge).

    .venv/bin/python benchmarks/onnx_dynamo_check.py [--no-optimize]
"""

from __future__ import annotations

import argparse
import collections
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

from memo_edge.data.datasets import CIFAR100_MEAN, CIFAR100_STD
from memo_edge.export import graphs
from memo_edge.model import MemoNet

MEAN, STD = CIFAR100_MEAN, CIFAR100_STD


def model_with_statistics() -> MemoNet:
    torch.manual_seed(0)
    model = MemoNet("resnet32")
    model.expand(10)
    model.expand(10)
    model.train()
    with torch.no_grad():  # running BatchNorm statistics away from (0, 1), so folding matters
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return model.eval()


def dynamo_export(module: nn.Module, example: Tensor, names: tuple[str, str], optimize: bool) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(module.eval(), (example,), None, dynamo=True, opset_version=graphs.OPSET,
                                input_names=[names[0]], output_names=[names[1]], dynamic_shapes=({0: batch},),
                                optimize=optimize, external_data=False, verbose=False)
    return program.model_proto


def cases(model: MemoNet) -> list[tuple[str, nn.Module, Tensor, tuple[str, str]]]:
    with torch.no_grad():
        trunk_shape = tuple(model.trunk(torch.zeros(1, 3, 32, 32)).shape[1:])
    image = torch.zeros((2, 32, 32, 3), dtype=torch.uint8)
    return [
        ("trunk", nn.Sequential(graphs.Preprocess(MEAN, STD), graphs.fold_batchnorm(model.trunk)), image,
         (graphs.IMAGE, graphs.TRUNK_FEATURES)),
        ("branch-1", graphs.fold_batchnorm(model.branches[1]), torch.zeros((2, *trunk_shape)),
         (graphs.TRUNK_FEATURES, graphs.FEATURES)),
        ("full", graphs._Full(graphs.Preprocess(MEAN, STD), graphs.fold_batchnorm(model)), image,  # noqa: SLF001
         (graphs.IMAGE, graphs.LOGITS)),
    ]


def max_diff(data: bytes, module: nn.Module, x: np.ndarray) -> float:
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        return float(np.abs(out - module(torch.from_numpy(x)).numpy()).max())


def describe(label: str, model: onnx.ModelProto, diff: float, ours: onnx.ModelProto, say: Callable[[str], None]) -> None:
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx")
    dtype = onnx.TensorProto.DataType.Name(model.graph.input[0].type.tensor_type.elem_type)
    say(f"  {label:<11} opset {opset}, input {dtype}, {len(model.graph.node)} nodes, max |diff| to PyTorch {diff:.1e}")
    if model is not ours:
        mine = collections.Counter(n.op_type for n in model.graph.node)
        theirs = collections.Counter(n.op_type for n in ours.graph.node)
        changed = {op: (theirs[op], mine[op]) for op in sorted(set(mine) | set(theirs)) if mine[op] != theirs[op]}
        say(f"  {'':<11} node types (torchscript -> dynamo): {changed}")
        names, our_names = {i.name for i in model.graph.initializer}, {i.name for i in ours.graph.initializer}
        say(f"  {'':<11} initializers only in dynamo's: {sorted(names - our_names)[:8]}; "
            f"only in ours: {sorted(our_names - names)[:8]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-optimize", action="store_true", help="dynamo exporter without its graph optimizer")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"requested opset {graphs.OPSET}, dynamo optimizer {'off' if args.no_optimize else 'on'}")
    model = model_with_statistics()
    rng = np.random.default_rng(0)
    for name, module, example, names in cases(model):
        x = (rng.integers(0, 256, (5, *example.shape[1:]), dtype=np.uint8) if example.dtype == torch.uint8
             else rng.normal(size=(5, *example.shape[1:])).astype(np.float32))
        ours = graphs.export_graph(module, example, name, *names)
        ours_model = onnx.load_from_string(ours.data)
        print(name)
        describe("torchscript", ours_model, max_diff(ours.data, module, x), ours_model, print)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                theirs = dynamo_export(module, example, names, optimize=not args.no_optimize)
            except Exception as exc:  # noqa: BLE001  (a failure is the finding)
                print(f"  dynamo      failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                continue
        describe("dynamo", theirs, max_diff(theirs.SerializeToString(), module, x), ours_model, print)


if __name__ == "__main__":
    main()
