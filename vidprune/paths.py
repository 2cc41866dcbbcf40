"""Output paths checked before any work starts: a user who typed `--out` wrong hears it in one line, at
once, not as an internal error after an hour of measuring."""

from __future__ import annotations

import os
from pathlib import Path

from vidprune.errors import VidpruneError


def _blocking_file(path: Path) -> Path | None:
    """The first existing non-folder on the way to `path` (itself included), or None."""
    for part in [path, *path.parents]:
        if part.exists():
            return None if part.is_dir() else part
    return None


def _nearest_existing(path: Path) -> Path:
    for part in [path, *path.parents]:
        if part.exists():
            return part
    return Path(".")


def output_folder(path: Path | str, flag: str = "--out") -> Path:
    """A folder results will be written into: it exists as a folder or can be created, and is writable."""
    path = Path(path)
    blocker = _blocking_file(path)
    if blocker == path:
        raise VidpruneError(f"{flag} '{path}' is a file, not a folder. Pass a folder, e.g. {flag} {path.parent / 'results'}.")
    if blocker is not None:
        raise VidpruneError(f"{flag} '{path}' cannot be a folder: '{blocker}' is a file. Choose a path under a folder.")
    existing = _nearest_existing(path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VidpruneError(f"{flag} '{path}': the folder '{existing}' is not writable. Choose a folder you can write to.")
    return path


def output_file(path: Path | str, flag: str = "--out", example: str = "report.html") -> Path:
    """A file to be (over)written: not a folder, its parent a folder that exists or can be created, writable."""
    path = Path(path)
    if path.is_dir():
        raise VidpruneError(f"{flag} '{path}' is a folder; pass a file name, e.g. {flag} {path / example}.")
    blocker = _blocking_file(path.parent)
    if blocker is not None:
        raise VidpruneError(f"{flag} '{path}': '{blocker}' is a file, not a folder. Choose a path under a folder.")
    existing = path if path.exists() else _nearest_existing(path.parent)
    if not os.access(existing, os.W_OK):
        raise VidpruneError(f"{flag} '{path}': '{existing}' is not writable. Choose a path you can write to.")
    return path
