"""Notes a row carries (the `notes` column): each made from a declared kind with a stable code.

A note is text for the reader and a code for the program. Code that groups or filters notes (the sweep
command prints a kind with a `summary` once per table instead of once per row) asks for the code and
never matches wording. In memory a `Note` carries its code; read back from a table, where only the text
survives (the `notes` cell joins a row's notes with " | "), `code_of` recovers it from the template of the
kind that wrote it, so rewording a note in its one template keeps both sides in step.
"""

from __future__ import annotations

import re
import string
from typing import Iterable, Optional


class Note(str):
    """A note's text (what the table stores) with the code of its kind."""

    code: Optional[str]

    def __new__(cls, text: str, code: Optional[str] = None) -> "Note":
        note = super().__new__(cls, text)
        note.code = code
        return note


class NoteKind:
    """One kind of note: its code, the template its text is formatted from and, optionally, a summary line
    the command line prints once for a table instead of every note of this kind."""

    def __init__(self, code: str, template: str, summary: Optional[str] = None):
        self.code, self.template, self.summary = code, template, summary
        pattern = "".join(re.escape(literal) + ("" if field is None else "(?:.*?)")
                          for literal, field, _, _ in string.Formatter().parse(template))
        self._pattern = re.compile(pattern, re.DOTALL)
        if code in _KINDS:
            raise ValueError(f"note code '{code}' is declared twice")
        _KINDS[code] = self

    def __call__(self, **fields) -> Note:
        return Note(self.template.format(**fields), self.code)

    def matches(self, text: str) -> bool:
        return self._pattern.fullmatch(text) is not None


_KINDS: dict[str, NoteKind] = {}


def kinds() -> dict[str, NoteKind]:
    return dict(_KINDS)


def code_of(note: str) -> Optional[str]:
    """The code of a note, also of one read back from a table as text; None for free text (a method's own
    measurement notes, a checkpoint loader's remarks)."""
    if isinstance(note, Note) and note.code is not None:
        return note.code
    for kind in _KINDS.values():
        if kind.matches(str(note)):
            return kind.code
    return None


def split_cell(cell: object) -> list[str]:
    """The notes of one `notes` cell (joined with " | ": a single note may itself contain "; ")."""
    return [n for n in str(cell).split(" | ") if n]


def join(notes: Iterable[str]) -> str:
    return " | ".join(n for n in notes if n)


# ----------------------------------------------------------------------------------- the known kinds

THOP_LOW = NoteKind(
    "flops.thop-low",
    "thop reads {thop:.3f} vs {primary:.3f}: it hooks modules only and misses the attention matmuls "
    "(see docs/measurement.md)",
    summary="thop reads lower than the primary counter: it hooks modules only and misses the attention matmuls.")
FVCORE_DIFFERS = NoteKind(
    "flops.fvcore-differs",
    "fvcore ({fvcore:.3f}) and the primary counter ({primary:.3f}) differ by {percent:.1f}% "
    "(fvcore unsupported ops: {unsupported})")
FVCORE_FAILED = NoteKind("flops.fvcore-failed", "fvcore failed: {error}")
THOP_FAILED = NoteKind("flops.thop-failed", "thop failed: {error}")
BATCH_HALVED = NoteKind("timing.batch-halved", "batch {failed} ran out of memory; retried at {retried}")
VIDEOS_SKIPPED = NoteKind("data.videos-skipped", "{count} videos skipped (missing or corrupt)")
