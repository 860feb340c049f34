"""The configuration of a training run, as the CLI builds it and ``config.json`` stores it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from os import PathLike
from typing import Any

from memo_edge.errors import InputError

__all__ = ["TaskOptions", "TrainConfig", "default_scenario"]


@dataclass(frozen=True)
class TaskOptions:
    """The task settings as the user gave them (train's or update's options); ``train/plan.py`` checks and
    resolves them into a ``TaskPlan``."""

    init_epochs: int | None = None  # the first task; None: the paper's 200
    epochs: int | None = None  # every later task; None: the paper's 170
    batch_size: int = 128
    schedule: str = "step"
    precision: str = "fp32"  # fp32, bf16, fp16 (CUDA) or auto
    codec_mix: float = 0.0
    stack_frozen: bool = False


@dataclass(frozen=True)
class TrainConfig:
    out: str
    method: str = "memo"  # memo, der or replay (memo_edge.model.methods)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    scenario: str | None = None  # None: B0Inc2 on digits, B0Inc10 elsewhere
    class_order: tuple[int, ...] | None = None
    classes: int | None = None  # learn only the first N classes of the class order
    shuffle: bool = True
    seed: int = 1993  # the reference seeds both the class order and training with 1993
    backbone: str = "resnet32"
    split: int | None = None
    image_size: int | None = None
    epochs: int | None = None  # tasks >= 1; None: the paper's 170
    init_epochs: int | None = None  # task 0; None: the paper's 200
    batch_size: int = 128
    schedule: str = "step"
    train_base: bool | None = None  # None: the reference default for the scenario
    memory: str = "2000"  # total exemplars, or "aligned"
    memory_per_class: int | None = None
    memory_bytes: int | None = None  # exemplar bytes shared by all seen classes, instead of --memory's count
    exemplar_codec: str = "raw"  # how exemplars are stored and counted (memo_edge.memory.codec)
    codec_mix: float = 0.0  # probability that a new training image is its round trip through the codec
    device: str | None = None  # None: cuda when available, else cpu
    precision: str = "fp32"  # fp32, bf16, fp16 (CUDA) or auto (memo_edge.train.precision); results.json has the resolved one
    stack_frozen: bool = False  # train with the frozen old branches as one grouped network (model/frozen.py)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_order"] = list(self.class_order) if self.class_order is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str | PathLike[str] = "config") -> TrainConfig:
        """A config from its JSON; a key this version does not know is refused, not dropped (``source``:
        the file it came from, for the message)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{source}: unknown training option {unknown[0]!r} in its config (written by a newer "
                             "memo-edge?)")
        values = dict(data)
        if values.get("class_order") is not None:
            values["class_order"] = tuple(values["class_order"])
        return cls(**values)

    def task_options(self) -> TaskOptions:
        return TaskOptions(**{f.name: getattr(self, f.name) for f in fields(TaskOptions)})

    def same_run_as(self, other: TrainConfig) -> bool:
        """Whether two configs describe the same experiment (where it runs does not matter)."""
        ignore = {"device", "out", "download", "data_dir"}
        mine, theirs = self.to_json(), other.to_json()
        return all(mine[k] == theirs[k] for k in mine if k not in ignore)


def default_scenario(dataset: str) -> str:
    return "B0Inc2" if dataset == "digits" else "B0Inc10"
