"""Checkpoint layouts: VideoMAE / VideoMAEv2 official .pth files and Hugging Face VideoMAE files, built
here from a small model's own weights with each layout's key names (no download), must load back into
the backbone and reproduce its outputs exactly; mismatches raise one error naming the tensors."""

from __future__ import annotations

import argparse

import pytest
import torch

from vidprune import checkpoints as ckpt
from vidprune.backbones.vit import sinusoid_table
from vidprune.backbones.vit_weights import resize_pos_table
from vidprune.errors import VidpruneError
from vidprune.models import create_model

FRAMES, SIZE, CLASSES = 4, 32, 5


def _model(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    kwargs = dict(dict(frames=FRAMES, size=SIZE, classes=CLASSES), **kwargs)
    model = create_model("vit-tiny", "none", **kwargs)
    with torch.no_grad():  # non-trivial biases and norms so that a wrong mapping shows in the output
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _clip(model):
    return torch.randn(model.input_shape(2), generator=torch.Generator().manual_seed(1))


def _videomae_state(model, *, pretrain: bool = False) -> dict:
    """Our weights under VideoMAE's names: separate q_bias / v_bias (the k part is zero in VideoMAE)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("attn.qkv.bias"):
            q, k, v = value.chunk(3)
            prefix = key[: -len("qkv.bias")]
            out[prefix + "q_bias"], out[prefix + "v_bias"] = q.clone(), v.clone()
            continue
        out[key] = value.clone()
    if pretrain:
        out = {f"encoder.{k}": v for k, v in out.items() if not k.startswith("head.")}
        out["encoder.norm.weight"] = out.pop("encoder.fc_norm.weight")
        out["encoder.norm.bias"] = out.pop("encoder.fc_norm.bias")
        out["decoder.blocks.0.attn.qkv.weight"] = torch.zeros(6, 2)
        out["encoder_to_decoder.weight"] = torch.zeros(2, 2)
        out["mask_token"] = torch.zeros(1, 1, 2)
    return out


def _hf_state(model, *, prefix: str = "videomae.") -> dict:
    """Our weights under transformers' VideoMAEForVideoClassification names."""
    sd = model.state_dict()
    out = {f"{prefix}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           f"{prefix}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "fc_norm.weight": sd["fc_norm.weight"], "fc_norm.bias": sd["fc_norm.bias"],
           "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
    for i in range(model.info.depth):
        b, layer = f"blocks.{i}.", f"{prefix}encoder.layer.{i}."
        q, k, v = sd[b + "attn.qkv.weight"].chunk(3)
        qb, _, vb = sd[b + "attn.qkv.bias"].chunk(3)
        out.update({
            layer + "attention.attention.query.weight": q, layer + "attention.attention.key.weight": k,
            layer + "attention.attention.value.weight": v,
            layer + "attention.attention.q_bias": qb, layer + "attention.attention.v_bias": vb,
            layer + "attention.output.dense.weight": sd[b + "attn.proj.weight"],
            layer + "attention.output.dense.bias": sd[b + "attn.proj.bias"],
            layer + "intermediate.dense.weight": sd[b + "mlp.fc1.weight"],
            layer + "intermediate.dense.bias": sd[b + "mlp.fc1.bias"],
            layer + "output.dense.weight": sd[b + "mlp.fc2.weight"], layer + "output.dense.bias": sd[b + "mlp.fc2.bias"],
            layer + "layernorm_before.weight": sd[b + "norm1.weight"], layer + "layernorm_before.bias": sd[b + "norm1.bias"],
            layer + "layernorm_after.weight": sd[b + "norm2.weight"], layer + "layernorm_after.bias": sd[b + "norm2.bias"],
        })
    return {k: v.clone() for k, v in out.items()}


def _zero_k_bias(model):
    """VideoMAE has no k bias; give the source model a zero one so that the round trip is exact."""
    with torch.no_grad():
        for blk in model.blocks:
            d = blk.attn.qkv.bias.shape[0] // 3
            blk.attn.qkv.bias[d:2 * d] = 0
    return model


def _assert_same_outputs(a, b):
    clip = _clip(a)
    with torch.no_grad():
        torch.testing.assert_close(a(clip), b(clip), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- official VideoMAE


@pytest.mark.parametrize("nesting", ["model", "module", "module-prefix"])
def test_videomae_pth_layout_loads_exactly(tmp_path, nesting):
    source = _zero_k_bias(_model(0))
    state = _videomae_state(source)
    if nesting == "module-prefix":  # DDP-saved: every key starts with module.
        payload = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    else:
        payload = {nesting: state, "epoch": 3, "args": argparse.Namespace(model="vit_tiny")}
    path = tmp_path / "videomae.pth"
    torch.save(payload, path)
    target = _model(1)
    report = ckpt.load_checkpoint(target, path)
    assert report.layout == "videomae" and report.head_loaded and report.classes == CLASSES
    assert any("q/v biases" in n for n in report.notes)
    _assert_same_outputs(source, target)


def test_qv_bias_folding_puts_zeros_in_the_k_third():
    state = _videomae_state(_model(0))
    converted, _ = ckpt.detect_layout(state, "vit").convert(state)
    bias = converted["blocks.0.attn.qkv.bias"]
    d = bias.shape[0] // 3
    torch.testing.assert_close(bias[:d], state["blocks.0.attn.q_bias"])
    assert torch.count_nonzero(bias[d:2 * d]) == 0
    torch.testing.assert_close(bias[2 * d:], state["blocks.0.attn.v_bias"])


def test_pretrained_encoder_needs_fine_tuning_for_eval_but_loads_for_training(tmp_path):
    source = _zero_k_bias(_model(0))
    path = tmp_path / "pretrain.pth"
    torch.save({"model": _videomae_state(source, pretrain=True)}, path)
    with pytest.raises(VidpruneError, match="no classifier"):
        ckpt.load_checkpoint(_model(1), path)
    target = _model(1)
    report = ckpt.load_checkpoint(target, path, head="optional")
    assert not report.head_loaded
    notes = " ".join(report.notes)
    assert "decoder" in notes and "encoder." in notes and "fc_norm" in notes
    torch.testing.assert_close(target.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    torch.testing.assert_close(target.fc_norm.weight, source.fc_norm.weight)


# ------------------------------------------------------------------------------------- Hugging Face


def test_hf_bin_layout_loads_exactly(tmp_path):
    source = _zero_k_bias(_model(0))
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save(_hf_state(source), folder / "pytorch_model.bin")
    target = _model(1)
    report = ckpt.load_checkpoint(target, folder)  # a model folder resolves to its weights file
    assert report.layout == "hf-videomae"
    _assert_same_outputs(source, target)


def test_hf_safetensors_layout_loads_exactly(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    source = _zero_k_bias(_model(0))
    path = tmp_path / "model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in _hf_state(source).items()}, str(path))
    target = _model(1)
    assert ckpt.load_checkpoint(target, path).layout == "hf-videomae"
    _assert_same_outputs(source, target)


def test_hf_base_model_without_prefix_and_config_check(tmp_path):
    source = _zero_k_bias(_model(0))
    state = _hf_state(source, prefix="")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    folder = tmp_path / "base"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"num_attention_heads": 3, "tubelet_size": 2, "patch_size": 16}')
    target = _model(1)
    report = ckpt.load_checkpoint(target, folder, head="optional")
    assert not report.head_loaded
    torch.testing.assert_close(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    (folder / "config.json").write_text('{"num_attention_heads": 12}')
    with pytest.raises(VidpruneError, match="num_attention_heads=12"):
        ckpt.load_checkpoint(_model(1), folder, head="optional")


# ------------------------------------------------------------------------------------- mismatches


def test_mismatch_lists_missing_unexpected_and_shapes():
    state = _videomae_state(_model(0))
    del state["blocks.1.mlp.fc2.weight"]
    state["blocks.1.attn.gamma_1"] = torch.ones(192)
    state["blocks.0.norm1.weight"] = torch.ones(7)
    with pytest.raises(VidpruneError) as err:
        ckpt.load_checkpoint(_model(1), state)
    message = str(err.value)
    assert "missing 1: blocks.1.mlp.fc2.weight" in message
    assert "unexpected 1: blocks.1.attn.gamma_1" in message
    assert "blocks.0.norm1.weight (7,) vs (192,)" in message


def test_wrong_backbone_and_wrong_classes_name_the_fix():
    state = _videomae_state(_model(0))
    deeper = create_model("vit-s", "none", frames=FRAMES, size=SIZE, classes=CLASSES)
    with pytest.raises(VidpruneError, match="does not fit backbone 'vit-s'"):
        ckpt.load_checkpoint(deeper, state)
    with pytest.raises(VidpruneError, match="--classes 5"):
        ckpt.load_checkpoint(_model(1, classes=7), state)
    # fine-tuning on another label set: the classifier is left at its initialisation, with a note
    report = ckpt.load_checkpoint(_model(1, classes=7), state, head="optional")
    assert not report.head_loaded and any("5 classes" in n for n in report.notes)


def test_unknown_layout_and_unreadable_files(tmp_path):
    with pytest.raises(VidpruneError, match="layout not recognised"):
        ckpt.load_checkpoint(_model(0), {"foo.weight": torch.zeros(1)})
    with pytest.raises(VidpruneError, match="does not exist"):
        ckpt.load_checkpoint(_model(0), tmp_path / "nope.pth")
    with pytest.raises(VidpruneError, match="no state dict"):
        ckpt.read_checkpoint({"epoch": 1})
    risky = tmp_path / "risky.pth"
    torch.save({"model": _videomae_state(_model(0)), "fn": _clip}, risky)
    with pytest.raises(VidpruneError, match="--trust-checkpoint"):
        ckpt.load_checkpoint(_model(0), risky)
    assert ckpt.load_checkpoint(_model(0), risky, trust=True).layout == "videomae"


def test_layout_registry_is_per_family():
    assert [layout.name for layout in ckpt.layouts("vit")][:2] == ["videomae", "hf-videomae"]
    layout = ckpt.CheckpointLayout("toy", "toyfamily", "test", lambda s: "w" in s, lambda s: (dict(s), []))
    ckpt.register_layout(layout)
    try:
        assert ckpt.detect_layout({"w": torch.zeros(1)}, "toyfamily") is layout
        with pytest.raises(ValueError, match="twice"):
            ckpt.register_layout(layout)
    finally:
        ckpt._LAYOUTS.pop("toyfamily")


def test_infer_backbone_and_classes_from_tensors():
    state = _videomae_state(_model(0))
    assert ckpt.infer_backbone(state) == "vit-tiny"
    assert ckpt.checkpoint_classes(state) == CLASSES


# ------------------------------------------------------------------------------------- position tables


def test_fixed_sinusoid_table_in_a_checkpoint_is_rebuilt_for_the_grid():
    source = _zero_k_bias(_model(0))
    state = _videomae_state(source)
    state["pos_embed"] = sinusoid_table(2 * 2 * 2, 192)  # saved for another grid: nothing to resize
    target = _model(1, frames=8, size=48)
    report = ckpt.load_checkpoint(target, state)
    assert any("fixed sinusoid" in n for n in report.notes)
    torch.testing.assert_close(target.pos_embed, sinusoid_table(4 * 3 * 3, 192))


def test_learned_table_is_interpolated_to_the_model_grid():
    state = _videomae_state(_zero_k_bias(_model(0)))
    learned = torch.randn(1, 2 * 2 * 2, 192)  # a 2x2x2 grid (4 frames at 32 px)
    state["pos_embed"] = learned
    same = _model(1)
    ckpt.load_checkpoint(same, dict(state))
    torch.testing.assert_close(same.pos_embed, learned)
    wider = _model(1, size=64)  # 2x4x4: same frames, so the source grid is known to be 2 x square
    report = ckpt.load_checkpoint(wider, dict(state))
    assert wider.pos_embed.shape == (1, 32, 192)
    assert any("2x2x2 to a 2x4x4" in n for n in report.notes)
    # more frames and a larger size: the source grid must come from metadata (a config.json or vidprune's)
    with pytest.raises(VidpruneError, match="token grid"):
        ckpt.load_checkpoint(_model(1, frames=8, size=64), dict(state))
    bigger = _model(1, frames=8, size=64)
    report = ckpt.load_checkpoint(bigger, ckpt.RawCheckpoint(dict(state), meta={"grid": [2, 2, 2]}))
    assert bigger.pos_embed.shape == (1, 64, 192)
    assert any("2x2x2 to a 4x4x4" in n for n in report.notes)


def test_resize_pos_table_preserves_constant_and_separable_fields():
    const = torch.full((1, 2 * 3 * 3, 4), 0.5)
    torch.testing.assert_close(resize_pos_table(const, (2, 3, 3), (4, 6, 6)), torch.full((1, 144, 4), 0.5))
    # a table that varies only in time keeps its per-slice values where time is not resized
    t_only = torch.arange(2.0).repeat_interleave(9).reshape(1, 18, 1).expand(1, 18, 3)
    out = resize_pos_table(t_only, (2, 3, 3), (2, 5, 5)).reshape(2, 25, 3)
    torch.testing.assert_close(out[0], torch.zeros(25, 3))
    torch.testing.assert_close(out[1], torch.ones(25, 3))


def test_method_parameters_are_kept_apart():
    source = _zero_k_bias(_model(0))
    state = _videomae_state(source)
    state["method.scorer.weight"] = torch.ones(2, 3)  # a learned scorer saved by `vidprune train`
    target = _model(1)
    report = ckpt.load_checkpoint(target, dict(state))
    assert any("method this model does not use" in n for n in report.notes)
    assert set(ckpt.method_state(state)) == {"scorer.weight"}
    _assert_same_outputs(source, target)
