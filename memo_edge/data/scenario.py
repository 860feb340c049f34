"""Class-incremental scenarios: which classes arrive in which task, and in what label space.

The protocol (MEMO / PyCIL): shuffle the class ids with numpy seed 1993, relabel every class by its
position in that order, then cut the order into tasks ("B0Inc10": tasks of 10; "B50Inc10": 50 first,
then 10 at a time). After ``remap`` the classes of task t are the contiguous label range
``task_classes(t)``, which is what the growing classifier heads rely on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from memo_edge.data.sources import ImageSource
from memo_edge.errors import InputError

if TYPE_CHECKING:
    from memo_edge.data.datasets import Dataset

__all__ = [
    "Scenario",
    "parse_scenario",
    "make_class_order",
    "build_scenario",
    "remap",
    "task_subset",
    "ordered_class_names",
    "DEFAULT_SEED",
]

DEFAULT_SEED = 1993
SCENARIO_SYNTAX = "B<base>Inc<increment>, e.g. B0Inc10 (tasks of 10) or B50Inc10 (50 classes first, then 10 per task)"
_SPEC = re.compile(r"b(\d+)inc(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Scenario:
    spec: str  # e.g. "B0Inc10"
    class_order: tuple[int, ...]  # original class ids in learning order; new label of class_order[i] is i
    task_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_permutation(self.class_order, len(self.class_order))
        if not self.task_sizes or any(s < 1 for s in self.task_sizes) or sum(self.task_sizes) != len(self.class_order):
            raise InputError(
                f"scenario {self.spec}: task sizes {list(self.task_sizes)} must be positive "
                f"and add up to the {len(self.class_order)} classes"
            )

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def _check_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise InputError(f"scenario {self.spec}: task {task} out of range 0..{self.num_tasks - 1}")

    def known_before(self, task: int) -> int:
        """Classes seen before ``task`` (``task == num_tasks`` gives all classes)."""
        if not 0 <= task <= self.num_tasks:
            raise InputError(f"scenario {self.spec}: task {task} out of range 0..{self.num_tasks}")
        return sum(self.task_sizes[:task])

    def task_classes(self, task: int) -> range:
        """New labels of ``task``'s classes."""
        self._check_task(task)
        start = self.known_before(task)
        return range(start, start + self.task_sizes[task])

    def boundaries(self) -> list[int]:
        """Cumulative class counts at the end of each task, e.g. [10, 20, ...]: per-task accuracy groups."""
        return [int(b) for b in np.cumsum(self.task_sizes)]

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "class_order": list(self.class_order), "task_sizes": list(self.task_sizes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Scenario:
        try:
            spec = str(d["spec"])
            order = tuple(_as_int(c) for c in d["class_order"])
            sizes = tuple(_as_int(s) for s in d["task_sizes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"scenario record is malformed ({exc!r}): needs spec, class_order, task_sizes") from exc
        return cls(spec, order, sizes)


def _as_int(value: Any) -> int:
    """JSON integers only: a float or a string in a class order is a corrupted record, not a class id."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def _check_permutation(order: Sequence[int], num_classes: int) -> None:
    if len(order) != num_classes or sorted(order) != list(range(num_classes)):
        shown = list(order[:12]) + (["..."] if len(order) > 12 else [])
        raise InputError(f"class order {shown} is not a permutation of 0..{num_classes - 1}")


def parse_scenario(spec: str) -> tuple[int, int]:
    """``"B0Inc10"`` -> (0, 10); ``"b50inc5"`` -> (50, 5)."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise InputError(f"bad scenario {spec!r}: expected {SCENARIO_SYNTAX}")
    base, inc = int(match.group(1)), int(match.group(2))
    if inc < 1:
        raise InputError(f"bad scenario {spec!r}: the increment must be at least 1 ({SCENARIO_SYNTAX})")
    return base, inc


def make_class_order(
    num_classes: int, *, seed: int = DEFAULT_SEED, shuffle: bool = True, explicit: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The learning order of the original class ids.

    ``RandomState(seed).permutation`` draws exactly what the reference's ``np.random.seed(seed);
    np.random.permutation(n)`` draws, without touching numpy's global generator.
    """
    if explicit is not None:
        try:
            order = tuple(_as_int(c) for c in explicit)
        except TypeError as exc:
            raise InputError(f"class order must list integer class ids: {exc}") from exc
        _check_permutation(order, num_classes)
        return order
    if not shuffle:
        return tuple(range(num_classes))
    return tuple(int(c) for c in np.random.RandomState(seed).permutation(num_classes))


def _task_sizes(num_classes: int, base: int, inc: int) -> list[int]:
    sizes = [base] if base > 0 else []
    rest = num_classes - base
    sizes += [inc] * (rest // inc)
    if rest % inc:
        sizes.append(rest % inc)
    return sizes


def _problem(num_classes: int, base: int, inc: int) -> str | None:
    """Why B<base>Inc<inc> cannot run on ``num_classes`` classes, or None when it can."""
    if base > num_classes:
        return f"the base of {base} classes exceeds the dataset's {num_classes} classes"
    rest = num_classes - base
    if rest > 0 and inc > rest:
        left = f" left after the base of {base}" if base else ""
        return f"an increment of {inc} does not fit the {rest} classes{left}"
    sizes = _task_sizes(num_classes, base, inc)
    for task, size in enumerate(sizes):
        if size < 2:
            return (f"task-{task:02d} (task {task + 1} of {len(sizes)}) would have {size} class; "
                    "MEMO's auxiliary classifier needs at least 2 per task")
    return None


def _suggest(num_classes: int, base: int, inc: int) -> str | None:
    """A valid scenario of at least 2 tasks close to the one asked for: the same increment where it fits,
    as few tasks of another size as possible, then the closest base (B0Inc10 on 21 classes -> B11Inc10)."""
    inc = max(2, min(inc, num_classes // 2))
    best: tuple[tuple[int, int], int] | None = None
    for candidate in range(num_classes + 1):
        if _problem(num_classes, candidate, inc) is not None:
            continue
        sizes = _task_sizes(num_classes, candidate, inc)
        if len(sizes) < 2:
            continue
        increments = sizes[1:] if candidate else sizes
        key = (sum(size != inc for size in increments), abs(candidate - base))
        if best is None or key < best[0]:
            best = (key, candidate)
    return None if best is None else f"B{best[1]}Inc{inc}"


def build_scenario(
    spec: str,
    num_classes: int,
    *,
    seed: int = DEFAULT_SEED,
    shuffle: bool = True,
    class_order: Sequence[int] | None = None,
) -> Scenario:
    """Parse ``spec`` and cut the (seeded or explicit) class order into tasks; the remainder is a last task."""
    base, inc = parse_scenario(spec)
    if num_classes < 2:
        raise InputError(f"scenario {spec}: the dataset has {num_classes} class(es); at least 2 are needed")
    problem = _problem(num_classes, base, inc)
    if problem is not None:
        suggestion = _suggest(num_classes, base, inc)
        hint = f"; try {suggestion}" if suggestion else ""
        raise InputError(f"scenario {spec} on {num_classes} classes: {problem}{hint}")
    order = make_class_order(num_classes, seed=seed, shuffle=shuffle, explicit=class_order)
    return Scenario(f"B{base}Inc{inc}", order, tuple(_task_sizes(num_classes, base, inc)))


def _new_labels(scenario: Scenario) -> np.ndarray:
    """Lookup table: original class id -> position in the class order."""
    table = np.empty(scenario.num_classes, np.int64)
    table[np.asarray(scenario.class_order, np.int64)] = np.arange(scenario.num_classes)
    return table


def remap(source: ImageSource, scenario: Scenario) -> ImageSource:
    """The same images labelled by their class's position in the learning order."""
    labels = source.labels
    if labels.size and (labels.min() < 0 or labels.max() >= scenario.num_classes):
        raise InputError(
            f"scenario {scenario.spec}: labels span {labels.min()}..{labels.max()} "
            f"but the class order covers 0..{scenario.num_classes - 1}"
        )
    return source.with_labels(_new_labels(scenario)[labels])


def task_subset(source: ImageSource, scenario: Scenario, task: int, *, seen: bool = False) -> ImageSource:
    """Images of ``task``'s new classes, or with ``seen`` of every class up to and including ``task``.

    ``source`` must already be remapped: tasks are contiguous ranges of new labels.
    """
    classes = scenario.task_classes(task)
    start = 0 if seen else classes.start
    keep = np.flatnonzero((source.labels >= start) & (source.labels < classes.stop))
    return source.subset(keep)


def ordered_class_names(dataset: Dataset, scenario: Scenario) -> tuple[str, ...]:
    """Class names indexed by new label."""
    if dataset.num_classes != scenario.num_classes:
        raise InputError(
            f"scenario {scenario.spec} covers {scenario.num_classes} classes "
            f"but dataset {dataset.name} has {dataset.num_classes}"
        )
    return tuple(dataset.class_names[c] for c in scenario.class_order)
