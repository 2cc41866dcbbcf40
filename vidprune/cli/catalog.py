"""`vidprune list`: the registered backbones and methods, with knobs, options and defaults."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from vidprune.cli.app import app, console, user_errors


@app.command("list")
@user_errors
def list_(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Backbones, methods, their knobs, options and defaults."""
    from vidprune import registry

    backbones = registry.backbones()
    methods = registry.methods()
    if as_json:
        print(json.dumps({
            "backbones": {n: {"family": s.family, "description": s.description, **s.defaults} for n, s in backbones.items()},
            "methods": {n: {"description": c.description, "families": list(c.families),
                            "knob": None if c.knob is None else {"name": c.knob.name, "default": c.knob.default,
                                                                 "range": c.knob.describe_range(), "help": c.knob.help},
                            "options": {o.name: {"default": o.default, "help": o.help} for o in c.options}}
                        for n, c in methods.items()},
        }, indent=2, default=str))
        return
    bt = Table(title="backbones")
    for col in ("name", "family", "frames x size", "description"):
        bt.add_column(col)
    for n, s in backbones.items():
        bt.add_row(n, s.family, f"{s.defaults.get('frames')}x{s.defaults.get('size')}", s.description)
    console.print(bt)
    mt = Table(title="methods")
    for col in ("name", "knob (--keep)", "default", "range", "options (--set)", "backbones", "description"):
        mt.add_column(col)
    for n, c in methods.items():
        knob = c.knob
        supported = ", ".join(b for b, s in backbones.items() if s.family in c.families)
        mt.add_row(n, knob.name if knob else "-", f"{knob.default:g}" if knob else "-",
                   knob.describe_range() if knob else "-",
                   "\n".join(f"{o.name}={o.default}" for o in c.options) or "-", supported, c.description)
    console.print(mt)
