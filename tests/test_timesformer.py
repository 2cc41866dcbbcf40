"""TimeSformer (divided space-time attention): the official forward reproduced by hand, parameters, FLOPs
against a hand count, joint blocks after a grid-breaking method, errors."""

from __future__ import annotations

import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure.flops import count_flops, count_torch, example_input
from vidprune.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _clip(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.input_shape(batch), generator=g)


# ---------------------------------------------------------------- a hand-written official forward

def _self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    h = attn.heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-2, -1)) * (d // h) ** -0.5).softmax(dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


def _official_forward(model, video: torch.Tensor) -> torch.Tensor:
    """TimeSformer's reference code path: tokens in (patch, time) order, rearranges instead of our reshapes."""
    b, c, t, hgt, wid = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, hgt, wid)
    x = model.patch_embed.proj(frames).flatten(2).transpose(1, 2)  # (b t) n d
    n, d = x.shape[1], x.shape[2]
    x = torch.cat([model.cls_token.expand(b * t, -1, -1), x], dim=1) + model.pos_embed
    cls = x[:b, 0].unsqueeze(1)
    x = x[:, 1:].reshape(b, t, n, d).permute(0, 2, 1, 3).reshape(b * n, t, d) + model.time_embed
    x = torch.cat([cls, x.reshape(b, n * t, d)], dim=1)  # b (n t) d
    for blk in model.blocks:
        xt = x[:, 1:].reshape(b * n, t, d)
        res_t = blk.temporal_fc(_self_attention(blk.temporal_attn, blk.temporal_norm1(xt))).reshape(b, n * t, d)
        xt = x[:, 1:] + res_t
        init_cls = x[:, :1]
        xs = xt.reshape(b, n, t, d).permute(0, 2, 1, 3).reshape(b * t, n, d)
        xs = torch.cat([init_cls.repeat(1, t, 1).reshape(b * t, 1, d), xs], dim=1)
        res_s = _self_attention(blk.attn, blk.norm1(xs))
        cls_res = res_s[:, 0].reshape(b, t, d).mean(dim=1, keepdim=True)
        res_s = res_s[:, 1:].reshape(b, t, n, d).permute(0, 2, 1, 3).reshape(b, n * t, d)
        x = torch.cat([init_cls, xt], dim=1) + torch.cat([cls_res, res_s], dim=1)
        x = x + blk.mlp(blk.norm2(x))
    return model.head(model.norm(x)[:, 0])


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_divided_attention_matches_the_official_code_path(attention):
    model = create_model("timesformer-tiny", attention=attention, classes=10)
    video = _clip(model, batch=2)
    with torch.no_grad():
        ours = model(video)
        reference = _official_forward(model, video)
    assert ours.shape == (2, 10)
    assert ours.abs().max() > 0
    assert torch.allclose(ours, reference, atol=1e-4, rtol=0)
    assert model.last_trace == [1 + 4 * 16] * 4


def test_temporal_attention_mixes_frames_and_spatial_attention_does_not_leak_across_samples():
    model = create_model("timesformer-tiny", classes=10)
    video = _clip(model, batch=2)
    with torch.no_grad():
        base = model(video)
        changed = video.clone()
        changed[0, :, 3] += 1.0  # only the last frame of the first clip
        out = model(changed)
    assert not torch.allclose(out[0], base[0], atol=1e-5)
    assert torch.allclose(out[1], base[1], atol=1e-6)


def test_module_names_follow_the_official_code():
    names = dict(create_model("timesformer-tiny").named_parameters())
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed", "time_embed", "blocks.0.temporal_norm1.weight",
                 "blocks.0.temporal_attn.qkv.weight", "blocks.0.temporal_attn.proj.weight", "blocks.0.temporal_fc.weight",
                 "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                 "blocks.0.norm2.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "norm.weight", "head.weight"):
        assert name in names, name


# ---------------------------------------------------------------- parameters

def _params(d: int, depth: int, n: int, t: int, classes: int, joint_blocks: int = 0) -> int:
    spatial_block = 12 * d * d + 13 * d  # norm1, qkv, proj, norm2, fc1, fc2
    temporal = 5 * d * d + 7 * d  # temporal_norm1, temporal qkv + proj, temporal_fc
    return ((3 * 16 * 16 + 1) * d + d + (n + 1) * d + t * d + depth * spatial_block
            + (depth - joint_blocks) * temporal + 2 * d + d * classes + classes)


def test_parameter_count_is_analytic_for_tiny_and_base():
    tiny = create_model("timesformer-tiny")
    assert sum(p.numel() for p in tiny.parameters()) == _params(192, 4, 16, 4, 400)
    with torch.device("meta"):  # shapes only: no 121M-parameter initialisation
        base = create_model("timesformer-b")
    count = sum(p.numel() for p in base.parameters())
    assert count == _params(768, 12, 196, 8, 400)
    # the STTM paper's Table 6 lists 121.6M for TimeSformer (K400 head)
    assert count / 1e6 == pytest.approx(121.6, abs=0.05)


def test_blocks_after_a_grid_breaking_method_are_joint_without_temporal_parameters():
    model = create_model("timesformer-tiny", "sttm", options={"layers": "2,3"})
    assert [blk.divided for blk in model.blocks] == [True, True, False, False]
    names = dict(model.named_parameters())
    assert "blocks.1.temporal_fc.weight" in names and "blocks.2.temporal_fc.weight" not in names
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("method."))
    assert backbone == _params(192, 4, 16, 4, 400, joint_blocks=2)
    with pytest.raises(ValueError, match="fresh model"):
        model.set_method(create_model("timesformer-tiny").method)


# ---------------------------------------------------------------- FLOPs

def divided_block_macs(t: int, n: int, d: int) -> int:
    temporal = 5 * t * n * d * d + 2 * n * t * t * d  # qkv + proj + temporal_fc; QK^T and AV over T
    spatial = 4 * t * (n + 1) * d * d + 2 * t * (n + 1) ** 2 * d  # per frame, the class-token copy included
    return temporal + spatial + 8 * (t * n + 1) * d * d


def timesformer_macs(d: int, depth: int, t: int, n: int, classes: int) -> int:
    return t * n * (3 * 16 * 16) * d + depth * divided_block_macs(t, n, d) + d * classes


def test_tiny_flops_match_a_hand_count_and_fvcore():
    model = create_model("timesformer-tiny")
    report = count_flops(model, counters=("torch", "fvcore"))
    expected = timesformer_macs(192, 4, 4, 16, 400)
    assert count_torch(model, (example_input(model),)) * 1e9 == pytest.approx(expected, rel=1e-9)
    assert report.gflops_fvcore == pytest.approx(report.gflops, rel=0.01)
    assert report.counters_agree


def count_on_meta(backbone: str, method: str = "none", keep=None, **kwargs):
    """The primary counter on shape-only (meta) tensors: the count depends on shapes alone, and the tiny
    tests pin the real CPU path to the same hand count, so the big models cost no arithmetic here."""
    with torch.device("meta"):
        model = create_model(backbone, method, keep, **kwargs)
    return model, count_torch(model, (torch.empty(model.input_shape(1), device="meta"),))


def test_meta_count_equals_the_cpu_count():
    model, gmacs = count_on_meta("timesformer-tiny")
    assert gmacs == pytest.approx(count_flops(create_model("timesformer-tiny"), counters=("torch",)).gflops, rel=1e-12)


def test_timesformer_b_baseline_in_the_three_view_convention():
    model, gmacs = count_on_meta("timesformer-b")
    expected = timesformer_macs(768, 12, 8, 196, 400) / 1e9
    assert gmacs == pytest.approx(expected, rel=1e-9)
    # STTM (and TimeSformer) report 3 spatial views: 590 GFLOPs
    assert 3 * gmacs == pytest.approx(590, rel=0.01)
    assert model.last_trace == [1569] * 12


# ---------------------------------------------------------------- errors

def test_bad_geometry_and_input_are_user_errors():
    with pytest.raises(VidpruneError, match="patch"):
        create_model("timesformer-tiny", size=70)
    model = create_model("timesformer-tiny")
    with pytest.raises(VidpruneError, match="does not match"):
        model(torch.zeros(1, 3, 5, 64, 64))


def test_methods_for_other_families_are_refused():
    with pytest.raises(VidpruneError, match="does not support backbone"):
        create_model("timesformer-tiny", "evad")
