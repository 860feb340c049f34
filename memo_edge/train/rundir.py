"""Reading a run directory: its header (config.json), its data, its test split.

Shared by training (resume), export, the layer analysis and benchmarks; writing a run is ``train/run.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memo_edge.data.datasets import Dataset, keep_classes, load_dataset
from memo_edge.data.scenario import Scenario, make_class_order, remap, task_subset
from memo_edge.data.sources import ImageSource
from memo_edge.errors import InputError
from memo_edge.train.config import TrainConfig

__all__ = ["CONFIG_FILE", "load_run_data", "read_run_header", "run_test_split"]

CONFIG_FILE = "config.json"


def load_run_data(config: TrainConfig) -> tuple[Dataset, tuple[int, ...]]:
    """The run's dataset (only its first ``classes`` classes, relabelled, for a slice) and class order."""
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else None
    dataset = load_dataset(config.dataset, data_dir=data_dir, download=config.download, image_size=config.image_size)
    order = make_class_order(dataset.num_classes, seed=config.seed, shuffle=config.shuffle, explicit=config.class_order)
    if config.classes is not None:
        if not 2 <= config.classes <= dataset.num_classes:
            raise InputError(f"--classes {config.classes}: {dataset.name} has {dataset.num_classes} classes")
        dataset, order = keep_classes(dataset, order[: config.classes]), tuple(range(config.classes))
    return dataset, order


def read_run_header(run_dir: Path) -> dict[str, Any]:
    """A run directory's config.json (config, scenario, normalisation, class names, ...)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} is not a memo-edge run directory ({CONFIG_FILE} missing)")
    try:
        header = json.loads(path.read_text())
        header["config"], header["scenario"]  # noqa: B018  (the keys every reader needs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is damaged: {exc!r}") from None
    return header


def run_test_split(header: dict[str, Any], task: int) -> ImageSource:
    """Test images of every class a run had seen after ``task``, labelled as the run labels them."""
    dataset, _ = load_run_data(TrainConfig.from_json(header["config"]))
    scenario = Scenario.from_json(header["scenario"])
    return task_subset(remap(dataset.test, scenario), scenario, task, seen=True)
