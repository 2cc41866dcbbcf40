"""EVAD keyframe-centric pruning and the random-drop control: token counts, keyframe retention, Eq. 1,
knob and option validation, layer placement, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from vidprune.backbones.base import BackboneInfo
from vidprune.errors import VidpruneError
from vidprune.methods.base import proportional_layers
from vidprune.methods.evad import EVAD
from vidprune.models import create_model
from vidprune.tokens import TokenState


def _clip(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.input_shape(batch), generator=g)


def _record_kept_positions(model) -> dict:
    """Wrap the method's after_attention so every call records the positions it lets through."""
    records: dict[int, torch.Tensor] = {}
    method = model.method
    original = method.after_attention

    def wrapped(layer, state, attn):
        out = original(layer, state, attn)
        records[layer] = out.pos.clone()
        return out

    method.after_attention = wrapped
    return records


def _floor_chain(n: int, rho: float, n1: int, layers: int) -> list[int]:
    counts = [n]
    for _ in range(layers):
        counts.append(max(math.floor(counts[-1] * rho + 1e-9), n1))
    return counts


# ---------------------------------------------------------------- token counts at the paper's geometry

@pytest.mark.parametrize("method", ["evad", "random"])
def test_token_trace_at_16x224_matches_floor_chain(method):
    # ViT-S has ViT-B's depth (12) and token grid (8 x 14 x 14) at half the width: cheaper on CPU.
    model = create_model("vit-s", method, 0.7)
    assert model.method.layers == (4, 7, 10)
    with torch.no_grad():
        model(_clip(model))
    assert model.last_trace == [1568] * 4 + [1097] * 3 + [767] * 3 + [536] * 2
    # the counts are floor(N * rho) of the *current* N, compounding (rho, rho^2, rho^3)
    assert _floor_chain(1568, 0.7, 196, 3) == [1568, 1097, 767, 536]


def test_small_config_trace_and_random_matches_evad():
    evad = create_model("vit-tiny", "evad", 0.7)
    rand = create_model("vit-tiny", "random", 0.7)
    video = _clip(evad)
    with torch.no_grad():
        evad(video)
        rand(video)
    # depth 4 -> layers 1, 2, 3; grid 4x4x4 = 64 tokens, 16 per slice
    assert evad.method.layers == (1, 2, 3)
    assert evad.last_trace == [64, 44, 30, 21]
    assert rand.last_trace == evad.last_trace


# ---------------------------------------------------------------- keyframe retention

def test_keyframe_slice_survives_every_pruning_layer():
    model = create_model("vit-tiny", "evad", 0.6, frames=16)  # grid 8x4x4 = 128 tokens, keyframe slice 4
    assert model.info.grid == (8, 4, 4)
    keyframe = set(range(4 * 16, 5 * 16))
    records = _record_kept_positions(model)
    with torch.no_grad():
        model(_clip(model, batch=2))
    assert model.last_trace == [128, 76, 45, 27]
    assert sorted(records) == [0, 1, 2, 3]
    for layer in (0, 1, 2):
        pos = records[layer]
        assert pos.shape == (2, model.last_trace[layer + 1])
        for sample in pos.tolist():
            assert keyframe <= set(sample), f"keyframe token lost at layer {layer + 1}"
            assert len(set(sample) - keyframe) > 0  # not trivially only the keyframe
            assert sample == sorted(sample)  # kept tokens stay in grid order
    # no pruning at layer 4: positions unchanged from layer 3
    assert torch.equal(records[3], records[2])


def test_keep_count_never_drops_below_keyframe_tokens():
    model = create_model("vit-tiny", "evad", 0.05, frames=16)
    records = _record_kept_positions(model)
    with torch.no_grad():
        model(_clip(model))
    n1 = model.info.tokens_per_slice
    assert n1 == 16
    # floor(128 * 0.05) = 6 < N1, so exactly the N1 keyframe tokens remain, and stay
    assert model.last_trace == [128, n1, n1, n1]
    assert records[2][0].tolist() == list(range(4 * 16, 5 * 16))


# ---------------------------------------------------------------- batches

def test_batch_keeps_same_count_but_different_positions_per_sample():
    model = create_model("vit-tiny", "evad", 0.5, frames=16)
    records = _record_kept_positions(model)
    video = _clip(model, batch=2)
    video[1] = torch.randn(video[1].shape, generator=torch.Generator().manual_seed(123)) * 3
    with torch.no_grad():
        logits = model(video)
    pos = records[0]
    assert pos.shape == (2, 64)
    assert pos[0].tolist() != pos[1].tolist()
    # each sample is pruned on its own: the batched result equals the per-sample results
    with torch.no_grad():
        single = torch.cat([model(video[i: i + 1]) for i in range(2)])
    assert torch.allclose(logits, single, atol=1e-5)


# ---------------------------------------------------------------- Eq. 1 on a hand-built attention map

def _toy_info() -> BackboneInfo:
    # 4 temporal slices of a single token: token t is slice t; the keyframe is slice 4 // 2 = 2 (N1 = 1)
    return BackboneInfo("vit", depth=1, dim=3, heads=2, frames=8, size=16, grid=(4, 1, 1))


# head-averaged attention (rows = queries, sum to 1): the keyframe query (row 2) looks at token 0,
# every other query looks at token 1
_MEAN_ATTN = torch.tensor([
    [0.1, 0.5, 0.1, 0.3],
    [0.1, 0.5, 0.1, 0.3],
    [0.7, 0.1, 0.1, 0.1],
    [0.1, 0.5, 0.1, 0.3],
])
_DELTA = 0.05 * torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0], [-1.0, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 1.0]])


def _toy_state() -> tuple[TokenState, torch.Tensor]:
    x = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    state = TokenState(x=x, pos=torch.arange(4).unsqueeze(0), grid=(4, 1, 1))
    attn = torch.stack([_MEAN_ATTN + _DELTA, _MEAN_ATTN - _DELTA]).unsqueeze(0)  # (B=1, H=2, N=4, N=4)
    return state, attn


def _hand_importance(w_kf: float) -> list[float]:
    n = 4
    weights = [1.0, 1.0, w_kf, 1.0]
    return [sum(weights[i] * _MEAN_ATTN[i, j].item() for i in range(n)) / n for j in range(n)]


def test_importance_matches_hand_computation():
    method = EVAD(_toy_info(), 0.5, w_kf=4.0, layers="1")
    state, attn = _toy_state()
    scores, keyframe = method.importance(state, attn)
    assert keyframe.tolist() == [[False, False, True, False]]
    expected = _hand_importance(4.0)  # [0.775, 0.475, 0.175, 0.325]
    assert expected == pytest.approx([0.775, 0.475, 0.175, 0.325])
    assert scores.shape == (1, 4)
    assert scores[0].tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("w_kf, rho, kept", [
    (4.0, 0.5, [0, 2]),     # keyframe + the top non-keyframe token (0: the keyframe query's favourite)
    (1.0, 0.5, [1, 2]),     # GAP variant: token 1 wins without the keyframe weighting
    (4.0, 0.75, [0, 1, 2]),
    (1.0, 0.75, [0, 1, 2]),  # w = 1 ties tokens 0 and 3; the test nudges token 0 ahead
])
def test_after_attention_keeps_keyframe_plus_top_importance(w_kf, rho, kept):
    method = EVAD(_toy_info(), rho, w_kf=w_kf, layers="1")
    state, attn = _toy_state()
    if w_kf == 1.0 and rho == 0.75:
        # column sums with w = 1: token 0 -> 1.0, token 1 -> 1.6, token 3 -> 1.0: a tie; make token 0 win
        attn = attn.clone()
        attn[0, :, 1, 0] += 0.01
        attn[0, :, 1, 1] -= 0.01
    assert method.needs_attention(0)
    out = method.after_attention(0, state, attn)
    assert out.pos[0].tolist() == kept
    # features follow their tokens
    assert torch.equal(out.x[0], state.x[0, kept])
    # the kept non-keyframe tokens are the highest-importance non-keyframe tokens
    scores, keyframe = method.importance(state, attn)
    non_kf = [j for j in range(4) if not keyframe[0, j]]
    ranked = sorted(non_kf, key=lambda j: -scores[0, j].item())
    assert sorted(set(kept) - {2}) == sorted(ranked[: len(kept) - 1])


def test_w_kf_changes_the_selection():
    state, attn = _toy_state()
    weighted = EVAD(_toy_info(), 0.5, w_kf=4.0, layers="1").after_attention(0, state, attn)
    plain = EVAD(_toy_info(), 0.5, w_kf=1.0, layers="1").after_attention(0, state, attn)
    assert weighted.pos.tolist() != plain.pos.tolist()


def test_w_kf_option_reaches_the_method_and_is_validated():
    model = create_model("vit-tiny", "evad", options={"w_kf": "2"})
    assert model.method.w_kf == 2.0
    assert model.method.describe()["w_kf"] == 2.0
    with pytest.raises(VidpruneError, match="w_kf"):
        create_model("vit-tiny", "evad", options={"w_kf": 0})


def test_non_pruning_layers_pass_through():
    method = EVAD(_toy_info(), 0.5, w_kf=4.0, layers="1")
    state, attn = _toy_state()
    assert method.after_attention(0, state, None) is state  # no probabilities -> nothing to rank


# ---------------------------------------------------------------- keep = 1.0 is the backbone

def test_keep_one_is_identical_to_none():
    base = create_model("vit-tiny", "none")
    evad = create_model("vit-tiny", "evad", 1.0)
    evad.load_state_dict(base.state_dict())
    video = _clip(base, batch=2)
    with torch.no_grad():
        a = base(video)
        b = evad(video)
    assert evad.last_trace == base.last_trace == [64] * 4
    assert not any(evad.method.needs_attention(i) for i in range(4))
    assert torch.equal(a, b)


def test_pruning_changes_the_logits():
    base = create_model("vit-tiny", "none")
    evad = create_model("vit-tiny", "evad", 0.5)
    evad.load_state_dict(base.state_dict())
    video = _clip(base)
    with torch.no_grad():
        assert not torch.allclose(base(video), evad(video))


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("method", ["evad", "random"])
@pytest.mark.parametrize("rho", [0, 0.0, 1.5, -0.1, float("nan"), "abc"])
def test_rho_outside_range_raises(method, rho):
    with pytest.raises(VidpruneError, match="rho"):
        create_model("vit-tiny", method, rho)


def test_default_rho_is_point_seven():
    assert create_model("vit-tiny", "evad").method.keep == pytest.approx(0.7)


def test_unknown_option_names_the_method_options():
    with pytest.raises(VidpruneError) as info:
        create_model("vit-tiny", "evad", 0.7, options={"foo": 1})
    message = str(info.value)
    assert "foo" in message and "evad" in message
    assert "w_kf" in message and "layers" in message


def test_none_rejects_any_option():
    with pytest.raises(VidpruneError, match="none"):
        create_model("vit-tiny", "none", options={"layers": "1"})


# ---------------------------------------------------------------- layer placement

def test_layers_option_moves_pruning():
    model = create_model("vit-tiny", "evad", 0.7, options={"layers": "2,3"})
    assert model.method.layers == (2, 3)
    with torch.no_grad():
        model(_clip(model))
    assert model.last_trace == [64, 64, 44, 30]
    single = create_model("vit-tiny", "random", 0.5, options={"layers": "4"})
    with torch.no_grad():
        single(_clip(single))
    assert single.last_trace == [64, 64, 64, 64]  # layer 4 prunes before its MLP; no later block sees it
    assert single.method.describe()["layers"] == "4"


@pytest.mark.parametrize("method", ["evad", "random"])
def test_layer_beyond_depth_raises(method):
    with pytest.raises(VidpruneError) as info:
        create_model("vit-tiny", method, 0.7, options={"layers": "2,5"})
    assert "5" in str(info.value) and "4 blocks" in str(info.value)


@pytest.mark.parametrize("bad", ["0", "a,b", " "])
def test_malformed_layers_raise_user_error(bad):
    with pytest.raises(VidpruneError, match="layers"):
        create_model("vit-tiny", "evad", 0.7, options={"layers": bad})


def test_proportional_layers():
    assert proportional_layers(12) == (4, 7, 10)
    assert proportional_layers(24) == (7, 13, 19)
    # other depths scale 4, 7, 10 of 12 with Python's round(): 6 -> round(2, 3.5, 5) = (2, 4, 5)
    assert proportional_layers(6) == (2, 4, 5)
    assert proportional_layers(4) == (1, 2, 3)
    for depth in range(1, 40):
        layers = proportional_layers(depth)
        assert layers == tuple(sorted(set(layers)))
        assert 1 <= layers[0] and layers[-1] <= depth


# ---------------------------------------------------------------- the random control

def test_random_is_deterministic_under_a_seed():
    model = create_model("vit-tiny", "random", 0.5, seed=3)
    records = _record_kept_positions(model)
    video = _clip(model)
    with torch.no_grad():
        first = model(video)
        pos_first = records[0].clone()
        second = model(video)
    assert torch.equal(first, second)
    assert torch.equal(pos_first, records[0])


def test_random_differs_across_seeds_and_samples():
    a = create_model("vit-tiny", "random", 0.5, seed=0)
    b = create_model("vit-tiny", "random", 0.5, seed=1)
    b.load_state_dict(a.state_dict())
    rec_a, rec_b = _record_kept_positions(a), _record_kept_positions(b)
    video = _clip(a).expand(2, -1, -1, -1, -1).contiguous()  # the same clip twice
    with torch.no_grad():
        a(video)
        b(video)
    assert rec_a[0].shape == rec_b[0].shape == (2, 32)
    assert rec_a[0].tolist() != rec_b[0].tolist()
    # the samples of one batch draw different subsets, even for identical clips
    assert rec_a[0][0].tolist() != rec_a[0][1].tolist()


def test_random_with_keyframe_keeps_the_keyframe_slice():
    keyframe = set(range(4 * 16, 5 * 16))
    model = create_model("vit-tiny", "random", 0.5, frames=16, options={"keyframe": "true"})
    assert model.method.protect_keyframe
    records = _record_kept_positions(model)
    with torch.no_grad():
        model(_clip(model, batch=2))
    for layer in (0, 1, 2):
        for sample in records[layer].tolist():
            assert keyframe <= set(sample)
    low = create_model("vit-tiny", "random", 0.05, frames=16, options={"keyframe": True})
    rec_low = _record_kept_positions(low)
    with torch.no_grad():
        low(_clip(low))
    assert low.last_trace == [128, 16, 16, 16]
    assert rec_low[0][0].tolist() == sorted(keyframe)


def test_random_without_keyframe_option_can_lose_keyframe_tokens():
    model = create_model("vit-tiny", "random", 0.05, frames=16)
    records = _record_kept_positions(model)
    with torch.no_grad():
        model(_clip(model))
    # without protection the minimum is not N1: floor(128 * 0.05) = 6
    assert model.last_trace == [128, 6, 1, 1]
    assert records[0][0].tolist() != list(range(64, 80))


def test_chunked_attention_tap_matches_full_probabilities():
    """The tap path (probabilities reduced block by block) selects the same tokens and gives the same
    logits as materialising the full attention matrix."""
    torch.manual_seed(0)
    tapped = create_model("vit-tiny", "evad", 0.6)
    full = create_model("vit-tiny", "evad", 0.6)
    full.load_state_dict(tapped.state_dict())
    full.method.attention_tap = lambda layer, state: None
    import vidprune.backbones.blocks as blocks

    video = torch.randn(2, 3, 8, 64, 64)
    old = blocks.TAP_CHUNK_ELEMENTS
    blocks.TAP_CHUNK_ELEMENTS = 2 * 3 * 64 * 8  # force several blocks of 8 queries
    try:
        with torch.inference_mode():
            a, b = tapped(video), full(video)
    finally:
        blocks.TAP_CHUNK_ELEMENTS = old
    assert tapped.last_trace == full.last_trace
    assert torch.allclose(a, b, atol=1e-5)
