"""FLOP counting against an independent analytic MAC count (1 MAC = 1 FLOP), and the counters against each other.

Analytic convention: a joint-attention block on N tokens of width D costs 12·N·D² + 2·N²·D MACs
(qkv 3ND², proj ND², MLP 8ND², QK^T N²D, AV N²D); in an EVAD pruning layer attention runs on N tokens
and the MLP on K = max(floor(N·rho), N1). Patch embed: N·(3·2·16·16)·D. Head: D·classes.
ViT-B 16x224 is counted twice only (none, evad 0.7), in module-scoped fixtures.
"""

from __future__ import annotations

import math

import pytest
import torch

from vidprune.measure.flops import count_flops, count_torch, example_input
from vidprune.models import create_model

# ---------------------------------------------------------------- independent analytic count


def block_macs(n: int, d: int) -> int:
    return 12 * n * d * d + 2 * n * n * d


def pruning_block_macs(n: int, k: int, d: int) -> int:
    return 4 * n * d * d + 2 * n * n * d + 8 * k * d * d


def attention_matmul_macs(n: int, d: int) -> int:
    return 2 * n * n * d


def analytic(d: int, depth: int, grid: tuple, classes: int, rho: float = 1.0, layers=(),
             keyframe_floor: bool = True) -> dict:
    """MACs of the whole model plus the per-block token counts, computed from first principles.

    keyframe_floor: the kept count never drops below N1 (EVAD, random with keyframe=true); otherwise 1.
    """
    t, h, w = grid
    n = t * h * w
    n1 = h * w if keyframe_floor else 1
    total = n * (3 * 2 * 16 * 16) * d + d * classes
    attn = 0
    trace = []
    for i in range(1, depth + 1):
        trace.append(n)
        attn += attention_matmul_macs(n, d)
        if i in layers and rho < 1.0:
            k = max(math.floor(n * rho + 1e-9), n1)
            total += pruning_block_macs(n, k, d)
            n = k
        else:
            total += block_macs(n, d)
    return {"macs": total, "attn": attn, "trace": trace}


VIT_B = dict(d=768, depth=12, grid=(8, 14, 14), classes=400)


def test_analytic_count_reproduces_reference_numbers():
    # the numbers quoted in the EVAD notes (backbone only, 16x224): 180.34 and 112.78-112.79 GMAC
    assert analytic(**VIT_B)["macs"] / 1e9 == pytest.approx(180.34, abs=0.01)
    evad = analytic(**VIT_B, rho=0.7, layers=(4, 7, 10))
    assert evad["macs"] / 1e9 == pytest.approx(112.79, abs=0.01)
    assert evad["trace"] == [1568] * 4 + [1097] * 3 + [767] * 3 + [536] * 2


@pytest.fixture(scope="module")
def vit_b_none():
    model = create_model("vit-b", "none")
    return model, count_flops(model)


@pytest.fixture(scope="module")
def vit_b_evad():
    model = create_model("vit-b", "evad", 0.7, options={"w_kf": 4})
    return model, count_flops(model)


def test_vit_b_unpruned_matches_analytic(vit_b_none):
    model, report = vit_b_none
    expected = analytic(**VIT_B)
    assert model.last_trace == expected["trace"]
    assert report.gflops == pytest.approx(expected["macs"] / 1e9, rel=0.01)
    assert report.gflops == pytest.approx(180.34, rel=0.01)


def test_vit_b_evad_matches_analytic(vit_b_evad):
    model, report = vit_b_evad
    expected = analytic(**VIT_B, rho=0.7, layers=(4, 7, 10))
    assert model.last_trace == expected["trace"]
    assert report.gflops == pytest.approx(expected["macs"] / 1e9, rel=0.01)
    assert report.gflops == pytest.approx(112.79, rel=0.01)


def test_evad_saves_about_37_percent(vit_b_none, vit_b_evad):
    saving = 1 - vit_b_evad[1].gflops / vit_b_none[1].gflops
    assert saving == pytest.approx(1 - 112.79 / 180.34, abs=0.005)


@pytest.mark.parametrize("which", ["vit_b_none", "vit_b_evad"])
def test_fvcore_agrees_with_primary_on_vit_b(which, request):
    _, report = request.getfixturevalue(which)
    assert report.gflops_fvcore is not None, report.notes
    assert report.gflops_fvcore == pytest.approx(report.gflops, rel=0.01)
    assert report.counters_agree
    assert "aten::scaled_dot_product_attention" not in report.fvcore_unsupported


@pytest.mark.parametrize("which, rho, layers", [("vit_b_none", 1.0, ()), ("vit_b_evad", 0.7, (4, 7, 10))])
def test_thop_misses_only_the_attention_matmuls(which, rho, layers, request):
    _, report = request.getfixturevalue(which)
    expected = analytic(**VIT_B, rho=rho, layers=layers)
    assert report.gflops_thop is not None, report.notes
    assert report.gflops_thop < report.gflops
    without_attention = (expected["macs"] - expected["attn"]) / 1e9
    assert report.gflops_thop == pytest.approx(without_attention, rel=0.02)
    # the gap to the primary counter is the attention-matrix work, and the report says so
    assert report.gflops - report.gflops_thop == pytest.approx(expected["attn"] / 1e9, rel=0.05)
    assert any("thop" in note for note in report.notes)


# ---------------------------------------------------------------- small configurations

TINY = dict(d=192, depth=4, grid=(4, 4, 4), classes=400)


def test_primary_is_exact_on_a_small_unpruned_model():
    model = create_model("vit-tiny", "none")
    gmacs = count_torch(model, (example_input(model),))
    # biases, norms and softmax are not MACs: the dispatch-level count is exactly the analytic one
    assert gmacs * 1e9 == pytest.approx(analytic(**TINY)["macs"], rel=1e-9)


@pytest.mark.parametrize("method, options, trace", [
    ("random", {}, [64, 32, 16, 8]),  # no keyframe floor: 16 -> 8
    ("random", {"keyframe": True}, [64, 32, 16, 16]),
    ("evad", {}, [64, 32, 16, 16]),
])
def test_small_pruned_models_match_analytic_and_fvcore(method, options, trace):
    model = create_model("vit-tiny", method, 0.5, options=options)
    report = count_flops(model, counters=("torch", "fvcore"))
    expected = analytic(**TINY, rho=0.5, layers=(1, 2, 3), keyframe_floor=method == "evad" or bool(options))
    assert model.last_trace == expected["trace"] == trace
    assert report.gflops == pytest.approx(expected["macs"] / 1e9, rel=0.01)
    assert report.gflops_fvcore == pytest.approx(report.gflops, rel=0.01)
    assert report.counters_agree


@pytest.mark.parametrize("method", ["none", "evad"])
def test_primary_counts_sdpa_and_math_the_same(method):
    sdpa = create_model("vit-tiny", method, attention="sdpa")
    math_ = create_model("vit-tiny", method, attention="math")
    video = example_input(sdpa)
    a = count_torch(sdpa, (video,))
    b = count_torch(math_, (video,))
    assert a == pytest.approx(b, rel=1e-9)
    assert a > 0


def test_plain_flop_counter_misses_fused_cpu_attention():
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        pytest.skip("this PyTorch counts the CPU fused-attention kernel itself; the trap is gone")
    model = create_model("vit-tiny", "none", attention="sdpa")
    video = example_input(model)
    plain = FlopCounterMode(display=False)
    with torch.inference_mode(), plain:
        model(video)
    plain_gmacs = plain.get_total_flops() / 2 / 1e9
    ours = count_torch(model, (video,))
    share = analytic(**TINY)["attn"] / 1e9
    assert ours > plain_gmacs
    assert ours - plain_gmacs >= share * (1 - 1e-9)
    # and the math path, which uses explicit bmm, is seen by the plain counter: it equals our sdpa count
    for blk in model.blocks:
        blk.attn.attention = "math"
    plain_math = FlopCounterMode(display=False)
    with torch.inference_mode(), plain_math:
        model(video)
    assert plain_math.get_total_flops() / 2 / 1e9 == pytest.approx(ours, rel=1e-9)


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_counters_count_attention_with_a_bias_mask(attention):
    """A method's attention bias reaches SDPA as attn_mask (or is added before an explicit softmax): the
    attention matmuls are still counted, by the primary counter (on meta and on real tensors) and fvcore."""
    from test_blocks import KeyBias

    model = create_model("vit-tiny", "none", attention=attention)
    model.set_method(KeyBias(model.info, per_sample=True))
    expected = analytic(**TINY)["macs"] / 1e9
    report = count_flops(model, counters=("torch", "fvcore"))
    assert report.shapes_only
    assert report.gflops == pytest.approx(expected, rel=1e-9)
    assert count_torch(model, (example_input(model),)) == pytest.approx(expected, rel=1e-9)
    assert report.gflops_fvcore == pytest.approx(expected, rel=0.01) and report.counters_agree
