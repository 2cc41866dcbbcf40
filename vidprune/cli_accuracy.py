"""The accuracy side of the command line: `vidprune eval`, `vidprune data synth` and `vidprune train`.

`register(app)` adds them to the main Typer app (cli.py calls it once), so this module owns its commands
without cli.py growing. Every user mistake is a `VidpruneError` turned into one line by `user_errors`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer

from vidprune.errors import VidpruneError

EVAL_DEFAULT_METRICS = "flops,params"
_MAX_LISTED = 10  # bad list lines / skipped videos printed one by one before summarising


def _resolve_geometry(raw, frames: Optional[int], size: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    """--frames/--size, else what the checkpoint records (vidprune's metadata or a Hugging Face
    config.json), else None (the backbone's default)."""
    meta = raw.meta if raw is not None else {}
    config = meta.get("hf_config") or {}
    vision = config.get("vision_config") or {}  # a CLIPModel config keeps the image tower's settings here
    frames = frames if frames is not None else meta.get("frames", config.get("num_frames"))
    size = size if size is not None else meta.get("size", config.get("image_size", vision.get("image_size")))
    return (int(frames) if frames is not None else None, int(size) if size is not None else None)


def _resolve_backbone(backbone: Optional[str], raw, method_cls) -> str:
    if backbone:
        return backbone
    if raw is not None:
        if raw.meta.get("backbone"):
            return raw.meta["backbone"]
        from vidprune.checkpoints import infer_backbone

        for family in method_cls.families:
            try:
                found = infer_backbone(raw.state, family)
            except VidpruneError:
                continue
            if found:
                return found
        raise VidpruneError("cannot tell which backbone the checkpoint is: pass --backbone (see `vidprune list`).")
    return getattr(method_cls, "default_backbone", "vit-b")


def resolve_checkpoint(checkpoint: Optional[Path], trust: bool, method_cls, backbone: Optional[str],
                       frames: Optional[int], size: Optional[int], classes: Optional[int], default_classes: int):
    """(raw checkpoint or None, backbone, frames, size, classes): flags first, then what the checkpoint
    records or its tensors show, then the method's default backbone and `default_classes`."""
    from vidprune import registry
    from vidprune.checkpoints import checkpoint_classes, read_checkpoint

    raw = read_checkpoint(checkpoint, trust=trust) if checkpoint is not None else None
    backbone = _resolve_backbone(backbone, raw, method_cls)
    frames, size = _resolve_geometry(raw, frames, size)
    if classes is None:
        family = registry.get_backbone(backbone).family
        classes = (checkpoint_classes(raw.state, family) if raw is not None else None) or default_classes
    return raw, backbone, frames, size, classes


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# The dataset options `eval` and `sweep --data` share, defined once so their names and help never drift.
DATA_OPTION = typer.Option(None, "--data", help="list file: 'relative/path.mp4 label' per line")
ROOT_OPTION = typer.Option(None, "--root", help="video folder (list paths are relative to it; alone: one sub-folder per class)")
CHECKPOINT_OPTION = typer.Option(None, "--checkpoint", help="VideoMAE .pth, Hugging Face file/folder, CLIP or "
                                 "vidprune checkpoint (omitted: random weights)")
SAMPLING_OPTION = typer.Option("uniform", "--sampling", help="uniform (TSN segments) | dense (frames --stride apart)")
STRIDE_OPTION = typer.Option(4, "--stride", help="frame stride of dense sampling (VideoMAE Kinetics: 4)")
CLIPS_OPTION = typer.Option(1, "--clips", help="temporal views per video")
CROPS_OPTION = typer.Option(1, "--crops", help="spatial views per clip (1 centre, 3 along the long side)")
SHORT_SIDE_OPTION = typer.Option(None, "--short-side", help="resize the short side to this before cropping (default: --size)")
NORM_OPTION = typer.Option("auto", "--norm", help="auto (the backbone family's) | imagenet | clip | kinetics")
WORKERS_OPTION = typer.Option(2, "--workers", help="DataLoader worker processes decoding videos")
LIMIT_OPTION = typer.Option(None, "--limit", help="evaluate only the first N videos")
TRUST_OPTION = typer.Option(False, "--trust-checkpoint", help="unpickle arbitrary objects in the checkpoint (only for files you trust)")


@dataclass
class DatasetSetup:
    """A labelled dataset and the weights to evaluate on it, resolved from the command line."""
    videos: object  # vidprune.data.datasets.VideoList
    raw: object  # vidprune.checkpoints.RawCheckpoint or None
    checkpoint: Optional[Path]
    backbone: str
    frames: Optional[int]
    size: Optional[int]
    classes: int
    model: object  # the backbone with its weights loaded and no method in place
    notes: list = field(default_factory=list)


@dataclass
class DatasetPass:
    """Accuracy and fidelity of every point over one decoding pass, plus what every row shares."""
    columns: list  # per point: accuracy and fidelity columns
    shared: dict
    videos: int
    views: int
    skipped: int


def open_dataset(*, data, root, checkpoint, trust_checkpoint: bool, method_cls, backbone: Optional[str],
                 frames: Optional[int], size: Optional[int], classes: Optional[int], attention: str, seed: int,
                 warn, say) -> DatasetSetup:
    """Read the list file and the checkpoint, settle backbone, geometry and classes, build the model with
    the weights loaded. `warn`/`say` print a warning / an informational line."""
    from vidprune import registry
    from vidprune.checkpoints import load_checkpoint
    from vidprune.data.datasets import open_video_list

    videos = open_video_list(data, root)
    for line in videos.bad_lines[:_MAX_LISTED]:
        warn(f"bad list line {line}")
    if len(videos.bad_lines) > _MAX_LISTED:
        warn(f"... and {len(videos.bad_lines) - _MAX_LISTED} more bad lines")
    raw, backbone, frames, size, classes = resolve_checkpoint(checkpoint, trust_checkpoint, method_cls, backbone,
                                                              frames, size, classes, videos.num_classes)
    model = registry.create_model(backbone, "none", frames=frames, size=size, classes=classes,
                                  attention=attention, seed=seed)
    notes: list[str] = []
    if raw is not None:
        report = load_checkpoint(model, raw)
        say(f"{checkpoint}: {report.summary()}")
        notes.extend(report.notes)
        for note in report.notes:
            say(f"  note: {note}")
    else:
        warn("no --checkpoint: random weights, so accuracy is chance level; agreement/kl/cosine still say how "
             "far each method moves the model")
        notes.append("random weights (no checkpoint)")
    if videos.num_classes > classes:
        raise VidpruneError(f"the dataset has {videos.num_classes} classes but the model predicts {classes}: "
                            "pass the matching checkpoint or --classes.")
    return DatasetSetup(videos, raw, checkpoint, backbone, model.info.frames, model.info.size, classes, model, notes)


def evaluate_dataset(setup: DatasetSetup, points, *, device, dtype, seed: int, sampling: str, stride: int,
                     clips: int, crops: int, short_side: Optional[int], norm: str, batch: int, workers: int,
                     limit: Optional[int], progress_bar, warn) -> DatasetPass:
    """Every point on the same decoded clips: top-1/top-5/mean class accuracy and fidelity to the first
    point (the unpruned reference)."""
    from vidprune.data.datasets import VideoDataset, make_loader
    from vidprune.data.samplers import make_sampler
    from vidprune.data.transforms import ClipTransform, resolve_normalization
    from vidprune.evaluate import build_method, evaluate_methods

    if limit is not None and limit < 1:
        raise VidpruneError(f"--limit must be at least 1, got {limit}.")
    model, raw = setup.model, setup.raw
    methods = [build_method(model, p.method, p.keep, p.options, seed) for p in points]
    if raw is not None:
        from vidprune.checkpoints import restore_method_state

        for instance in methods:
            restore_method_state(raw, instance)
    model = model.to(device=device, dtype=dtype)
    info = model.info
    if norm == "auto" and raw is not None and raw.meta.get("normalization"):
        norm = raw.meta["normalization"]  # what `vidprune train` used for this checkpoint
    normalization = resolve_normalization(norm, info.family)
    sampler = make_sampler(sampling, info.frames, stride)
    transform = ClipTransform(info.size, short_side=short_side, normalization=normalization, num_crops=crops)
    samples = setup.videos.samples[:limit] if limit else setup.videos.samples
    dataset = VideoDataset(samples, sampler, transform, num_clips=clips)
    loader = make_loader(dataset, batch_size=batch, workers=workers, pin_memory=device.type == "cuda")
    skipped: list[tuple[str, str]] = []

    def on_skip(path: str, reason: str) -> None:
        skipped.append((path, reason))
        if len(skipped) <= _MAX_LISTED:
            warn(f"skipped video: {reason}")

    with progress_bar() as progress:
        task = progress.add_task(f"{len(points)} point(s) on {len(dataset)} videos x {dataset.views_per_video} views",
                                 total=len(dataset))
        outcome = evaluate_methods(model, methods, loader, setup.classes, device=device, dtype=dtype,
                                   on_batch=lambda n: progress.advance(task, n), on_skip=on_skip)
    if len(skipped) > _MAX_LISTED:
        warn(f"... {len(skipped)} videos skipped in all")
    if outcome.videos == 0:
        raise VidpruneError(f"none of the {len(dataset)} videos could be decoded (first problem: "
                            f"{skipped[0][1] if skipped else 'unknown'}). Check --root and the list file's paths.")
    views = dataset.views_per_video
    shared = {"dataset": setup.videos.source, "checkpoint": str(setup.checkpoint) if setup.checkpoint else "",
              "eval_videos": outcome.videos, "eval_skipped": len(outcome.skipped),
              "bad_lines": len(setup.videos.bad_lines), "views": views, "clips": dataset.num_clips,
              "crops": transform.num_crops, "sampling": sampler.describe(), "normalization": normalization}
    columns = [dict(r.accuracy, **r.fidelity, fidelity_source="dataset") for r in outcome.results]
    return DatasetPass(columns, shared, outcome.videos, views, len(outcome.skipped))


def dataset_row(row: dict, setup: DatasetSetup, result: DatasetPass, columns: dict) -> dict:
    """A measured row with the point's accuracy/fidelity and the dataset's provenance merged in."""
    row = dict(row, **result.shared, **columns)
    if row.get("gflops") is not None and not (isinstance(row["gflops"], float) and math.isnan(row["gflops"])):
        row["gflops_per_video"] = row["gflops"] * result.views
    extra = list(setup.notes) + ([f"{result.skipped} videos skipped (missing or corrupt)"] if result.skipped else [])
    row["notes"] = " | ".join(n for n in [row.get("notes", "")] + extra if n)
    return row


def register(app: typer.Typer) -> None:
    """Add `eval`, `train` and the `data` group (`data synth`) to `app`."""
    # Imported here, not at module level: cli.py imports this module at its end, after defining these.
    from rich.markup import escape
    from rich.table import Table

    from vidprune.cli import console, err_console, progress_bar, user_errors

    def warn(text: str) -> None:
        err_console.print(f"[yellow]warning:[/yellow] {escape(text)}", soft_wrap=True)

    data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Datasets: generate the synthetic motion benchmark.")

    @data_app.command("synth")
    @user_errors
    def synth(
        out: Path = typer.Option(..., "--out", "-o", help="folder to write videos, train.txt, val.txt, classes.txt"),
        train: int = typer.Option(40, "--train", help="training videos per class"),
        val: int = typer.Option(10, "--val", help="held-out videos per class"),
        classes: int = typer.Option(8, "--classes", help="number of motion classes (2-10; 9 and 10 are clockwise/counter-clockwise circles)"),
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

    app.add_typer(data_app, name="data")

    @app.command("eval")
    @user_errors
    def eval_(
        data: Optional[Path] = DATA_OPTION,
        root: Optional[Path] = ROOT_OPTION,
        checkpoint: Optional[Path] = CHECKPOINT_OPTION,
        method: str = typer.Option("none", "--method", "-m", help="method to evaluate (see `vidprune list`)"),
        keep: Optional[str] = typer.Option(None, "--keep", "-k", help="knob values: 0.5,0.7,1.0 or 0.5:0.9:0.1"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="method option name=value or grid name=a,b"),
        backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="backbone (default: inferred from the checkpoint)"),
        frames: Optional[int] = typer.Option(None, "--frames", help="frames per clip (default: checkpoint's, else backbone's)"),
        size: Optional[int] = typer.Option(None, "--size", help="crop size in pixels (default: checkpoint's, else backbone's)"),
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
        device: str = typer.Option("auto", "--device", help="cpu | cuda | cuda:N | mps | auto"),
        dtype: str = typer.Option("fp32", "--dtype", help="fp32 | fp16 | bf16"),
        attention: str = typer.Option("sdpa", "--attention", help="sdpa | math"),
        metrics: str = typer.Option(EVAL_DEFAULT_METRICS, "--metrics",
                                    help="efficiency columns too: subset of flops,fvcore,params,latency,memory,throughput ('' for none)"),
        seed: int = typer.Option(0, "--seed"),
        trust_checkpoint: bool = TRUST_OPTION,
        out: Path = typer.Option(Path("results"), "--out", "-o", help="folder for the result table"),
        fmt: str = typer.Option("csv", "--format", help="csv | parquet"),
    ) -> None:
        """Top-1, top-5, mean class accuracy and fidelity to the unpruned model at every keep rate, on a
        labelled video dataset, into a result table that `vidprune plot` draws against GFLOPs."""
        import torch

        from vidprune import registry
        from vidprune.results import result_filename, write_table
        from vidprune.sweep import Runner, SweepSpec, expand_points, now, parse_keeps, parse_set

        if fmt not in ("csv", "parquet"):
            raise VidpruneError(f"--format must be csv or parquet, got '{fmt}'.")
        method_cls = registry.get_method(method)
        setup = open_dataset(data=data, root=root, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint,
                             method_cls=method_cls, backbone=backbone, frames=frames, size=size, classes=classes,
                             attention=attention, seed=seed, warn=warn, say=lambda t: console.print(escape(t)))
        # fidelity comes from the dataset pass, on real clips, not from generated ones
        metric_list = tuple(m.strip() for m in metrics.split(",") if m.strip() and m.strip() != "fidelity")
        options = parse_set(set_ or [], method_cls)
        spec = SweepSpec(method=method, keeps=parse_keeps(keep) if keep else [], backbone=setup.backbone,
                         frames=setup.frames, size=setup.size, classes=setup.classes, batch=1, device=device,
                         dtype=dtype, attention=attention, metrics=metric_list, seed=seed, options=options)
        points = expand_points(spec)
        runner = Runner(spec)
        result = evaluate_dataset(setup, points, device=runner.device, dtype=runner.dtype, seed=seed,
                                  sampling=sampling, stride=stride, clips=clips, crops=crops, short_side=short_side,
                                  norm=norm, batch=batch, workers=workers, limit=limit, progress_bar=progress_bar,
                                  warn=warn)
        info, backbone, views = setup.model.info, setup.backbone, result.views
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
        path = out / result_filename(f"eval-{method}", backbone, info.frames, info.size, str(runner.device), spec.dtype,
                                     torch.__version__, stamp, fmt)
        rows = []
        for point, columns in zip(points, result.columns):
            if metric_list:
                row = runner.measure(point)
            else:
                from vidprune.evaluate import build_method

                instance = build_method(setup.model, point.method, point.keep, point.options, seed)
                row = {**runner.shared, "method": point.method, "keep": 1.0 if point.keep is None else point.keep,
                       "knob": instance.knob.name if instance.knob else "", "frames": info.frames, "size": info.size,
                       "options": json.dumps(instance.describe(), sort_keys=True), "status": "ok", "error": "",
                       "notes": "", "timestamp": now()}
            rows.append(dataset_row(row, setup, result, columns))
            write_table(rows, path)
        outcome_videos = result.videos

        table = Table(title=f"{method} on {backbone} ({outcome_videos} videos x {views} views, {runner.device})")
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

    try:
        from vidprune import train as _train_module
    except ImportError:  # training is optional to the rest of the CLI
        return
    _train_module.register_cli(app, console=console, err_console=err_console, user_errors=user_errors,
                               progress_bar=progress_bar)
