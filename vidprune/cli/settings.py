"""Command-line options built from the sweep settings' declarations (`vidprune.spec`): a setting's flag,
help text and value type are written once, on its SweepSpec field, and every command that offers the
setting gets its option from there."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Optional

import typer

from vidprune.spec import Flag, SweepSpec, settings


class SettingsGroup:
    """The default of a command's placeholder parameter: `with_settings` replaces the parameter by the options
    of every setting whose flag is in `group`, and passes the command their values as one dict, keyed by
    field name (None, or False for a flag, where not given)."""

    def __init__(self, group: str):
        self.group = group


def _declared(name: str) -> tuple[dataclasses.Field, Flag]:
    field, meta = next((f, m) for f, m in settings() if f.name == name)
    if meta.flag is None:
        raise ValueError(f"sweep setting '{name}' declares no command-line flag")
    return field, meta.flag


def option_type(name: str) -> Any:
    """The option's value type: the field's (Optional, so that "not given" is None), a flag for a bool, and
    text for a setting that parses what is typed."""
    field, flag = _declared(name)
    if flag.parse is not None:
        return Optional[str]
    hint = typing.get_type_hints(SweepSpec)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    value_type = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    return bool if value_type is bool else Optional[value_type]


def option(name: str) -> Any:
    """The typer.Option of the setting `name`, for a command's signature (with `option_type(name)`)."""
    _, flag = _declared(name)
    return typer.Option(False if option_type(name) is bool else None, *flag.names, help=flag.help)


def given(values: dict) -> dict:
    """The settings the user gave, as SweepSpec field values (a flag's text parsed where it declares how)."""
    parse = {f.name: m.flag.parse for f, m in settings() if m.flag is not None}
    return {name: (parse[name](value) if parse.get(name) else value)
            for name, value in values.items() if value is not None and value is not False}


def with_settings(command: Callable) -> Callable:
    """Give `command` one option per flagged setting in place of each `SettingsGroup` parameter (see there)."""
    hints = typing.get_type_hints(command)
    parameters, groups = [], {}
    for parameter in inspect.signature(command).parameters.values():
        if not isinstance(parameter.default, SettingsGroup):
            parameters.append(parameter.replace(annotation=hints.get(parameter.name, parameter.annotation)))
            continue
        names = [f.name for f, m in settings() if m.flag is not None and m.flag.group == parameter.default.group]
        groups[parameter.name] = names
        for name in names:
            parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option(name),
                                                annotation=option_type(name)))
    taken = [p.name for p in parameters]
    if len(taken) != len(set(taken)):
        raise ValueError(f"{command.__name__}: a parameter has the name of a sweep setting")

    @functools.wraps(command)
    def wrapper(**kwargs):
        for group, names in groups.items():
            kwargs[group] = {name: kwargs.pop(name) for name in names}
        return command(**kwargs)

    kinds = inspect.Parameter.KEYWORD_ONLY
    wrapper.__signature__ = inspect.Signature([p.replace(kind=kinds) for p in parameters])
    return wrapper
