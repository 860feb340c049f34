"""The vocabularies of memo-edge's options, and the options of ``memo-edge update`` as one record.

Declared once, torch-free and click-free, so every layer may read them: ``cli_options.py`` builds the
click options of ``update`` from ``UpdateOptions``, the service parses ``POST /update``'s query with
``UpdateOptions.from_query`` and starts its child with ``UpdateOptions.argv`` (Ultralytics' one table
of export formats carrying each format's arguments is the model).

"Precision" means three things, each with its own name and vocabulary:

- ``--train-precision``: the autocast of training (``memo_edge.train.precision``); weights stay float32.
- ``--graph-precision``: which ONNX graph answers on ``ort-cpu``, float32 or the package's int8 one.
- ``--engine-precision``: the arithmetic TensorRT builds engines with (``export --trt``).
"""

from __future__ import annotations

import dataclasses
import math
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from memo_edge.errors import InputError

__all__ = ["SCHEDULES", "TRAIN_PRECISIONS", "GRAPH_PRECISIONS", "ENGINE_PRECISIONS", "OptionSpec", "UpdateOptions",
           "option_specs"]

SCHEDULES = ("step", "cosine")  # learning-rate schedules (memo_edge.train.recipe)
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # training autocast; auto: the fastest native one
GRAPH_PRECISIONS = ("auto", "fp32", "int8")  # the ort-cpu graph; auto: int8 when the package has it
ENGINE_PRECISIONS = ("fp32", "fp16")  # TensorRT engines (memo_edge.runtime.engine_cache)


@dataclass(frozen=True)
class OptionSpec:
    """How one field of an options record is offered: ``--kebab-name`` on the CLI, ``snake_name`` in a query."""

    name: str
    kind: Any  # int, float, str, bool, or that | None
    default: Any
    help: str
    least: float | None = None
    most: float | None = None
    choices: tuple[str, ...] = ()
    off: str | None = None  # a bool's "off" flag name, e.g. freeze-base; None: no-<name>
    http: bool = True  # a client of POST /update may set it
    old: str | None = None  # a deprecated name still accepted (prints or logs one line)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def off_flag(self) -> str:
        return "--" + (self.off or "no-" + self.name.replace("_", "-"))

    @property
    def old_flag(self) -> str | None:
        return None if self.old is None else "--" + self.old.replace("_", "-")

    @property
    def is_flag(self) -> bool:
        return self.kind in (bool, bool | None)

    def parse(self, raw: str, given_as: str | None = None) -> Any:
        """A query parameter's text as this field's value; InputError naming the parameter otherwise."""
        what = f"{given_as or self.name}={raw if len(raw) <= 40 else raw[:37] + '...'!r}"
        if self.is_flag:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise InputError(f"{what}: expected true or false")
            return raw.lower() in ("true", "1")
        if self.choices:
            if raw not in self.choices:
                raise InputError(f"{what}: expected {' or '.join(self.choices)}")
            return raw
        if self.kind in (int, int | None):
            # ASCII digits only: str.isdigit() also takes "²", which int() then refuses; at most 18 of them,
            # as int() refuses thousands of digits (and no count here needs more).
            if (not (raw.isascii() and raw.isdigit()) or len(raw) > 18
                    or (self.least is not None and int(raw) < self.least)):
                raise InputError(f"{what}: expected a whole number >= {self.least or 0:g}")
            return int(raw)
        if self.kind in (float, float | None):
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and self._within(value)):
                raise InputError(f"{what}: expected a number from {self.least:g} to {self.most:g}")
            return value
        return raw

    def _within(self, value: float) -> bool:
        return (self.least is None or value >= self.least) and (self.most is None or value <= self.most)

    def argv(self, value: Any) -> list[str]:
        """This field's value as ``memo-edge update`` arguments (none for None: the command's default)."""
        if value is None:
            return []
        if self.is_flag:
            return [self.flag if value else self.off_flag]
        return [self.flag, repr(value) if isinstance(value, float) else str(value)]


def _option(default: Any, help: str, **how: Any) -> Any:
    return field(default=default, metadata={"option": how | {"help": help}})


@dataclass(frozen=True)
class UpdateOptions:
    """The options of ``memo-edge update``: each field's default, bounds and help, in the order they are offered."""

    epochs: int = _option(30, "Training epochs.", least=1)
    batch_size: int = _option(128, "Training batch size.", least=2)
    schedule: str = _option("cosine", "Learning-rate schedule.", choices=SCHEDULES)
    seed: int = _option(1993, "Training seed.", least=0)
    train_base: bool = _option(False, "Also train the shared trunk (re-exports it) or keep it frozen.",
                               off="freeze-base")
    int8: bool | None = _option(None, "Re-make the int8 full graph, or drop it  [default: as the package has it].")
    train_precision: str = _option("fp32", "Autocast precision of training (fp16: GPUs; auto: the fastest native one).",
                                   choices=TRAIN_PRECISIONS, old="precision")
    codec_mix: float = _option(0.0, "Probability that a new training image is seen through the package's lossy "
                               "exemplar codec.", least=0.0, most=1.0)
    device: str | None = _option(None, "cpu, cuda or cuda:N  [default: cuda when available]", http=False)

    def __post_init__(self) -> None:  # a record built in code meets the bounds of one parsed
        for spec in option_specs(type(self)):
            value = getattr(self, spec.name)
            if spec.choices and value not in spec.choices:
                raise InputError(f"{spec.flag} {value!r}: expected {' or '.join(spec.choices)}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not spec._within(value):
                raise InputError(f"{spec.flag} {value}: out of range {spec.least}..{spec.most}")

    @classmethod
    def from_query(cls, params: Mapping[str, str],
                   on_old: Callable[[str, str], None] | None = None) -> UpdateOptions:
        """The options a ``POST /update`` query sets (snake_case names); ``on_old(old, new)`` hears a
        deprecated name. InputError for an unknown parameter or a bad value."""
        specs = {s.name: s for s in option_specs(cls) if s.http}
        old = {s.old: s for s in specs.values() if s.old is not None}
        unknown = sorted(set(params) - set(specs) - set(old))
        if unknown:
            raise InputError(f"unknown parameter {unknown[0]!r}; accepted: {', '.join(specs)}")
        values: dict[str, Any] = {}
        for name, raw in params.items():
            spec = specs.get(name) or old[name]
            if spec.name in values:
                raise InputError(f"{name}: give {spec.name} once (its old name is {spec.old})")
            if name != spec.name and on_old is not None:
                on_old(name, spec.name)
            values[spec.name] = spec.parse(raw, given_as=name)
        return cls(**values)

    def argv(self) -> list[str]:
        """These options as ``memo-edge update`` arguments, in the order of the fields."""
        return [arg for spec in option_specs(type(self)) for arg in spec.argv(getattr(self, spec.name))]


@functools.cache
def option_specs(record: type) -> tuple[OptionSpec, ...]:
    """Each field of an options record with how it is offered."""
    hints = get_type_hints(record)
    return tuple(OptionSpec(f.name, hints[f.name], f.default, **f.metadata["option"])
                 for f in dataclasses.fields(record))
