"""The CUDA paths of training, checked on the CPU where they can be (issue 20, section 2): one layout per
run, the stacked branches in the model's layout, float32 meaning float32, no per-step read-backs, pinned
asynchronous copies, a GPU index that does not exist refused at once. tests/test_gpu.py runs the same
paths on a real GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memo_edge.data.sources import ArraySource
from memo_edge.errors import InputError
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet
from memo_edge.model.frozen import StackedBranches
from memo_edge.train import task as task_module
from memo_edge.train.augment import CifarAugment, CifarParams, TestTransform, build_augment, normalize, pack_draws, \
    unpack_draws
from memo_edge.train.device import select_device
from memo_edge.train.plan import TaskPlan, Transforms
from memo_edge.train.precision import batch_memory_format, exact_float32, numerics
from memo_edge.train.recipe import build_optimizer, paper_recipe
from memo_edge.train.transfer import to_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU; nothing runs on it here
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def test_a_batch_takes_the_models_layout_on_a_gpu_and_keeps_its_own_on_the_cpu() -> None:
    assert batch_memory_format(CUDA, channels_last=False) is torch.contiguous_format
    assert batch_memory_format(CUDA, channels_last=True) is torch.channels_last
    assert batch_memory_format(CPU, channels_last=True) is torch.channels_last
    assert batch_memory_format(CPU, channels_last=False) is None  # NHWC strides as augmented: measured fastest


def test_fp32_on_a_gpu_turns_tf32_off_and_restores_the_flags() -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with exact_float32(CUDA):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert torch.get_float32_matmul_precision() == "highest"
            record = numerics("fp32", CUDA)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with exact_float32(CPU):  # nothing to change on a CPU
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert record["tf32"] is False and record["autocast"] is None and record["cudnn"] is not None
    assert set(record["cudnn"]) == {"version", "benchmark", "deterministic"}
    assert numerics("bf16", CUDA)["autocast"] == "bfloat16" and numerics("bf16", CUDA)["channels_last"]
    assert numerics("fp16", CUDA)["autocast"] == "float16"
    assert numerics("fp32", CPU)["cudnn"] is None and not numerics("bf16", CPU)["channels_last"]


def test_a_run_records_its_numerics(tmp_path) -> None:
    from memo_edge.train.config import TrainConfig
    from memo_edge.train.run import train

    results = train(TrainConfig(out=str(tmp_path / "run"), dataset="digits", classes=4, scenario="B0Inc4",
                                backbone="resnet8", init_epochs=1, epochs=1, batch_size=32, memory="40", device="cpu"))
    assert results["numerics"] == {**numerics("fp32", CPU), "precision": "fp32"}
    assert results["numerics"]["tf32"] is False


def test_draws_travel_as_one_exact_block() -> None:
    aug = CifarAugment(MEAN, STD)
    params = aug.sample_params(300, 32, 32, torch.Generator().manual_seed(3))
    block = pack_draws(params)
    assert block.shape == (4, 300) and block.dtype == torch.float32
    top, left, flip, factor = unpack_draws(block)
    assert torch.equal(top, params.top) and torch.equal(left, params.left)
    assert torch.equal(flip, params.flip) and torch.equal(factor, params.factor)
    big = CifarParams(top=torch.tensor([0, 2**24 - 1]), left=torch.tensor([5, 7]), flip=torch.tensor([True, False]),
                      factor=torch.tensor([0.5, 1.25]))
    assert torch.equal(unpack_draws(pack_draws(big))[0], big.top)


def test_normalisation_constants_are_checked_once_and_kept_per_device() -> None:
    transform = TestTransform(MEAN, STD)
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    first, second = transform(images), transform(images)
    assert torch.equal(first, second)
    expected = normalize(images.permute(0, 3, 1, 2).float() / 255, MEAN, STD)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
    assert list(transform._normalize._on) == [(CPU, torch.float32)]  # uploaded once, reused
    with pytest.raises(ValueError, match="std values must all be > 0"):
        TestTransform(MEAN, (0.2, 0.0, 0.2))  # refused when made, not on every batch
    with pytest.raises(ValueError, match="3 values but the batch has 1 channels"):
        transform(images[..., :1])


def test_a_host_tensor_stays_where_it_is_for_the_cpu() -> None:
    t = torch.arange(6)
    assert to_device(t, CPU) is t


def test_a_step_returns_its_loss_without_reading_it_back() -> None:
    model = MemoNet("resnet8")
    model.expand(3)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], paper_recipe(0, epochs=1))
    x = build_augment("cifar", MEAN, STD, 32)(torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8),
                                             torch.Generator().manual_seed(0))
    loss = task_module.train_step(model, optimizer, x, torch.tensor([0, 1, 2, 0, 1, 2]), known=0)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert np.isfinite(float(loss))


def test_sgd_is_fused_only_for_gpu_parameters() -> None:
    cpu_params = [torch.nn.Parameter(torch.zeros(3))]
    assert not build_optimizer(cpu_params, paper_recipe(0)).defaults.get("fused")


def _learn(monkeypatch: pytest.MonkeyPatch | None = None, **kw) -> task_module.TaskResult:
    rng = np.random.default_rng(2)
    data = ArraySource(rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(2), 12) + 2)
    model = kw.pop("model")
    torch.manual_seed(0)
    exemplars, recipe = kw.pop("exemplars"), paper_recipe(1, epochs=2, batch_size=8)
    plan = TaskPlan(Transforms.of("cifar", MEAN, STD, 32), (recipe, recipe), MemoryPolicy("per_class", 2),
                    train_base=False, device=CPU, **kw)
    return task_module.learn_task(model, plan, data, exemplars, num_new=2, generator=torch.Generator().manual_seed(0))


def _second_task_model() -> tuple[MemoNet, ExemplarSet]:
    torch.manual_seed(1)
    model = MemoNet("resnet8")
    model.expand(2)
    rng = np.random.default_rng(4)
    old = ExemplarSet(rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), np.array([0, 0, 1, 1]),
                      np.array([0, 1, 0, 1]))
    return model, old


def _stacked_convs(stack: StackedBranches) -> list:
    """Every stacked convolution (``_Conv``) of ``stack``, in order."""
    return [c for kind, op in stack._ops if kind != "relu" for c in ([op] if kind == "conv" else op[:2])]


def _nhwc(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_the_stack_is_built_in_the_models_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """--stack-frozen with channels_last: the model is converted first, so the stack's folded weights are NHWC
    too (before the fix they were built NCHW from NCHW weights, then the model alone was converted)."""
    layouts = []
    original = MemoNet.stack_frozen_branches

    def spy(self: MemoNet) -> bool:
        stacked = original(self)
        branch_conv = next(m for m in self.branches[0].modules() if isinstance(m, torch.nn.Conv2d))
        layouts.append((_nhwc(branch_conv.weight), all(_nhwc(c.weight) for c in _stacked_convs(self._stack))))
        return stacked

    monkeypatch.setattr(MemoNet, "stack_frozen_branches", spy)
    model, old = _second_task_model()
    result = _learn(model=model, exemplars=old, precision="bf16", channels_last=True, stack_frozen=True)
    assert layouts == [(True, True)] and np.isfinite(result.final_loss)
    assert all(p.is_contiguous() for p in model.parameters())  # contiguous again after training


def test_stacked_weights_follow_the_branch_layout() -> None:
    model, _ = _second_task_model()
    model.expand(2)
    model.freeze_old_branches()
    old = list(model.branches[:-1])
    nchw = StackedBranches(old)
    model.to(memory_format=torch.channels_last)
    nhwc = StackedBranches(old)
    pairs = list(zip(_stacked_convs(nchw), _stacked_convs(nhwc), strict=True))
    assert pairs
    for a, b in pairs:
        assert a.weight.is_contiguous() and _nhwc(b.weight)
        assert torch.equal(a.weight, b.weight)  # the same values, another layout
    with torch.no_grad():
        x = model.trunk.eval()(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(nhwc(x.contiguous(memory_format=torch.channels_last)), nchw(x), rtol=1e-5, atol=1e-5)


def test_an_epoch_reads_its_step_losses_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer keeps each step's loss on the device and reads the epoch's losses in one go: the step
    losses it reports equal each step's own loss."""
    seen: list[float] = []
    original = task_module.train_step

    def recording(*args, **kwargs):
        loss = original(*args, **kwargs)
        seen.append(float(loss))
        return loss

    monkeypatch.setattr(task_module, "train_step", recording)
    model, old = _second_task_model()
    result = _learn(model=model, exemplars=old)
    assert list(result.step_losses) == seen and len(seen) == 2 * 4  # 28 images in batches of 8: 4 a epoch
    assert result.final_loss == pytest.approx(
        sum(l * n for l, n in zip(seen[4:], [8, 8, 8, 4])) / 28, rel=1e-6)


def test_a_gpu_index_that_does_not_exist_is_refused_naming_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H100 80GB HBM3")
    assert select_device("cuda:0") == torch.device("cuda", 0)
    assert select_device("cuda") == torch.device("cuda")
    with pytest.raises(InputError, match=r"device 'cuda:3' asked for, but torch sees 1 CUDA GPU: "
                                         r"cuda:0 \(NVIDIA H100 80GB HBM3\)"):
        select_device("cuda:3")
