"""The joint space-time ViT backbone (VideoMAE layout): shapes, position table, attention paths, params, errors."""

from __future__ import annotations

import math

import pytest
import torch

from vidprune.backbones.vit import sinusoid_table
from vidprune.errors import VidpruneError
from vidprune.models import create_model


def _clip(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.input_shape(batch), generator=g)


def test_output_shape_is_batch_by_classes():
    model = create_model("vit-tiny", classes=7)
    with torch.no_grad():
        logits = model(_clip(model, batch=3))
    assert logits.shape == (3, 7)
    assert torch.isfinite(logits).all()
    # 8 frames x 64 px -> 4 x 4 x 4 tokens, none removed by the unpruned method
    assert model.last_trace == [64] * 4


def test_input_shape_reports_the_configured_geometry():
    model = create_model("vit-s", frames=4, size=64)
    assert model.input_shape(2) == (2, 3, 4, 64, 64)
    assert model.info.grid == (2, 4, 4)
    assert model.info.tokens_per_slice == 16


@pytest.mark.parametrize("pos", [0, 1, 3, 7])
def test_sinusoid_table_matches_videomae_formula(pos):
    d = 8
    table = sinusoid_table(10, d)
    assert table.shape == (1, 10, d)
    # channel 2i: sin(pos / 10000^(2i/d)); channel 2i+1: cos(pos / 10000^(2i/d))
    assert table[0, pos, 0].item() == pytest.approx(math.sin(pos), abs=1e-6)
    assert table[0, pos, 1].item() == pytest.approx(math.cos(pos), abs=1e-6)
    assert table[0, pos, 2].item() == pytest.approx(math.sin(pos / 10000 ** (2 / d)), abs=1e-6)
    assert table[0, pos, 3].item() == pytest.approx(math.cos(pos / 10000 ** (2 / d)), abs=1e-6)
    assert table[0, pos, 6].item() == pytest.approx(math.sin(pos / 10000 ** (6 / d)), abs=1e-6)
    assert table[0, pos, 7].item() == pytest.approx(math.cos(pos / 10000 ** (6 / d)), abs=1e-6)


def test_model_uses_the_sinusoid_table_as_a_fixed_buffer():
    model = create_model("vit-tiny")
    n, d = 64, 192
    assert torch.equal(model.pos_embed, sinusoid_table(n, d))
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" not in model.state_dict()  # non-persistent: VideoMAE checkpoints don't carry it


def test_sdpa_and_math_attention_give_the_same_logits():
    torch.manual_seed(0)
    model = create_model("vit-tiny", attention="sdpa")
    video = _clip(model, batch=2)
    with torch.no_grad():
        fused = model(video)
        for blk in model.blocks:
            blk.attn.attention = "math"
        explicit = model(video)
    assert not torch.equal(fused, torch.zeros_like(fused))
    assert torch.allclose(fused, explicit, atol=1e-4, rtol=0)


def test_attention_math_option_builds_math_blocks():
    model = create_model("vit-tiny", attention="math")
    assert all(blk.attn.attention == "math" for blk in model.blocks)
    with pytest.raises(VidpruneError, match="sdpa"):
        create_model("vit-tiny", attention="flash")


def test_vit_b_parameter_count_is_analytic():
    d, depth, classes = 768, 12, 400
    patch = 3 * 2 * 16 * 16 * d + d
    attn = 4 * d * d + 4 * d  # qkv (3D^2 + 3D) + proj (D^2 + D)
    mlp = 8 * d * d + 4 * d + d  # fc1 (4D^2 + 4D) + fc2 (4D^2 + D)
    norms = 4 * d  # norm1 + norm2, weight and bias
    expected = patch + depth * (attn + mlp + norms) + 2 * d + d * classes + classes
    model = create_model("vit-b", classes=classes)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected
    assert count / 1e6 == pytest.approx(86.5, abs=0.1)


@pytest.mark.parametrize("frames, suggestion", [(7, "--frames 6"), (1, "--frames 2"), (15, "--frames 14")])
def test_frames_not_divisible_by_tubelet_raise(frames, suggestion):
    with pytest.raises(VidpruneError) as info:
        create_model("vit-tiny", frames=frames)
    message = str(info.value)
    assert "tubelet" in message
    assert suggestion in message


@pytest.mark.parametrize("size, suggestion", [(70, "--size 64"), (8, "--size 16"), (100, "--size 96")])
def test_size_not_divisible_by_patch_raise(size, suggestion):
    with pytest.raises(VidpruneError) as info:
        create_model("vit-tiny", size=size)
    message = str(info.value)
    assert "patch" in message
    assert suggestion in message


@pytest.mark.parametrize("shape", [(1, 3, 4, 64, 64), (1, 3, 8, 32, 32), (3, 8, 64, 64), (1, 1, 8, 64, 64)])
def test_wrong_input_shape_raises(shape):
    model = create_model("vit-tiny")
    with pytest.raises(VidpruneError) as info:
        model(torch.zeros(shape))
    message = str(info.value)
    assert str(tuple(shape)) in message
    assert "3, 8, 64, 64" in message


def test_classes_below_one_raise():
    with pytest.raises(VidpruneError, match="classes"):
        create_model("vit-tiny", classes=0)
