"""Latency measurement of one forward pass, robust to outliers and honest about noise.

Why it is built this way:

* Warm-up runs are discarded because the first calls pay for lazy initialisation, allocator growth,
  cuDNN/oneDNN algorithm selection and cold caches, none of which a deployed model pays per clip.
* We report the median and the interquartile range rather than the mean and standard deviation,
  because latency distributions are skewed by rare stalls (scheduler preemption, GC, clock
  changes) that would drag a mean around. The mean, min and max are kept for completeness.
* ``noisy`` follows torch.utils.benchmark's rule (IQR above 10 % of the median): such a number
  should not be used to rank two methods whose difference is of that size.
* On CUDA each run is bracketed by CUDA events, which time the GPU work itself; we synchronise
  after every run so runs do not overlap and each sample is one clip batch's own latency. Elsewhere
  we use ``time.perf_counter`` with a device synchronise on both sides.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from vidprune.errors import VidpruneError
from vidprune.measure.device import synchronize


@dataclass
class LatencyResult:
    """Summary of repeated timings of one call; times are milliseconds per call (per batch)."""

    median_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    times_ms: list[float] = field(repr=False)
    warmup: int
    repeats: int
    noisy: bool
    throughput: float  # clips per second
    batch: int


def as_int(name: str, value: object, minimum: int, example: str) -> int:
    # operator.index accepts numpy integers but rejects floats and strings, which would otherwise
    # fail later as a confusing range() error.
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < minimum:
        raise VidpruneError(
            f"{name} must be an integer >= {minimum}, got {value!r}. Use e.g. {example}."
        )
    return n


def _time_cuda(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    times: list[float] = []
    with torch.cuda.device(device):
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(float(start.elapsed_time(end)))
    return times


def _time_host(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    times: list[float] = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def measure_latency(
    fn: Callable[[], object],
    device: torch.device | str,
    batch: int,
    warmup: int,
    repeats: int,
    noisy_threshold: float = 0.10,
) -> LatencyResult:
    """Time ``fn`` (one forward pass over ``batch`` clips) after ``warmup`` untimed calls.

    ``throughput`` is ``batch * repeats`` divided by the *sum of the per-run times*, not by the
    wall-clock span of the loop: that keeps it consistent with the latency samples and leaves out
    our own bookkeeping between runs (event creation, synchronise, list appends). It is therefore
    the throughput of back-to-back batches at this batch size, an upper bound on what a pipeline
    with data loading would see.

    We enter ``torch.inference_mode()`` here too, so a caller who forgets it does not time autograd
    bookkeeping that inference never pays.
    """
    warmup = as_int("warmup", warmup, 0, "--warmup 5")
    repeats = as_int("repeats", repeats, 1, "--repeats 20")
    batch = as_int("batch", batch, 1, "--batch 1")
    device = torch.device(device)

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        synchronize(device)
        if device.type == "cuda":
            times = _time_cuda(fn, device, repeats)
        else:
            times = _time_host(fn, device, repeats)

    arr = np.asarray(times, dtype=np.float64)
    median = float(np.median(arr))
    q25, q75 = np.percentile(arr, [25, 75])
    iqr = float(q75 - q25)
    total_s = float(arr.sum()) / 1000.0
    # A zero median can only come from a clock too coarse to see the call; call it noisy then,
    # since the number carries no information.
    noisy = bool(iqr / median > noisy_threshold) if median > 0 else True
    throughput = batch * repeats / total_s if total_s > 0 else float("inf")
    return LatencyResult(
        median_ms=median,
        iqr_ms=iqr,
        mean_ms=float(arr.mean()),
        min_ms=float(arr.min()),
        max_ms=float(arr.max()),
        times_ms=[float(t) for t in times],
        warmup=warmup,
        repeats=repeats,
        noisy=noisy,
        throughput=float(throughput),
        batch=batch,
    )


__all__ = ["LatencyResult", "measure_latency"]
