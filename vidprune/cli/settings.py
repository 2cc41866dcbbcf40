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

from vidprune.spec import Flag, SweepSpec


class SettingsGroup:
    """The default of a command's placeholder parameter: `with_settings` replaces the parameter by the options
    of every setting whose flag is in `group`, and passes the command their values as one dict, keyed by
    field name (None, or False for a flag, where not given)."""

    def __init__(self, group: str):
        self.group = group


@functools.lru_cache(maxsize=None)
def _flags(spec_cls: type) -> dict[str, tuple[Flag, Any]]:
    """{field name: (flag, option value type)} of every setting that declares a flag. The value type is the
    field's (Optional, so that "not given" is None), a flag for a bool, and text for a setting that parses
    what is typed."""
    hints = typing.get_type_hints(spec_cls)
    flags = {}
    for field in dataclasses.fields(spec_cls):
        flag = field.metadata["setting"].flag
        if flag is None:
            continue
        args = [a for a in typing.get_args(hints[field.name]) if a is not type(None)]
        value_type = args[0] if typing.get_origin(hints[field.name]) is typing.Union and len(args) == 1 \
            else hints[field.name]
        if flag.parse is not None:
            flags[field.name] = (flag, Optional[str])
        else:
            flags[field.name] = (flag, bool if value_type is bool else Optional[value_type])
    return flags


def _declared(name: str) -> tuple[Flag, Any]:
    flags = _flags(SweepSpec)
    if name not in flags:
        raise ValueError(f"sweep setting '{name}' declares no command-line flag")
    return flags[name]


def option_type(name: str) -> Any:
    return _declared(name)[1]


def option(name: str) -> Any:
    """The typer.Option of the setting `name`, for a command's signature (with `option_type(name)`)."""
    flag, value_type = _declared(name)
    return typer.Option(False if value_type is bool else None, *flag.names, help=flag.help)


def given(values: dict) -> dict:
    """The settings the user gave, as SweepSpec field values (a flag's text parsed where it declares how)."""
    parse = {name: flag.parse for name, (flag, _) in _flags(SweepSpec).items() if flag.parse is not None}
    return {name: (parse[name](value) if name in parse else value)
            for name, value in values.items() if value is not None and value is not False}


def with_settings(command: Callable) -> Callable:
    """Give `command` one option per flagged setting in place of each `SettingsGroup` parameter (see there)."""
    hints = typing.get_type_hints(command)
    parameters, groups = [], {}
    for parameter in inspect.signature(command).parameters.values():
        if not isinstance(parameter.default, SettingsGroup):
            parameters.append(parameter.replace(annotation=hints.get(parameter.name, parameter.annotation)))
            continue
        names = [name for name, (flag, _) in _flags(SweepSpec).items() if flag.group == parameter.default.group]
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

    # keyword-only: Typer passes every option by name, and the generated ones sit among the declared ones
    wrapper.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters])
    return wrapper
