import time

import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure.timing import LatencyResult, measure_latency

CPU = torch.device("cpu")


def test_sleep_20ms_and_warmup_calls():
    calls = []

    def fn():
        calls.append(torch.is_inference_mode_enabled())
        time.sleep(0.020)

    r = measure_latency(fn, CPU, batch=4, warmup=2, repeats=5)
    assert isinstance(r, LatencyResult)
    assert len(calls) == 7  # 2 warm-up + 5 timed
    assert all(calls), "fn should run under inference_mode"
    assert len(r.times_ms) == 5
    assert 18 <= r.median_ms <= 60
    assert r.min_ms <= r.median_ms <= r.max_ms
    assert r.warmup == 2 and r.repeats == 5 and r.batch == 4
    expected = 4 * 5 / (sum(r.times_ms) / 1000)
    assert r.throughput == pytest.approx(expected)
    assert 4 * 5 / 0.3 < r.throughput < 4 * 5 / 0.09


def test_warmup_not_timed():
    n = {"i": 0}

    def fn():
        n["i"] += 1
        time.sleep(0.05 if n["i"] == 1 else 0.002)

    r = measure_latency(fn, CPU, batch=1, warmup=1, repeats=3)
    assert r.max_ms < 40


def test_noisy_flag_on_alternating_durations():
    n = {"i": 0}

    def fn():
        n["i"] += 1
        time.sleep(0.005 if n["i"] % 2 else 0.030)

    r = measure_latency(fn, CPU, batch=1, warmup=0, repeats=6)
    assert r.noisy is True
    assert r.iqr_ms > 10


def test_steady_not_noisy_and_threshold_respected():
    def fn():
        time.sleep(0.010)

    r = measure_latency(fn, CPU, batch=1, warmup=1, repeats=5)
    # Sleep jitter is well under 10% of 10 ms on an idle machine; the threshold test below does
    # not depend on that.
    assert r.noisy == (r.iqr_ms / r.median_ms > 0.10)
    strict = measure_latency(fn, CPU, batch=1, warmup=0, repeats=5, noisy_threshold=-1.0)
    assert strict.noisy is True


def test_iqr_is_percentile_difference(monkeypatch):
    seq = iter([0.0, 0.001, 0.001, 0.003, 0.003, 0.006, 0.006, 0.010, 0.010, 0.015])
    monkeypatch.setattr("vidprune.measure.timing.time.perf_counter", lambda: next(seq))
    r = measure_latency(lambda: None, CPU, batch=2, warmup=0, repeats=5)
    assert r.times_ms == pytest.approx([1, 2, 3, 4, 5])
    assert r.median_ms == pytest.approx(3)
    assert r.iqr_ms == pytest.approx(2)  # 4 - 2
    assert r.mean_ms == pytest.approx(3)
    assert r.throughput == pytest.approx(2 * 5 / 0.015)
    assert r.noisy is True


@pytest.mark.parametrize(
    "kwargs", [{"warmup": -1}, {"repeats": 0}, {"batch": 0}, {"repeats": 2.5}]
)
def test_validation(kwargs):
    args = {"batch": 1, "warmup": 0, "repeats": 1, **kwargs}
    with pytest.raises(VidpruneError):
        measure_latency(lambda: None, CPU, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events():
    x = torch.randn(1024, 1024, device="cuda")
    r = measure_latency(lambda: x @ x, torch.device("cuda"), batch=1, warmup=2, repeats=5)
    assert len(r.times_ms) == 5 and r.median_ms > 0
