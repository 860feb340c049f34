"""ONNX graphs of a MemoNet: ``trunk`` (uint8 image -> trunk features), one ``branch-K`` per task
(trunk features -> feature vector) and optionally ``full`` (uint8 image -> logits, the fast path).

Every graph is exported in eval mode with BatchNorm folded into the convolutions, a dynamic batch
dimension, fixed tensor names and one opset (``OPSET``). Preprocessing (uint8 NHWC -> normalised
float NCHW) is inside the trunk and full graphs, so a device needs nothing but the package.

All branches come from the same module code and every parameter keeps its own initializer named
after its module path, so branch graphs have identical initializer names.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from memo_edge.model import MemoNet
from memo_edge.utils.phases import timed

__all__ = ["OPSET", "IMAGE", "TRUNK_FEATURES", "FEATURES", "LOGITS", "Preprocess", "fold_batchnorm", "export_graph",
           "trunk_graph", "branch_graph", "full_graph", "initializer_names"]

# Opset 17: supported by TensorRT 8.6 and 10.x (JetPack 6) and every onnxruntime we install; our
# graphs need nothing newer (Conv, Relu, Add, Concat, Slice, GlobalAveragePool, Gemm, Cast).
OPSET = 17
IMAGE, TRUNK_FEATURES, FEATURES, LOGITS = "image", "trunk_features", "features", "logits"


class Preprocess(nn.Module):
    """uint8 [N,H,W,C] -> float [N,C,H,W], scaled to [0,1] and normalised with the training statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        # Cast first: TensorRT accepts a uint8 network input only when a Cast consumes it.
        x = image.float().permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with every Conv2d directly followed by a BatchNorm2d fused.

    "Directly followed" is registration order, which is forward order in our blocks (conv_a/bn_a,
    conv1/bn1, downsample = Sequential(conv, bn)); the export verification checks the result.
    """
    folded = copy.deepcopy(module).eval()
    for parent in [folded, *folded.modules()]:
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    return folded


class _Full(nn.Module):
    def __init__(self, preprocess: Preprocess, model: MemoNet) -> None:
        super().__init__()
        self.preprocess, self.trunk, self.branches, self.fc = preprocess, model.trunk, model.branches, model.fc

    def forward(self, image: Tensor) -> Tensor:
        shared = self.trunk(self.preprocess(image))
        return self.fc(torch.cat([branch(shared) for branch in self.branches], dim=1))


@dataclass(frozen=True)
class Graph:
    name: str
    data: bytes  # a serialized ONNX model, self-contained (no external data)
    input_name: str
    output_name: str


def export_graph(module: nn.Module, example: Tensor, name: str, input_name: str, output_name: str) -> Graph:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: torch 2.14's dynamo exporter leaves our branch and full graphs at
        # opset 18 and renames initializers (docs/export.md, benchmarks/onnx_dynamo_check.py). Its
        # deprecation notice is not for our users' eyes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    _materialize_shared_initializers(model)
    model.producer_name, model.doc_string = "memo-edge", f"memo-edge {name} graph"
    onnx.checker.check_model(model)
    return Graph(name, model.SerializeToString(), input_name, output_name)


def _materialize_shared_initializers(model: onnx.ModelProto) -> None:
    """Undo the exporter's de-duplication of equal initializers (it links them via Identity nodes).

    Equal values are a coincidence of training (e.g. zero biases), so without this two branches
    could end up with different initializer names.
    """
    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in inits:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            model.graph.initializer.append(copy_)
            inits[copy_.name] = copy_
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def trunk_graph(model: MemoNet, mean: Sequence[float], std: Sequence[float], image_shape: tuple[int, int, int]) -> Graph:
    module = nn.Sequential(Preprocess(mean, std), fold_batchnorm(model.trunk))
    example = torch.zeros((2, *image_shape), dtype=torch.uint8)
    return export_graph(module, example, "trunk", IMAGE, TRUNK_FEATURES)


@timed("branch_graph")
def branch_graph(model: MemoNet, index: int, trunk_shape: tuple[int, ...]) -> Graph:
    example = torch.zeros((2, *trunk_shape), dtype=torch.float32)
    return export_graph(fold_batchnorm(model.branches[index]), example, f"branch-{index}", TRUNK_FEATURES, FEATURES)


@timed("full_graph")
def full_graph(model: MemoNet, mean: Sequence[float], std: Sequence[float], image_shape: tuple[int, int, int]) -> Graph:
    folded = fold_batchnorm(model)
    module = _Full(Preprocess(mean, std), folded)  # type: ignore[arg-type]
    example = torch.zeros((2, *image_shape), dtype=torch.uint8)
    return export_graph(module, example, "full", IMAGE, LOGITS)


def initializer_names(data: bytes) -> list[str]:
    return sorted(i.name for i in onnx.load_from_string(data).graph.initializer)
