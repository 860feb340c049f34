"""Per-task checkpoints: ``task-XX/`` with model.safetensors, exemplars.npz and state.json.

Each directory is written complete under a temp name and renamed into place, so a crash leaves only
whole checkpoints. ``state.json`` records the sha256 of the other two files and everything needed
to continue (task sizes, RNG states, the task's metrics), with no pickle anywhere.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from memo_edge.errors import InputError
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.model import MemoNet
from memo_edge.utils.io import atomic_directory, atomic_write_json, sha256_file

__all__ = ["TaskCheckpoint", "save_checkpoint", "load_checkpoint", "verified_states", "read_state", "task_dir", "rng_state", "set_rng_state"]

SCHEMA_VERSION = 1
MODEL_FILE = "model.safetensors"
EXEMPLAR_FILE = "exemplars.npz"
STATE_FILE = "state.json"


def task_dir(run_dir: Path, task: int) -> Path:
    return run_dir / f"task-{task:02d}"


@dataclass
class TaskCheckpoint:
    model: MemoNet
    exemplars: ExemplarSet
    state: dict[str, Any]


def rng_state(generator: torch.Generator) -> dict[str, str]:
    """The CPU RNG states a resumed run needs to continue bit for bit, as base64 text."""
    enc = lambda t: base64.b64encode(t.numpy().tobytes()).decode("ascii")  # noqa: E731
    return {"torch": enc(torch.get_rng_state()), "generator": enc(generator.get_state())}


def set_rng_state(state: dict[str, str], generator: torch.Generator) -> None:
    dec = lambda s: torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)  # noqa: E731
    torch.set_rng_state(dec(state["torch"]))
    generator.set_state(dec(state["generator"]))


def save_checkpoint(run_dir: Path, task: int, model: MemoNet, exemplars: ExemplarSet, state: dict[str, Any]) -> Path:
    """Write ``task-XX/`` atomically; ``state`` gets the schema, task sizes and file hashes added."""
    target = task_dir(run_dir, task)
    with atomic_directory(target) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "memo-edge", "task": str(task)})
        exemplars.save(tmp / EXEMPLAR_FILE)
        full = {
            "schema_version": SCHEMA_VERSION,
            "task": task,
            "backbone": model.backbone_name,
            "split": model.split,
            "grow": model.grow,
            "task_sizes": list(model.task_sizes),
            "trunk_frozen": model.trunk_frozen,
            **state,
            "files": {name: sha256_file(tmp / name) for name in (MODEL_FILE, EXEMPLAR_FILE)},
        }
        atomic_write_json(tmp / STATE_FILE, full)
    return target


def read_state(run_dir: Path, task: int) -> dict[str, Any]:
    """``state.json`` of ``task-XX/`` after checking that it and the files it lists are intact."""
    directory = task_dir(run_dir, task)
    path = directory / STATE_FILE
    if not path.is_file():
        raise InputError(f"checkpoint {directory}: {STATE_FILE} is missing")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"checkpoint {path} is damaged: {exc}") from None
    if state.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"checkpoint {path}: schema version {state.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    for name, expected in state.get("files", {}).items():
        file = directory / name
        if not file.is_file():
            raise InputError(f"checkpoint {directory}: {name} is missing")
        found = sha256_file(file)
        if found != expected:
            raise InputError(f"checkpoint {file} is damaged: sha256 {found[:12]}..., expected {expected[:12]}...")
    return state


def load_checkpoint(run_dir: Path, task: int, *, state: dict[str, Any] | None = None) -> TaskCheckpoint:
    """Load and verify ``task-XX/``; any missing or damaged file is an InputError naming it.

    ``state``: the task's state as ``verified_states`` returned it, so its files are not hashed twice.
    """
    directory = task_dir(run_dir, task)
    state = read_state(run_dir, task) if state is None else state
    model = MemoNet.with_tasks(state["backbone"], state["task_sizes"], split=state["split"], grow=state.get("grow", True))
    try:
        tensors = load_file(str(directory / MODEL_FILE))
        model.load_state_dict(tensors)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise InputError(f"checkpoint {directory / MODEL_FILE} cannot be loaded: {exc}") from None
    if model.num_tasks > 1:
        model.freeze_old_branches()
    if state.get("trunk_frozen"):
        model.freeze_trunk()
    return TaskCheckpoint(model, ExemplarSet.load(directory / EXEMPLAR_FILE), state)


def verified_states(run_dir: Path) -> list[dict[str, Any]]:
    """The states of the consecutive task checkpoints from task 0, each verified once; a gap or a
    damaged checkpoint is an error."""
    present = sorted(int(p.name[5:]) for p in run_dir.glob("task-[0-9][0-9]") if p.is_dir())
    states = []
    for expected, found in enumerate(present):
        if found != expected:
            raise InputError(f"run {run_dir}: {task_dir(run_dir, expected).name} is missing (found {task_dir(run_dir, found).name})")
        states.append(read_state(run_dir, found))
    return states
