"""Data-parallel training on ``torch.distributed``: who this process is, and what it shares with the others.

A run under torchrun (or ``memo-edge train --nproc N``, which starts the same through torch's elastic
launcher) has one process per GPU, or N CPU processes on Gloo. The rules that make N processes give
the result of one (docs/distributed.md):

- every process draws the same random numbers (one seed, one CPU generator), so every process knows
  each epoch's permutation and the global batches; process r trains on its contiguous share of each
  global batch (``shard_bounds``) and takes that share of the global batch's augmentation draws;
- the model is wrapped in DistributedDataParallel for training only, BatchNorm layers synchronised
  over the global batch (``syncbn``), and each process's loss weighted by its share of the batch, so
  the averaged gradient is the global batch's;
- features for herding, class means and evaluation are computed in shards and gathered, so every
  process holds the same arrays and makes the same (deterministic) choices;
- only rank 0 writes; the others wait at a barrier. Every collective has the process group's timeout,
  so a dead or stalled process makes the others fail with one line instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from memo_edge.data.sources import ImageSource
from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.train.syncbn import to_plain_batchnorm, to_sync_batchnorm
from memo_edge.train.transfer import to_device

__all__ = ["World", "current_world", "launched_by_torchrun", "distributed_session", "shard_bounds",
           "shard_batch", "gather_rows", "all_sum", "wrap_for_training", "end_training", "DEFAULT_TIMEOUT_S"]

log = logging.getLogger(__name__)

# Long enough for rank 0 to write a checkpoint and plots while the others wait; short enough that a
# lost process is noticed within minutes (--dist-timeout).
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class World:
    """This process's place in the run; the defaults are a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    nodes: int = 1
    backend: str | None = None

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must live for a collective: the process's GPU with NCCL, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def device_for(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under NCCL."""
        return self.comm_device if self.backend == "nccl" and device.type == "cuda" else device

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def to_json(self) -> dict[str, Any]:
        return {"world_size": self.size, "backend": self.backend, "nodes": self.nodes}


def current_world() -> World:
    """The running process group as a ``World``; a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    size = dist.get_world_size()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    # torchrun: one agent (worker group) per node.
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", max(1, size // max(local_size, 1))))
    return World(dist.get_rank(), size, int(os.environ.get("LOCAL_RANK", 0)), nodes, dist.get_backend())


def launched_by_torchrun() -> bool:
    """Whether this process is one of a torchrun / elastic launch (it sets these for every worker)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def _backend_for(device: str | None) -> tuple[str, torch.device | None]:
    local = int(os.environ.get("LOCAL_RANK", 0))
    wants_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if not wants_cuda:
        return "gloo", None
    if device not in (None, "cuda"):
        raise InputError(f"--device {device}: in a distributed run every process uses its own GPU "
                         "(cuda:LOCAL_RANK); pass --device cuda")
    if local >= torch.cuda.device_count():
        raise InputError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                         "start at most one process per GPU")
    torch.cuda.set_device(local)
    return "nccl", torch.device("cuda", local)


@contextlib.contextmanager
def distributed_session(device: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """Join the process group described by torchrun's environment (NCCL for cuda, Gloo for cpu).

    Communication failures inside the block (a process died, stalled past the timeout) become one
    ``MemoEdgeError`` line naming this rank; logs come from rank 0 only.
    """
    backend, device_id = _backend_for(device)
    bind = {"device_id": device_id} if device_id is not None and "device_id" in _parameters(dist.init_process_group) else {}
    try:
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s), **bind)
    except (ValueError, RuntimeError) as exc:  # DistError is a RuntimeError
        raise MemoEdgeError(f"cannot join the distributed run: {_first_line(exc)}") from None
    world = current_world()
    if not world.is_writer:
        logging.getLogger("memo_edge").setLevel(logging.WARNING)
    try:
        _log_pids(world, backend)
        yield world
    except RuntimeError as exc:
        if not _is_comm_failure(exc):
            raise
        raise MemoEdgeError(f"rank {world.rank}: another process of the distributed run died or stalled "
                            f"({_first_line(exc)})") from None
    # Only after success: tearing down a group whose peer is gone can block.
    dist.destroy_process_group()


def _log_pids(world: World, backend: str) -> None:
    """Every process's pid in rank 0's log (-v): which one to look at (or stop) when a run misbehaves."""
    pid = torch.tensor([os.getpid()], dtype=torch.int64, device=world.comm_device)
    pids = [torch.zeros_like(pid) for _ in range(world.size)]
    dist.all_gather(pids, pid)
    log.debug("distributed: %d processes (%s, %d node(s)), pids %s", world.size, backend, world.nodes,
              " ".join(f"rank{r}={int(p)}" for r, p in enumerate(pids)))


def _parameters(fn: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _is_comm_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    dist_error = getattr(dist, "DistError", ())  # torch >= 2.2
    return isinstance(exc, dist_error) or any(k in text for k in ("gloo", "nccl", "connection", "timed out"))


def _first_line(exc: BaseException) -> str:
    """Gloo's messages start with a source location and end with advice: keep the sentence between."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ", 1)[0].rstrip(".")


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of n items; shares differ by at most one item."""
    return n * rank // size, n * (rank + 1) // size


def _slice_params(params: Any, lo: int, hi: int) -> Any:
    """Rows lo:hi of a per-sample draw dataclass (CifarParams, ImageNetParams)."""
    return type(params)(**{f.name: getattr(params, f.name)[lo:hi] for f in fields(params)})


def shard_batch(data: ImageSource, idx: np.ndarray, augment: Callable[..., Tensor], generator: torch.Generator,
                device: torch.device, world: World) -> tuple[Tensor, Tensor]:
    """This rank's share of the global batch ``idx``, augmented with the draws one process would give it.

    The augmentation draws of the whole global batch are taken from the shared generator (keeping every
    process's stream, and a resumed run's, in step), then only this rank's rows are applied.
    """
    if not (hasattr(augment, "sample_params") and hasattr(augment, "apply")):
        raise MemoEdgeError(f"distributed training needs an augmentation with sample_params/apply, got {augment!r}")
    lo, hi = shard_bounds(len(idx), world.rank, world.size)
    mine = idx[lo:hi]
    height, width = data.image_shape[:2]
    params = augment.sample_params(len(idx), height, width, generator)
    images = to_device(torch.from_numpy(data.take(mine)), device)
    x = augment.apply(images, _slice_params(params, lo, hi))  # type: ignore[attr-defined]
    return x, to_device(torch.from_numpy(data.labels[mine]), device)


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over all processes (float64)."""
    world = current_world()
    if world.size == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=world.comm_device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_rows(local: np.ndarray, total: int) -> np.ndarray:
    """Every rank's ``local`` rows (its ``shard_bounds`` share of ``total``) concatenated in rank order."""
    world = current_world()
    if world.size == 1:
        return local
    counts = [hi - lo for lo, hi in (shard_bounds(total, r, world.size) for r in range(world.size))]
    buffer = torch.zeros((max(counts), local.shape[1]), dtype=torch.float32, device=world.comm_device)
    buffer[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(buffer.device)
    parts = [torch.empty_like(buffer) for _ in range(world.size)]
    dist.all_gather(parts, buffer)
    return np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts)])


def wrap_for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train: ``model`` itself in one process, else DDP over it with synchronised BatchNorm.

    Built anew for every task, since the model grows (branch, classifier rows) between tasks. Frozen
    parts have requires_grad off and every trainable parameter is used in each step (the auxiliary head
    exists from task 1 on, and is used whenever it exists), so no ``find_unused_parameters`` search.
    Buffers are not re-broadcast each step: synchronised BatchNorm keeps them equal on every rank.
    """
    world = current_world()
    if world.size == 1:
        return model
    to_sync_batchnorm(model, device)
    # torch 2.14 renamed broadcast_buffers (now deprecated); pyproject allows torch >= 2.1.
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in _parameters(DistributedDataParallel) else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False, **{no_sync: False})


def end_training(model: nn.Module, *, succeeded: bool) -> None:
    """Plain BatchNorm again (for weight alignment, export, checkpoints); after a good run, rank 0's
    weights and statistics on every rank, so the herding below runs on one model everywhere."""
    world = current_world()
    if world.size == 1:
        return
    to_plain_batchnorm(model)
    if succeeded:
        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
