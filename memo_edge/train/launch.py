"""Where the processes of a training run come from: this one, torchrun's, or ``--nproc N``.

- plain ``memo-edge train``: one process, no process group (exactly the single-process trainer);
- under ``torchrun`` (its environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
  join the group, train, leave; any number of nodes;
- ``--nproc N``: start N workers on this machine with torch's elastic launcher (what torchrun runs,
  standalone rendezvous on a free loopback port), each running the same training, and turn a failed
  worker into one line. No process management of our own: starting, watching and stopping the
  workers (the rest are stopped when one fails) is torch.distributed.elastic's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.train.config import TrainConfig
from memo_edge.train.distributed import DEFAULT_TIMEOUT_S, distributed_session, launched_by_torchrun
from memo_edge.train.results import TaskRecord
from memo_edge.train.run import check_run, train

__all__ = ["run_training"]

log = logging.getLogger(__name__)

TaskCallback = Callable[[TaskRecord, int], None]


def run_training(config: TrainConfig, *, resume: bool = False, force: bool = False, on_task: TaskCallback | None = None,
                 nproc: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Train ``config`` in this process, in torchrun's process group, or in ``nproc`` local processes.

    Returns rank 0's results ({} in the other processes of a torchrun launch).
    """
    if launched_by_torchrun():
        if nproc is not None and nproc > 1:
            raise InputError("--nproc starts its own processes: under torchrun leave it out "
                             "(torchrun's --nproc-per-node sets the number)")
        with distributed_session(config.device, timeout_s):
            return train(config, resume=resume, force=force, on_task=on_task)
    if nproc is None or nproc == 1:
        return train(config, resume=resume, force=force, on_task=on_task)
    return _launch_local(config, nproc, resume=resume, force=force, on_task=on_task, timeout_s=timeout_s)


def _on_gpu(config: TrainConfig) -> bool:
    return config.device.startswith("cuda") if config.device else torch.cuda.is_available()


def _check_launch(config: TrainConfig, nproc: int) -> None:
    if config.batch_size < nproc:
        raise InputError(f"--batch-size {config.batch_size} is the global batch, shared by {nproc} processes: "
                         "it must be at least --nproc")
    on_gpu = _on_gpu(config)
    if on_gpu and config.device not in (None, "cuda"):
        raise InputError(f"--device {config.device}: with --nproc every process uses its own GPU; pass --device cuda")
    if on_gpu and nproc > torch.cuda.device_count():
        raise InputError(f"--nproc {nproc}: one process per GPU, and this machine has {torch.cuda.device_count()}; "
                         "use --device cpu for CPU processes")


def _launch_local(config: TrainConfig, nproc: int, *, resume: bool, force: bool, on_task: TaskCallback | None,
                  timeout_s: float) -> dict[str, Any]:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _check_launch(config, nproc)
    check_run(config, resume=resume, force=force)  # user mistakes: one line here, not one per process
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0",  # torchrun --standalone
                          max_restarts=0, start_method="spawn")
    verbose = logging.getLogger("memo_edge").getEffectiveLevel() <= logging.DEBUG
    # CPU workers share the cores (torchrun would give each one thread); GPU workers keep torch's default.
    threads = None if _on_gpu(config) else max(1, (os.cpu_count() or 1) // nproc)
    log.info("training in %d processes (%s)", nproc, "NCCL" if threads is None else f"Gloo, {threads} threads each")
    try:
        with _launcher_logs(verbose):
            outputs = elastic_launch(launch, _worker)(config, resume, force, on_task, timeout_s, threads, verbose)
    except ChildFailedError as exc:
        raise _failure(exc, config.out) from None
    except SignalException:  # Ctrl-C or a kill of this launcher: the launcher has stopped the workers
        raise KeyboardInterrupt from None
    return outputs[0] or {}


def _worker(config: TrainConfig, resume: bool, force: bool, on_task: TaskCallback | None, timeout_s: float,
            threads: int | None, verbose: bool) -> dict[str, Any]:
    """One process of ``--nproc``: what ``torchrun -m memo_edge train`` runs in each of its processes."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("memo_edge").setLevel(logging.DEBUG if verbose else logging.INFO)
    if threads is not None:
        torch.set_num_threads(threads)
    with distributed_session(config.device, timeout_s):
        return train(config, resume=resume, force=force, on_task=on_task)


@contextlib.contextmanager
def _launcher_logs(verbose: bool) -> Iterator[None]:
    """The launcher logs a traceback per failed worker; the one-line summary below says it (-v keeps them)."""
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [lg.level for lg in loggers]
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _failure(exc: Any, out: str) -> MemoEdgeError:
    """A ChildFailedError as one error: a user mistake a process found (the data is checked where it is
    loaded, in every process) is that InputError; anything else is a failure line."""
    for _, failure in sorted(exc.failures.items()):
        message = failure.message
        kind, _, text = str(message.get("message", "")).partition(": ") if isinstance(message, dict) else ("", "", "")
        if kind == InputError.__name__:
            return InputError(text)
    return MemoEdgeError(_failure_line(exc, out))


def _failure_line(exc: Any, out: str) -> str:
    """One line from a ChildFailedError: what happened to each failed rank, then how to continue."""
    parts = []
    for rank, failure in sorted(exc.failures.items()):
        message = failure.message
        if isinstance(message, dict):  # an exception recorded by the worker: "Type: text"
            text = str(message.get("message", "")).split(": ", 1)[-1]
        elif failure.exitcode is not None and failure.exitcode < 0:
            text = f"killed by {failure.signal_name()} (pid {failure.pid})"
        else:
            text = f"exited with code {failure.exitcode} (pid {failure.pid})"
        parts.append(text if text.startswith("rank ") else f"rank {rank}: {text}")
    line = f"distributed training failed: {'; '.join(parts)}"
    if any(Path(out).glob("task-[0-9][0-9]")):
        line += f". {out} keeps every finished task: continue with memo-edge train --resume {out}"
    return line
