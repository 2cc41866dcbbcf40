"""`vidprune sweep`: the unpruned reference and one row per knob value into a result table, measured
locally or on Ray / Slurm; with --data, accuracy on a labelled dataset in the same table."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from vidprune.cli.app import (CHECKPOINT_OPTION, CLIPS_OPTION, CROPS_OPTION, DATA_OPTION, LIMIT_OPTION, NORM_OPTION,
                              OUT_OPTION, ROOT_OPTION, SAMPLING_OPTION, SHORT_SIDE_OPTION, STRIDE_OPTION,
                              TABLE_FORMAT_OPTION, TRUST_OPTION, WORKERS_OPTION, app, check_table_format, console,
                              err_console, progress_task, say, user_errors, warn)
from vidprune.cli.settings import SettingsGroup, given, with_settings
from vidprune import notes
from vidprune.errors import VidpruneError


@app.command()
@user_errors
@with_settings
def sweep(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="method to sweep (see `vidprune list`)"),
    keep: Optional[str] = typer.Option(None, "--keep", "-k",
                                       help="knob values: 0.6,0.7,0.8 or a range 0.5:0.9:0.1 (default: the method's default)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="method option, name=value or a grid name=a,b (repeatable)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe under recipes/; flags given here override it"),
    # --backbone ... --seed: the sweep settings of group "model" (vidprune/spec.py)
    model_settings: dict = SettingsGroup("model"),
    out: Path = OUT_OPTION,
    fmt: str = TABLE_FORMAT_OPTION,
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
    # --autocast ... --fidelity-clips: the sweep settings of group "run"
    run_settings: dict = SettingsGroup("run"),
    data: Optional[Path] = DATA_OPTION,
    root: Optional[Path] = ROOT_OPTION,
    checkpoint: Optional[str] = CHECKPOINT_OPTION,
    sampling: str = SAMPLING_OPTION,
    stride: int = STRIDE_OPTION,
    clips: int = CLIPS_OPTION,
    crops: int = CROPS_OPTION,
    short_side: Optional[int] = SHORT_SIDE_OPTION,
    norm: str = NORM_OPTION,
    eval_batch: int = typer.Option(4, "--eval-batch", help="videos per forward pass on --data"),
    workers: int = WORKERS_OPTION,
    limit: Optional[int] = LIMIT_OPTION,
    trust_checkpoint: bool = TRUST_OPTION,
) -> None:
    """Measure the unpruned reference and one row per knob value; write a tidy table. With --data (and
    --checkpoint) the same table gets top-1/top-5 accuracy and fidelity on that dataset."""
    from vidprune import registry
    from vidprune import models
    from vidprune.accuracy import dataset_row, evaluate_dataset, open_dataset
    from vidprune.executors import EXECUTORS, REMOTE_EXECUTORS, parse_resources, parse_slurm_options
    from vidprune.metrics import selectable, without_dataset_measured
    from vidprune.recipes import load_recipe, recipe_settings
    from vidprune.report.tables import render_rich, summary_table
    from vidprune.results import read_tables, result_filename
    from vidprune.store import ResultStore
    from vidprune.spec import SweepSpec, config_hash, parse_keeps, parse_set
    from vidprune.sweep import expand_points, run_sweep

    check_table_format(fmt)
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
        base = recipe_settings(loaded)
        references = loaded["references"]
    if method is None and "method" not in base:
        raise VidpruneError("no method given. Use --method evad (see `vidprune list`) or --recipe recipes/<file>.yaml.")
    # flags given here override the recipe
    base.update(given({"method": method, **model_settings, **run_settings}))
    if keep is not None:
        base["keeps"] = parse_keeps(keep)
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
        setup = open_dataset(
            data=data, root=root, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint, method_cls=method_cls,
            backbone=base.get("backbone"), frames=base.get("frames"), size=base.get("size"),
            classes=base.get("classes"), attention=base.get("attention", "sdpa"), seed=base.get("seed", 0),
            warn=warn, say=say)
        base.update(backbone=setup.backbone, frames=setup.frames, size=setup.size, classes=setup.classes)
        # fidelity comes from the dataset pass, on real clips, instead of generated ones
        base["metrics"] = without_dataset_measured(base.get("metrics", selectable()))
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
        probe = models.create_model(spec.backbone, "none", frames=spec.frames, size=spec.size, classes=spec.classes)
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
        result = evaluate_dataset(
            setup, todo, device=resolve_device(spec.device), dtype=resolve_dtype(spec.dtype), seed=spec.seed,
            sampling=sampling, stride=stride, clips=clips, crops=crops, short_side=short_side, norm=norm,
            batch=eval_batch, workers=workers, limit=limit, progress=progress_task, warn=warn)
        dataset_columns = {config_hash(spec, p): c for p, c in zip(todo, result.columns)}
    if store is None:
        store = ResultStore.reserve(out, name)
    path = store.path
    with progress:
        task = progress.add_task(f"{spec.method} on {spec.backbone}", total=len(points) - len(done))
        for row in measured:
            if row.get("config_hash") in dataset_columns:
                row = dataset_row(row, setup, result, dataset_columns[row["config_hash"]])
            store.add([row])  # read-merge-write under a lock: concurrent writers of this table lose nothing
    store.reorder(hashes)
    df = read_tables([str(path)]).drop(columns=["result_file"])
    title = f"{spec.method} on {spec.backbone} ({device_tag}, {spec.dtype}, batch {spec.batch})"
    console.print(render_rich(summary_table(df), title=title))
    console.print("GFLOPs: 1 multiply-accumulate = 1 FLOP, per clip, per view (primary counter: torch.utils.flop_counter).")
    # Each note once; a kind with a summary (thop reading low) says it once for the table instead.
    all_notes = [n for cell in df["notes"].dropna() for n in notes.split_cell(cell)]
    summaries = {}
    for note in dict.fromkeys(all_notes):
        kind = notes.kinds().get(notes.code_of(note))
        if kind is not None and kind.summary:
            summaries.setdefault(kind.code, kind.summary)
        else:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")
    for summary in summaries.values():
        console.print(f"note: {summary}")
    if "fidelity_source" in df.columns and (df["fidelity_source"] == "generated clips").any():
        console.print("note: agreement/cosine compare each point with the unpruned model on generated clips "
                      "and random weights: they say how far a method moves the model, not task accuracy; "
                      "near-uniform random-weight predictions make agreement fragile, cosine is the steadier of the "
                      "two. Add --data and --checkpoint for accuracy.")
    console.print(f"wrote {path}")
    if failed:
        err_console.print(f"[red]{failed} point(s) did not measure cleanly; see the status and error columns.[/red]")
        raise typer.Exit(1)
