import time

import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure.timing import LatencyResult, measure_latency

CPU = torch.device("cpu")


class FakeClock:
    """perf_counter that advances only when the timed function says so: timings without wall-clock noise."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr("vidprune.measure.timing.time.perf_counter", lambda: self.now)

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_sleep_20ms_and_warmup_calls():
    """Real sleeps: only lower bounds (a sleep never returns early) and generous upper ones, so a loaded
    machine cannot break it."""
    calls = []

    def fn():
        calls.append(torch.is_inference_mode_enabled())
        time.sleep(0.020)

    r = measure_latency(fn, CPU, batch=4, warmup=2, repeats=5)
    assert isinstance(r, LatencyResult)
    assert len(calls) == 7  # 2 warm-up + 5 timed
    assert all(calls), "fn should run under inference_mode"
    assert len(r.times_ms) == 5
    assert 19.5 <= r.min_ms <= r.median_ms <= r.max_ms < 2000
    assert r.warmup == 2 and r.repeats == 5 and r.batch == 4
    assert r.throughput == pytest.approx(4 * 5 / (sum(r.times_ms) / 1000))
    assert r.throughput <= 4 / 0.0195


def test_warmup_not_timed(monkeypatch):
    clock = FakeClock(monkeypatch)
    durations = iter([0.050, 0.002, 0.002, 0.002])

    r = measure_latency(lambda: clock.spend(next(durations)), CPU, batch=1, warmup=1, repeats=3)
    assert r.times_ms == pytest.approx([2.0, 2.0, 2.0])
    assert r.max_ms == pytest.approx(2.0)


def test_noisy_flag_on_alternating_durations(monkeypatch):
    clock = FakeClock(monkeypatch)
    n = {"i": 0}

    def fn():
        n["i"] += 1
        clock.spend(0.005 if n["i"] % 2 else 0.030)

    r = measure_latency(fn, CPU, batch=1, warmup=0, repeats=6)
    assert r.noisy is True
    assert r.iqr_ms == pytest.approx(25.0)


@pytest.mark.parametrize("spread_ms, threshold, noisy", [
    (0.4, 0.10, False),   # IQR 0.4 of a 10 ms median: 4 %, steady at the default 10 %
    (1.6, 0.10, True),    # IQR 1.6: 16 %, noisy at the default
    (1.6, 0.20, False),   # ... but not at a 20 % threshold
    (0.0, -1.0, True),    # a negative threshold calls everything noisy
])
def test_noisy_threshold(monkeypatch, spread_ms, threshold, noisy):
    """noisy is IQR / median > threshold: durations 10 - s, 10 - s/2, 10, 10 + s/2, 10 + s ms have median
    10 ms and IQR s (numpy's linear percentiles of five points), so the flag flips where the threshold says."""
    clock = FakeClock(monkeypatch)
    s = spread_ms / 1000
    durations = iter([0.010 - s, 0.010 + s / 2, 0.010, 0.010 - s / 2, 0.010 + s])
    r = measure_latency(lambda: clock.spend(next(durations)), CPU, batch=1, warmup=0, repeats=5,
                        noisy_threshold=threshold)
    assert r.median_ms == pytest.approx(10.0)
    assert r.iqr_ms == pytest.approx(spread_ms)
    assert r.noisy is noisy


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
