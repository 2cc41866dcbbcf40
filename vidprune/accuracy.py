"""Accuracy of sweep points on a labelled video dataset, as `vidprune eval` and `vidprune sweep --data` run it.

`open_dataset` reads the list file and builds the model with the checkpoint's weights (`models.create_model`
settles backbone, geometry and classes from flags and checkpoint); `evaluate_dataset` runs every point over
one decoding pass; `dataset_row` merges a point's accuracy and the dataset's provenance into its result row.

Nothing here prints: warnings, informational lines and progress go to the callables the caller passes
(the command line passes Rich consoles), so Python users get `warnings.warn` and silence by default.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Optional, Union

from vidprune import hub, models
from vidprune.checkpoints import read_checkpoint, restore_method_state
from vidprune.data.datasets import VideoDataset, VideoList, VideoSample, make_loader, open_video_list
from vidprune.data.samplers import make_sampler
from vidprune.data.transforms import ClipTransform, resolve_normalization, statistics_name
from vidprune.errors import VidpruneError
from vidprune.evaluate import build_method, evaluate_methods
from vidprune.notes import VIDEOS_SKIPPED, join as join_notes

MAX_LISTED = 10  # bad list lines / skipped videos reported one by one before summarising

# progress(description, total) opens a progress display and yields advance(n), called after each batch.
OpenProgress = Callable[[str, int], ContextManager[Callable[[int], None]]]


def _warn(text: str) -> None:
    warnings.warn(text, stacklevel=3)


def _silent(text: str) -> None:
    pass


def _no_progress(description: str, total: int) -> ContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


@dataclass
class DatasetSetup:
    """A labelled dataset and the weights to evaluate on it."""
    videos: object  # vidprune.data.datasets.VideoList
    raw: object  # vidprune.checkpoints.RawCheckpoint or None
    checkpoint: Optional[Union[str, Path]]  # as given: a path or hf:ORG/NAME
    backbone: str
    frames: Optional[int]
    size: Optional[int]
    classes: int
    model: object  # the backbone with its weights loaded and no method in place
    notes: list = field(default_factory=list)
    # the checkpoint's preprocessor config (hub models): statistics and resize for --norm auto / no --short-side
    preprocessing: Optional[hub.Preprocessing] = None


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
                 warn: Callable[[str], None] = _warn, say: Callable[[str], None] = _silent) -> DatasetSetup:
    """Read the list file and the checkpoint, settle backbone, geometry and classes, build the model with
    the weights loaded. `warn`/`say` receive a warning / an informational line."""
    videos = open_video_list(data, root)
    for line in videos.bad_lines[:MAX_LISTED]:
        warn(f"bad list line {line}")
    if len(videos.bad_lines) > MAX_LISTED:
        warn(f"... and {len(videos.bad_lines) - MAX_LISTED} more bad lines")
    raw = read_checkpoint(checkpoint, trust=trust_checkpoint) if checkpoint is not None else None
    if raw is None:  # the sweep's method decides the backbone, the dataset the classes
        backbone = backbone or method_cls.default_backbone
        classes = classes if classes is not None else videos.num_classes
    model = models.create_model(backbone, "none", frames=frames, size=size, classes=classes, attention=attention,
                                seed=seed, checkpoint=raw)
    notes: list[str] = []
    if raw is not None:
        report = model.checkpoint_report
        say(f"{checkpoint}: {report.summary()}")
        notes.extend(report.notes)
        for note in report.notes:
            say(f"  note: {note}")
    else:
        warn("no --checkpoint: random weights, so accuracy is chance level; agreement/kl/cosine still say how "
             "far each method moves the model")
        notes.append("random weights (no checkpoint)")
    if model.class_names is not None:
        shown = ", ".join(model.class_names[:5]) + (", ..." if len(model.class_names) > 5 else "")
        say(f"  class names: {len(model.class_names)} from the checkpoint's config.json ({shown})")
        videos = _by_class_name(videos, model.class_names, warn, say)
    if videos.num_classes > model.classes:
        raise VidpruneError(f"the dataset has {videos.num_classes} classes but the model predicts {model.classes}: "
                            "pass the matching checkpoint or --classes.")
    preprocessing = hub.preprocessing(raw.meta) if raw is not None else None
    if preprocessing is not None:
        say(f"  preprocessing from the checkpoint's preprocessor config: {preprocessing.describe()} "
            "(used where --norm is auto and --short-side unset)")
    return DatasetSetup(videos, raw, checkpoint, model.backbone_name, model.info.frames, model.info.size, model.classes,
                        model, notes, preprocessing)


def _by_class_name(videos: VideoList, model_names: list, warn: Callable[[str], None],
                   say: Callable[[str], None]) -> VideoList:
    """The dataset's labels as the model's class indices, matched by name when the dataset names its
    classes (a list with names, classes.txt, class folders); a dataset of bare indices is left as it is."""
    names = videos.class_names
    if all(name == str(i) for i, name in enumerate(names)):
        return videos
    mapping = hub.match_labels(names, model_names)
    if mapping is None:
        unknown = [n for n in names if hub.match_labels([n], model_names) is None]
        warn(f"{len(unknown)} of the dataset's {len(names)} class names are not among the checkpoint's labels "
             f"(first: '{unknown[0]}'): its labels are taken as the model's class indices")
        return videos
    moved = sum(i != j for i, j in mapping.items())
    say(f"  the dataset's {len(names)} classes matched to the checkpoint's labels by name"
        + (f" ({moved} at another index than in the dataset)" if moved else ""))
    samples = [VideoSample(s.path, mapping[s.label], s.where) for s in videos.samples]
    return VideoList(samples, list(model_names), videos.bad_lines, videos.source)


def evaluate_dataset(setup: DatasetSetup, points, *, device, dtype, seed: int, sampling: str, stride: int,
                     clips: int, crops: int, short_side: Optional[int], norm: str, batch: int, workers: int,
                     limit: Optional[int], progress: OpenProgress = _no_progress,
                     warn: Callable[[str], None] = _warn) -> DatasetPass:
    """Every point on the same decoded clips: top-1/top-5/mean class accuracy and fidelity to the first
    point (the unpruned reference)."""
    if limit is not None and limit < 1:
        raise VidpruneError(f"--limit must be at least 1, got {limit}.")
    model, raw = setup.model, setup.raw
    methods = [build_method(model, p.method, p.keep, p.options, seed) for p in points]
    if raw is not None:
        for instance in methods:
            restore_method_state(raw, instance)
    model = model.to(device=device, dtype=dtype)
    info = model.info
    preprocessing = setup.preprocessing
    if norm == "auto" and raw is not None and raw.meta.get("normalization"):
        norm = raw.meta["normalization"]  # what `vidprune train` used for this checkpoint
    elif norm == "auto" and preprocessing is not None and preprocessing.mean is not None:
        norm = statistics_name(preprocessing.mean, preprocessing.std, f"{raw.meta.get('source') or raw.path} preprocessor")
    normalization = resolve_normalization(norm, info.family)
    if short_side is None and preprocessing is not None:
        short_side = preprocessing.short_side_for(info.size)
    sampler = make_sampler(sampling, info.frames, stride)
    transform = ClipTransform(info.size, short_side=short_side, normalization=normalization, num_crops=crops)
    samples = setup.videos.samples[:limit] if limit else setup.videos.samples
    dataset = VideoDataset(samples, sampler, transform, num_clips=clips)
    loader = make_loader(dataset, batch_size=batch, workers=workers, pin_memory=device.type == "cuda")
    skipped: list[tuple[str, str]] = []

    def on_skip(path: str, reason: str) -> None:
        skipped.append((path, reason))
        if len(skipped) <= MAX_LISTED:
            warn(f"skipped video: {reason}")

    description = f"{len(points)} point(s) on {len(dataset)} videos x {dataset.views_per_video} views"
    with progress(description, len(dataset)) as advance:
        outcome = evaluate_methods(model, methods, loader, setup.classes, device=device, dtype=dtype,
                                   on_batch=advance, on_skip=on_skip)
    if len(skipped) > MAX_LISTED:
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
    extra = list(setup.notes) + ([VIDEOS_SKIPPED(count=result.skipped)] if result.skipped else [])
    row["notes"] = join_notes([row.get("notes", "")] + extra)
    return row
