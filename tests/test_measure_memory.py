import math
import sys
import time

import pytest
import torch

from vidprune.measure import memory as mem
from vidprune.measure.memory import MemoryResult, measure_peak_memory

CPU = torch.device("cpu")


def alloc(mib, hold_s: float = 0.0):
    def fn():
        t = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
        assert t.numel() > 0
        # A polling sampler sees a peak only while it lasts: hold it for many polling intervals, sleeping
        # (which frees the core), so even a sampler thread starved on a loaded machine gets to read it.
        time.sleep(hold_s)
        # returned tensor is dropped by the measurer; freed on return either way

    return fn


def _measured(result):
    if result is None or result.method == "unavailable":
        pytest.skip("no CPU memory measurement on this platform")
    return result


def test_cpu_peak_100_vs_10_mib():
    big = _measured(measure_peak_memory(alloc(100), CPU))
    small = _measured(measure_peak_memory(alloc(10), CPU))
    assert isinstance(big, MemoryResult)
    assert 80 <= big.peak_mib <= 140
    assert small.peak_mib < 40
    assert small.peak_mib < big.peak_mib - 50


def test_cpu_peak_after_a_larger_earlier_peak():
    # Without a peak reset, a call below an earlier process peak would read as ~0.
    _measured(measure_peak_memory(alloc(150), CPU))
    r = _measured(measure_peak_memory(alloc(50), CPU))
    assert 35 <= r.peak_mib <= 80


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_linux_uses_vmhwm_when_clear_refs_works():
    if not mem._reset_peak_rss():
        pytest.skip("clear_refs cannot reset VmHWM here")
    assert measure_peak_memory(alloc(20), CPU).method == "linux_vmhwm_delta"


def test_falls_back_to_sampling_when_reset_refused(monkeypatch):
    monkeypatch.setattr(mem, "_reset_peak_rss", lambda: False)
    r = measure_peak_memory(alloc(100, hold_s=0.25), CPU)
    if r.method == "unavailable":
        pytest.skip("no RSS source")
    assert r.method == "rss_sampling"
    assert 60 <= r.peak_mib <= 140


def test_unavailable_returns_nan_and_still_runs(monkeypatch):
    monkeypatch.setattr(mem, "_measure_vmhwm", lambda fn: None)
    monkeypatch.setattr(mem, "_rss_reader", lambda: None)
    calls = []
    r = measure_peak_memory(lambda: calls.append(1), CPU)
    assert r.method == "unavailable" and math.isnan(r.peak_mib)
    assert calls == [1]


def test_fn_called_once_under_inference_mode():
    seen = []
    measure_peak_memory(lambda: seen.append(torch.is_inference_mode_enabled()), CPU)
    assert seen == [True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak():
    keep = torch.ones(64 * 2**20 // 4, device="cuda")  # resident before: must be excluded

    def fn():
        t = torch.ones(100 * 2**20 // 4, device="cuda")
        return t.sum()

    r = measure_peak_memory(fn, torch.device("cuda"))
    assert r.method == "cuda_max_memory_allocated"
    assert 99 <= r.peak_mib <= 110
    del keep
