"""The click options of a training run, shared by ``train``, ``compare`` and ``curve``; those of
``update``, generated from ``memo_edge.options.UpdateOptions``; and renamed options that keep their
old name as a hidden alias (``utils/click_options.renamed_option``). Click and the torch-free options module only (like
``memo_edge/serve/command.py``): the CLI imports no layer of the trainer before a command runs;
``memo_edge/cli.py`` applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from memo_edge.options import SCHEDULES, TRAIN_PRECISIONS, OptionSpec, option_specs
from memo_edge.utils.click_options import renamed_option

__all__ = ["RUN_OPTIONS", "run_options", "run_config", "record_options"]

Decorator = Callable[[Any], Any]


def _click_option(spec: OptionSpec) -> Decorator:
    attrs: dict[str, Any] = {"default": spec.default, "show_default": spec.default is not None, "help": spec.help}
    if spec.is_flag:
        return click.option(f"{spec.flag}/{spec.off_flag}", **attrs)
    if spec.choices:
        attrs["type"] = click.Choice(spec.choices)
    elif spec.kind is int:
        attrs["type"] = click.IntRange(min=spec.least, max=spec.most)
    elif spec.kind is float:
        attrs["type"] = click.FloatRange(min=spec.least, max=spec.most)
    if spec.old_flag is not None:
        return renamed_option(spec.flag, old=spec.old_flag, **attrs)
    return click.option(spec.flag, **attrs)


def record_options(record: type) -> Decorator:
    """The click options of an options record (``memo_edge.options``), one per field, in its order."""
    def apply(f: Any) -> Any:
        for spec in reversed(option_specs(record)):
            f = _click_option(spec)(f)
        return f

    return apply


def _parse_class_order(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter("expected comma-separated class ids, e.g. 3,1,0,2") from None


RUN_OPTIONS = [
    click.option("--dataset", default="digits", show_default=True,
                 help="digits (built in), cifar100, npz:DIR or imagefolder:DIR (DIR/train, DIR/val)."),
    click.option("--data-dir", type=click.Path(path_type=Path), help="Where cifar100 lives (or is downloaded to)."),
    click.option("--download/--no-download", default=False, help="Download cifar100 into --data-dir if missing."),
    click.option("--scenario", help="B0IncK or B{N}IncK  [default: B0Inc2 on digits, else B0Inc10]"),
    click.option("--classes", type=click.IntRange(min=2), help="Learn only the first N classes of the class order."),
    click.option("--class-order", callback=_parse_class_order, help="Explicit class order: comma-separated ids."),
    click.option("--shuffle/--no-shuffle", default=True, show_default=True,
                 help="Shuffle the class order with --seed (the reference protocol) or keep label order."),
    click.option("--seed", type=int, default=1993, show_default=True, help="Seed for the class order and training."),
    click.option("--backbone", default="resnet32", show_default=True, help="resnet32/26/20/14/8 (CIFAR) or resnet18."),
    click.option("--split", type=int, help="Stages in the shared trunk [default: 2 on CIFAR ResNets, 3 on resnet18]."),
    click.option("--image-size", type=int, help="Input size for imagefolder data  [default: 224]"),
    click.option("--epochs", type=click.IntRange(min=1), help="Epochs of tasks >= 1  [default: 170, the paper's]"),
    click.option("--init-epochs", type=click.IntRange(min=1), help="Epochs of task 0  [default: 200, the paper's]"),
    click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True, help="Training batch size."),
    click.option("--schedule", type=click.Choice(SCHEDULES), default="step", show_default=True,
                 help="Learning-rate schedule: the paper's milestones or cosine annealing."),
    click.option("--train-base/--freeze-base", default=None,
                 help="Train or freeze the trunk after task 0  [default: train for B0 with small tasks, freeze for B50]"),
    click.option("--device", help="cpu, cuda or cuda:N  [default: cuda when available]"),
    renamed_option("--train-precision", "precision", old="--precision", type=click.Choice(TRAIN_PRECISIONS),
                   default="fp32", show_default=True,
                   help="Autocast precision of training and evaluation (fp16: GPUs; auto: the fastest native one)."),
    click.option("--exemplar-codec", default="raw", show_default=True,
                 help="How exemplars are stored and counted in the budget: raw, png, jpeg:Q or webp:Q "
                 "(compare, curve: comma-separated, one run each)."),
    click.option("--codec-mix", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="Probability, redrawn every epoch, that a new training image is seen through the lossy "
                 "exemplar codec (the exemplars' domain)."),
    click.option("--stack-frozen", is_flag=True, help="Train with the frozen old branches as one grouped network "
                 "(equal up to rounding; measured no faster on CPUs, docs/benchmarks.md)."),
]


def run_options(f: Any) -> Any:
    """The options that describe a training run: data, scenario, backbone, recipe, device."""
    for option in reversed(RUN_OPTIONS):
        f = option(f)
    return f


def run_config(out: Path, data_dir: Path | None, **options: Any) -> Any:
    from memo_edge.train.config import TrainConfig

    return TrainConfig(out=str(out), data_dir=str(data_dir) if data_dir else None, **options)
