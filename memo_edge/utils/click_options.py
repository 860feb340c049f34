"""Click helpers shared by the CLI layers that may not import each other (``serve/command.py`` and
``cli_options.py``): an option renamed for clarity that keeps its old name as a deprecated alias."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

__all__ = ["renamed_option"]

Decorator = Callable[[Any], Any]


def renamed_option(*decls: str, old: str, old_value: str | None = None, **attrs: Any) -> Decorator:
    """``click.option(*decls, **attrs)`` that also takes its old name ``old``, hidden from the help: the
    old name prints one deprecation line on stderr and sets the option. ``old_value``: the old name was
    a flag meaning this value (``--fp16`` for ``--engine-precision fp16``)."""
    new = decls[0]

    def remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        value = old_value if old_value is not None else value
        click.echo(f"warning: {old} is deprecated; use {new} {value}", err=True)
        ctx.meta[("renamed", new)] = value

    def prefer_old(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if ("renamed", new) not in ctx.meta:
            return value
        given = ctx.meta[("renamed", new)]
        if ctx.get_parameter_source(param.name or "") == ParameterSource.COMMANDLINE and value != given:
            raise click.UsageError(f"{old} is the old name of {new}: give one of them")
        return given

    old_option = click.option(old, f"_renamed_{new.lstrip('-').replace('-', '_')}", hidden=True, is_eager=True,
                              help=f"Deprecated: {new}.",
                              expose_value=False, callback=remember,
                              **({"is_flag": True} if old_value is not None else {"type": attrs.get("type")}))
    new_option = click.option(*decls, callback=prefer_old, **attrs)
    return lambda f: old_option(new_option(f))
