"""Reading a run directory: its header (config.json), its data, its test split.

Shared by training (resume), export, the layer analysis and benchmarks; writing a run is ``train/run.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memo_edge.data.datasets import Dataset, keep_classes, load_dataset
from memo_edge.data.scenario import Scenario, make_class_order, remap, task_subset
from memo_edge.data.sources import DEFAULT_AUGMENT, ImageSource
from memo_edge.errors import InputError
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.train.config import TrainConfig

__all__ = ["CONFIG_FILE", "RunHeader", "RunMemory", "holds_run_of", "load_run_data", "read_run_header",
           "run_test_split"]

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class RunMemory:
    """The exemplar memory of a run: its rule, the bytes of one raw exemplar, the codec they are stored in."""

    policy: MemoryPolicy
    bytes_per_exemplar: int
    codec: str = "raw"  # runs before codecs: raw

    def to_json(self) -> dict[str, Any]:
        return {**self.policy.to_json(), "bytes_per_exemplar": self.bytes_per_exemplar, "codec": self.codec}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunMemory:
        return cls(MemoryPolicy.from_json(data), int(data["bytes_per_exemplar"]), str(data.get("codec", "raw")))


@dataclass(frozen=True)
class RunHeader:
    """A run directory's config.json: what the run is, and how it ran (written once, when it starts).

    What later versions added (image shape, normalisation, precision, ...) is None in the headers of
    older runs and left out of their JSON, so those still resume, export and analyse.
    """

    title: str
    config: TrainConfig
    scenario: Scenario
    class_names: tuple[str, ...]
    memory: RunMemory
    train_base: bool
    device: str  # where it started
    versions: dict[str, str]  # memo_edge, torch, torchvision, numpy, python
    image_shape: tuple[int, int, int] | None = None
    augment: str = DEFAULT_AUGMENT  # the augmentation policy (cifar or imagenet)
    mean: tuple[float, ...] | None = None  # the normalisation of the images
    std: tuple[float, ...] | None = None
    precision: str | None = None  # as it ran: "auto" resolved on that hardware
    numerics: dict[str, Any] | None = None  # autocast type, TF32, cuDNN flags, layout (train/precision.py)
    distributed: dict[str, Any] | None = None  # world size, backend, nodes

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "title": self.title,
            "config": self.config.to_json(),
            "scenario": self.scenario.to_json(),
            "class_names": list(self.class_names),
            "memory": self.memory.to_json(),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "augment": self.augment,
            "normalization": None if self.mean is None else {"mean": list(self.mean), "std": list(self.std or ())},
            "train_base": self.train_base,
            "device": self.device,
            "precision": self.precision,
            "numerics": self.numerics,
            "distributed": self.distributed,
            "versions": self.versions,
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str | Path = CONFIG_FILE) -> RunHeader:
        """A header from its JSON; a config key this version does not know is an InputError naming ``source``."""
        norm = data.get("normalization")
        shape = data.get("image_shape")
        return cls(
            title=str(data["title"]),
            config=TrainConfig.from_json(data["config"], source=source),
            scenario=Scenario.from_json(data["scenario"]),
            class_names=tuple(str(n) for n in data["class_names"]),
            memory=RunMemory.from_json(data["memory"]),
            train_base=bool(data["train_base"]),
            device=str(data["device"]),
            versions=dict(data["versions"]),
            image_shape=None if shape is None else tuple(int(s) for s in shape),  # type: ignore[arg-type]
            augment=str(data.get("augment", DEFAULT_AUGMENT)),
            mean=None if norm is None else tuple(float(v) for v in norm["mean"]),
            std=None if norm is None else tuple(float(v) for v in norm["std"]),
            precision=data.get("precision"),
            numerics=data.get("numerics"),
            distributed=data.get("distributed"),
        )


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


def read_run_header(run_dir: Path) -> RunHeader:
    """A run directory's config.json (config, scenario, normalisation, class names, ...)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} is not a memo-edge run directory ({CONFIG_FILE} missing)")
    try:
        return RunHeader.from_json(json.loads(path.read_text()), source=path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is damaged: {exc!r}") from None


def holds_run_of(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir``'s header describes the experiment ``config`` does (False when it has none or a
    damaged one)."""
    try:
        return read_run_header(run_dir).config.same_run_as(config)
    except InputError:
        return False


def run_test_split(config: TrainConfig, scenario: Scenario, task: int) -> ImageSource:
    """Test images of every class a run (``RunHeader.config``, ``.scenario``) had seen after ``task``,
    labelled as the run labels them."""
    dataset, _ = load_run_data(config)
    return task_subset(remap(dataset.test, scenario), scenario, task, seen=True)
