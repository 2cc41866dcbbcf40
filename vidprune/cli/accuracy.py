"""The accuracy side of the command line: `vidprune eval` and `vidprune data synth` (`vidprune train` is
in train.py). The dataset pass itself is library code, in vidprune/accuracy.py."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vidprune.cli.app import (ATTENTION_OPTION, CHECKPOINT_FRAMES_OPTION, CHECKPOINT_OPTION, CHECKPOINT_SIZE_OPTION,
                              CLIPS_OPTION, CROPS_OPTION, DATA_OPTION, DEVICE_OPTION, DTYPE_OPTION, LIMIT_OPTION,
                              NORM_OPTION, OUT_OPTION, ROOT_OPTION, SAMPLING_OPTION, SEED_OPTION, SHORT_SIDE_OPTION,
                              STRIDE_OPTION, TABLE_FORMAT_OPTION, TRUST_OPTION, WORKERS_OPTION, app,
                              check_table_format, console, err_console, progress_bar, progress_task, say,
                              user_errors, warn)
from vidprune.metrics import dataset_metrics

EVAL_DEFAULT_METRICS = "flops,params"


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@app.command("eval")
@user_errors
def eval_(
    data: Optional[Path] = DATA_OPTION,
    root: Optional[Path] = ROOT_OPTION,
    checkpoint: Optional[str] = CHECKPOINT_OPTION,
    method: str = typer.Option("none", "--method", "-m", help="method to evaluate (see `vidprune list`)"),
    keep: Optional[str] = typer.Option(None, "--keep", "-k", help="knob values: 0.5,0.7,1.0 or 0.5:0.9:0.1"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="method option name=value or grid name=a,b"),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="backbone (default: inferred from the checkpoint)"),
    frames: Optional[int] = CHECKPOINT_FRAMES_OPTION,
    size: Optional[int] = CHECKPOINT_SIZE_OPTION,
    classes: Optional[int] = typer.Option(None, "--classes", help="classifier classes (default: the checkpoint's)"),
    sampling: str = SAMPLING_OPTION,
    stride: int = STRIDE_OPTION,
    clips: int = CLIPS_OPTION,
    crops: int = CROPS_OPTION,
    short_side: Optional[int] = SHORT_SIDE_OPTION,
    norm: str = NORM_OPTION,
    batch: int = typer.Option(4, "--batch", help="videos per forward pass"),
    workers: int = WORKERS_OPTION,
    limit: Optional[int] = LIMIT_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    attention: str = ATTENTION_OPTION,
    metrics: str = typer.Option(EVAL_DEFAULT_METRICS, "--metrics",
                                help=f"efficiency columns too: subset of {','.join(dataset_metrics())} ('' for none)"),
    seed: int = SEED_OPTION,
    trust_checkpoint: bool = TRUST_OPTION,
    out: Path = OUT_OPTION,
    fmt: str = TABLE_FORMAT_OPTION,
) -> None:
    """Top-1, top-5, mean class accuracy and fidelity to the unpruned model at every keep rate, on a
    labelled video dataset, into a result table that `vidprune plot` draws against GFLOPs."""
    import torch

    from vidprune import registry
    from vidprune.accuracy import dataset_row, evaluate_dataset, open_dataset
    from vidprune.evaluate import build_method
    from vidprune.metrics import without_dataset_measured
    from vidprune.results import result_filename
    from vidprune.runner import Runner, point_row
    from vidprune.spec import SweepSpec, parse_keeps, parse_metrics, parse_set
    from vidprune.store import ResultStore
    from vidprune.sweep import expand_points

    check_table_format(fmt)
    method_cls = registry.get_method(method)
    setup = open_dataset(data=data, root=root, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint,
                         method_cls=method_cls, backbone=backbone, frames=frames, size=size, classes=classes,
                         attention=attention, seed=seed, warn=warn, say=say)
    # fidelity comes from the dataset pass, on real clips, not from generated ones
    metric_list = without_dataset_measured(parse_metrics(metrics))
    options = parse_set(set_ or [], method_cls)
    spec = SweepSpec(method=method, keeps=parse_keeps(keep) if keep else [], backbone=setup.backbone,
                     frames=setup.frames, size=setup.size, classes=setup.classes, batch=1, device=device,
                     dtype=dtype, attention=attention, metrics=metric_list, seed=seed, options=options)
    points = expand_points(spec)
    runner = Runner(spec)
    result = evaluate_dataset(setup, points, device=runner.device, dtype=runner.dtype, seed=seed,
                              sampling=sampling, stride=stride, clips=clips, crops=crops, short_side=short_side,
                              norm=norm, batch=batch, workers=workers, limit=limit, progress=progress_task,
                              warn=warn)
    info, backbone, views = setup.model.info, setup.backbone, result.views
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    name = result_filename(f"eval-{method}", backbone, info.frames, info.size, str(runner.device), spec.dtype,
                           torch.__version__, stamp, fmt)
    store = ResultStore.reserve(out, name)  # a new table, never another run's of the same second
    path = store.path
    rows = []
    for point, columns in zip(points, result.columns):
        if metric_list:
            row = runner.measure(point)
        else:
            instance = build_method(setup.model, point.method, point.keep, point.options, seed)
            row = point_row(spec, point, runner.shared)
            row.update(knob=instance.knob.name if instance.knob else "", frames=info.frames, size=info.size,
                       options=json.dumps(instance.describe(), sort_keys=True))
        rows.append(dataset_row(row, setup, result, columns))
        store.add(rows[-1:])  # on disk as soon as it is measured

    table = Table(title=f"{method} on {backbone} ({result.videos} videos x {views} views, {runner.device})")
    for col in ("method", "keep", "gflops", "top1", "top5", "mean class acc", "agreement", "kl", "cosine", "status"):
        table.add_column(col, justify="left" if col in ("method", "status") else "right")
    for row in rows:
        table.add_row(row["method"], _fmt(row.get("keep"), 3), _fmt(row.get("gflops"), 3), _fmt(row["top1"]),
                      _fmt(row["top5"]), _fmt(row["mean_class_accuracy"]), _fmt(row["agreement"]),
                      _fmt(row["kl"]), _fmt(row["cosine"]), escape(str(row["status"])))
    console.print(table)
    console.print("GFLOPs: 1 multiply-accumulate = 1 FLOP, per clip, per view; gflops_per_video multiplies by "
                  f"the {views} view(s).")
    console.print(f"wrote {path}")
    if any(r["status"] != "ok" for r in rows):
        err_console.print("[red]some points did not measure cleanly; see the status and error columns.[/red]")
        raise typer.Exit(1)


data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Datasets: generate the synthetic motion benchmark.")
app.add_typer(data_app, name="data")


@data_app.command("synth")
@user_errors
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="folder to write videos, train.txt, val.txt, classes.txt"),
    train: int = typer.Option(40, "--train", help="training videos per class"),
    val: int = typer.Option(10, "--val", help="held-out videos per class"),
    classes: int = typer.Option(8, "--classes", help="number of motion classes (2-10; 9 and 10 are "
                                "clockwise/counter-clockwise circles)"),
    frames: int = typer.Option(16, "--frames", help="frames per video"),
    size: int = typer.Option(64, "--size", help="frame height = width in pixels (even)"),
    fps: int = typer.Option(8, "--fps", help="frame rate written into the files"),
    seed: int = typer.Option(0, "--seed", help="the dataset is a pure function of the seed"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty folder that is not a synthetic dataset"),
) -> None:
    """Write the synthetic motion dataset: real mp4 files whose classes differ only in motion."""
    from vidprune.data.synthetic import synthesize

    total = (train + val) * classes
    with progress_bar() as progress:
        task = progress.add_task("writing videos", total=max(total, 1))
        result = synthesize(out, train_per_class=train, val_per_class=val, frames=frames, size=size, fps=fps,
                            seed=seed, num_classes=classes, force=force,
                            on_video=lambda n: progress.update(task, completed=n))
    console.print(f"wrote {result.videos} videos ({len(result.classes)} classes: {', '.join(result.classes)}) "
                  f"to {result.out}")
    for split, path in result.lists.items():
        console.print(f"  {split}: {path}")
