"""Peak memory that one forward pass adds, on whichever device it runs.

Why "adds": the weights and the input batch are resident before the call and are the same for
every pruning method on a given backbone; what pruning changes is the activation memory the
forward allocates on top of them. So each method below takes a baseline just before the call and
reports the peak during the call minus that baseline, in MiB.

Every result carries a ``method`` tag, because the numbers from different methods are not the
same quantity (allocator bytes on CUDA vs. resident pages on the CPU) and must not be compared
across tags.

The call runs under ``torch.inference_mode()`` so that autograd does not keep activations alive
for a backward pass that inference never does, which would inflate the peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import torch

_MIB = float(2**20)


@dataclass
class MemoryResult:
    """Peak extra memory of one call, and a tag saying how it was measured."""

    peak_mib: float
    method: str


# ---------------------------------------------------------------- CUDA


def _measure_cuda(fn: Callable[[], object], device: torch.device) -> MemoryResult:
    # max_memory_allocated counts live tensor bytes, so the allocator's cache does not change it;
    # empty_cache is there so that the reserved pool (and nvidia-smi) also start from live tensors
    # only, which keeps a later look at memory_reserved about this call and not earlier ones.
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return MemoryResult(peak_mib=max(peak - baseline, 0) / _MIB, method="cuda_max_memory_allocated")


# ---------------------------------------------------------------- MPS


def _measure_mps(fn: Callable[[], object]) -> MemoryResult:
    # MPS has no peak counter. After empty_cache the driver pool holds only live tensors; the pool
    # grows to cover the forward's peak and keeps that memory cached afterwards, so the growth of
    # the driver allocation approximates the peak the forward added. Best effort only.
    torch.mps.synchronize()
    torch.mps.empty_cache()
    baseline = torch.mps.driver_allocated_memory()
    with torch.inference_mode():
        fn()
    torch.mps.synchronize()
    after = torch.mps.driver_allocated_memory()
    return MemoryResult(peak_mib=max(after - baseline, 0) / _MIB, method="mps_driver_allocated_delta")


# ---------------------------------------------------------------- CPU helpers

_PROC_STATUS = "/proc/self/status"
_PROC_STATM = "/proc/self/statm"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"


def _malloc_trim() -> None:
    """Hand freed heap pages back to the kernel so they stop counting as resident.

    glibc keeps freed memory in its arenas; without this, memory freed before the call still counts
    in the baseline RSS and then gets reused by the forward, so the forward's real growth is
    under-reported. Not available on musl, macOS or Windows, where it is skipped.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read_status_kib(field: str) -> int | None:
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; True if it took effect.

    Writing "5" to clear_refs does this on Linux >= 4.0. We check that VmHWM really fell to
    VmRSS, because an older kernel, a sandbox (gVisor, some containers) or a read-only /proc can
    accept or refuse the write without resetting the counter, and a stale high-water mark would
    be silently reported as this call's peak.
    """
    try:
        with open(_PROC_CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
    except OSError:  # includes PermissionError
        return False
    hwm = _read_status_kib("VmHWM")
    rss = _read_status_kib("VmRSS")
    if hwm is None or rss is None:
        return False
    # A little slack: RSS may grow by a few pages between the two reads.
    return hwm - rss <= 1024


def _measure_vmhwm(fn: Callable[[], object]) -> MemoryResult | None:
    """Linux: exact kernel-tracked peak RSS during the call; None if the counter can't be reset."""
    gc.collect()
    _malloc_trim()
    if not _reset_peak_rss():
        return None
    baseline = _read_status_kib("VmRSS")
    if baseline is None:
        return None
    with torch.inference_mode():
        fn()
    hwm = _read_status_kib("VmHWM")
    if hwm is None:
        return None
    return MemoryResult(peak_mib=max(hwm - baseline, 0) / 1024.0, method="linux_vmhwm_delta")


def _rss_reader() -> Callable[[], int] | None:
    """A function returning the current RSS in bytes, or None if this platform offers none.

    ``resource.getrusage`` is deliberately not used: it only gives the lifetime peak, which cannot
    be reset, so a call whose peak is below an earlier one would read as zero.
    """
    try:
        import psutil  # optional; not a dependency

        proc = psutil.Process()
        proc.memory_info()
        return lambda: int(proc.memory_info().rss)
    except Exception:
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        with open(_PROC_STATM, encoding="ascii") as f:
            f.read()
    except (OSError, ValueError, AttributeError):
        return None

    def read_statm() -> int:
        with open(_PROC_STATM, encoding="ascii") as f:
            return int(f.read().split()[1]) * page

    return read_statm


def _measure_rss_sampling(
    fn: Callable[[], object], interval_s: float = 0.001
) -> MemoryResult | None:
    """Fallback: poll RSS from a background thread while the call runs.

    It can miss a peak shorter than the polling interval, so it under-reports short spikes; the
    tag says so. Torch kernels release the GIL, so the sampler keeps running during the forward.
    """
    read = _rss_reader()
    if read is None:
        return None
    gc.collect()
    _malloc_trim()
    baseline = read()
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                value = read()
            except Exception:
                return
            if value > peak:
                peak = value
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, name="vidprune-rss-sampler", daemon=True)
    thread.start()
    try:
        with torch.inference_mode():
            fn()
    finally:
        stop.set()
        thread.join()
    return MemoryResult(peak_mib=max(peak - baseline, 0) / _MIB, method="rss_sampling")


def _measure_cpu(fn: Callable[[], object]) -> MemoryResult:
    if sys.platform.startswith("linux"):
        result = _measure_vmhwm(fn)
        if result is not None:
            return result
    result = _measure_rss_sampling(fn)
    if result is not None:
        return result
    # No way to read memory here. Run the call anyway, so callers that rely on it having
    # happened behave the same, and report "unknown" rather than fail the whole run.
    with torch.inference_mode():
        fn()
    return MemoryResult(peak_mib=float("nan"), method="unavailable")


# ---------------------------------------------------------------- public


def measure_peak_memory(fn: Callable[[], object], device: torch.device | str) -> MemoryResult:
    """Run ``fn`` once and return the peak memory it added on ``device``, in MiB.

    * CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before the call (tensor bytes;
      allocator cache and the CUDA context are excluded). Tag ``cuda_max_memory_allocated``.
    * CPU on Linux: the kernel's peak resident set (VmHWM), reset just before the call through
      ``/proc/self/clear_refs``, minus VmRSS before the call. Tag ``linux_vmhwm_delta``.
    * CPU elsewhere, or when that reset is refused: RSS polled about every millisecond
      (``rss_sampling``); if RSS cannot be read at all, ``nan`` with tag ``unavailable``.
    * MPS: growth of the driver's allocation, best effort (``mps_driver_allocated_delta``).

    Note that ``fn`` is called exactly once, so any warm-up should happen before this call; a cold
    first call can include one-off allocations (e.g. oneDNN/cuDNN workspaces, lazily loaded code).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _measure_cuda(fn, device)
    if device.type == "mps":
        return _measure_mps(fn)
    return _measure_cpu(fn)


__all__ = ["MemoryResult", "measure_peak_memory"]
