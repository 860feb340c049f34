"""A whole class-incremental run: data -> scenario -> for each task: learn, evaluate, checkpoint.

Reads top to bottom: resolve the setup (data, scenario, memory, device), prepare the run directory
(new, forced or resumed), then the task loop. Every task ends with a complete checkpoint and fresh
results files, so a crash loses at most the task in progress.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from memo_edge.data.datasets import Dataset, dataset_dirs
from memo_edge.data.scenario import Scenario, build_scenario, ordered_class_names, remap, task_subset
from memo_edge.errors import InputError
from memo_edge.memory.alignment import exemplar_bytes
from memo_edge.memory.codec import RAW, Codec, parse_codec
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet, backbone_names, split_parameter_counts
from memo_edge.model.methods import Method, aligned_exemplars, get_method
from memo_edge.train.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verified_states,
)
from memo_edge.train.config import TrainConfig, default_scenario
from memo_edge.train.distributed import current_world
from memo_edge.train.features import evaluate
from memo_edge.train.plan import TaskPlan, Transforms, check_options, plan_tasks
from memo_edge.train.precision import exact_float32, numerics
from memo_edge.train.recipe import default_train_base
from memo_edge.train.results import TaskRecord, producer_versions, write_results
from memo_edge.train.task import learn_task
from memo_edge.train.device import select_device
from memo_edge.train.rundir import CONFIG_FILE, RunHeader, RunMemory, holds_run_of, load_run_data, read_run_header
from memo_edge.utils.io import atomic_write_json
from memo_edge.utils.paths import check_separate

__all__ = ["RunSetup", "prepare", "train", "check_run", "resume_config", "resolve_memory"]

log = logging.getLogger(__name__)
_RUN_FILES = ("config.json", "results.json", "metrics.csv", "accuracy.png", "accuracy_matrix.png")


@dataclass(frozen=True)
class RunSetup:
    """Everything resolved from a config before the first task."""

    config: TrainConfig
    dataset: Dataset
    scenario: Scenario
    method: Method
    plan: TaskPlan  # what every task of the run shares: learn_task's settings
    codec: Codec = RAW  # how the exemplars are stored and counted


def resolve_memory(config: TrainConfig, scenario: Scenario, bytes_per_exemplar: int, codec: Codec = RAW) -> MemoryPolicy:
    if config.memory_per_class is not None and config.memory_bytes is not None:
        raise InputError("give --memory-per-class or --memory-bytes, not both")
    if config.memory_per_class is not None:
        policy = MemoryPolicy("per_class", config.memory_per_class)
    elif config.memory_bytes is not None:
        policy = MemoryPolicy("exemplar_bytes", config.memory_bytes)
    elif config.memory.strip().lower() == "aligned":
        # The method's share of the DER-aligned budget for this scenario (CIFAR-100 B0Inc10:
        # MEMO 3312, DER 2000, single backbone 7431).
        count = aligned_exemplars(get_method(config.method), config.backbone, scenario.num_tasks, bytes_per_exemplar,
                                  split=config.split)
        policy = MemoryPolicy("total", count)
    else:
        try:
            policy = MemoryPolicy("total", int(config.memory))
        except ValueError:
            raise InputError(f"--memory must be a number of exemplars or 'aligned', got {config.memory!r}") from None
    share = policy.class_bytes(scenario.num_classes, model_bytes=0, bytes_per_exemplar=bytes_per_exemplar)
    # Exemplars of a fixed size (raw) are counted here; an encoded size is only known once the images are
    # encoded (train/task.py checks that every class keeps one).
    final = share // (codec.fixed_size(bytes_per_exemplar) or 1)
    if final < 1:
        raise InputError(
            f"memory budget too small: {policy.describe()} leaves less than one exemplar per class "
            f"for {scenario.num_classes} classes"
        )
    return policy


def _checked(config: TrainConfig) -> tuple[Method, torch.device, Codec]:
    """What the config names that needs no data: method, device, codec (user mistakes: InputError)."""
    if config.backbone not in backbone_names():
        raise InputError(f"unknown backbone {config.backbone!r}; choose from {', '.join(backbone_names())}")
    method = get_method(config.method)  # InvalidValue (an InputError) for an unknown method or split
    split_parameter_counts(config.backbone, split=method.resolved_split(config.split))
    world = current_world()
    if config.batch_size < world.size:
        raise InputError(f"--batch-size {config.batch_size} is the global batch, shared by {world.size} processes: "
                         "it must be at least the number of processes")
    device = world.device_for(select_device(config.device))
    try:
        codec = parse_codec(config.exemplar_codec)
    except ValueError as exc:
        raise InputError(f"--exemplar-codec: {exc}") from None
    return method, device, codec


def prepare(config: TrainConfig) -> RunSetup:
    """Validate the config and load what it names; every user mistake is an InputError."""
    method, device, codec = _checked(config)
    dataset, order = load_run_data(config)
    spec = config.scenario or default_scenario(config.dataset)
    scenario = build_scenario(spec, dataset.num_classes, class_order=order)
    memory = resolve_memory(config, scenario, exemplar_bytes(dataset.image_shape), codec)
    train_base = config.train_base
    if train_base is None:
        train_base = default_train_base(scenario.task_sizes[0], scenario.num_classes)
    plan = plan_tasks(config.task_options(),
                      Transforms.of(dataset.augment, dataset.mean, dataset.std, dataset.image_shape[0]),
                      memory=memory, train_base=train_base, device=device, codec=codec)
    return RunSetup(replace(config, scenario=spec, exemplar_codec=codec.spec), dataset, scenario, method, plan, codec)


def _check_run_dir(out: Path, config: TrainConfig) -> None:
    """Refuse an ``out`` that already holds a run (read only: every process of a distributed run checks)."""
    if (out / CONFIG_FILE).exists() or any(out.glob("task-[0-9][0-9]")):
        what = "this run" if holds_run_of(out, config) else "a different run"
        raise InputError(f"{out} already holds {what}; pass --resume to continue it or --force to start over")


def _make_run_dir(out: Path, *, force: bool) -> None:
    """``out`` ready for a new run; with ``force`` a run already there is removed first."""
    if force:
        for task in out.glob("task-[0-9][0-9]"):
            shutil.rmtree(task)
        for name in _RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def check_run(config: TrainConfig, *, resume: bool = False, force: bool = False) -> None:
    """What ``train`` refuses before its first task that needs no data, without writing anything
    (``--nproc`` checks once here before it starts any process)."""
    check_separate(config.out, *dataset_dirs(config.dataset, config.data_dir), what="run")
    _, device, codec = _checked(config)
    check_options(config.task_options(), device, codec)  # the data is checked where it is loaded, in each process
    if resume:
        verified_states(Path(config.out))
    elif not force:
        _check_run_dir(Path(config.out), config)


def resume_config(run_dir: Path, *, device: str | None = None) -> TrainConfig:
    """The config a run was started with, for ``--resume`` (optionally on another device)."""
    config = read_run_header(run_dir).config
    return replace(config, out=str(run_dir), device=device if device is not None else config.device)


def _header(setup: RunSetup) -> RunHeader:
    cfg, scenario, dataset, plan = setup.config, setup.scenario, setup.dataset, setup.plan
    return RunHeader(
        title=f"{cfg.method} {cfg.backbone} on {cfg.dataset} {scenario.spec}",
        config=cfg,
        scenario=scenario,
        class_names=ordered_class_names(dataset, scenario),
        memory=RunMemory(plan.memory, exemplar_bytes(dataset.image_shape), setup.codec.spec),
        train_base=plan.train_base,
        device=str(plan.device),
        versions=producer_versions(),
        image_shape=dataset.image_shape,
        augment=dataset.augment,
        mean=tuple(dataset.mean),
        std=tuple(dataset.std),
        precision=plan.precision,  # as it ran: config.precision "auto" resolved on this hardware
        numerics=numerics(plan.precision, plan.device),  # autocast type, TF32 (off), cuDNN flags, layout
        distributed=current_world().to_json(),
    )


TaskCallback = Callable[[TaskRecord, int], None]


def _first_missing(path: Path) -> Path | None:
    """The topmost directory that ``path.mkdir(parents=True)`` would create; None when ``path`` exists."""
    path = path.resolve()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


@contextlib.contextmanager
def _removed_unless_kept(created: Path | None) -> Iterator[Callable[[], None]]:
    """Remove ``created`` (a directory this command makes) if the block fails before ``keep()`` is called.

    A refused or interrupted run must not leave a half-made run directory behind; a directory that
    existed before, or a run with a finished task, is never touched.
    """
    kept = created is None

    def keep() -> None:
        nonlocal kept
        kept = True

    try:
        yield keep
    except BaseException:  # KeyboardInterrupt too: Ctrl-C during task 0 leaves nothing behind
        if not kept and created is not None and created.is_dir():
            log.info("removing %s: the run failed before its first task finished", created)
            shutil.rmtree(created, ignore_errors=True)
        raise


def train(config: TrainConfig, *, resume: bool = False, force: bool = False, on_task: TaskCallback | None = None) -> dict[str, Any]:
    """Run (or continue) all tasks of ``config``; returns the final results.json content.

    A new ``out`` that this call creates is removed again if it fails before the first task is saved.
    Inside a process group (``memo_edge.train.launch``) every process calls this; rank 0 writes, calls
    ``on_task`` and returns the results, the others return {}.
    """
    check_separate(config.out, *dataset_dirs(config.dataset, config.data_dir), what="run")
    # Before anything can create it; only the writer (rank 0) ever creates or removes it.
    created = None if resume or not current_world().is_writer else _first_missing(Path(config.out))
    setup = prepare(config)
    with _removed_unless_kept(created) as keep, exact_float32(setup.plan.device):
        return _train(setup, resume=resume, force=force, on_task=on_task, keep=keep)


def _train(setup: RunSetup, *, resume: bool, force: bool, on_task: TaskCallback | None,
           keep: Callable[[], None]) -> dict[str, Any]:
    out = Path(setup.config.out)
    header = _header(setup).to_json()
    world = current_world()
    if resume:
        states = verified_states(out)
    else:
        if not force:
            _check_run_dir(out, setup.config)
        world.barrier()  # every process has checked before rank 0 changes anything
        if world.is_writer:
            _make_run_dir(out, force=force)
            atomic_write_json(out / CONFIG_FILE, header)
        states = []
    done = len(states)

    generator = torch.Generator()
    if done:
        ckpt = load_checkpoint(out, done - 1, state=states[-1])
        model, exemplars = ckpt.model, ckpt.exemplars
        if exemplars.codec != setup.codec:
            raise InputError(f"cannot resume {out}: its exemplars are stored as {exemplars.codec}, the run's codec is "
                             f"{setup.codec}")
        records = [TaskRecord.from_json(state["record"]) for state in states]
        set_rng_state(ckpt.state["rng"], generator)
        log.info("resuming %s after task %d of %d", out, done - 1, setup.scenario.num_tasks)
    else:
        torch.manual_seed(setup.config.seed)
        generator.manual_seed(setup.config.seed)
        method = setup.method
        model = MemoNet(setup.config.backbone, split=method.resolved_split(setup.config.split), grow=method.grow)
        exemplars = ExemplarSet.empty(setup.dataset.image_shape, setup.codec)
        records = []

    results = {}
    if records and world.is_writer:
        results = write_results(out, header, records, complete=done == setup.scenario.num_tasks)
    for task in range(done, setup.scenario.num_tasks):
        model, exemplars, record = _run_task(setup, task, model, exemplars, generator)
        records.append(record)
        if world.is_writer:  # every process holds the same model, exemplars and RNG states
            state = {"scenario": setup.scenario.to_json(), "record": record.to_json(), "rng": rng_state(generator)}
            save_checkpoint(out, task, model, exemplars, state)
            keep()  # a finished task is worth keeping whatever happens next
            results = write_results(out, header, records, complete=task + 1 == setup.scenario.num_tasks)
        world.barrier()
        if on_task is not None and world.is_writer:
            on_task(record, setup.scenario.num_tasks)
    return results


def _run_task(
    setup: RunSetup, task: int, model: MemoNet, exemplars: ExemplarSet, generator: torch.Generator
) -> tuple[MemoNet, ExemplarSet, TaskRecord]:
    scenario, dataset, plan = setup.scenario, setup.dataset, setup.plan
    start = time.perf_counter()
    train_set = remap(dataset.train, scenario)
    test_set = remap(dataset.test, scenario)
    result = learn_task(model, plan, task_subset(train_set, scenario, task), exemplars,
                        num_new=scenario.task_sizes[task], generator=generator,
                        desc=f"task {task + 1}/{scenario.num_tasks}")
    metrics = evaluate(model, task_subset(test_set, scenario, task, seen=True), result.class_means, task=task,
                       boundaries=scenario.boundaries()[: task + 1], transform=plan.transforms.test, device=plan.device,
                       precision=plan.precision)
    record = TaskRecord(
        task=task,
        classes=(scenario.known_before(task), scenario.known_before(task) + scenario.task_sizes[task]),
        metrics=metrics.to_json(),
        exemplars=len(result.exemplars),
        per_class=result.per_class,
        model_bytes=model.model_bytes(),
        exemplar_bytes=result.exemplars.nbytes,
        wall_time_s=round(time.perf_counter() - start, 3),
        train_images_per_s=round(result.images_per_second, 1),
        final_loss=result.final_loss,
        align_gamma=result.align_gamma,
        world_size=current_world().size,
        class_bytes=result.class_bytes,
        codec=setup.codec.spec,
        codec_seconds=result.codec_seconds,
        train_seconds=result.train_seconds,
    )
    return model, result.exemplars, record
