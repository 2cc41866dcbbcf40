"""The `vidprune` command line: parse, validate, call the library, render with Rich.

Every user mistake is a `VidpruneError`, printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import vidprune
from vidprune import cli_accuracy
from vidprune.errors import VidpruneError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Measure the efficiency/accuracy trade-off of video-transformer token pruning and merging.\n\n"
                       "GFLOPs are always 1 multiply-accumulate = 1 FLOP, per clip, per view.")
# Off a terminal (pipes, CI logs, tests) Rich would wrap tables at 80 columns and squeeze them unreadable.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def progress_bar() -> "Progress":
    """The progress display of long passes over data (eval, train, sweep --data), on stderr."""
    from rich.progress import MofNCompleteColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False)


def user_errors(fn):
    """Turn a VidpruneError into one line on stderr and exit code 2, and anything unexpected into one line
    and exit code 1 (VIDPRUNE_DEBUG=1 shows the traceback), the same under the console script and CliRunner."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VidpruneError as exc:
            err_console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, click.exceptions.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("VIDPRUNE_DEBUG"):
                raise
            err_console.print(f"internal error: {type(exc).__name__}: {exc} (set VIDPRUNE_DEBUG=1 for the "
                              "traceback and please report it)", style="red", markup=False, highlight=False,
                              soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        import torch

        console.print(f"vidprune {vidprune.__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def _csv_list(text: Optional[str]) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# Execution options `sweep` and `profile` share.
AUTOCAST_OPTION = typer.Option(False, "--autocast", help="keep fp32 weights and run under torch.autocast in --dtype "
                               "(default: cast the weights to --dtype)")
COMPILE_OPTION = typer.Option(False, "--compile", help="torch.compile each model before timing (the warm-up compiles "
                              "every token-count shape)")
POWER_OPTION = typer.Option(False, "--power", help="average watts and joules per clip over a timed window (NVML on "
                            "NVIDIA GPUs, tegrastats on Jetson)")
PEAK_OPTION = typer.Option(False, "--peak", help="achieved FLOP/s as a fraction of a GEMM microbenchmark in --dtype "
                           "(column peak_fraction)")


@app.command()
@user_errors
def sweep(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="method to sweep (see `vidprune list`)"),
    keep: Optional[str] = typer.Option(None, "--keep", "-k",
                                       help="knob values: 0.6,0.7,0.8 or a range 0.5:0.9:0.1 (default: the method's default)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="method option, name=value or a grid name=a,b (repeatable)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe under recipes/; flags given here override it"),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="backbone (default: the method's, vit-b for evad)"),
    frames: Optional[int] = typer.Option(None, "--frames", help="frames per clip (default: the backbone's, 16)"),
    size: Optional[int] = typer.Option(None, "--size", help="input height = width in pixels (default 224)"),
    classes: Optional[int] = typer.Option(None, "--classes", help="classifier classes (default 400)"),
    batch: Optional[int] = typer.Option(None, "--batch", help="clips per forward for latency/throughput (default 1)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N | mps | auto (default auto)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | fp16 | bf16 (default fp32)"),
    attention: Optional[str] = typer.Option(None, "--attention", help="sdpa (fused) | math (explicit) (default sdpa)"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="subset of flops,fvcore,params,latency,memory,"
                                          "throughput,fidelity (default all; flops alone takes seconds)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="timed runs per point (default 5 on CPU, 30 on GPU, more for fast "
                                         "models: at least 1 s of timed runs)"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="untimed warm-up runs (default 2 on CPU, 10 on GPU)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for inputs and random choices (default 0)"),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="folder for the result table"),
    fmt: str = typer.Option("csv", "--format", help="csv | parquet"),
    resume: bool = typer.Option(False, "--resume", help="continue the newest table of this sweep in --out: "
                                "measure only the points without an ok row"),
    isolate: bool = typer.Option(False, "--isolate", help="measure each point in its own process "
                                 "(= --executor subprocess)"),
    executor: str = typer.Option("local", "--executor", help="local | subprocess | ray | slurm (docs/scaling.md)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join, e.g. auto or "
                                              "ray://head:10001 (default: start a local Ray)"),
    ray_resources: Optional[str] = typer.Option(None, "--ray-resources", help="custom Ray resources each point "
                                                "needs, e.g. jetson=1"),
    slurm_option: Optional[List[str]] = typer.Option(None, "--slurm-option", help="submitit parameter key=value "
                                                     "(repeatable), e.g. slurm_partition=gpu, timeout_min=120"),
    autocast: bool = AUTOCAST_OPTION,
    compile_: bool = COMPILE_OPTION,
    power: bool = POWER_OPTION,
    peak: bool = PEAK_OPTION,
    fidelity_clips: Optional[int] = typer.Option(None, "--fidelity-clips", help="generated clips for agreement/kl/"
                                                 "cosine when no --data (default 4 on CPU, 32 on GPU)"),
    data: Optional[Path] = cli_accuracy.DATA_OPTION,
    root: Optional[Path] = cli_accuracy.ROOT_OPTION,
    checkpoint: Optional[Path] = cli_accuracy.CHECKPOINT_OPTION,
    sampling: str = cli_accuracy.SAMPLING_OPTION,
    stride: int = cli_accuracy.STRIDE_OPTION,
    clips: int = cli_accuracy.CLIPS_OPTION,
    crops: int = cli_accuracy.CROPS_OPTION,
    short_side: Optional[int] = cli_accuracy.SHORT_SIDE_OPTION,
    norm: str = cli_accuracy.NORM_OPTION,
    eval_batch: int = typer.Option(4, "--eval-batch", help="videos per forward pass on --data"),
    workers: int = cli_accuracy.WORKERS_OPTION,
    limit: Optional[int] = cli_accuracy.LIMIT_OPTION,
    trust_checkpoint: bool = cli_accuracy.TRUST_OPTION,
) -> None:
    """Measure the unpruned reference and one row per knob value; write a tidy table. With --data (and
    --checkpoint) the same table gets top-1/top-5 accuracy and fidelity on that dataset."""
    from vidprune import registry
    from vidprune.executors import EXECUTORS, REMOTE_EXECUTORS, parse_resources, parse_slurm_options
    from vidprune.recipes import load_recipe
    from vidprune.report.tables import render_rich, summary_table
    from vidprune.results import read_tables, result_filename
    from vidprune.store import ResultStore
    from vidprune.sweep import ALL_METRICS, SweepSpec, config_hash, expand_points, parse_keeps, parse_set, run_sweep

    if fmt not in ("csv", "parquet"):
        raise VidpruneError(f"--format must be csv or parquet, got '{fmt}'.")
    if isolate:
        if executor not in ("local", "subprocess"):
            raise VidpruneError(f"--isolate means --executor subprocess; drop one of --isolate and --executor {executor}.")
        executor = "subprocess"
    if executor not in EXECUTORS:
        raise VidpruneError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'.")
    if (ray_address or ray_resources) and executor != "ray":
        raise VidpruneError("--ray-address and --ray-resources need --executor ray.")
    if slurm_option and executor != "slurm":
        raise VidpruneError("--slurm-option needs --executor slurm.")
    executor_options = {"ray_address": ray_address, "ray_resources": ray_resources,
                        "slurm_options": parse_slurm_options(slurm_option or []), "slurm_folder": str(out / ".submitit")}
    parse_resources(ray_resources)
    base: dict = {}
    references: list = []
    if recipe is not None:
        loaded = load_recipe(recipe)
        base = dict(loaded["sweep"])
        references = loaded["references"]
        if "keep" in base:
            base["keeps"] = parse_keeps(",".join(str(k) for k in base.pop("keep")) if isinstance(base["keep"], list)
                                        else str(base.pop("keep")))
        base["options"] = dict(base.get("options") or {})
        if "metrics" in base and isinstance(base["metrics"], str):
            base["metrics"] = _csv_list(base["metrics"])
    if method is None and "method" not in base:
        raise VidpruneError("no method given. Use --method evad (see `vidprune list`) or --recipe recipes/<file>.yaml.")
    overrides = dict(method=method, backbone=backbone, frames=frames, size=size, classes=classes, batch=batch,
                     device=device, dtype=dtype, attention=attention, repeats=repeats, warmup=warmup, seed=seed,
                     autocast=autocast or None, compile=compile_ or None, power=power or None, peak=peak or None,
                     fidelity_clips=fidelity_clips)
    base.update({k: v for k, v in overrides.items() if v is not None})
    if keep is not None:
        base["keeps"] = parse_keeps(keep)
    if metrics is not None:
        base["metrics"] = _csv_list(metrics)
    if "metrics" in base:
        base["metrics"] = tuple(base["metrics"])
    method_cls = registry.get_method(base["method"])
    # A recipe's YAML list is a grid for a grid option and one value (e.g. layers: [4, 7, 10]) otherwise.
    grid_of = {o.name: o.grid for o in method_cls.options}
    base["options"] = {k: (v if isinstance(v, list) and grid_of.get(k, True)
                           else [",".join(map(str, v)) if isinstance(v, list) else v])
                       for k, v in (base.get("options") or {}).items()}
    if set_:
        base.setdefault("options", {}).update(parse_set(set_, method_cls))
    setup = None
    if data is not None or root is not None:
        # The dataset decides backbone (from the checkpoint), geometry and classes unless flags say otherwise.
        setup = cli_accuracy.open_dataset(
            data=data, root=root, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint, method_cls=method_cls,
            backbone=base.get("backbone"), frames=base.get("frames"), size=base.get("size"),
            classes=base.get("classes"), attention=base.get("attention", "sdpa"), seed=base.get("seed", 0),
            warn=lambda t: err_console.print(f"[yellow]warning:[/yellow] {escape(t)}", soft_wrap=True),
            say=lambda t: console.print(escape(t)))
        base.update(backbone=setup.backbone, frames=setup.frames, size=setup.size, classes=setup.classes)
        # fidelity comes from the dataset pass, on real clips, instead of generated ones
        base["metrics"] = tuple(m for m in base.get("metrics", ALL_METRICS) if m != "fidelity")
    elif checkpoint is not None:
        raise VidpruneError("--checkpoint in a sweep needs a dataset to evaluate on: add --data LIST --root DIR "
                            "(or use `vidprune eval`).")
    spec = SweepSpec(**base, references=references, recipe=str(recipe) if recipe else None)
    registry.get_backbone(spec.backbone)
    points = expand_points(spec)

    from vidprune.measure.device import resolve_device

    # With Ray or Slurm the points run elsewhere: name the table after the device asked for.
    device_tag = str(spec.device).strip().lower() if executor in REMOTE_EXECUTORS else str(resolve_device(spec.device))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    import torch

    with torch.device("meta"):  # only its geometry is read
        probe = registry.create_model(spec.backbone, "none", frames=spec.frames, size=spec.size, classes=spec.classes)
    name = result_filename(spec.method, spec.backbone, probe.info.frames, probe.info.size, device_tag, spec.dtype,
                           torch.__version__, stamp, fmt)
    hashes = [config_hash(spec, p) for p in points]
    store = ResultStore.find_resumable(out, name, hashes) if resume else None
    done = (store.ok_hashes() & set(hashes)) if store is not None else set()
    if resume:
        err_console.print(f"resuming {store.path}: {len(done)} of {len(points)} point(s) already ok" if store
                          else f"nothing to resume in {out} for this sweep; starting a new table",
                          markup=False, highlight=False)
    failed = 0
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=err_console, transient=False)

    def on_row(point, row):
        nonlocal failed
        progress.update(task, advance=1, description=f"{point.label}: {row['status']}")
        if row["status"] != "ok":
            failed += 1
            err_console.print(f"[yellow]point {escape(point.label)} {row['status']}: {escape(str(row['error']))}[/yellow]")

    # run_sweep checks every point (metrics, repeats, dtype, layers, ...) when called: do that before the
    # progress bar starts, so a bad flag prints just its one error line.
    measured = run_sweep(spec, on_row=on_row, executor=executor, skip=done, executor_options=executor_options)
    dataset_columns: dict = {}
    if setup is not None:
        from vidprune.measure.device import resolve_dtype

        todo = [p for p in points if config_hash(spec, p) not in done]
        result = cli_accuracy.evaluate_dataset(
            setup, todo, device=resolve_device(spec.device), dtype=resolve_dtype(spec.dtype), seed=spec.seed,
            sampling=sampling, stride=stride, clips=clips, crops=crops, short_side=short_side, norm=norm,
            batch=eval_batch, workers=workers, limit=limit, progress_bar=progress_bar, warn=lambda t: err_console.print(
                f"[yellow]warning:[/yellow] {escape(t)}", soft_wrap=True))
        dataset_columns = {config_hash(spec, p): c for p, c in zip(todo, result.columns)}
    if store is None:
        store = ResultStore.reserve(out, name)
    path = store.path
    with progress:
        task = progress.add_task(f"{spec.method} on {spec.backbone}", total=len(points) - len(done))
        for row in measured:
            if row.get("config_hash") in dataset_columns:
                row = cli_accuracy.dataset_row(row, setup, result, dataset_columns[row["config_hash"]])
            store.add([row])  # read-merge-write under a lock: concurrent writers of this table lose nothing
    store.reorder(hashes)
    df = read_tables([str(path)]).drop(columns=["result_file"])
    console.print(render_rich(summary_table(df), title=f"{spec.method} on {spec.backbone} ({device_tag}, {spec.dtype}, batch {spec.batch})"))
    console.print("GFLOPs: 1 multiply-accumulate = 1 FLOP, per clip, per view (primary counter: torch.utils.flop_counter).")
    # sweep.py joins a row's notes with " | " (a single note may itself contain "; ")
    all_notes = [n for cell in df["notes"].dropna() for n in str(cell).split(" | ") if n]
    for note in dict.fromkeys(n for n in all_notes if not n.startswith("thop reads")):
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    if any(n.startswith("thop reads") for n in all_notes):
        console.print("note: thop reads lower than the primary counter: it hooks modules only and misses the attention matmuls.")
    if "fidelity_source" in df.columns and (df["fidelity_source"] == "generated clips").any():
        console.print("note: agreement/cosine compare each point with the unpruned model on generated clips "
                      "and random weights: they say how far a method moves the model, not task accuracy; near-uniform random-weight "
                      "predictions make agreement fragile, cosine is the steadier of the two. Add --data and "
                      "--checkpoint for accuracy.")
    console.print(f"wrote {path}")
    if failed:
        err_console.print(f"[red]{failed} point(s) did not measure cleanly; see the status and error columns.[/red]")
        raise typer.Exit(1)


@app.command()
@user_errors
def profile(
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="backbone (default: the method's, vit-b for none/evad)"),
    method: str = typer.Option("none", "--method", "-m", help="method in place (default none)"),
    keep: Optional[str] = typer.Option(None, "--keep", "-k", help="knob value (default: the method's default)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="method option name=value (repeatable)"),
    frames: Optional[int] = typer.Option(None, "--frames"),
    size: Optional[int] = typer.Option(None, "--size"),
    batch: int = typer.Option(1, "--batch"),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | cuda:N | mps | auto"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | fp16 | bf16"),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa | math"),
    repeats: Optional[int] = typer.Option(None, "--repeats"),
    warmup: Optional[int] = typer.Option(None, "--warmup"),
    autocast: bool = AUTOCAST_OPTION,
    compile_: bool = COMPILE_OPTION,
    power: bool = POWER_OPTION,
    peak: bool = PEAK_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON instead of tables"),
) -> None:
    """Show the device and environment, then GFLOPs, params, latency, memory, throughput and fidelity of one
    model; with --peak, the device's GEMM throughput and the fraction of it the model achieves."""
    from vidprune import registry
    from vidprune.sweep import Point, Runner, SweepSpec, parse_keeps, parse_set

    method_cls = registry.get_method(method)
    options = {k: v[0] for k, v in parse_set(set_ or [], method_cls).items()}
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
    with console.status(f"measuring {backbone} with {method} on {runner.device}...") if not as_json else _null():
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
        for key, label, fmtstr in [("gflops", "GFLOPs (1 MAC = 1 FLOP, per clip)", "{:.2f}"),
                                   ("gflops_fvcore", "GFLOPs, fvcore", "{:.2f}"), ("gflops_thop", "GFLOPs, thop", "{:.2f}"),
                                   ("params_m", "parameters (M)", "{:.2f}"), ("latency_ms", "latency median (ms)", "{:.2f}"),
                                   ("latency_iqr_ms", "latency IQR (ms)", "{:.2f}"),
                                   ("peak_mem_mib", "peak memory added (MiB)", "{:.1f}"),
                                   ("throughput", "throughput (clips/s)", "{:.2f}"),
                                   ("throughput_batch", "batch", "{}"), ("tokens_per_block", "tokens per block", "{}"),
                                   ("agreement", "agreement with unpruned (generated clips, random weights: fragile)", "{:.3f}"),
                                   ("kl", "KL to unpruned (nats)", "{:.4f}"), ("cosine", "feature cosine to unpruned", "{:.4f}"),
                                   ("power_w", "average power (W)", "{:.1f}"),
                                   ("energy_j_per_clip", "energy per clip (J)", "{:.3f}"),
                                   ("power_source", "power source", "{}"),
                                   ("peak_fraction", "achieved / peak GEMM FLOP/s", "{:.1%}")]:
            if row.get(key) is not None:
                res.add_row(label, fmtstr.format(row[key]))
        if peak_result is not None:
            res.add_row(f"peak GEMM ({peak_result.size}^3, {row['dtype']})",
                        f"{peak_result.macs_per_s / 1e9:.1f} GMAC/s (1 MAC = 1 FLOP)")
        res.add_row("status", escape(row["status"] + (f": {row['error']}" if row["error"] else "")))
        console.print(res)
    if row["status"] != "ok":
        raise typer.Exit(1)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@app.command()
@user_errors
def plot(
    files: List[str] = typer.Argument(..., help="result tables (CSV or Parquet); globs allowed"),
    x: str = typer.Option("gflops", "--x", help="cost column for the x axis"),
    y: Optional[str] = typer.Option(None, "--y", help="quality column (default accuracy if present, else throughput)"),
    out: Path = typer.Option(Path("results/plots"), "--out", "-o", help="folder for PNG and SVG"),
    name: Optional[str] = typer.Option(None, "--name", help="file name without extension"),
) -> None:
    """Pareto plots of any cost column against any quality column, one line per method."""
    from vidprune.report.plot import plot_tradeoff
    from vidprune.results import read_tables

    df = read_tables(files)
    for path in plot_tradeoff(df, x=x, y=y, out_dir=out, name=name):
        console.print(f"wrote {path}")


@app.command()
@user_errors
def table(
    files: List[str] = typer.Argument(..., help="result tables (CSV or Parquet); globs allowed"),
    fmt: str = typer.Option("rich", "--format", help="rich | markdown | latex | csv"),
) -> None:
    """Render result tables the way the papers print them."""
    from vidprune.report.tables import render_rich, summary_table, to_latex, to_markdown
    from vidprune.results import read_tables

    summary = summary_table(read_tables(files))
    if fmt == "rich":
        console.print(render_rich(summary))
    elif fmt == "markdown":
        print(to_markdown(summary))
    elif fmt == "latex":
        print(to_latex(summary))
    elif fmt == "csv":
        print(summary.to_csv(index=False), end="")
    else:
        raise VidpruneError(f"--format must be rich, markdown, latex or csv, got '{fmt}'.")


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


cli_accuracy.register(app)
from vidprune import cli_export  # noqa: E402  (registers on the app defined above)

cli_export.register(app)


def main() -> None:
    app()
