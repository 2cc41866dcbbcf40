"""`vidprune profile`: the device and environment, then every measurement of one model at one point."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vidprune.cli.app import (ATTENTION_OPTION, DEVICE_OPTION, DTYPE_OPTION, FRAMES_OPTION, SET_ONE_OPTION,
                              SIZE_OPTION, app, console, single_options, user_errors)
from vidprune.cli.settings import option
from vidprune.errors import VidpruneError


@app.command()
@user_errors
def profile(
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b",
                                           help="backbone (default: the method's, vit-b for none/evad)"),
    method: str = typer.Option("none", "--method", "-m", help="method in place (default none)"),
    keep: Optional[str] = typer.Option(None, "--keep", "-k", help="knob value (default: the method's default)"),
    set_: Optional[List[str]] = SET_ONE_OPTION,
    frames: Optional[int] = FRAMES_OPTION,
    size: Optional[int] = SIZE_OPTION,
    batch: int = typer.Option(1, "--batch"),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    attention: str = ATTENTION_OPTION,
    repeats: Optional[int] = typer.Option(None, "--repeats"),
    warmup: Optional[int] = typer.Option(None, "--warmup"),
    autocast: bool = option("autocast"),
    compile_: bool = option("compile"),
    power: bool = option("power"),
    peak: bool = option("peak"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON instead of tables"),
) -> None:
    """Show the device and environment, then GFLOPs, params, latency, memory, throughput and fidelity of one
    model; with --peak, the device's GEMM throughput and the fraction of it the model achieves."""
    from vidprune import registry
    from vidprune.metrics import labelled_columns
    from vidprune.runner import Runner
    from vidprune.spec import Point, SweepSpec, parse_keeps

    method_cls = registry.get_method(method)
    options = single_options(set_ or [], method_cls, "profile measures one point: --set {name} takes one value, "
                             "got '{values}'. Use `vidprune sweep` for a grid.")
    if keep is not None:
        values = parse_keeps(keep)
        if len(values) != 1:
            raise VidpruneError(f"profile measures one point: --keep takes one value, got '{keep}'. "
                                "Use `vidprune sweep` for several.")
        keep = values[0]
    spec = SweepSpec(method=method, keeps=[keep] if keep is not None else [], backbone=backbone, frames=frames,
                     size=size, batch=batch, device=device, dtype=dtype, attention=attention, repeats=repeats,
                     warmup=warmup, autocast=autocast, compile=compile_, power=power, peak=peak)
    if method_cls.knob is not None:
        keep = method_cls.knob.validate(method_cls.knob.default if keep is None else keep)
    registry.parse_options(method_cls, options)
    runner = Runner(spec)
    point = Point(method, keep if method != "none" else None, options)
    # A configuration that cannot be built (unknown backbone, --frames 7, bad layers) is a user error (exit 2),
    # not a failed measurement, which `measure` would record instead of raising.
    runner.build(point)
    backbone = spec.backbone
    with console.status(f"measuring {backbone} with {method} on {runner.device}...") if not as_json else nullcontext():
        row = runner.measure(point)
    peak_result = runner.peak() if peak else None
    if as_json:
        extra = {"peak": {"macs_per_s": peak_result.macs_per_s, "size": peak_result.size}} if peak_result else {}
        print(json.dumps({"environment": runner.environment, "result": row, **extra}, default=str, indent=2))
    else:
        env = Table(title="environment", show_header=False)
        for key, value in runner.environment.items():
            env.add_row(key, str(value))
        console.print(env)
        res = Table(title=f"{backbone} + {method}" + (f" (keep {keep:g})" if keep is not None and method != "none" else ""))
        res.add_column("measure")
        res.add_column("value", justify="right")
        for column in labelled_columns():
            if row.get(column.name) is not None:
                res.add_row(column.label, column.fmt.format(row[column.name]))
        if peak_result is not None:
            res.add_row(f"peak GEMM ({peak_result.size}^3, {row['dtype']})",
                        f"{peak_result.macs_per_s / 1e9:.1f} GMAC/s (1 MAC = 1 FLOP)")
        res.add_row("status", escape(row["status"] + (f": {row['error']}" if row["error"] else "")))
        console.print(res)
    if row["status"] != "ok":
        raise typer.Exit(1)
