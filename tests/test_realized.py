"""Issue #7: shape-only (meta) FLOP counting and the fast attention-tap paths give the same numbers as the
plain CPU paths they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vidprune.backbones.blocks as blocks
from vidprune.backbones.blocks import AttentionTap
from vidprune.measure.flops import (count_flops, count_thop, count_torch, count_torch_shapes_only,
                                    example_input)
from vidprune.methods.evad import WeightedReceivedAttention
from vidprune.methods.poguise import SemanticAttention
from vidprune.methods.sttm import FilterAttention
from vidprune.models import create_model

TINY = [("vit-tiny", "none", None), ("vit-tiny", "random", 0.6), ("vit-tiny", "evad", 0.6),
        ("vit-tiny", "poguise", 0.6), ("vit-tiny", "sttm", 0.5), ("timesformer-tiny", "sttm", 0.5),
        ("vivit-tiny", "mads", None), ("clip-tiny", "sllm", None)]


@pytest.mark.parametrize("backbone, method, keep", TINY)
def test_meta_count_equals_the_cpu_count_and_records_the_trace(one_thread, backbone, method, keep):
    model = create_model(backbone, method, keep)
    inputs = (example_input(model, 1),)
    on_cpu = count_torch(model, inputs)
    cpu_trace = list(model.last_trace)
    model.last_trace = []
    on_meta = count_torch_shapes_only(model, inputs)
    assert on_meta == pytest.approx(on_cpu, rel=1e-12)
    assert model.last_trace == cpu_trace  # the model's own modules ran: the sweep reads this afterwards
    assert count_thop(model, inputs, shapes_only=True) == pytest.approx(count_thop(model, inputs), rel=1e-12)
    assert all(p.device.type == "cpu" for p in model.parameters())  # the real weights are back in place


class ReadsValues(nn.Module):
    """A forward pass whose work depends on the input's values: it cannot be counted on meta tensors."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4, bias=False)

    def input_shape(self, batch: int = 1):
        return (batch, 4)

    def forward(self, x):
        repeats = 3 if float(x.sum()) > -1e9 else 1
        for _ in range(repeats):
            x = self.linear(x)
        return x


def test_value_dependent_forward_falls_back_to_real_tensors():
    model = ReadsValues()
    inputs = (example_input(model, 1),)
    assert count_torch_shapes_only(model, inputs) is None
    report = count_flops(model, counters=("torch",))
    assert not report.shapes_only
    assert report.gflops * 1e9 == pytest.approx(3 * 16)  # three 4x4 products, counted for real


def test_count_flops_uses_meta_for_shape_static_models(one_thread):
    report = count_flops(create_model("vit-tiny", "evad", 0.6), counters=("torch", "fvcore"))
    assert report.shapes_only
    assert report.counters_agree  # fvcore, on a real forward pass, cross-checks the meta count


# ---------------------------------------------------------------- explicit attention, block by block

def _qkv(b=3, h=2, n=20, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # strided views, as Attention.forward makes them
    qkv = torch.randn(b, n, 3, h, d, generator=g).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


class Recorder(AttentionTap):
    def __init__(self, n, b, query_rows=None):
        self.full = torch.full((b, 2, n, n), float("nan"))
        self.query_rows = query_rows

    def __call__(self, probs, start, samples=slice(None)):
        self.full[samples, :, start:start + probs.shape[2]] = probs


@pytest.mark.parametrize("chunk_elements", [2 * 20 * 8, 2**21])
def test_explicit_attention_matches_fused_and_hands_over_every_probability(monkeypatch, chunk_elements):
    monkeypatch.setattr(blocks, "TAP_CHUNK_ELEMENTS", chunk_elements)  # 8-query blocks, or one block per sample
    q, k, v = _qkv()
    tap = Recorder(20, 3)
    out = blocks.explicit_attention(q, k, v, 8 ** -0.5, tap)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tap.full, ((q @ k.transpose(-2, -1)) * 8 ** -0.5).softmax(-1))


def test_a_tap_asking_for_leading_rows_gets_only_those_and_the_output_is_unchanged():
    q, k, v = _qkv()
    tap = Recorder(20, 3, query_rows=1)
    out = blocks.explicit_attention(q, k, v, 8 ** -0.5, tap)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    expected = ((q @ k.transpose(-2, -1)) * 8 ** -0.5).softmax(-1)
    torch.testing.assert_close(tap.full[:, :, :1], expected[:, :, :1])
    assert tap.full[:, :, 1:].isnan().all()


def test_query_row_split_keeps_the_multiply_accumulates_of_full_attention():
    q, k, v = _qkv(b=1, h=2, n=20, d=8)
    split = count_torch(lambda: blocks.explicit_attention(q, k, v, 8 ** -0.5, Recorder(20, 1, query_rows=1)), ())
    assert split * 1e9 == pytest.approx(2 * 2 * 20 * 20 * 8)  # QK^T and AV over all 20 x 20 pairs, 2 heads


def _feed_by_sample(tap, probs, rows=3):
    b, _, n, _ = probs.shape
    for i in range(b):
        for start in range(0, n, rows):
            tap(probs[i:i + 1, :, start:start + rows], start, slice(i, i + 1))


@pytest.mark.parametrize("make", [
    lambda w: WeightedReceivedAttention(w),
    lambda w: SemanticAttention(w, keep_rows=True),
    lambda w: FilterAttention(has_cls=True),
    lambda w: FilterAttention(has_cls=False),
])
def test_taps_fed_per_sample_block_equal_taps_fed_the_whole_tensor(make):
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(3, 2, 10, 10, generator=g).softmax(-1)
    weights = torch.rand(3, 10, generator=g)
    whole, blocks = make(weights), make(weights)
    whole(probs, 0)
    _feed_by_sample(blocks, probs)
    for name in ("total", "scores", "rows"):
        if getattr(whole, name, None) is not None:
            torch.testing.assert_close(getattr(blocks, name), getattr(whole, name))
