"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

import difflib
from typing import Iterable


class VidpruneError(Exception):
    """A problem with the user's input, with a message that names the problem and the fix."""


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str = "vidprune list") -> VidpruneError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    return VidpruneError(
        f"unknown {kind} '{name}'.{suggestion} Known: {', '.join(known)} (see `{hint}`)."
    )
