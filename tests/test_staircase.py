"""Latency staircases: step detection on synthetic curves with noise, snapping, and a tiny real timing run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure import staircase as sc


COUNTS = np.arange(16, 1025, 16)  # the sampling step is 16


def stairs(counts, width=128, height=0.5, base=1.0, slope=0.0, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return base + height * np.floor(counts / width) + slope * counts + rng.normal(0, noise, len(counts))


def edges_found(staircase):
    return [s.above for s in staircase.steps]


@pytest.mark.parametrize("seed", range(5))
def test_steps_are_found_at_the_right_counts(seed):
    # edges at 128, 256, ..., 896 (the first count on each higher tread); 1024 is a one-point tread at the
    # end of the range, which no segmentation can tell from noise
    result = sc.detect_steps(COUNTS, stairs(COUNTS, seed=seed))
    expected = list(range(128, 1024, 128))
    assert len(result.steps) == len(expected)
    for step, edge in zip(result.steps, expected):
        assert abs(step.above - edge) <= 16 and step.above - step.below == 16
        assert step.jump_ms == pytest.approx(0.5, abs=0.1)
    assert all(s.flat for s in result.segments[:-1])
    assert 0.01 < result.noise_ms < 0.04  # 0.02, somewhat inflated by the deviations next to each step


def test_steps_on_a_slope_are_found_and_their_treads_are_not_free():
    result = sc.detect_steps(COUNTS, stairs(COUNTS, height=0.3, slope=0.002, seed=3))
    assert [abs(a - b) <= 16 for a, b in zip(edges_found(result), range(128, 1024, 128))] == [True] * 7
    assert not any(s.flat for s in result.segments)  # 0.002 ms/token x 112 tokens = 0.22 ms: more tokens cost more
    assert result.free_counts() == [] and result.snap(300) == 300


def test_uneven_steps_and_spacing():
    counts = np.unique(np.concatenate([np.arange(10, 400, 7), np.arange(400, 700, 3)]))
    latency = np.where(counts < 197, 2.0, np.where(counts < 451, 2.6, 4.0))
    latency = latency + np.random.default_rng(1).normal(0, 0.03, len(counts))
    result = sc.detect_steps(counts, latency)
    assert len(result.steps) == 2
    assert result.steps[0].below < 197 <= result.steps[0].above and result.steps[0].above - result.steps[0].below == 7
    assert result.steps[1].below < 451 <= result.steps[1].above


@pytest.mark.parametrize("seed", range(5))
def test_a_flat_line_has_no_steps_and_every_count_is_free_up_to_the_last(seed):
    latency = 3.0 + np.random.default_rng(seed).normal(0, 0.05, len(COUNTS))
    result = sc.detect_steps(COUNTS, latency)
    assert result.steps == ()
    assert "no steps" in result.notes[0]
    assert result.free_counts() == [1024] and result.snap(100) == 1024


@pytest.mark.parametrize("seed", range(5))
def test_a_linear_ramp_with_small_noise_has_no_steps_and_nothing_free(seed):
    latency = 1.0 + 0.003 * COUNTS + np.random.default_rng(seed).normal(0, 0.02, len(COUNTS))
    result = sc.detect_steps(COUNTS, latency)
    assert result.steps == ()
    assert len(result.segments) == 1 and not result.segments[0].flat
    assert result.free_counts() == [] and result.snap(500) == 500


def test_a_noiseless_staircase():
    result = sc.detect_steps(COUNTS, stairs(COUNTS, noise=0.0))
    assert edges_found(result) == list(range(128, 1024, 128))


def test_too_few_counts_is_a_stated_result():
    result = sc.detect_steps([8, 16, 24], [1.0, 1.0, 2.0])
    assert result.steps == () and "at least" in result.notes[0]


def test_snap_rounds_up_to_the_end_of_the_tread_monotone_and_never_down():
    result = sc.detect_steps(COUNTS, stairs(COUNTS, seed=2))
    assert result.free_counts()[:3] == [112, 240, 368]
    assert result.snap(130) == 240 and result.snap(240) == 240 and result.snap(112) == 112
    assert result.snap(120) == 120  # in the gap between 112 and 128: which tread it is on is unknown
    assert result.snap(5) == 5 and result.snap(5000) == 5000  # outside the measured range
    snapped = [result.snap(n) for n in range(1, 1100)]
    assert all(s >= n for s, n in zip(snapped, range(1, 1100)))
    assert all(a <= b for a, b in zip(snapped, snapped[1:]))


def test_refinement_counts_fill_each_gap():
    result = sc.detect_steps(COUNTS, stairs(COUNTS, seed=0))
    extra = sc.refinement_counts(result, points=8)
    assert 113 <= min(extra) and all(n not in set(COUNTS.tolist()) for n in extra)
    inside_first = [n for n in extra if 112 < n < 128]
    assert len(inside_first) == 8 and inside_first[0] == 113 and inside_first[-1] == 127
    wide = sc.Staircase((1, 2), (1.0, 2.0), (), (sc.Step(1, 5, 1.0),), 0.0, 0.1, "")
    assert sc.refinement_counts(wide, points=8) == [3, 4]  # fewer than 8 inside: all of them


def test_bad_input_is_refused():
    with pytest.raises(VidpruneError, match="ascending"):
        sc.detect_steps([3, 2, 1, 4, 5, 6], [1.0] * 6)
    with pytest.raises(VidpruneError, match="MIN:MAX:STEP"):
        sc.parse_token_range("64:32:8")
    assert list(sc.parse_token_range("8:32:8")) == [8, 16, 24, 32]


def test_missing_ruptures_names_the_install_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ruptures(name, *args, **kwargs):
        if name == "ruptures":
            raise ImportError("no module named ruptures")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ruptures)
    with pytest.raises(VidpruneError, match=r"pip install 'vidprune\[staircase\]'"):
        sc.detect_steps(COUNTS, stairs(COUNTS))


def test_a_tiny_real_timing_run_on_cpu():
    # shapes and token order only: timing values on a shared CPU say nothing
    from vidprune.backbones.vit import Block

    seen = []
    timings, result = sc.profile_staircase(Block(16, 2, 2.0, "sdpa"), 16, [4, 12, 8, 16, 20, 24], batch=1, warmup=1,
                                           repeats=2, progress=lambda n, ms: seen.append(n))
    assert list(timings.tokens) == sorted(set(timings.tokens)) and {4, 8, 12, 16, 20, 24} <= set(timings.tokens)
    assert len(timings.median_ms) == len(timings.tokens) == len(timings.iqr_ms)
    assert all(t > 0 for t in timings.median_ms)
    assert sorted(seen) == sorted(timings.tokens)  # every count timed once, in a shuffled order
    assert result.tokens == timings.tokens
    assert all(s.below < s.above for s in result.steps)


def test_block_forward_runs_a_vit_block_and_a_block_with_its_own_forward():
    from vidprune.backbones.vit import Block

    block = Block(8, 2, 2.0, "sdpa").eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        out = sc.block_forward(block)(x)
        expected = x + block.attn(block.norm1(x))[0]
        expected = expected + block.mlp(block.norm2(expected))
    assert torch.allclose(out, expected)
    linear = torch.nn.Linear(8, 8)
    assert sc.block_forward(linear) is linear
    with pytest.raises(VidpruneError, match="not a transformer block"):
        sc.block_forward(torch.nn.Module())
