"""The tune search driven by deterministic cost models (no timing): boundary, outcomes, noise, direction."""

from __future__ import annotations

import math
import random

import pytest

from vidprune.errors import VidpruneError
from vidprune.registry import Knob, get_method
from vidprune.tune import (MAX_PROBES, NOISE, Budget, Candidate, Cost, Status, knob_grid, rank, search,
                           winner)

RHO = Knob("rho", 0.7, 0.0, 1.0, "keep rate")  # (0, 1], higher keeps more: cost increases
RATIO = Knob("merge_ratio", 0.5, 0.0, 1.0, "merged away", high_inclusive=False, cost_increases=False)
STRIDE = Knob("r", 2, 1, math.inf, "stride", low_inclusive=True, high_inclusive=False, integer=True,
              cost_increases=False)


class Model:
    """A cost model that records what the search asked for."""

    def __init__(self, cost, spread=0.0, tokens=None):
        self.cost, self.spread, self.tokens = cost, spread, tokens
        self.calls: list[float] = []

    def __call__(self, value):
        self.calls.append(value)
        tokens = None if self.tokens is None else self.tokens(value)
        return Cost({"ms": self.cost(value)}, {"ms": self.spread} if self.spread else {}, tokens=tokens,
                    record={"knob": value})


def fits_exactly(grid, cost, limit):
    """The least aggressive grid value with cost <= limit, by brute force (grid: most aggressive first)."""
    fitting = [i for i, v in enumerate(grid) if cost(v) <= limit]
    return grid[max(fitting)] if fitting else None


def test_the_grid_runs_from_the_aggressive_end_in_knob_steps():
    assert knob_grid(RHO)[:3] == (0.05, 0.1, 0.15) and knob_grid(RHO)[-1] == 1.0 and len(knob_grid(RHO)) == 20
    assert knob_grid(RATIO)[0] == 0.95 and knob_grid(RATIO)[-1] == 0.05  # 0 and 1 are outside (0, 1)
    assert knob_grid(STRIDE, span=(1, 16)) == tuple(range(16, 0, -1))
    assert all(isinstance(v, int) for v in knob_grid(STRIDE, span=(1, 16)))
    assert len(knob_grid(RHO, resolution=0.01)) == 100
    with pytest.raises(VidpruneError, match="unbounded"):
        knob_grid(STRIDE)


def test_declared_knob_directions_of_the_registered_methods():
    # a higher r samples fewer frames, a higher merge ratio merges more: both cost less
    assert get_method("sllm").knob.cost_increases is False
    assert get_method("sttm").knob.cost_increases is False
    for name in ("evad", "random", "poguise", "mads"):
        assert get_method(name).knob.cost_increases is True


@pytest.mark.parametrize("limit", [15.0, 31.0, 55.5, 60.0, 77.7, 98.9])
def test_continuous_increasing_knob_boundary_to_one_step_within_the_probe_limit(limit):
    cost = lambda rho: 10 + 90 * rho  # noqa: E731
    model = Model(cost)
    result = search(RHO, Budget(ms=limit), model, unpruned=Cost({"ms": 105.0}))
    grid = knob_grid(RHO)
    assert result.status is Status.BOUNDARY
    assert result.best.value == fits_exactly(grid, cost, limit)
    assert cost(result.best.value) <= limit
    i = grid.index(result.best.value)
    # the next less aggressive setting was measured and does not fit
    assert result.next_over.value == grid[i + 1] and cost(result.next_over.value) > limit
    assert result.resolved
    assert result.timed_probes == len(model.calls) <= 6  # 1 + ceil(log2(20)); MAX_PROBES leaves 2 for re-probes
    assert result.best.margins["ms"] == pytest.approx(limit - cost(result.best.value))


def test_random_monotone_models_always_resolve_within_the_limit():
    rng = random.Random(4)
    grid = knob_grid(RHO)
    for _ in range(200):
        # a random increasing staircase-ish cost
        steps = sorted(rng.uniform(0, 1) for _ in range(rng.randint(1, 30)))
        base = rng.uniform(1, 50)
        cost = lambda rho, s=steps, b=base: b + sum(1.0 for t in s if t < rho) + 5 * rho  # noqa: E731
        limit = rng.uniform(cost(0.05), cost(1.0) + 1)
        model = Model(cost)
        result = search(RHO, Budget(ms=limit), model, unpruned=Cost({"ms": cost(1.0) + 10}))
        assert result.timed_probes <= MAX_PROBES
        expected = fits_exactly(grid, cost, limit)
        assert result.best.value == expected and result.resolved


def test_a_finer_resolution_still_fits_eight_probes():
    cost = lambda rho: 10 + 90 * rho  # noqa: E731
    result = search(RHO, Budget(ms=50.0), Model(cost), unpruned=Cost({"ms": 100.0}), resolution=0.01)
    assert result.best.value == 0.44 and result.next_over.value == 0.45
    assert result.timed_probes <= MAX_PROBES


def test_integer_decreasing_knob_returns_integers():
    cost = lambda r: 120.0 / r  # noqa: E731  a larger stride encodes fewer frames
    model = Model(cost)
    result = search(STRIDE, Budget(ms=35.0), model, unpruned=Cost({"ms": 120.0}), span=(1, 16))
    assert result.status is Status.BOUNDARY
    assert result.best.value == 4 and isinstance(result.best.value, int)  # 30 ms; r = 3 costs 40
    assert result.next_over.value == 3
    assert all(isinstance(v, int) for v in model.calls)
    assert model.calls[0] == 16  # the most aggressive end first
    assert result.timed_probes <= 5


def test_continuous_decreasing_knob():
    cost = lambda m: 100 * (1 - 0.8 * m)  # noqa: E731  merging more costs less
    result = search(RATIO, Budget(ms=61.0), Model(cost), unpruned=Cost({"ms": 100.0}))
    assert result.best.value == 0.5 and result.next_over.value == 0.45
    assert result.most_aggressive.value == 0.95


def test_unpruned_already_fits_probes_nothing():
    model = Model(lambda rho: 10 + 90 * rho)
    result = search(RHO, Budget(ms=200.0), model, unpruned=Cost({"ms": 100.0}))
    assert result.status is Status.UNPRUNED_FITS and model.calls == []
    assert result.unpruned.margins == {"ms": 100.0}
    assert "nothing to prune" in result.notes[0]


def test_least_aggressive_setting_fits_the_reference_does_not():
    # rho = 1.0 keeps everything but the method is cheaper than the reference (e.g. no attention export)
    result = search(RHO, Budget(ms=95.0), Model(lambda rho: 10 + 80 * rho), unpruned=Cost({"ms": 100.0}))
    assert result.best.value == 1.0 and result.next_over.value is None  # next_over is the unpruned reference
    assert result.next_over is result.unpruned and result.resolved


def test_no_setting_fits_reports_the_most_aggressive_probe():
    cost = lambda rho: 10 + 90 * rho  # noqa: E731
    result = search(RHO, Budget(ms=5.0), Model(cost), unpruned=Cost({"ms": 100.0}))
    assert result.status is Status.NO_FIT and not result.fits
    assert result.most_aggressive.value == 0.05 and result.most_aggressive.cost.values["ms"] == cost(0.05)
    assert "no setting fits" in result.notes[0]
    assert result.timed_probes == 2  # the floor check's neighbour was cheaper to reject than to guess


def test_a_knob_floor_ends_the_search_with_a_note():
    # EVAD-like: at least the keyframe's 98 of 784 tokens stay, so below rho = 1/8 nothing changes
    tokens = lambda rho: max(math.floor(784 * rho), 98)  # noqa: E731
    model = Model(lambda rho: 5 + 0.05 * tokens(rho), tokens=tokens)
    result = search(RHO, Budget(ms=8.0), model, unpruned=Cost({"ms": 45.0}))
    assert result.status is Status.FLOOR and not result.fits
    assert result.timed_probes == 2
    assert any("stops reducing cost" in n and "98 tokens" in n for n in result.notes)


def test_a_floor_without_token_counts_is_seen_as_equal_cost_within_noise():
    model = Model(lambda rho: 30.0 if rho < 0.3 else 30 + 50 * (rho - 0.3), spread=0.5)
    result = search(RHO, Budget(ms=20.0), model, unpruned=Cost({"ms": 70.0}))
    assert result.status is Status.FLOOR and "equal within noise" in result.notes[-1]


def test_cost_still_falling_at_the_end_is_not_a_floor():
    tokens = lambda rho: math.floor(784 * rho)  # noqa: E731
    result = search(RHO, Budget(ms=1.0), Model(lambda rho: 5 + 0.05 * tokens(rho), tokens=tokens),
                    unpruned=Cost({"ms": 45.0}))
    assert result.status is Status.NO_FIT


def test_every_budget_must_fit():
    def probe(rho):
        return Cost({"ms": 10 + 90 * rho, "gflops": 100 * rho, "mib": 50.0})

    result = search(RHO, Budget(ms=80.0, gflops=40.0, mib=60.0), probe, unpruned=Cost({"ms": 100, "gflops": 100, "mib": 50}))
    assert result.best.value == 0.4  # GFLOPs binds before latency (0.7)
    with pytest.raises(VidpruneError, match="energy"):
        search(RHO, Budget(j=1.0), probe)
    with pytest.raises(VidpruneError, match="at least one budget"):
        search(RHO, Budget(), probe)


def test_a_point_within_noise_is_reprobed_and_decided_when_the_repeats_agree():
    # rho = 0.55 costs 59.5 +- 0.8: one or two looks straddle 60; pooled over 3 the band is 0.8 / sqrt(3)
    model = Model(lambda rho: 10 + 90 * rho, spread=0.8)
    result = search(RHO, Budget(ms=60.0), model, unpruned=Cost({"ms": 100.0}))
    assert result.best.value == 0.55
    assert len(result.best.measurements) == 3 and result.best.cost.spread["ms"] == pytest.approx(0.8 / math.sqrt(3))
    assert model.calls.count(0.55) == 3 and not result.within_noise
    assert result.timed_probes <= MAX_PROBES


def test_a_point_that_stays_within_noise_is_reported_and_not_returned():
    # 0.55 costs 59.5 +- 2: even three looks (band 1.15) straddle 60
    model = Model(lambda rho: 10 + 90 * rho, spread=2.0)
    result = search(RHO, Budget(ms=60.0), model, unpruned=Cost({"ms": 100.0}))
    assert result.within_noise
    assert result.next_over.value == 0.55 and result.next_over.verdict == NOISE
    assert result.best.value == 0.5 and result.best.fits
    assert any("within noise" in n for n in result.notes)
    assert result.timed_probes <= MAX_PROBES


def test_noisy_repeats_are_pooled():
    looks = iter([61.0, 59.0, 58.0])  # the measured values at the boundary point, in order

    def probe(rho):
        value = next(looks) if rho == 0.55 else 10 + 90 * rho
        return Cost({"ms": value}, {"ms": 1.5})

    result = search(RHO, Budget(ms=61.0), probe, unpruned=Cost({"ms": 100.0}))
    point = next(p for p in result.probes if p.value == 0.55)
    assert point.cost.values["ms"] == pytest.approx(59.333, abs=1e-3)
    assert [m.values["ms"] for m in point.measurements] == [61.0, 59.0, 58.0]


def test_the_probe_limit_is_respected_and_said():
    model = Model(lambda rho: 10 + 90 * rho)
    result = search(RHO, Budget(ms=60.0), model, unpruned=Cost({"ms": 100.0}), max_probes=3)
    assert len(model.calls) == 3 and result.status is Status.BOUNDARY and not result.resolved
    assert "probe limit (3) reached" in result.notes[-1]
    assert 10 + 90 * result.best.value <= 60


def test_progress_sees_every_measurement():
    seen = []
    model = Model(lambda rho: 10 + 90 * rho)
    search(RHO, Budget(ms=60.0), model, unpruned=Cost({"ms": 100.0}), progress=seen.append)
    assert [p.value for p in seen] == model.calls
    assert all(p.measurements[-1].record == {"knob": p.value} for p in seen)


def _point(name, status_fits, quality, margin=1.0):
    result = search(RHO, Budget(ms=50.0), lambda rho: Cost({"ms": (50 - margin) if status_fits else 80.0}),
                    unpruned=Cost({"ms": 100.0}))
    return Candidate(name, result, quality)


def test_ranking_puts_the_best_quality_fitting_point_first():
    ranked = rank([_point("tome", True, 0.70), _point("evad", True, 0.81), _point("random", False, 0.99),
                   _point("poguise", True, None), _point("sttm", True, 0.81, margin=5.0)])
    assert [c.name for c in ranked] == ["sttm", "evad", "tome", "poguise", "random"]
    assert winner(ranked).name == "sttm"  # same quality as evad, more headroom
    assert winner(rank([_point("random", False, 0.99)])) is None
