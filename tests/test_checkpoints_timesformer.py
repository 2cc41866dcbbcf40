"""TimeSformer checkpoint layouts (vidprune/backbones/timesformer_weights.py) without transformers: the
official layout (facebookresearch/TimeSformer's .pyth: model_state, model.* names) loads exactly, position
tables of another geometry are resized the way TimeSformer resizes them (nearest neighbour), and a method
that makes the later blocks joint (STTM) loads a full checkpoint without their temporal attention.
(transformers' own layout is checked against transformers in tests/test_hub.py.)"""

from __future__ import annotations

import pytest
import torch

from vidprune import checkpoints as ckpt
from vidprune.errors import VidpruneError
from vidprune.models import create_model

FRAMES, SIZE, CLASSES = 4, 32, 5


def _source(frames: int = FRAMES, size: int = SIZE):
    model = create_model("timesformer-tiny", frames=frames, size=size, classes=CLASSES, seed=3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _official(model) -> dict:
    """What TimeSformer's training script saves: the weights under model_state, every name under model."""
    return {"model_state": {f"model.{k}": v.clone() for k, v in model.state_dict().items()}, "epoch": 15}


def _clip(model) -> torch.Tensor:
    return torch.randn(model.input_shape(2), generator=torch.Generator().manual_seed(1))


def test_the_official_layout_loads_exactly(tmp_path, one_thread):
    source = _source()
    path = tmp_path / "TimeSformer_divST_tiny.pyth"
    torch.save(_official(source), path)
    model = create_model(frames=FRAMES, size=SIZE, checkpoint=path)  # backbone and classes from the tensors
    assert model.backbone_name == "timesformer-tiny" and model.classes == CLASSES
    assert model.checkpoint_report.layout == "timesformer" and model.checkpoint_report.head_loaded
    with torch.no_grad():
        torch.testing.assert_close(model(_clip(model)), source(_clip(model)), rtol=0, atol=0)
    # the joint-ViT layouts do not claim a TimeSformer state dict, although its block names look alike
    assert ckpt.detect_layout(ckpt.read_checkpoint(_official(source)).state).name == "timesformer"


def test_position_tables_are_resized_by_nearest_neighbour(one_thread):
    source = _source()
    state = _official(source)
    model = create_model("timesformer-tiny", frames=2 * FRAMES, size=2 * SIZE, checkpoint=state)
    notes = " ".join(model.checkpoint_report.notes)
    assert "from 2x2 to 4x4 patches" in notes and f"from {FRAMES} to {2 * FRAMES} frames" in notes
    time = source.time_embed.detach()
    torch.testing.assert_close(model.time_embed.detach(), time.repeat_interleave(2, dim=1), rtol=0, atol=0)
    pos = source.pos_embed.detach()
    torch.testing.assert_close(model.pos_embed.detach()[:, 0], pos[:, 0], rtol=0, atol=0)  # class token kept
    grid = pos[0, 1:].reshape(2, 2, -1).repeat_interleave(2, dim=0).repeat_interleave(2, dim=1).reshape(16, -1)
    torch.testing.assert_close(model.pos_embed.detach()[0, 1:], grid, rtol=0, atol=0)


def test_a_method_with_joint_blocks_loads_without_their_temporal_attention(one_thread):
    source = _source()
    model = create_model("timesformer-tiny", "sttm", frames=FRAMES, size=SIZE, checkpoint=_official(source))
    until = model.method.grid_until_layer
    assert until < model.info.depth
    assert any(f"temporal attention of blocks {until + 1}-{model.info.depth}" in n for n in model.checkpoint_report.notes)
    for i, block in enumerate(model.blocks):
        reference = source.blocks[i]
        torch.testing.assert_close(block.attn.qkv.weight, reference.attn.qkv.weight, rtol=0, atol=0)
        assert block.divided == (i < until)


def test_a_joint_vit_checkpoint_is_not_a_timesformer(tmp_path):
    vit = create_model("vit-tiny", frames=FRAMES, size=SIZE, classes=CLASSES)
    with pytest.raises(VidpruneError, match=r"not recognised for a 'timesformer' backbone.*tensors of 'vit-tiny'"):
        create_model("timesformer-tiny", frames=FRAMES, size=SIZE, checkpoint=vit.state_dict())
