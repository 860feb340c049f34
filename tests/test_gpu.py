"""Training's CUDA paths on a real GPU (skipped without one; benchmarks/gpu_session.sh runs them on a lent
GPU machine): a CUDA step equals the CPU's, fp16 with its gradient scaler, learn_task in every precision
and frozen-branch path, resident batches equal the host path, a step never waits for the GPU, one layout
and float32 arithmetic per run, and the runtime's cuda-python probe and buffers.

Tolerances: a CUDA float32 step against the CPU's differs by the order of accumulation only, so the
loss within 1e-5 relative and each parameter's update within 1e-3 relative (||du_gpu - du_cpu|| /
||du_cpu||), the bar float32 arithmetic stays far under and TF32 (10-bit mantissa) would not."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from memo_edge.data.sources import ArraySource
from memo_edge.errors import InputError
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet
from memo_edge.train import task as task_module
from memo_edge.train.augment import build_augment
from memo_edge.train.device import select_device
from memo_edge.train.plan import TaskPlan, Transforms
from memo_edge.train.precision import exact_float32, make_scaler
from memo_edge.train.recipe import build_optimizer, paper_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def _two_task_model(backbone: str = "resnet8") -> MemoNet:
    torch.manual_seed(0)
    model = MemoNet(backbone)
    model.expand(5)
    model.expand(3)
    model.freeze_old_branches()
    return model


def _batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    x = build_augment("cifar", MEAN, STD, 32)(images, torch.Generator().manual_seed(seed))
    return x.contiguous(), torch.randint(0, 8, (n,), generator=torch.Generator().manual_seed(seed + 1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_a_cuda_step_equals_the_cpu_step() -> None:
    cpu_model = _two_task_model()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    recipe = paper_recipe(1, epochs=1)
    x, y = _batch()
    before = {n: p.detach().clone() for n, p in cpu_model.named_parameters() if p.requires_grad}
    cpu_opt = build_optimizer([p for p in cpu_model.parameters() if p.requires_grad], recipe)
    gpu_opt = build_optimizer([p for p in gpu_model.parameters() if p.requires_grad], recipe)
    assert gpu_opt.defaults.get("fused") and not cpu_opt.defaults.get("fused")
    cpu_loss = task_module.train_step(cpu_model, cpu_opt, x, y, known=5)
    with exact_float32(CUDA):
        gpu_loss = task_module.train_step(gpu_model, gpu_opt, x.to(CUDA), y.to(CUDA), known=5)
    assert abs(float(gpu_loss) - float(cpu_loss)) <= 1e-5 * abs(float(cpu_loss))
    gpu_params = dict(gpu_model.named_parameters())
    for name, old in before.items():
        cpu_update = dict(cpu_model.named_parameters())[name].detach() - old
        gpu_update = gpu_params[name].detach().cpu() - old
        assert _rel(gpu_update, cpu_update) < 1e-3, name
    for (name, a), b in zip(cpu_model.named_buffers(), gpu_model.buffers()):
        if a.is_floating_point():
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=name)


def test_fp16_steps_with_the_scaler_and_an_overflow_skips_the_step() -> None:
    model = _two_task_model().to(CUDA)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, paper_recipe(1, epochs=1))
    scaler = make_scaler("fp16", CUDA)
    x, y = _batch()
    x, y = x.to(CUDA), y.to(CUDA)
    for _ in range(3):
        loss = task_module.train_step(model, optimizer, x, y, known=5, precision="fp16", scaler=scaler)
        assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in params)
    kept = [p.detach().clone() for p in params]
    scale = scaler.get_scale()
    task_module.train_step(model, optimizer, torch.full_like(x, float("inf")), y, known=5, precision="fp16",
                           scaler=scaler)
    assert all(torch.equal(a, p.detach()) for a, p in zip(kept, params)), "an overflowing step changes nothing"
    assert scaler.get_scale() < scale  # and lowers the scale


def _data(n: int = 48, classes: tuple[int, ...] = (5, 6, 7)) -> ArraySource:
    rng = np.random.default_rng(3)
    return ArraySource(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.repeat(np.asarray(classes), n // len(classes)))


def _old_exemplars() -> ExemplarSet:
    rng = np.random.default_rng(4)
    return ExemplarSet(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(5), 2),
                       np.tile(np.arange(2), 5))


def _learn(model: MemoNet, **kw) -> task_module.TaskResult:
    torch.manual_seed(0)
    data, recipe = kw.pop("data", _data()), paper_recipe(1, epochs=2, batch_size=16)
    plan = TaskPlan(Transforms.of("cifar", MEAN, STD, 32), (recipe, recipe), MemoryPolicy("per_class", 2),
                    train_base=kw.pop("train_base", False), device=CUDA, **kw)
    return task_module.learn_task(model, plan, data, _old_exemplars(), num_new=3,
                                  generator=torch.Generator().manual_seed(0))


def _first_task_model() -> MemoNet:
    torch.manual_seed(0)
    model = MemoNet("resnet8")
    model.expand(5)
    return model


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("stacked", [False, True])
def test_learn_task_in_every_precision_and_path(precision: str, stacked: bool) -> None:
    model = _first_task_model()  # this task adds the second branch: the first one frozen (stacked: alone)
    result = _learn(model, precision=precision, stack_frozen=stacked)
    assert all(np.isfinite(result.step_losses)) and np.isfinite(result.final_loss)
    assert model.num_branches == 2 and model.num_classes == 8
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert np.bincount(result.exemplars.labels, minlength=8).tolist() == [2] * 8
    assert result.class_means.shape[0] == 8 and np.all(np.isfinite(result.class_means))


def test_one_layout_and_float32_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16: weights and every batch channels_last; fp32: both contiguous, TF32 off while training."""
    seen: list[tuple[str, bool, bool, bool]] = []
    original = MemoNet.forward

    def spy(self: MemoNet, x: torch.Tensor):
        if self.training:
            conv = next(m for m in self.branches[-1].modules() if isinstance(m, torch.nn.Conv2d))
            seen.append((self._precision_tag, x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                         conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous(),
                         torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32))
        return original(self, x)

    monkeypatch.setattr(MemoNet, "forward", spy)
    for precision in ("fp32", "bf16"):
        model = _first_task_model()
        model._precision_tag = precision  # type: ignore[attr-defined]
        _learn(model, precision=precision)
    fp32 = {s[1:] for s in seen if s[0] == "fp32"}
    bf16 = {s[1:] for s in seen if s[0] == "bf16"}
    assert fp32 == {(False, False, False)} and bf16 == {(True, True, False)}


def test_resident_batches_equal_the_host_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    resident = _learn(_first_task_model()).step_losses
    monkeypatch.setattr(task_module, "RESIDENT_BYTES", 0)  # the host path: a pinned copy per batch
    host = _learn(_first_task_model()).step_losses
    np.testing.assert_allclose(host, resident, rtol=1e-5)


@pytest.mark.parametrize("precision, resident", [("fp32", True), ("fp16", True), ("bf16", False)])
def test_a_training_step_never_waits_for_the_gpu(monkeypatch: pytest.MonkeyPatch, precision: str, resident: bool) -> None:
    """CUDA's sync debug mode raises on any read-back or blocking copy inside a step (after two warm-up
    steps: the fused optimizer's and the scaler's first calls set themselves up)."""
    if not resident:
        monkeypatch.setattr(task_module, "RESIDENT_BYTES", 0)
    original, calls = task_module._step, []

    def strict_step(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            return original(*args, **kwargs)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(task_module, "_step", strict_step)
    result = _learn(_first_task_model(), precision=precision)
    assert len(calls) == len(result.step_losses) > 2


def test_a_gpu_that_is_not_there_is_refused_at_once() -> None:
    count = torch.cuda.device_count()
    assert select_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    with pytest.raises(InputError, match=f"device 'cuda:{count}' asked for, but torch sees {count} CUDA GPU"):
        select_device(f"cuda:{count}")


def test_stacked_branches_equal_the_plain_ones_on_the_gpu() -> None:
    model = _two_task_model()
    model.expand(2)
    model.freeze_old_branches()
    model.to(CUDA).eval()
    x = _batch(8)[0].to(CUDA)
    with torch.no_grad(), exact_float32(CUDA):
        plain = model.forward_features(x)
        assert model.stack_frozen_branches()
        stacked = model.forward_features(x)
        model.unstack_frozen_branches()
    assert _rel(stacked, plain) < 1e-4  # folding BatchNorm reorders the arithmetic (the CPU test's bar)


def test_the_runtimes_cuda_python_probe_and_buffers() -> None:
    from memo_edge.errors import MemoEdgeError
    from memo_edge.runtime import cuda

    try:
        rt = cuda.load_cudart()
    except MemoEdgeError as exc:
        pytest.skip(f"cuda-python is not installed: {exc}")
    info = cuda.cuda_gpu_probe(rt)
    major, minor = torch.cuda.get_device_capability(0)
    assert info is not None and info.compute_capability == f"{major}.{minor}"
    assert info.name == torch.cuda.get_device_name(0)
    gpu = cuda.Cuda(rt)
    try:
        host = np.random.default_rng(0).standard_normal((64, 37)).astype(np.float32)
        back = np.zeros_like(host)
        ptr = gpu.malloc(host.nbytes)
        gpu.to_device(ptr, host)
        gpu.to_host(back, ptr)
        gpu.synchronize()
        assert np.array_equal(back, host)
        assert isinstance(gpu.stream_handle, int)
    finally:
        gpu.close()
    assert gpu.stream is None and not gpu._buffers
