"""The shared block loop (backbones/blocks.py): the attention bias a method declares reaches the fused, the
explicit and the tapped attention alike, and the loop calls the hooks in the documented order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vidprune.backbones.blocks as blocks
from vidprune.backbones.blocks import AttentionTap, attention, combine_biases, explicit_attention
from vidprune.measure.flops import example_input
from vidprune.methods.base import TokenMethod
from vidprune.methods.evad import EVAD
from vidprune.models import create_model


class KeyBias(TokenMethod):
    """A test method that only biases attention: key j of every query gets -strength * j / N, so later tokens
    are attended less (a stand-in for ToMe's log-size bias). `per_sample` gives each clip its own bias."""

    name = "key-bias (test)"
    families = ("vit",)

    def __init__(self, info, strength: float = 3.0, per_sample: bool = False):
        super().__init__(info, None)
        self.strength = strength
        self.per_sample = per_sample
        self.calls: list[tuple[int, int]] = []

    def attention_bias(self, layer, state):
        b, n = state.x.shape[:2]
        self.calls.append((layer, n))
        bias = -self.strength * torch.arange(n, dtype=state.x.dtype, device=state.x.device) / n
        if self.per_sample:  # (B, 1, N, N): sample i's bias scaled by i + 1
            scale = torch.arange(1, b + 1, dtype=state.x.dtype, device=state.x.device)
            return (scale[:, None, None, None] * bias).expand(b, 1, n, n)
        return bias.view(1, 1, 1, n)


class BiasedEVAD(EVAD):
    """EVAD with KeyBias's bias: pruning through the tap (or the full probabilities) of biased attention."""

    def attention_bias(self, layer, state):
        n = state.x.shape[1]
        return (-2.0 * torch.arange(n, dtype=state.x.dtype, device=state.x.device) / n).view(1, 1, 1, n)


def _qkv(b=2, h=3, n=20, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n, 3, h, d, generator=g).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


class Recorder(AttentionTap):
    def __init__(self, b, h, n, query_rows=None):
        self.full = torch.full((b, h, n, n), float("nan"))
        self.query_rows = query_rows

    def __call__(self, probs, start, samples=slice(None)):
        self.full[samples, :, start:start + probs.shape[2]] = probs


BIAS_SHAPES = [(20, 20), (1, 1, 1, 20), (2, 1, 20, 20), (1, 3, 20, 20), (2, 3, 1, 20)]


@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=str)
@pytest.mark.parametrize("query_rows", [None, 1])
def test_a_bias_means_the_same_fused_explicit_and_tapped(monkeypatch, shape, query_rows):
    monkeypatch.setattr(blocks, "TAP_CHUNK_ELEMENTS", 3 * 20 * 8)  # blocks of 8 queries
    q, k, v = _qkv()
    bias = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    scale = 8 ** -0.5
    expected = ((q @ k.transpose(-2, -1)) * scale + bias).softmax(-1)
    fused, none = attention(q, k, v, scale, "sdpa", bias)
    explicit, probs = attention(q, k, v, scale, "math", bias)
    tap = Recorder(2, 3, 20, query_rows)
    tapped = explicit_attention(q, k, v, scale, tap, bias)
    assert none is None
    torch.testing.assert_close(probs, expected)
    for out in (fused, explicit, tapped):
        torch.testing.assert_close(out, expected @ v, rtol=1e-5, atol=1e-6)
    rows = 20 if query_rows is None else query_rows
    torch.testing.assert_close(tap.full[:, :, :rows], expected[:, :, :rows])
    unbiased, _ = attention(q, k, v, scale, "sdpa")
    assert not torch.allclose(unbiased, fused, atol=1e-4)  # the bias did something


def test_bool_and_float_biases_combine_as_one_additive_bias():
    mask = torch.tensor([[True, False], [True, True]])
    bias = torch.tensor([[0.5, 1.0], [2.0, 3.0]])
    combined = combine_biases(mask, bias)
    assert combined.dtype == torch.float32
    assert combined[0, 1] == float("-inf") and combined[1, 1] == 3.0 and combined[0, 0] == 0.5
    assert combine_biases(None, bias) is bias and combine_biases(mask, None) is mask


@pytest.mark.parametrize("per_sample", [False, True])
def test_method_bias_reaches_every_block_fused_and_explicit(one_thread, per_sample):
    torch.manual_seed(0)
    base = create_model("vit-tiny", "none", attention="sdpa")
    video = example_input(base, 2)
    outputs = {}
    for mode in ("sdpa", "math"):
        model = create_model("vit-tiny", "none", attention=mode)
        model.load_state_dict(base.state_dict())
        method = KeyBias(model.info, per_sample=per_sample)
        model.set_method(method)
        with torch.no_grad():
            outputs[mode] = model(video)
        assert method.calls == [(layer, 64) for layer in range(4)]
    torch.testing.assert_close(outputs["sdpa"], outputs["math"], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(base(video), outputs["sdpa"], atol=1e-4)


def test_zero_bias_is_the_backbone(one_thread):
    torch.manual_seed(0)
    model = create_model("vit-tiny", "none")
    video = example_input(model, 2)
    with torch.no_grad():
        reference = model(video)
        model.set_method(KeyBias(model.info, strength=0.0))
        torch.testing.assert_close(model(video), reference, rtol=1e-5, atol=1e-6)


def test_biased_pruning_through_the_tap_equals_the_full_probabilities(one_thread):
    torch.manual_seed(0)
    model = create_model("vit-tiny", "none")
    video = example_input(model, 2)
    results = []
    for tapped in (True, False):
        method = BiasedEVAD(model.info, 0.5)
        if not tapped:
            method.attention_tap = lambda layer, state: None  # the loop then hands over the full probabilities
        model.set_method(method)
        with torch.no_grad():
            results.append((model(video), list(model.last_trace)))
    (a, trace_a), (b, trace_b) = results
    assert trace_a == trace_b == [64, 32, 16, 16]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_divided_timesformer_block_refuses_a_bias():
    model = create_model("timesformer-tiny", "none")
    model.set_method(KeyBias(model.info))
    with pytest.raises(RuntimeError, match="grid_until_layer"):
        with torch.no_grad():
            model(example_input(model))


def test_tapped_attention_output_is_unchanged_without_bias(monkeypatch):
    monkeypatch.setattr(blocks, "TAP_CHUNK_ELEMENTS", 3 * 20 * 8)
    q, k, v = _qkv()
    out = explicit_attention(q, k, v, 8 ** -0.5, Recorder(2, 3, 20))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
