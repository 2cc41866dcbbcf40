"""Frame-level CLIP backbones: per-frame cost against an independent analytic count, OpenAI CLIP module
names, the temporal heads, the per-clip token trace, counter agreement, input checks.

Analytic convention (1 MAC = 1 FLOP): a CLIP block on N tokens of width D costs 12·N·D² + 2·N²·D MACs;
the patch conv N_p·(3·P²)·D; the projection of the class token D·E; the classifier E·classes. Only
clip-b32 is built at full size, once, at one frame.
"""

from __future__ import annotations

import pytest
import torch

from vidprune.backbones.clip import CLIPTextEncoder, CLIPVideo, TemporalTransformerHead
from vidprune.backbones.clip_weights import openai_to_vidprune
from vidprune.errors import VidpruneError
from vidprune.measure.flops import AGREEMENT_TOLERANCE, count_flops, count_torch, example_input, relative_gap
from vidprune.registry import get_backbone
from vidprune.models import create_model


def block_macs(n: int, d: int) -> int:
    return 12 * n * d * d + 2 * n * n * d


def frame_macs(size: int, patch: int, width: int, layers: int, embed_dim: int) -> int:
    patches = (size // patch) ** 2
    return patches * 3 * patch * patch * width + layers * block_macs(patches + 1, width) + width * embed_dim


def _video(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(model.input_shape(batch), generator=torch.Generator().manual_seed(seed))


def test_vit_b32_per_frame_gflops_match_analytic_and_paper():
    model = create_model("clip-b32", "none", frames=1, classes=1)
    measured = count_torch(model, (example_input(model),))
    expected = (frame_macs(224, 32, 768, 12, 512) + 512 * 1) / 1e9
    assert measured == pytest.approx(expected, rel=1e-4)
    # SLLM Sec. 3.4 states T_img = 4.41 GFLOPs per image for ViT-B/32.
    assert measured == pytest.approx(4.41, rel=0.01)
    assert model.last_trace == [50] * 12


def test_registered_configurations():
    for name, patch, temporal in (("clip-b32", 32, "mean"), ("clip-b16", 16, "mean"),
                                  ("clip-b32-transf", 32, "transformer"), ("clip-b16-transf", 16, "transformer")):
        spec = get_backbone(name)
        assert spec.family == "clip" and spec.defaults == {"frames": 8, "size": 224}
    tiny = create_model("clip-tiny", "none")
    assert tiny.info.family == "clip" and tiny.info.embed_dim == 128 and tiny.info.patch == 16
    assert tiny.info.grid == (8, 4, 4) and tiny.info.n_prefix == 1


def test_openai_module_names_and_state_dict_mapping():
    model = create_model("clip-tiny", "none")
    keys = set(model.state_dict())
    for key in ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                "visual.ln_pre.weight", "visual.transformer.resblocks.1.ln_1.weight",
                "visual.transformer.resblocks.1.attn.in_proj.weight", "visual.transformer.resblocks.1.attn.out_proj.bias",
                "visual.transformer.resblocks.1.mlp.c_fc.weight", "visual.transformer.resblocks.1.mlp.c_proj.weight",
                "visual.ln_post.bias", "visual.proj"):
        assert key in keys, key
    assert "visual.conv1.bias" not in keys  # CLIP's patch conv has no bias
    # An OpenAI-style state dict (nn.MultiheadAttention's raw in_proj parameters) loads after renaming.
    openai = {k.replace("attn.in_proj.weight", "attn.in_proj_weight").replace("attn.in_proj.bias", "attn.in_proj_bias"): v + 1
              for k, v in model.state_dict().items()}
    assert any(k.endswith("attn.in_proj_weight") for k in openai)
    other = create_model("clip-tiny", "none", seed=1)
    other.load_state_dict(openai_to_vidprune(openai), strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value + 1)


def test_none_encodes_every_frame_and_traces_tokens_per_clip():
    model = create_model("clip-tiny", "none", frames=5)
    out = model(_video(model, batch=2))
    assert out.shape == (2, 400) and torch.isfinite(out).all()
    assert model.last_trace == [17 * 5] * 2
    assert model.last_stats == {"frames_encoded": 5, "frames_restored": 0, "frames_to_head": 5}


def test_frames_are_encoded_independently():
    """Frame-level encoder: changing one frame changes only that frame's feature."""
    model = create_model("clip-tiny", "none", frames=4)
    video = _video(model)
    frames = tuple(range(4))
    before = model.encode_frames(video, frames)
    video[:, :, 2] += 1.0
    after = model.encode_frames(video, frames)
    changed = (before - after).abs().amax(dim=-1)[0]
    assert changed[2] > 1e-3 and torch.all(changed[[0, 1, 3]] < 1e-6)


def test_temporal_transformer_head_cost_and_positions():
    width, layers, frames = 64, 2, 6
    model = CLIPVideo(192, 2, 3, 16, embed_dim=width, frames=frames, size=64, classes=10, temporal="transformer",
                      temporal_layers=layers)
    model.set_method(create_model("clip-tiny", "none").method)
    mean = CLIPVideo(192, 2, 3, 16, embed_dim=width, frames=frames, size=64, classes=10)
    mean.set_method(model.method)
    video = _video(model)
    extra = count_torch(model, (video,)) - count_torch(mean, (video,))
    assert extra == pytest.approx(layers * block_macs(frames, width) / 1e9, rel=1e-6)
    # Frame positions come from the frame index, not the position in the sequence.
    head = TemporalTransformerHead(width, layers=1).eval()
    feats = torch.randn(1, 2, width)
    a = head(feats, torch.tensor([0, 1]))
    b = head(feats, torch.tensor([0, 5]))
    assert not torch.allclose(a, b)


def test_text_encoder_cost_matches_analytic():
    encoder = CLIPTextEncoder().eval()
    measured = count_torch(encoder, (example_input(encoder),))
    assert measured == pytest.approx((12 * block_macs(77, 512) + 512 * 512) / 1e9, rel=1e-4)


def test_counters_agree_on_tiny_clip():
    report = count_flops(create_model("clip-tiny", "none"), counters=("torch", "fvcore"))
    assert report.gflops_fvcore is not None
    assert relative_gap(report.gflops, report.gflops_fvcore) <= AGREEMENT_TOLERANCE


def test_math_and_sdpa_attention_agree():
    fused = create_model("clip-tiny", "none", attention="sdpa")
    explicit = create_model("clip-tiny", "none", attention="math")
    explicit.load_state_dict(fused.state_dict())
    video = _video(fused)
    torch.testing.assert_close(fused(video), explicit(video), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_user_errors():
    with pytest.raises(VidpruneError, match="patch"):
        create_model("clip-tiny", "none", size=60)
    with pytest.raises(VidpruneError, match="frames"):
        create_model("clip-tiny", "none", frames=0)
    model = create_model("clip-tiny", "none", frames=4)
    with pytest.raises(VidpruneError, match="does not match"):
        model(torch.randn(1, 3, 5, 64, 64))
