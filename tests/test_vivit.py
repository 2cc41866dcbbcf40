"""The factorised-encoder ViViT: the cross-modal CLS-only mask (constructed and in a forward pass), inputs,
trace and stats, attention paths, registered sizes, and FLOPs against an analytic count and fvcore."""

from __future__ import annotations

import pytest
import torch

from vidprune.backbones.vivit import SIZES, ViViT, cross_modal_mask
from vidprune.errors import VidpruneError
from vidprune.measure.flops import count_flops, count_torch, example_input
from vidprune.registry import get_backbone
from vidprune.models import create_model


def _inputs(model, batch: int = 1, seed: int = 0):
    return example_input(model, batch, seed=seed)


def vivit_macs(dim: int, spatial: int, temporal: int, frames: int, size: int, modalities=("rgb", "depth", "skeleton"),
               classes: int = 400, kept: int | None = None, score_after: int | None = None, joints: int = 25,
               patch: int = 16) -> int:
    """Independent MAC count of docs/methods/mads.md: embedding, k spatial blocks on all F frames and the rest
    on F_r, the scorer MLPs (D -> D/4 -> 1 per modality on all frames), the temporal encoder on 1 + M*F_r."""
    grid = (size // patch) ** 2
    channels = {"rgb": 3, "depth": 1}
    tokens = sum(joints + 1 if m == "skeleton" else grid + 1 for m in modalities)
    embed = frames * sum(joints * 3 * dim if m == "skeleton" else grid * channels[m] * patch * patch * dim
                         for m in modalities)
    block = lambda n: 12 * n * dim * dim + 2 * n * n * dim  # noqa: E731
    kept = frames if kept is None else kept
    k = spatial if score_after is None else score_after
    total = embed + (k * frames + (spatial - k) * kept) * block(tokens)
    if score_after is not None:
        hidden = dim // 4
        total += frames * len(modalities) * (dim * hidden + hidden)
    total += temporal * block(1 + len(modalities) * kept) + dim * classes
    return total


TINY = dict(dim=128, spatial=2, temporal=1, frames=8, size=32)


# ---------------------------------------------------------------- the attention mask

def test_cross_modal_mask_allows_only_cls_to_cross():
    counts = (3, 2, 4)  # CLS at 0, 3, 5
    mask = cross_modal_mask(counts)
    modality = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    cls = {0, 3, 5}
    assert mask.shape == (9, 9) and mask.dtype == torch.bool
    for i in range(9):
        for j in range(9):
            expected = modality[i] == modality[j] or (i in cls and j in cls)
            assert bool(mask[i, j]) == expected, (i, j)
    # a patch token never sees another modality; each CLS sees exactly the other CLS tokens across
    assert mask[1, 3:].sum() == 0
    assert (mask[0, 3:].nonzero().flatten() + 3).tolist() == [3, 5]


def test_model_uses_the_mask_for_its_token_layout():
    model = create_model("vivit-tiny", "none")
    assert model.info.tokens_per_frame == (5, 5, 26)  # 2x2 patches + CLS, twice; 25 joints + CLS
    assert model.cls_offsets == (0, 5, 10)
    assert torch.equal(model.modality_mask, cross_modal_mask((5, 5, 26)))
    assert create_model("vivit-tiny-rgb", "none").modality_mask is None  # one modality: nothing to mask


def _block_outputs(model, inputs) -> list[torch.Tensor]:
    """Each spatial block's output: the block loop ends a block with its `feed_forward`."""
    outputs = []

    def recorded(feed_forward):
        def run(x):
            out = feed_forward(x)
            outputs.append(out.detach().clone())
            return out
        return run

    for blk in model.spatial_blocks:
        blk.feed_forward = recorded(blk.feed_forward)
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for blk in model.spatial_blocks:
            del blk.feed_forward
    return outputs


@pytest.mark.parametrize("cls_crossing", [True, False])
def test_depth_reaches_rgb_patches_only_through_the_cls_tokens(cls_crossing):
    torch.manual_seed(0)
    model = ViViT(dim=32, spatial_depth=3, temporal_depth=1, heads=2, frames=2, size=32, classes=3).eval()
    from vidprune.methods.none import NoReduction

    model.set_method(NoReduction(model.info, None))
    if not cls_crossing:  # block-diagonal: no path at all between modalities
        model.modality_mask = model.modality_mask & (torch.block_diag(*[torch.ones(n, n) for n in (5, 5, 26)]) > 0)
    inputs = _inputs(model)
    perturbed = dict(inputs, depth=inputs["depth"] + 3.0 * torch.randn_like(inputs["depth"]))
    clean, moved = _block_outputs(model, inputs), _block_outputs(model, perturbed)
    rgb_cls, rgb_patches = 0, slice(1, 5)

    def changed(layer, tokens):
        return not torch.allclose(clean[layer][:, tokens], moved[layer][:, tokens], atol=1e-6)

    # the depth stream itself changes at once
    assert changed(0, slice(6, 10))
    # block 1: the RGB CLS only sees the depth CLS *input*, which does not depend on depth pixels
    assert not changed(0, rgb_cls) and not changed(0, rgb_patches)
    if cls_crossing:
        # block 2: the depth CLS has absorbed its patches, the RGB CLS reads it; RGB patches still untouched
        assert changed(1, rgb_cls) and not changed(1, rgb_patches)
        # block 3: RGB patches read the RGB CLS
        assert changed(2, rgb_patches)
    else:
        assert not any(changed(layer, slice(0, 5)) for layer in range(3))


# ---------------------------------------------------------------- inputs, trace, stats

def test_output_trace_and_stats_without_pruning():
    model = create_model("vivit-tiny", "none", classes=7)
    with torch.no_grad():
        logits = model(_inputs(model, batch=2))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    per_frame = 5 + 5 + 26
    assert model.last_trace == [8 * per_frame] * 2 + [1 + 3 * 8]
    assert model.last_stats == {"frames_total": 8, "frames_kept_mean": 8.0, "frames_kept_min": 8,
                                "frames_kept_max": 8}


def test_rgb_only_takes_a_plain_tensor():
    model = create_model("vivit-tiny-rgb", "none")
    video = _inputs(model, batch=2)
    assert isinstance(video, torch.Tensor) and tuple(video.shape) == model.input_shape(2) == (2, 3, 8, 32, 32)
    with torch.no_grad():
        assert model(video).shape == (2, 400)
    assert model.last_trace == [8 * 5] * 2 + [1 + 8]


def test_multimodal_input_shapes_and_errors():
    model = create_model("vivit-tiny", "none")
    inputs = _inputs(model, batch=2)
    assert {k: tuple(v.shape) for k, v in inputs.items()} == {
        "rgb": (2, 3, 8, 32, 32), "depth": (2, 1, 8, 32, 32), "skeleton": (2, 3, 8, 25)}
    with pytest.raises(VidpruneError, match="dict"):
        model(inputs["rgb"])
    with pytest.raises(VidpruneError, match="skeleton"):
        model({"rgb": inputs["rgb"], "depth": inputs["depth"]})
    with pytest.raises(VidpruneError, match="depth input"):
        model(dict(inputs, depth=inputs["depth"].expand(-1, 3, -1, -1, -1)))


@pytest.mark.parametrize("bad", ["", "rgb,rgb", "depth", "rgb,audio"])
def test_bad_modalities_raise(bad):
    with pytest.raises(VidpruneError, match="modalities"):
        ViViT(dim=32, spatial_depth=1, temporal_depth=1, heads=2, frames=2, size=32, modalities=bad)


def test_bad_geometry_raises():
    with pytest.raises(VidpruneError, match="--size"):
        create_model("vivit-tiny", "none", size=40)


def test_batch_equals_single_clips():
    model = create_model("vivit-tiny", "none")
    inputs = _inputs(model, batch=2)
    with torch.no_grad():
        both = model(inputs)
        one = torch.cat([model({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(2)])
    assert torch.allclose(both, one, atol=1e-5)


def test_sdpa_and_math_attention_agree():
    sdpa = create_model("vivit-tiny", "none", attention="sdpa")
    math_ = create_model("vivit-tiny", "none", attention="math")
    math_.load_state_dict(sdpa.state_dict())
    inputs = _inputs(sdpa, batch=2)
    with torch.no_grad():
        assert torch.allclose(sdpa(inputs), math_(inputs), atol=1e-5)


# ---------------------------------------------------------------- registered sizes and params

@pytest.mark.parametrize("key", ["t", "s", "b"])
def test_registered_sizes(key):
    spec = get_backbone(f"vivit-{key}")
    assert spec.family == "vivit" and spec.defaults == {"frames": 16, "size": 224}
    model = spec.build(classes=10)
    cfg = SIZES[key]
    assert (model.info.dim, model.info.spatial_depth, model.info.temporal_depth, model.info.heads) == (
        cfg["dim"], cfg["spatial_depth"], cfg["temporal_depth"], cfg["heads"])
    assert model.info.modalities == ("rgb", "depth", "skeleton")
    assert get_backbone(f"vivit-{key}-rgb").build().info.modalities == ("rgb",)
    # params: blocks 12D^2 + 13D each, embeddings, positions, temporal parts, head
    d, grid = cfg["dim"], 196
    blocks = (cfg["spatial_depth"] + cfg["temporal_depth"]) * (12 * d * d + 13 * d)
    embeds = (3 * 256 * d + d) + (256 * d + d) + (3 * d + d)
    positions = 2 * (1 + grid) * d + 26 * d + 3 * d  # spatial positions + per-modality CLS
    temporal = d + 16 * d + 3 * d
    expected = blocks + embeds + positions + temporal + 2 * d + (d * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


# ---------------------------------------------------------------- FLOPs

def test_primary_count_is_exactly_the_analytic_count():
    model = create_model("vivit-tiny", "none")
    gmacs = count_torch(model, (_inputs(model),))
    assert gmacs * 1e9 == pytest.approx(vivit_macs(**TINY), rel=1e-9)
    rgb = create_model("vivit-tiny-rgb", "none")
    assert count_torch(rgb, (_inputs(rgb),)) * 1e9 == pytest.approx(vivit_macs(**TINY, modalities=("rgb",)), rel=1e-9)


def test_counters_on_the_dict_input():
    model = create_model("vivit-tiny", "none")
    report = count_flops(model)
    assert report.gflops_fvcore is not None and report.gflops_thop is not None, report.notes
    assert report.gflops_fvcore == pytest.approx(report.gflops, rel=0.01)
    assert report.counters_agree
    assert "aten::scaled_dot_product_attention" not in report.fvcore_unsupported
    assert report.gflops_thop < report.gflops  # thop misses the attention matmuls
