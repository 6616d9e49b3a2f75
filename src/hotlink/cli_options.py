"""Typer options generated from the settings tables (:class:`hotlink.settings.Spec`).

Every spec becomes one option whose default is None ("not given"), so the command can
tell a flag from a default and layer it over config files and the environment
(:func:`hotlink.settings.resolve`). Click never reads the environment itself: the help
names the variables (``[env: ...]``) and :mod:`hotlink.settings` reads them, with the same
parsing and errors as every other layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.markup import escape

from .settings import Spec

CommandBody = Callable[[dict[str, object], dict[str, Any]], None]


def _choice_enum(spec: Spec) -> type[Enum]:
    # Typer shows an Enum's values as the metavar and checks them (any case).
    name = f"{spec.key.title().replace('_', '')}Choice"
    made: Any = StrEnum(name, {c: c for c in spec.choices})  # type: ignore[misc]
    return cast(type[Enum], made)


_TYPES: Mapping[str, type] = {"str": str, "path": Path, "bool": bool, "int": int, "float": float}


def spec_help(spec: Spec) -> str:
    """``help [default: x] [env: A, B]``, escaped for typer's rich markup."""
    text = spec.help
    shown = spec.shown_default()
    if shown is not None:
        text += " " + escape(f"[default: {shown}]")
    if spec.env:
        text += " " + escape(f"[env: {', '.join(spec.env)}]")
    return text


def spec_parameter(spec: Spec) -> inspect.Parameter:
    """The typer option of one setting, a keyword parameter named after its key."""
    value_type: Any = _choice_enum(spec) if spec.kind == "choice" else _TYPES[spec.kind]
    if spec.kind == "bool":
        decls: tuple[str, ...] = (f"{spec.flag}/--no-{spec.flag[2:]}", *spec.aliases)
    else:
        decls = (spec.flag, *spec.aliases)
    option = typer.Option(
        *decls,
        help=spec_help(spec),
        rich_help_panel=spec.panel,
        show_default=False,
        hidden=spec.hidden,
        case_sensitive=False,
        metavar="SECRET" if spec.secret else None,
    )
    return inspect.Parameter(
        spec.key,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[value_type | None, option],
    )


def extra_option(
    name: str,
    value_type: Any,
    *decls: str,
    help: str,
    panel: str,
    default: Any = None,
    hidden: bool = False,
) -> inspect.Parameter:
    """A command option that is not a setting (``--config``, ``--ready-file``, ...)."""
    option = typer.Option(
        *decls, help=help, rich_help_panel=panel, show_default=False, hidden=hidden
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[value_type, option],
    )


def settings_command(
    name: str,
    doc: str,
    specs: Sequence[Spec],
    extras: Sequence[inspect.Parameter],
    body: CommandBody,
) -> Callable[..., None]:
    """A function typer turns into a command with one option per spec plus ``extras``.

    ``body(flags, extras)`` gets the settings' flag values by key (None: not given) and the
    extra options' values by name.
    """
    keys = [spec.key for spec in specs]

    def command(**values: Any) -> None:
        flags: dict[str, object] = {key: values.pop(key) for key in keys}
        body(flags, values)

    command.__name__ = name
    command.__doc__ = doc
    params = [spec_parameter(spec) for spec in specs]
    command.__signature__ = inspect.Signature([*params, *extras])  # type: ignore[attr-defined]
    return command
