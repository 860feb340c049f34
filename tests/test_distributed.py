"""Distributed training on CPU processes (Gloo over loopback): the same steps as one process, the two
launchers (torchrun, --nproc), a killed and a stalled process, resume with another process count.

Processes come from torch's elastic launcher (rendezvous on 127.0.0.1:0 or a free port per test);
the stalled-process test starts two plain processes with torch's env:// variables, as the ranks of
another node would see a peer that stops answering. Tiny backbone, a few steps each.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

import memo_edge
from conftest import TRAIN, invoke, ok
from memo_edge.data.sources import ArraySource
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet
from memo_edge.train.checkpoint import verified_states
from memo_edge.train.distributed import current_world, distributed_session, shard_bounds, wrap_for_training
from memo_edge.train.recipe import paper_recipe
from memo_edge.train.syncbn import CpuSyncBatchNorm, to_plain_batchnorm, to_sync_batchnorm
from memo_edge.train.plan import TaskPlan, Transforms
from memo_edge.train.task import learn_task, train_step

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CPU = torch.device("cpu")
# Digits, 2 tasks of 2 classes, 2 epochs each: a distributed run in seconds.
RUN = ["--dataset", "digits", "--classes", "4", "--scenario", "B0Inc2", "--memory", "40", *TRAIN,
       "--init-epochs", "2", "--epochs", "2"]
RUN_FILES = {"config.json", "results.json", "metrics.csv", "accuracy.png", "accuracy_matrix.png"}


# The equivalence tests on the CPU (Gloo, 2 processes) and, where there are 2 or more GPUs, on all of
# them (NCCL, torch's SyncBatchNorm; benchmarks/gpu_ddp.sh runs these).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL needs a GPU per process: 2 or more GPUs")])]


def _nproc(device: str) -> int:
    return 2 if device == "cpu" else torch.cuda.device_count()


def _launch(fn, *args, nproc: int = 2) -> dict[int, object]:
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0)
    return elastic_launch(config, fn)(*args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tf32(enabled: bool) -> tuple[bool, bool]:
    """Set TF32 for convolutions and matmuls (on by default for cuDNN convolutions); returns the old flags."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    return old


def _worker_math() -> None:
    """As the reference runs: one CPU thread, float32 without TF32 on GPUs (an equivalence check)."""
    torch.set_num_threads(1)
    _tf32(False)


class _ReferenceMath:
    """``_worker_math`` in this process for the block."""

    def __enter__(self) -> None:
        self.threads, self.tf32 = torch.get_num_threads(), _tf32(False)
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.tf32


# -- the gradient of one step is the global batch's -------------------------------------------------

def _step_model(dtype: torch.dtype = torch.float32) -> MemoNet:
    """A task-1 model: frozen old branch, trained trunk and new branch, auxiliary head."""
    torch.manual_seed(0)
    model = MemoNet("resnet8")
    model.expand(2)
    model.expand(2)
    model.freeze_old_branches()
    return model.to(dtype)


def _step_batch(n: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)


def _one_step(dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Gradients and BN statistics after one train_step on this process's share of the global batch."""
    world = current_world()
    dev = world.device_for(torch.device(device))
    model, (x, y) = _step_model(dtype).to(dev), _step_batch()
    net = wrap_for_training(model, dev)
    lo, hi = shard_bounds(len(x), world.rank, world.size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # keeps the grads
    net.train()
    train_step(net, optimizer, x[lo:hi].to(dev, dtype), y[lo:hi].to(dev), model.known_classes,
               loss_scale=(hi - lo) * world.size / len(x))
    out = {f"grad {n}": p.grad.double().cpu() for n, p in model.named_parameters() if p.grad is not None}
    out.update({f"buffer {n}": b.double().cpu() for n, b in model.named_buffers() if "running" in n})
    return out


def _one_step_worker(device: str) -> dict[str, torch.Tensor]:
    _worker_math()
    with distributed_session(device, 30):
        return _one_step(device=device)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_processes_take_the_gradient_of_the_global_batch(device: str) -> None:
    # 15 images: unequal shares (7 and 8 on 2 processes), so the loss weighting of shares is checked too.
    reference = _one_step(torch.float64)  # one process, float64 on the CPU: the global batch's exact gradient
    many = _launch(_one_step_worker, device, nproc=_nproc(device))
    assert set(many[0]) == set(reference) and len(reference) > 20
    for name, expected in reference.items():
        torch.testing.assert_close(many[0][name], expected, rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(many[0][name], many[1][name]), f"{name} differs between the ranks"


# -- a whole first task, step for step ---------------------------------------------------------------

class _SyncArithmeticNet(MemoNet):
    """MemoNet training its BatchNorm with CpuSyncBatchNorm's arithmetic, in one process."""

    def expand(self, num_new: int) -> None:
        super().expand(num_new)
        to_sync_batchnorm(self, CPU)


def _source(per_class: int = 80) -> ArraySource:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2, dtype=np.int64), per_class)
    images = rng.integers(0, 60, size=(len(labels), 32, 32, 3)) + (labels[:, None, None, None] * 40) % 200
    return ArraySource(images.astype(np.uint8), labels)


def _first_task(net_class: type[MemoNet] = MemoNet, device: str = "cpu") -> dict[str, np.ndarray]:
    torch.manual_seed(1993)
    recipe = paper_recipe(0, epochs=3, schedule="cosine", batch_size=32)
    plan = TaskPlan(Transforms.of("cifar", MEAN, STD, 32), (recipe, recipe), MemoryPolicy("per_class", 20),
                    train_base=True, device=current_world().device_for(torch.device(device)))
    result = learn_task(net_class("resnet8"), plan, _source(), ExemplarSet.empty((32, 32, 3)), num_new=2,
                        generator=torch.Generator().manual_seed(1993))
    e = result.exemplars
    return {"losses": np.array(result.step_losses), "images": e.images, "labels": e.labels, "ranks": e.ranks,
            "means": result.class_means}


def _first_task_worker(device: str) -> dict[str, np.ndarray]:
    _worker_math()
    with distributed_session(device, 30):
        return _first_task(device=device)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_processes_train_the_first_task_as_one_process(device: str) -> None:
    with _ReferenceMath():
        plain = _first_task(device=device)
        same_arithmetic = _first_task(_SyncArithmeticNet) if device == "cpu" else None
    many = _launch(_first_task_worker, device, nproc=_nproc(device))
    dist = many[0]
    for key in dist:
        assert np.array_equal(dist[key], many[1][key]), f"ranks disagree on {key}"
    assert len(dist["losses"]) == 15  # 160 images in global batches of 32, 3 epochs

    if same_arithmetic is not None:
        # Same BatchNorm arithmetic, one process: only the order of the sums differs, so the steps agree
        # closely and herding picks the same exemplars (same images, same herding ranks).
        np.testing.assert_allclose(dist["losses"], same_arithmetic["losses"], rtol=0, atol=1e-4)
        for key in ("images", "labels", "ranks"):
            assert np.array_equal(dist[key], same_arithmetic[key]), key
        np.testing.assert_allclose(dist["means"], same_arithmetic["means"], atol=1e-3)

    # The plain one-process trainer: on the CPU, torch's BatchNorm kernel accumulates the batch
    # statistics in float32 (the gradient test above: the distributed gradient is float64's), so the
    # first step agrees to float rounding and later steps drift apart within the stated bound.
    # Herding over 160 candidates follows that drift, so these exemplars are not compared.
    assert abs(dist["losses"][0] - plain["losses"][0]) < 1e-4
    np.testing.assert_allclose(dist["losses"], plain["losses"], rtol=0, atol=1e-2)


def test_sync_batchnorm_converts_back_to_the_same_tensors() -> None:
    model = _step_model()
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    to_sync_batchnorm(model, CPU)
    assert any(isinstance(m, CpuSyncBatchNorm) for m in model.modules())
    to_plain_batchnorm(model)
    assert not any(isinstance(m, CpuSyncBatchNorm) for m in model.modules())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    assert not any(m.training for m in model.branches[0].modules())  # the frozen branch stays in eval
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is torch.nn.BatchNorm2d for m in norms)


# -- the launchers, end to end -------------------------------------------------------------------------

def _memo_edge(*args: object) -> list[str]:
    return [sys.executable, "-m", "memo_edge", "-v", *map(str, args)]


def _check_run_dir(out: Path, tasks: int) -> dict:
    """The run directory as one writer leaves it: nothing twice, no temporary entries."""
    assert {p.name for p in out.iterdir()} == RUN_FILES | {f"task-{t:02d}" for t in range(tasks)}
    for t in range(tasks):
        assert {p.name for p in (out / f"task-{t:02d}").iterdir()} == {"model.safetensors", "exemplars.npz", "state.json"}
    assert len(verified_states(out)) == tasks  # every checkpoint whole (sha256 of its files)
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_nproc_trains_in_two_processes_and_writes_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(_memo_edge("train", *RUN, "--nproc", "2", "--out", out), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert re.search(r"2 processes \(gloo, 1 node\(s\)\), pids rank0=\d+ rank1=\d+", log), log
    for t in range(2):  # printed by rank 0 only
        assert len(re.findall(rf"^task-0{t} \({t + 1}/2\)", done.stdout, re.M)) == 1, done.stdout
    assert done.stdout.count("average incremental accuracy") == 1
    results = _check_run_dir(out, 2)
    assert results["complete"] and results["distributed"] == {"world_size": 2, "backend": "gloo", "nodes": 1}
    assert [t["world_size"] for t in results["tasks"]] == [2, 2]
    assert [t["exemplars"] for t in results["tasks"]] == [40, 40]


@pytest.mark.slow
def test_torchrun_run_survives_a_killed_process_by_resuming(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
           "-m", "memo_edge", "-v", "train", *RUN, "--epochs", "8", "--out", str(out), "--dist-timeout", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids, seen = None, []
    for line in proc.stdout:  # the log itself says when task 0 is saved and which pid rank 1 has
        seen.append(line)
        if m := re.search(r"pids rank0=(\d+) rank1=(\d+)", line):
            pids = int(m[1]), int(m[2])
        if line.startswith("task-00"):
            os.kill(pids[1], signal.SIGKILL)  # rank 1 dies in the middle of task 1
            break
    rest, _ = proc.communicate(timeout=120)  # bounded: a hang fails here
    assert proc.returncode != 0, "".join(seen) + rest
    assert "Signal 9 (SIGKILL)" in rest  # torchrun's report names the killed rank
    assert f'File "{Path(memo_edge.__file__).parent}' not in rest, rest  # no traceback through memo-edge's code
    # Rank 0 either notices first and says so in one line, or torchrun's agent has stopped it already
    # (the stalled-process test below checks that line without an agent).
    assert all("another process of the distributed run died or stalled" in line
               for line in rest.splitlines() if line.startswith("Error:")), rest
    assert {p.name for p in out.glob("task-*")} == {"task-00"}

    # One process continues the two-process run after its last finished task.
    resumed = ok("train", "--resume", out)
    assert "task-01 (2/2)" in resumed.output and "task-00" not in resumed.output
    results = _check_run_dir(out, 2)
    assert results["complete"] and results["distributed"]["world_size"] == 1
    assert [t["world_size"] for t in results["tasks"]] == [2, 1]


@pytest.mark.slow
def test_a_stalled_process_makes_the_other_exit_within_the_timeout(tmp_path: Path) -> None:
    # As the ranks of another node see it: a peer that stops answering. Two processes joined through
    # torch's env:// variables (no agent to stop the survivor), then rank 1 is stopped (SIGSTOP).
    out, port = tmp_path / "run", _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(_memo_edge("train", *RUN, "--epochs", "8", "--out", out, "--dist-timeout", 5),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for line in procs[0].stdout:
            if line.startswith("task-00"):
                os.kill(procs[1].pid, signal.SIGSTOP)
                break
        _, err = procs[0].communicate(timeout=120)  # bounded: a hang fails here
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: rank 0: another process of the distributed run died or stalled (Timed out"), err
    assert {p.name for p in out.glob("task-*")} == {"task-00"}


def test_nproc_refuses_bad_input_before_starting_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("train", *RUN, "--batch-size", "2", "--nproc", "3", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "global batch" in result.output and "Traceback" not in result.output
    result = invoke("train", *RUN, "--device", "cuda:1", "--nproc", "2", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "--device cuda" in result.output
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    result = invoke("train", *RUN, "--nproc", "2", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "under torchrun leave it out" in result.output
    assert not any(tmp_path.iterdir())
