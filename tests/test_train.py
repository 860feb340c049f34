"""The task step, whole runs, checkpoints and resume (small models, built-in data, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memo_edge.data.sources import ArraySource
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet
from memo_edge.train.config import TrainConfig
from memo_edge.train.plan import TaskPlan, Transforms
from memo_edge.train.recipe import default_train_base, paper_recipe
from memo_edge.train.run import train
from memo_edge.train.task import learn_task

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _source(classes: range, per_class: int = 12, seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(list(classes), dtype=np.int64), per_class)
    # Each class gets its own mean brightness so the tiny task is learnable.
    images = rng.integers(0, 60, size=(len(labels), 32, 32, 3)) + (labels[:, None, None, None] * 40) % 200
    return ArraySource(images.astype(np.uint8), labels)


def _learn(model: MemoNet, data: ArraySource, exemplars: ExemplarSet, num_new: int, train_base: bool, task: int):
    recipe = paper_recipe(task, epochs=1, batch_size=8)
    plan = TaskPlan(Transforms.of("cifar", MEAN, STD, 32), (recipe, recipe), MemoryPolicy("per_class", 3),
                    train_base=train_base, device=torch.device("cpu"))
    return learn_task(model, plan, data, exemplars, num_new=num_new, generator=torch.Generator().manual_seed(0))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("train_base", [True, False])
def test_old_branches_frozen_and_trunk_follows_train_base(train_base: bool) -> None:
    torch.manual_seed(0)
    model = MemoNet("resnet8")
    first = _learn(model, _source(range(0, 2)), ExemplarSet.empty((32, 32, 3)), 2, train_base, 0)
    trunk, branch0 = _snapshot(model.trunk), _snapshot(model.branches[0])

    second = _learn(model, _source(range(2, 4), seed=1), first.exemplars, 2, train_base, 1)

    assert not _changed(branch0, model.branches[0]), "old branch (weights or BN statistics) must not move"
    assert _changed(trunk, model.trunk) == train_base
    assert _changed(branch0, model.branches[1]), "the new branch starts as a copy and trains"
    # Exemplars: herding prefixes of 3 per class for all 4 seen classes.
    counts = second.exemplars.counts()
    assert sorted(counts) == [0, 1, 2, 3] and set(counts.values()) == {3}
    assert second.class_means.shape == (4, 2 * model.feature_dim)


def test_paper_recipe_defaults_and_scaling() -> None:
    r0, r1 = paper_recipe(0), paper_recipe(1)
    assert (r0.epochs, r0.lr, r0.weight_decay, r0.milestones) == (200, 0.1, 5e-4, (60, 120, 170))
    assert (r1.epochs, r1.lr, r1.weight_decay, r1.milestones) == (170, 0.1, 2e-4, (80, 120, 150))
    assert paper_recipe(1, epochs=17).milestones == (8, 12, 15)
    assert default_train_base(10, 100) and not default_train_base(50, 100)


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), dataset="digits", scenario="B0Inc4", backbone="resnet8", init_epochs=2, epochs=1,
                batch_size=64, memory="40", device="cpu")
    return TrainConfig(**{**base, **kw})


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path: Path) -> None:
    full = train(_config(tmp_path / "full"))

    def crash_after_second(record, num_tasks):
        if record.task == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(_config(tmp_path / "cut"), on_task=crash_after_second)
    resumed = train(_config(tmp_path / "cut"), resume=True)

    assert [t["metrics"] for t in resumed["tasks"]] == [t["metrics"] for t in full["tasks"]]
    assert [t["exemplars"] for t in resumed["tasks"]] == [t["exemplars"] for t in full["tasks"]]
    assert resumed["complete"] and len(resumed["tasks"]) == 3


@pytest.mark.slow
def test_run_writes_results_checkpoints_and_plots(tmp_path: Path) -> None:
    results = train(_config(tmp_path / "run"))
    run = tmp_path / "run"
    assert [len(t["metrics"]["groups"]) for t in results["tasks"]] == [1, 2, 3]
    assert results["scenario"]["task_sizes"] == [4, 4, 2]
    # memory 40 in total: 40 // seen classes per class, and the bytes add up.
    assert [t["per_class"] for t in results["tasks"]] == [10, 5, 4]
    assert all(t["exemplar_bytes"] == t["exemplars"] * 3072 for t in results["tasks"])
    for task in range(3):
        assert {p.name for p in (run / f"task-{task:02d}").iterdir()} == {"model.safetensors", "exemplars.npz", "state.json"}
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["summary"]["last_accuracy"] == results["tasks"][-1]["metrics"]["top1"]
    assert (run / "metrics.csv").read_text().count("\n") == 4
    assert (run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "accuracy_matrix.png").stat().st_size > 1000


def test_memory_aligned_gives_memo_its_reference_count() -> None:
    from memo_edge.data.scenario import build_scenario
    from memo_edge.train.run import resolve_memory

    for spec, expected in [("B0Inc10", 3312), ("B50Inc10", 2729), ("B0Inc5", 4771)]:
        policy = resolve_memory(_config(Path("unused"), memory="aligned", backbone="resnet32"),
                                build_scenario(spec, 100), bytes_per_exemplar=3072)
        assert policy == MemoryPolicy("total", expected)
    per_class = resolve_memory(_config(Path("unused"), memory_per_class=20), build_scenario("B0Inc10", 100), 3072)
    assert per_class == MemoryPolicy("per_class", 20)


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from memo_edge.utils.io import atomic_directory, atomic_write_bytes

    umask = os.umask(0)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "f", b"x")
    with atomic_directory(tmp_path / "d") as d:
        (d / "g").write_bytes(b"y")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask


# config.json as train/run.py writes it (digits, B0Inc4 on 4 classes, bf16 on a CPU run), key order included.
HEADER = {
    "title": "memo resnet8 on digits B0Inc2",
    "config": {"out": "runs/x", "method": "memo", "dataset": "digits", "data_dir": None, "download": False,
               "scenario": "B0Inc2", "class_order": None, "classes": 4, "shuffle": True, "seed": 1993,
               "backbone": "resnet8", "split": None, "image_size": None, "epochs": 1, "init_epochs": 2,
               "batch_size": 64, "schedule": "step", "train_base": None, "memory": "40", "memory_per_class": None,
               "memory_bytes": None, "exemplar_codec": "raw", "codec_mix": 0.0, "device": "cpu",
               "precision": "fp32", "stack_frozen": False},
    "scenario": {"spec": "B0Inc2", "class_order": [0, 1, 2, 3], "task_sizes": [2, 2]},
    "class_names": ["3", "7", "0", "5"],
    "memory": {"kind": "total", "value": 40, "bytes_per_exemplar": 3072, "codec": "raw"},
    "image_shape": [32, 32, 3],
    "augment": "cifar",
    "normalization": {"mean": [0.2, 0.2, 0.2], "std": [0.3, 0.3, 0.3]},
    "train_base": True,
    "device": "cpu",
    "precision": "fp32",
    "numerics": {"autocast": None, "tf32": False},
    "distributed": {"world_size": 1, "backend": None, "nodes": 1},
    "versions": {"memo_edge": "0.1.0", "torch": "2.5.1"},
}


def test_run_header_round_trips_the_json_on_disk(tmp_path: Path) -> None:
    from memo_edge.train.rundir import RunHeader, read_run_header

    (tmp_path / "config.json").write_text(json.dumps(HEADER))
    header = read_run_header(tmp_path)
    assert header.config.classes == 4 and header.scenario.task_sizes == (2, 2) and header.memory.policy.value == 40
    assert json.dumps(header.to_json()) == json.dumps(HEADER)  # the same JSON, key order included
    # A run from before precision, numerics, normalisation, ...: read, and written back as it was.
    old = {k: v for k, v in HEADER.items() if k in ("title", "config", "scenario", "class_names", "memory",
                                                    "train_base", "device", "versions")}
    old["memory"] = {k: v for k, v in HEADER["memory"].items() if k != "codec"}
    header = RunHeader.from_json(old)
    assert header.image_shape is None and header.augment == "cifar" and header.memory.codec == "raw"
    assert {k: v for k, v in header.to_json().items() if k != "augment"} == {**old, "memory": HEADER["memory"]}


def test_a_config_key_this_version_does_not_know_is_refused(tmp_path: Path) -> None:
    from memo_edge.errors import InputError
    from memo_edge.train.rundir import read_run_header

    (tmp_path / "config.json").write_text(json.dumps({**HEADER, "config": {**HEADER["config"], "warmup": 5}}))
    with pytest.raises(InputError, match=r"config.json: unknown training option 'warmup'"):
        read_run_header(tmp_path)
    with pytest.raises(InputError, match="unknown training option 'warmup'"):
        TrainConfig.from_json({"out": "x", "warmup": 5})
