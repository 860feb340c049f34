"""Mixed precision (--precision) and the frozen-branch fast path (no_grad, stacked grouped branches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from memo_edge.errors import InputError
from memo_edge.model import MemoNet
from memo_edge.model.frozen import can_stack
from memo_edge.train.config import TrainConfig
from memo_edge.train.precision import autocast, cpu_bf16_native, resolve_precision
from memo_edge.train.run import train

from conftest import invoke

CPU = torch.device("cpu")


def test_precision_resolution_on_the_cpu() -> None:
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision(None, CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_bf16_native() else "fp32")
    with pytest.raises(InputError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(InputError, match="--train-precision must be one of"):
        resolve_precision("int4", CPU)


def test_fp16_on_the_cpu_is_refused_in_one_line(tmp_path: Path) -> None:
    result = invoke("train", "--out", tmp_path / "run", "--backbone", "resnet8", "--init-epochs", "1", "--epochs", "1",
                    "--device", "cpu", "--train-precision", "fp16")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "fp16 needs a CUDA GPU" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_autocast_fp32_is_no_autocast_and_bf16_computes_in_bf16() -> None:
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 3)
    with autocast("fp32", CPU):
        assert layer(x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with autocast("bf16", CPU):
        assert layer(x).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32


def _model(backbone: str, split: int | None, tasks: int, *, train_base: bool, dtype: torch.dtype) -> MemoNet:
    torch.manual_seed(0)
    model = MemoNet(backbone, split=split)
    for _ in range(tasks):
        model.expand(3)
    for module in model.modules():  # BatchNorm statistics far from the identity, so folding is exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.freeze_old_branches()
    if not train_base:
        model.freeze_trunk()
    return model.to(dtype).train()


def _logits_and_grads(model: MemoNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = F.cross_entropy(out.logits, y) + F.cross_entropy(out.aux_logits, torch.zeros_like(y))
    loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("split", "train_base", "dtype"), [
    (None, True, torch.float64), (None, False, torch.float64), (0, True, torch.float64), (1, True, torch.float64),
    (1, False, torch.float64), (None, True, torch.float32), (0, False, torch.float32),
])
def test_stacked_frozen_branches_match_the_plain_path(split: int | None, train_base: bool, dtype: torch.dtype) -> None:
    model = _model("resnet8", split, 4, train_base=train_base, dtype=dtype)
    x, y = torch.randn(4, 3, 16, 16, dtype=dtype), torch.randint(0, 12, (4,))
    plain_logits, plain_grads = _logits_and_grads(model, x, y)
    keys = set(model.state_dict())
    assert model.stack_frozen_branches()
    stacked_logits, stacked_grads = _logits_and_grads(model, x, y)

    assert set(model.state_dict()) == keys, "the stack is no part of the model's state"
    assert set(stacked_grads) == set(plain_grads)
    # Trained parameters: the newest branch, the classifiers, and the trunk when it trains.
    assert any(n.startswith("trunk.") for n in plain_grads) == (train_base and split != 0)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(stacked_logits, plain_logits, rtol=tol, atol=tol)
    for name, grad in plain_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert ((stacked_grads[name] - grad).abs().max() / scale) < (1e-9 if dtype == torch.float64 else 1e-2), name
    model.unstack_frozen_branches()
    torch.testing.assert_close(_logits_and_grads(model, x, y)[0], plain_logits, rtol=0, atol=0)


def test_frozen_parts_record_no_graph_and_get_no_gradient() -> None:
    model = _model("resnet8", None, 3, train_base=False, dtype=torch.float32)
    x = torch.randn(4, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.requires_grad  # the newest branch trains
    old = feats[:, : 2 * model.feature_dim]
    assert old.grad_fn is not None  # the cat of the frozen features, computed under no_grad ...
    trunk_out = []
    hook = model.branches[0].register_forward_pre_hook(lambda m, args: trunk_out.append(args[0]))
    model.forward_features(x).sum().backward()
    hook.remove()
    assert not trunk_out[0].requires_grad and trunk_out[0].grad_fn is None  # ... on a trunk run without a graph
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is None for b in model.branches[:-1] for p in b.parameters())
    assert all(p.grad is not None for p in model.branches[-1].parameters())

    trained = _model("resnet8", None, 3, train_base=True, dtype=torch.float32)
    trained.forward_features(x).sum().backward()
    assert all(p.grad is not None for p in trained.trunk.parameters())  # gradients flow through frozen branches
    assert all(p.grad is None for b in trained.branches[:-1] for p in b.parameters())


def test_resnet18_branches_keep_the_plain_loop() -> None:
    model = MemoNet("resnet18")
    model.expand(2)
    model.expand(2)
    model.freeze_old_branches()
    assert not can_stack(list(model.branches[:-1]))
    assert not model.stack_frozen_branches()


@pytest.mark.slow
def test_bf16_training_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    config = TrainConfig(out=str(tmp_path / "run"), dataset="digits", scenario="B0Inc2", classes=6, backbone="resnet8",
                         init_epochs=1, epochs=1, batch_size=64, memory="20", device="cpu", precision="bf16",
                         train_base=False, stack_frozen=True)
    results = train(config)
    assert results["complete"] and len(results["tasks"]) == 3  # tasks 1 and 2 train with stacked frozen branches
    assert all(np.isfinite(t["final_loss"]) for t in results["tasks"])
    assert 0 <= results["tasks"][-1]["metrics"]["top1"] <= 100
    header = json.loads((tmp_path / "run" / "results.json").read_text())
    assert header["precision"] == "bf16" and header["config"]["precision"] == "bf16" and header["config"]["stack_frozen"]
    weights = load_file(str(tmp_path / "run" / "task-02" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point()), "weights stay float32"


def test_channels_last_training_leaves_contiguous_float32_weights(tmp_path: Path) -> None:
    from memo_edge.data.sources import ArraySource
    from memo_edge.memory.exemplars import ExemplarSet
    from memo_edge.memory.policy import MemoryPolicy
    from memo_edge.train.plan import TaskPlan, Transforms
    from memo_edge.train.recipe import paper_recipe
    from memo_edge.train.task import learn_task

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 8)
    data = ArraySource(rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), labels)
    model = MemoNet("resnet8")
    recipe = paper_recipe(0, epochs=1, batch_size=8)
    plan = TaskPlan(Transforms.of("cifar", (0.5,) * 3, (0.25,) * 3, 32), (recipe, recipe), MemoryPolicy("per_class", 2),
                    train_base=True, device=CPU, precision="bf16", channels_last=True)
    result = learn_task(model, plan, data, ExemplarSet.empty((32, 32, 3)), num_new=2,
                        generator=torch.Generator().manual_seed(0))
    assert np.isfinite(result.final_loss) and result.class_means.dtype == np.float64
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in model.parameters())


def test_device_resident_batches_equal_the_host_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path (images uploaded once, batches gathered on the device), forced here on the CPU."""
    from memo_edge.memory.exemplars import ExemplarSet
    from memo_edge.memory.policy import MemoryPolicy
    from memo_edge.data.sources import ArraySource
    from memo_edge.train import task as task_module
    from memo_edge.train.plan import TaskPlan, Transforms
    from memo_edge.train.recipe import paper_recipe

    rng = np.random.default_rng(1)
    data = ArraySource(rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(2), 10))

    def learn() -> tuple[float, ...]:
        torch.manual_seed(0)
        recipe = paper_recipe(0, epochs=2, batch_size=8)
        plan = TaskPlan(Transforms.of("cifar", (0.5,) * 3, (0.25,) * 3, 32), (recipe, recipe),
                        MemoryPolicy("per_class", 2), train_base=True, device=CPU)
        result = task_module.learn_task(MemoNet("resnet8"), plan, data, ExemplarSet.empty((32, 32, 3)), num_new=2,
                                        generator=torch.Generator().manual_seed(0))
        return result.step_losses

    host = learn()
    uploads = []

    def resident(source, device, world):
        uploads.append(len(source))
        return task_module._Resident(torch.from_numpy(source.take(np.arange(len(source)))),
                                     torch.from_numpy(source.labels))

    monkeypatch.setattr(task_module, "_resident", resident)
    assert learn() == host and uploads == [20]


@pytest.mark.slow
def test_bf16_trains_in_two_processes(tmp_path: Path) -> None:
    """Autocast under DDP with the CPU's synchronised BatchNorm (its statistics in float32)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--classes", "4", "--scenario", "B0Inc2", "--memory", "40",
            "--backbone", "resnet8", "--init-epochs", "1", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--train-precision", "bf16", "--stack-frozen", "--nproc", "2", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "memo_edge", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["precision"] == "bf16" and results["distributed"]["world_size"] == 2
    assert all(np.isfinite(t["final_loss"]) for t in results["tasks"])
