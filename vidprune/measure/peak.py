"""Achievable matrix-multiply throughput of a device, the yardstick for "fraction of peak".

Why: a method that removes 40 % of the GFLOPs but leaves the device 80 % idle saves less time than
the GFLOPs suggest. Comparing a model's achieved MAC rate with what the same device, dtype and
torch build reach on one large square GEMM shows how much of the hardware the model actually uses.
The data-sheet peak is not used: clocks, power modes (Jetson nvpmodel), TF32 settings and the BLAS
library all move what is reachable, and this benchmark sees all of them.

Convention: like the rest of vidprune, 1 multiply-accumulate = 1 FLOP, so one n x n GEMM is n**3
MACs and ``tflops`` is 1e12 MACs per second (half of the "2 FLOPs per MAC" figures in data sheets).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils import benchmark

from vidprune.errors import VidpruneError
from vidprune.measure.device import dtype_name, synchronize
from vidprune.measure.throughput import is_out_of_memory
from vidprune.measure.timing import as_int

# Large enough to reach the GEMM plateau on the device class, small enough to finish in ~1-2 s.
DEFAULT_SIZES = {"cuda": 4096, "mps": 2048, "cpu": 1024}
# CPUs without native half-precision units emulate fp16/bf16 GEMMs several times slower than fp32.
CPU_HALF_SIZE = 512
# Each timed block runs enough GEMMs to last this long, so clock reads and the device synchronise
# (microseconds) stay far below the time measured.
BLOCK_SECONDS = 0.05


@dataclass(frozen=True)
class PeakResult:
    """Throughput of ``size`` x ``size`` GEMMs; ``seconds`` is the median time of one GEMM."""

    device: str
    dtype: str
    size: int
    seconds: float
    macs_per_s: float
    # fp32 GEMMs run on TF32 tensor cores only when this is "high" or "medium", which on Ampere and
    # newer changes the fp32 peak several-fold; recorded so a peak is read with the right setting.
    float32_matmul_precision: str

    @property
    def tflops(self) -> float:
        """10**12 MACs per second (vidprune counts 1 MAC as 1 FLOP)."""
        return self.macs_per_s / 1e12


def default_size(device: torch.device, dtype: torch.dtype) -> int:
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        return CPU_HALF_SIZE
    return DEFAULT_SIZES.get(device.type, DEFAULT_SIZES["cuda"])


def peak_matmul(
    device: torch.device,
    dtype: torch.dtype,
    size: int | None = None,
    repeats: int = 10,
    warmup: int = 3,
) -> PeakResult:
    """Time square ``torch.matmul`` GEMMs on ``device`` and report the achieved MAC rate.

    ``warmup`` untimed GEMMs pay for library initialisation and kernel selection; then ``repeats``
    blocks of GEMMs are timed with torch.utils.benchmark (with a device synchronise at both ends
    of every block) and the median time per GEMM is reported. The current torch thread count is
    kept (torch.utils.benchmark would otherwise time one thread).
    """
    device = torch.device(device)
    name = dtype_name(dtype)  # rejects dtypes we never benchmark, with the allowed list
    size = default_size(device, dtype) if size is None else as_int("size", size, 1, "--size 1024")
    repeats = as_int("repeats", repeats, 1, "--repeats 10")
    warmup = as_int("warmup", warmup, 0, "--warmup 3")

    try:
        # Normal values keep the fp16 sums (std ~ sqrt(size)) far from overflow.
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        # The first GEMM doubles as the capability check: CPU builds without fp16/bf16 GEMM
        # kernels fail here rather than inside the timer.
        torch.matmul(a, b, out=out)
        synchronize(device)
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise VidpruneError(
                f"a {size}x{size} {name} GEMM does not fit in {device} memory. Use a smaller size."
            ) from exc
        raise VidpruneError(
            f"{name} matrix multiply is not supported on {device} by torch {torch.__version__} "
            f"({str(exc).splitlines()[0]}). Use --dtype fp32, or another device."
        ) from exc

    def synced_clock() -> float:
        synchronize(device)
        return time.perf_counter()

    timer = benchmark.Timer(
        stmt="torch.matmul(a, b, out=out)",
        globals={"a": a, "b": b, "out": out},
        timer=synced_clock,
        num_threads=torch.get_num_threads(),
    )
    for _ in range(warmup):
        timer.timeit(1)
    single = timer.timeit(1).mean
    per_block = max(1, math.ceil(BLOCK_SECONDS / single)) if single > 0 else 1000
    seconds = statistics.median(timer.timeit(per_block).mean for _ in range(repeats))
    if not (seconds > 0 and math.isfinite(seconds)):
        raise VidpruneError(
            f"the clock could not time a {size}x{size} GEMM on {device} ({seconds} s). Use a larger size."
        )
    return PeakResult(
        device=str(device),
        dtype=name,
        size=size,
        seconds=float(seconds),
        macs_per_s=float(size) ** 3 / seconds,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
    )


def fraction_of_peak(gflops_per_clip: float, clips_per_s: float, peak: PeakResult) -> float:
    """The share of the measured GEMM peak that a model reaches: achieved MACs/s over peak MACs/s.

    ``gflops_per_clip`` is in vidprune's convention (1 MAC = 1 FLOP), the same as ``peak``, so
    no factor of 2 enters. Compare only numbers from the same device and dtype.
    """
    for label, value in (("gflops_per_clip", gflops_per_clip), ("clips_per_s", clips_per_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise VidpruneError(f"{label} must be a finite number >= 0, got {value!r}.")
    if not (math.isfinite(peak.macs_per_s) and peak.macs_per_s > 0):
        raise VidpruneError(
            f"the peak has no usable rate ({peak.macs_per_s} MACs/s); re-run the peak benchmark."
        )
    return gflops_per_clip * 1e9 * clips_per_s / peak.macs_per_s


__all__ = ["PeakResult", "peak_matmul", "fraction_of_peak", "default_size", "DEFAULT_SIZES"]
