"""Labelled video datasets: a list file (`relative/path.mp4 label` per line, the Kinetics / UCF101
convention) or one folder per class, read through a DataLoader with workers.

Bad list lines are reported with file:line and left out; a missing or corrupt video is skipped at load
time with a warning and counted, never a crash: a 20,000-video evaluation must not die on video 19,000.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidprune.data.samplers import ClipSampler
from vidprune.data.transforms import ClipTransform
from vidprune.data.video import VIDEO_EXTENSIONS, VideoDecodeError, probe, read_frames
from vidprune.errors import VidpruneError

CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class VideoSample:
    path: Path
    label: int
    where: str = ""  # "list.txt:12" or the folder it came from, for messages


@dataclass
class VideoList:
    samples: list[VideoSample]
    class_names: list[str]
    bad_lines: list[str] = field(default_factory=list)  # "file:line: what is wrong"
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _split_line(line: str) -> tuple[str, str] | None:
    """'path label' (the path may contain spaces: the label is the last field) or 'path,label'."""
    parts = line.rsplit(None, 1)
    if len(parts) == 2:
        return parts[0], parts[1]
    if "," in line:
        path, _, label = line.rpartition(",")
        return path.strip(), label.strip()
    return None


def _read_class_names(path: Path) -> Optional[list[str]]:
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names or None


def read_list_file(list_path: str | Path, root: str | Path | None = None,
                   class_names: Optional[Sequence[str]] = None) -> VideoList:
    """Parse a list file. Labels are 0-based integers, or class names (all lines alike).

    Blank lines and lines starting with '#' are ignored. Names map to indices through `class_names`, a
    `classes.txt` beside the list file (one name per line, line order = index) or, failing both, sorted
    order. Bad lines are collected as "file:line: problem" and left out; no valid line at all is an error.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise VidpruneError(f"list file '{list_path}' does not exist. Pass --data with a file of "
                            "'relative/path.mp4 label' lines (or --root DIR alone for one folder per class).")
    root = Path(root) if root is not None else list_path.parent
    if class_names is None:
        class_names = _read_class_names(list_path.parent / CLASSES_FILE)
    entries: list[tuple[int, str, str]] = []
    bad: list[str] = []
    try:
        text = list_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise VidpruneError(f"cannot read list file '{list_path}': {exc}") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_path}:{number}"
        split = _split_line(line)
        if split is None or not split[0]:
            bad.append(f"{where}: expected 'relative/path.mp4 label', got {line!r}")
            continue
        entries.append((number, split[0], split[1]))

    numeric = [e for e in entries if _is_int(e[2])]
    named = [e for e in entries if not _is_int(e[2])]
    samples: list[VideoSample] = []
    if numeric and named:  # mixed: the majority convention wins, the other lines are the mistakes
        if len(numeric) >= len(named):
            bad.extend(f"{list_path}:{n}: label {label!r} is not an integer (the other lines use integers)"
                       for n, _, label in named)
            named = []
        else:
            bad.extend(f"{list_path}:{n}: label {label!r} is a number but the other lines use class names"
                       for n, _, label in numeric)
            numeric = []
    if named:
        names = list(class_names) if class_names is not None else sorted({e[2] for e in named})
        index = {n: i for i, n in enumerate(names)}
        for number, path, label in named:
            if label not in index:
                bad.append(f"{list_path}:{number}: class {label!r} is not in {CLASSES_FILE}")
                continue
            samples.append(VideoSample(root / path, index[label], f"{list_path}:{number}"))
        class_names = names
    else:
        for number, path, label in numeric:
            value = int(label)
            if value < 0:
                bad.append(f"{list_path}:{number}: label {value} is negative (labels are 0-based class indices)")
                continue
            if class_names is not None and value >= len(class_names):
                bad.append(f"{list_path}:{number}: label {value} is out of range: {CLASSES_FILE} names "
                           f"{len(class_names)} classes")
                continue
            samples.append(VideoSample(root / path, value, f"{list_path}:{number}"))
        if class_names is None:
            top = max((s.label for s in samples), default=-1)
            class_names = [str(i) for i in range(top + 1)]
    if not samples:
        detail = f" ({len(bad)} bad line(s), first: {bad[0]})" if bad else ""
        raise VidpruneError(f"list file '{list_path}' has no usable 'relative/path.mp4 label' lines{detail}.")
    return VideoList(samples, list(class_names), bad, str(list_path))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def read_class_folders(root: str | Path) -> VideoList:
    """root/<class name>/**/<video>: classes in sorted name order, videos by extension."""
    root = Path(root)
    if not root.is_dir():
        raise VidpruneError(f"--root '{root}' is not a folder. Pass a folder with one sub-folder per class, "
                            "or --data LIST for a list file.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
                samples.append(VideoSample(path, label, str(root / name)))
    if not samples:
        raise VidpruneError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under class folders of '{root}'.")
    return VideoList(samples, classes, [], str(root))


def open_video_list(data: str | Path | None, root: str | Path | None) -> VideoList:
    """`--data LIST [--root DIR]` (paths relative to DIR, default the list's folder) or `--root DIR` alone."""
    if data is not None:
        return read_list_file(data, root)
    if root is not None:
        return read_class_folders(root)
    raise VidpruneError("no dataset given. Pass --data LIST (lines 'relative/path.mp4 label') and optionally "
                        "--root DIR, or --root DIR with one folder per class.")


class VideoDataset(Dataset):
    """Item i: all test views of video i, (clips * crops, 3, T, size, size), clip-major; or, in training, one
    randomly sampled and cropped view. A video that fails to load yields an error item instead."""

    def __init__(self, samples: Sequence[VideoSample], sampler: ClipSampler, transform: ClipTransform,
                 num_clips: int = 1, train: bool = False, cache: bool = False):
        if num_clips < 1:
            raise VidpruneError(f"--clips must be at least 1, got {num_clips}.")
        self.samples = list(samples)
        self.sampler = sampler
        self.transform = transform
        self.num_clips = 1 if train else int(num_clips)
        self.train = train
        # Decoded videos kept in memory (per worker process): for small datasets trained for many epochs.
        self._cache: Optional[dict[int, np.ndarray]] = {} if cache else None

    @property
    def views_per_video(self) -> int:
        return self.num_clips * self.transform.num_crops

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        try:
            return {"video": self.load(sample, i), "label": sample.label, "index": i}
        except VideoDecodeError as exc:
            return {"error": str(exc), "index": i, "path": str(sample.path)}
        except Exception as exc:  # a decoder bug on one odd file must not stop the run either
            return {"error": f"{sample.path}: {type(exc).__name__}: {exc}", "index": i, "path": str(sample.path)}

    def load(self, sample: VideoSample, index: int = -1) -> torch.Tensor:
        # In training, draw from torch's generator: the DataLoader seeds it per worker and per epoch.
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item())) if self.train else None
        cached = self._cache.get(index) if self._cache is not None else None
        if self._cache is not None and cached is None:
            cached = self._cache[index] = read_frames(sample.path)
        num_frames = len(cached) if cached is not None else probe(sample.path).num_frames
        clips = [self.sampler.indices(num_frames, c, self.num_clips, rng) for c in range(self.num_clips)]
        flat = [i for clip in clips for i in clip]
        frames = cached[flat] if cached is not None else read_frames(sample.path, flat)
        per_clip = self.sampler.frames
        views = [self.transform(frames[c * per_clip:(c + 1) * per_clip], rng) for c in range(self.num_clips)]
        return torch.cat(views)


@dataclass
class Batch:
    videos: Optional[torch.Tensor]  # (B, V, 3, T, H, W) or None when every item failed
    labels: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[str, str]]  # (path, reason)


def collate(items: list[dict]) -> Batch:
    good = [it for it in items if "video" in it]
    failures = [(it["path"], it["error"]) for it in items if "error" in it]
    videos = torch.stack([it["video"] for it in good]) if good else None
    labels = torch.tensor([it["label"] for it in good], dtype=torch.long)
    indices = torch.tensor([it["index"] for it in good], dtype=torch.long)
    return Batch(videos, labels, indices, failures)


def make_loader(dataset: VideoDataset, batch_size: int = 8, workers: int = 0, shuffle: bool = False,
                seed: int = 0, pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    if batch_size < 1:
        raise VidpruneError(f"--batch must be at least 1, got {batch_size}.")
    if workers < 0:
        raise VidpruneError(f"--workers must be >= 0, got {workers}.")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                      generator=generator, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=False)


class SkipCounter:
    """Reports each skipped video once (a warning unless `on_skip` is given) and counts them, so the count
    lands in the output table."""

    def __init__(self, on_skip: Optional[Callable[[str, str], None]] = None):
        self.skipped: list[tuple[str, str]] = []
        self.on_skip = on_skip

    def add(self, failures: Sequence[tuple[str, str]]) -> None:
        for path, reason in failures:
            self.skipped.append((path, reason))
            if self.on_skip is not None:
                self.on_skip(path, reason)
            else:
                warnings.warn(f"skipped video {path}: {reason}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.skipped)
