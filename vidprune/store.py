"""A result table on disk that several processes can add rows to without losing or corrupting any.

* A new table's name is reserved atomically (a complete header-only table is hard-linked into place,
  which fails if the name exists), so two sweeps started in the same second never share a file.
* Every addition is read-merge-write under an exclusive `flock` on the table itself, and the write is
  atomic (temp file + rename). The rename swaps the inode, so a writer that obtains the lock checks that
  it locked the file now at the path and otherwise retries: no sidecar lock file is left in the folder.
  The table is read through the locked descriptor (never a second open), which keeps the lock valid
  where the kernel emulates `flock` with POSIX locks (NFS).
* Rows are merged on `config_hash`: a point appears once; a new row replaces an older one for the same
  point, except that a failure never replaces an `ok` row.

A sweep killed at any moment (SIGKILL included) leaves the previous complete table.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional

import pandas as pd

from vidprune.errors import VidpruneError
from vidprune.results import write_table

try:
    import fcntl
except ImportError:  # Windows: one writer per table (documented in docs/scaling.md)
    fcntl = None  # type: ignore[assignment]

_MAX_NAME_TRIES = 10_000
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _suffixed(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{n}.{ext}" if n > 1 else name


def _read(handle: IO[bytes], suffix: str) -> list[dict]:
    """Rows as stored. CSV cells stay the exact text on disk, so rewriting a table never changes the rows
    already in it (no 8 -> 8.0 drift, no lost leading zeros)."""
    handle.seek(0)
    if not handle.read(1):
        return []
    handle.seek(0)
    if suffix == ".parquet":
        df = pd.read_parquet(handle)
        df = df.astype(object).where(df.notna(), None)
    else:
        df = pd.read_csv(handle, dtype=str, keep_default_na=False)
    return df.to_dict("records")


def merge_rows(existing: list[dict], new: Iterable[dict]) -> list[dict]:
    rows = list(existing)
    where = {str(r.get("config_hash")): i for i, r in enumerate(rows) if r.get("config_hash")}
    for row in new:
        key = str(row.get("config_hash") or "")
        if key and key in where:
            old = rows[where[key]]
            if str(old.get("status")) == "ok" and str(row.get("status")) != "ok":
                continue
            rows[where[key]] = row
        else:
            if key:
                where[key] = len(rows)
            rows.append(row)
    return rows


class ResultStore:
    """One result table shared by any number of writers."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    # ------------------------------------------------------------------------------------ naming

    @classmethod
    def reserve(cls, folder: Path | str, name: str) -> "ResultStore":
        """Create a new, empty (header-only) table named `name`, or `name-2`, `name-3`, ... if taken."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # Unique per call (threads share a pid); the suffix picks the format write_table uses.
        draft = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.reserve{Path(name).suffix}"
        write_table([], draft)
        try:
            for n in range(1, _MAX_NAME_TRIES):
                path = folder / _suffixed(name, n)
                try:
                    os.link(draft, path)  # atomic, and fails if the name exists: a complete file or nothing
                    return cls(path)
                except FileExistsError:
                    continue
                except OSError as exc:  # a file system without hard links: exclusive create, then fill
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    try:
                        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        continue
                    os.replace(draft, path)
                    return cls(path)
        finally:
            if draft.exists():
                draft.unlink()
        raise VidpruneError(f"could not find a free result file name for '{name}' in '{folder}'.")

    @classmethod
    def candidates(cls, folder: Path | str, name: str) -> list[Path]:
        """Tables of the same sweep (same name up to the timestamp), newest first."""
        folder = Path(folder)
        stem, _, ext = name.rpartition(".")
        prefix = stem.rpartition("_")[0] + "_"
        pattern = re.compile(re.escape(prefix) + r"(\d{14})(?:-(\d+))?\." + re.escape(ext) + r"$")
        found = []
        for path in folder.iterdir() if folder.is_dir() else []:
            match = pattern.match(path.name)
            if match:
                found.append(((match.group(1), int(match.group(2) or 1)), path))
        return [path for _, path in sorted(found, reverse=True)]

    @classmethod
    def find_resumable(cls, folder: Path | str, name: str, hashes: Iterable[str]) -> Optional["ResultStore"]:
        """The newest table of the same sweep that holds a row of at least one of these points."""
        wanted = set(hashes)
        for path in cls.candidates(folder, name):
            store = cls(path)
            try:
                rows = store.rows()
            except Exception:  # an unreadable file is not a sweep to resume
                continue
            if any(str(r.get("config_hash")) in wanted for r in rows):
                return store
        return None

    # ---------------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[bytes]]:
        while True:
            handle = open(self.path, "r+b")
            if fcntl is None:
                break
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            here, now = os.fstat(handle.fileno()), os.stat(self.path)
            if (here.st_ino, here.st_dev) == (now.st_ino, now.st_dev):
                break
            handle.close()  # another writer replaced the table while we waited: lock the new one
        try:
            yield handle
        finally:
            handle.close()  # releases the lock

    # ------------------------------------------------------------------------------ read / write

    def rows(self) -> list[dict]:
        with self._locked() as handle:
            return _read(handle, self.path.suffix)

    def ok_hashes(self) -> set[str]:
        return {str(r["config_hash"]) for r in self.rows() if r.get("config_hash") and str(r.get("status")) == "ok"}

    def add(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        with self._locked() as handle:
            write_table(merge_rows(_read(handle, self.path.suffix), rows), self.path)

    def reorder(self, hashes: list[str]) -> None:
        """Put the rows of these points first, in this order; other rows after; paper references last."""
        order = {h: i for i, h in enumerate(hashes)}
        with self._locked() as handle:
            rows = _read(handle, self.path.suffix)

            def key(item):
                i, row = item
                h = str(row.get("config_hash") or "")
                if h in order:
                    return (0, order[h])
                return (2 if str(row.get("status")) == "reference" else 1, i)

            write_table([row for _, row in sorted(enumerate(rows), key=key)], self.path)
