"""Retrying a measurement at smaller batch sizes when the device runs out of memory.

Why: the batch size that fits depends on the backbone, the clip length, the pruning ratio and the
GPU, so a sweep that fixes one batch size either wastes the large GPUs or crashes on the small
ones. Halving on out-of-memory lets one recipe run everywhere, and the returned notes make the
smaller batch visible in the results instead of silently changing what was measured.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from vidprune.errors import VidpruneError
from vidprune.notes import BATCH_HALVED

T = TypeVar("T")

# Messages that torch and the C allocators use for out-of-memory, lower-cased. Older torch raises
# a plain RuntimeError for CUDA OOM, and CPU allocation failures never have a dedicated type.
_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "defaultcpuallocator: not enough memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True if ``exc`` means the device ran out of memory (so a smaller batch might fit)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(marker in message for marker in _OOM_MARKERS)
    return False


def _release_cached_memory() -> None:
    # Blocks cached by the failed attempt would otherwise still be reserved and could make the
    # smaller retry fail too. Only meaningful, and only safe to call, when CUDA exists.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_batch_backoff(
    measure_at: Callable[[int], T], batch: int, min_batch: int = 1
) -> tuple[int, T, list[str]]:
    """Call ``measure_at(batch)``, halving ``batch`` on out-of-memory down to ``min_batch``.

    Returns ``(batch_that_worked, result, notes)``. Errors other than out-of-memory propagate at
    once, since a smaller batch will not fix them; if ``min_batch`` itself runs out of memory, the
    exception from that last attempt is re-raised so the user sees the real allocator message.
    """
    if batch < 1 or min_batch < 1:
        raise VidpruneError(
            f"batch and min batch must be >= 1, got batch={batch}, min_batch={min_batch}. "
            "Use e.g. --batch 8."
        )
    min_batch = min(min_batch, batch)
    notes: list[str] = []
    current = batch
    while True:
        try:
            return current, measure_at(current), notes
        except Exception as exc:
            if not is_out_of_memory(exc) or current <= min_batch:
                raise
        # Outside the except block on purpose: while it is being handled, the exception's
        # traceback keeps the failed attempt's frames, and so its tensors, alive, and emptying
        # the cache then would free nothing.
        failed = current
        current = max(current // 2, min_batch)
        _release_cached_memory()
        notes.append(BATCH_HALVED(failed=failed, retried=current))


__all__ = ["is_out_of_memory", "run_with_batch_backoff"]
