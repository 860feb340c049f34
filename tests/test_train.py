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
from memo_edge.train.augment import TestTransform, build_augment
from memo_edge.train.config import TrainConfig
from memo_edge.train.recipe import default_train_base, paper_recipe
from memo_edge.train.run import train
from memo_edge.train.task import Transforms, learn_task

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _source(classes: range, per_class: int = 12, seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(list(classes), dtype=np.int64), per_class)
    # Each class gets its own mean brightness so the tiny task is learnable.
    images = rng.integers(0, 60, size=(len(labels), 32, 32, 3)) + (labels[:, None, None, None] * 40) % 200
    return ArraySource(images.astype(np.uint8), labels)


def _learn(model: MemoNet, data: ArraySource, exemplars: ExemplarSet, num_new: int, train_base: bool, task: int):
    return learn_task(
        model, data, exemplars, num_new=num_new, recipe=paper_recipe(task, epochs=1, batch_size=8),
        train_base=train_base, memory=MemoryPolicy("per_class", 3),
        transforms=Transforms(build_augment("cifar", MEAN, STD, 32), TestTransform(MEAN, STD)),
        device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
    )


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
