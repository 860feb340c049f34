"""Shared by benchmark scripts: the CIFAR input spec (the dataset's constants, from the package) and one
builder of a random CIFAR-sized MEMO package, written as an export writes it (speed does not depend on
the weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memo_edge.data.datasets import CIFAR100_MEAN, CIFAR100_STD
from memo_edge.export.exporter import package_model
from memo_edge.memory.alignment import exemplar_bytes, model_bytes
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.model import MemoNet
from memo_edge.runtime.package import InputSpec, PackageVersion

CIFAR = InputSpec(32, 32, 3, CIFAR100_MEAN, CIFAR100_STD)


def random_model(tasks: int, *, backbone: str = "resnet32", classes: int = 10, jitter: float = 0.0) -> MemoNet:
    """A MemoNet of ``tasks`` tasks of ``classes`` classes, seeded; ``jitter`` makes each branch its own
    (expand copies the last one; trained branches differ from each other)."""
    torch.manual_seed(0)
    model = MemoNet(backbone)
    for _ in range(tasks):
        model.expand(classes)
        if jitter:
            with torch.no_grad():
                for p in model.branches[-1].parameters():
                    p.add_(jitter * torch.randn_like(p))
    return model.eval()


def random_package(out: Path, tasks: int, *, backbone: str = "resnet32", classes: int = 10, per_class: int = 1,
                   spare_branches: int = 0, budget_exemplars: int | None = None, int8: bool = True,
                   jitter: float = 0.0) -> tuple[MemoNet, PackageVersion]:
    """``random_model`` packaged with ``per_class`` random exemplars a class (a herding prefix each) and a budget
    with room for ``spare_branches`` more branches and ``budget_exemplars`` exemplars (None: the stored ones)."""
    model = random_model(tasks, backbone=backbone, classes=classes, jitter=jitter)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(model.num_classes, dtype=np.int64), per_class)
    ranks = np.tile(np.arange(per_class, dtype=np.int64), model.num_classes)
    exemplars = ExemplarSet(rng.integers(0, 256, (len(labels), *CIFAR.shape), dtype=np.uint8), labels, ranks)
    room = exemplars.nbytes if budget_exemplars is None else budget_exemplars * exemplar_bytes(CIFAR.shape)
    total = model.model_bytes() + spare_branches * model_bytes(model.branches[-1]) + room
    version = package_model(out, model, exemplars, spec=CIFAR, class_names=[f"c{i}" for i in range(model.num_classes)],
                            augment="cifar", total_budget_bytes=total,
                            verify_images=rng.integers(0, 256, (16, *CIFAR.shape), dtype=np.uint8), int8=int8)
    return model, version
