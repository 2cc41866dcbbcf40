"""CLIP checkpoint layouts: OpenAI / open_clip state dicts and Hugging Face CLIPModel files, built here with
each project's own key names and shapes (no download), must land in the clip backbone so that its frame
encoder computes what OpenAI's VisionTransformer computes with those tensors (a reference forward written
below with plain torch ops); the text tower is ignored and mismatches name the tensors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidprune import checkpoints as ckpt
from vidprune.backbones.clip import CLIPVideo
from vidprune.backbones.clip_weights import resize_clip_pos_table
from vidprune.errors import VidpruneError
from vidprune.models import create_model

# clip-tiny: 192 wide, 2 blocks, 3 heads, 16-px patches, 128-d features
WIDTH, LAYERS, HEADS, PATCH, EMBED = 192, 2, 3, 16, 128
FRAMES, SIZE = 2, 32


def _tiny(size: int = SIZE, seed: int = 5):
    return create_model("clip-tiny", "none", frames=FRAMES, size=size, classes=3, seed=seed)


def openai_state(width=WIDTH, layers=LAYERS, patch=PATCH, size=SIZE, embed=EMBED, *, seed=0, text=True,
                 device=None) -> dict:
    """A CLIP state dict with OpenAI's names and shapes (clip/model.py: VisionTransformer, CLIP)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, offset=0.0):
        if device == "meta":
            return torch.empty(shape, device="meta")
        return offset + scale * torch.randn(shape, generator=gen)

    def norm(prefix):
        return {f"{prefix}.weight": rand(width, scale=0.1, offset=1.0), f"{prefix}.bias": rand(width, scale=0.1)}

    grid = size // patch
    s = {"visual.conv1.weight": rand(width, 3, patch, patch, scale=0.05),
         "visual.class_embedding": rand(width, scale=width ** -0.5),
         "visual.positional_embedding": rand(grid * grid + 1, width, scale=width ** -0.5),
         **norm("visual.ln_pre"), **norm("visual.ln_post"),
         "visual.proj": rand(width, embed, scale=width ** -0.5)}
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        s.update({b + "attn.in_proj_weight": rand(3 * width, width, scale=width ** -0.5),
                  b + "attn.in_proj_bias": rand(3 * width, scale=0.1),
                  b + "attn.out_proj.weight": rand(width, width, scale=width ** -0.5),
                  b + "attn.out_proj.bias": rand(width, scale=0.1),
                  b + "mlp.c_fc.weight": rand(4 * width, width, scale=width ** -0.5),
                  b + "mlp.c_fc.bias": rand(4 * width, scale=0.1),
                  b + "mlp.c_proj.weight": rand(width, 4 * width, scale=(4 * width) ** -0.5),
                  b + "mlp.c_proj.bias": rand(width, scale=0.1),
                  **norm(b + "ln_1"), **norm(b + "ln_2")})
    if text:  # a 64-wide, 1-block text tower and the contrastive temperature: must be ignored
        s.update({"token_embedding.weight": rand(100, 64), "positional_embedding": rand(77, 64),
                  "transformer.resblocks.0.attn.in_proj_weight": rand(192, 64),
                  "transformer.resblocks.0.mlp.c_fc.weight": rand(256, 64),
                  "ln_final.weight": rand(64), "ln_final.bias": rand(64), "text_projection": rand(64, embed),
                  "logit_scale": rand(1)[0]})
    return s


def hf_state(openai: dict, *, projection: bool = True) -> dict:
    """The same weights under transformers' CLIPModel names, related as in transformers'
    convert_clip_original_pytorch_to_hf.py: in_proj rows chunked into q/k/v, visual_projection = proj.T."""
    v = "vision_model."
    s = {v + "embeddings.patch_embedding.weight": openai["visual.conv1.weight"],
         v + "embeddings.class_embedding": openai["visual.class_embedding"],
         v + "embeddings.position_embedding.weight": openai["visual.positional_embedding"],
         v + "embeddings.position_ids": torch.arange(openai["visual.positional_embedding"].shape[0])[None],
         v + "pre_layrnorm.weight": openai["visual.ln_pre.weight"], v + "pre_layrnorm.bias": openai["visual.ln_pre.bias"],
         v + "post_layernorm.weight": openai["visual.ln_post.weight"],
         v + "post_layernorm.bias": openai["visual.ln_post.bias"],
         "text_model.embeddings.token_embedding.weight": torch.zeros(10, 4),
         "text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4),
         "text_projection.weight": torch.zeros(EMBED, 4), "logit_scale": torch.tensor(2.6592)}
    if projection:
        s["visual_projection.weight"] = openai["visual.proj"].t()
    i = 0
    while f"visual.transformer.resblocks.{i}.ln_1.weight" in openai:
        o, h = f"visual.transformer.resblocks.{i}.", f"{v}encoder.layers.{i}."
        q, k, vv = openai[o + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = openai[o + "attn.in_proj_bias"].chunk(3)
        s.update({h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": vv,
                  h + "self_attn.q_proj.bias": qb, h + "self_attn.k_proj.bias": kb, h + "self_attn.v_proj.bias": vb})
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            s[h + theirs + ".weight"] = openai[o + ours + ".weight"]
            s[h + theirs + ".bias"] = openai[o + ours + ".bias"]
        i += 1
    return {k: t.clone().contiguous() for k, t in s.items()}


def reference_features(s: dict, images: torch.Tensor, heads: int = HEADS, activation: str = "quick_gelu") -> torch.Tensor:
    """OpenAI CLIP's VisionTransformer.forward with plain torch ops: (N, 3, H, W) -> (N, E)."""
    w = s["visual.conv1.weight"]
    width, patch = w.shape[0], w.shape[-1]

    def ln(x, prefix):
        return F.layer_norm(x, (width,), s[prefix + ".weight"], s[prefix + ".bias"], eps=1e-5)

    def act(x):
        return x * torch.sigmoid(1.702 * x) if activation == "quick_gelu" else F.gelu(x)

    x = F.conv2d(images, w, stride=patch)
    x = x.reshape(x.shape[0], width, -1).permute(0, 2, 1)
    cls = s["visual.class_embedding"] + torch.zeros(x.shape[0], 1, width)
    x = ln(torch.cat([cls, x], dim=1) + s["visual.positional_embedding"], "visual.ln_pre")
    x = x.permute(1, 0, 2)  # sequence first, as nn.MultiheadAttention takes it
    i = 0
    while f"visual.transformer.resblocks.{i}.ln_1.weight" in s:
        b = f"visual.transformer.resblocks.{i}."
        y = ln(x, b + "ln_1")
        x = x + F.multi_head_attention_forward(
            y, y, y, width, heads, s[b + "attn.in_proj_weight"], s[b + "attn.in_proj_bias"], None, None, False, 0.0,
            s[b + "attn.out_proj.weight"], s[b + "attn.out_proj.bias"], training=False, need_weights=False)[0]
        y = ln(x, b + "ln_2")
        x = x + F.linear(act(F.linear(y, s[b + "mlp.c_fc.weight"], s[b + "mlp.c_fc.bias"])),
                         s[b + "mlp.c_proj.weight"], s[b + "mlp.c_proj.bias"])
        i += 1
    x = x.permute(1, 0, 2)
    return ln(x[:, 0], "visual.ln_post") @ s["visual.proj"]


def _video(size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, FRAMES, size, size, generator=torch.Generator().manual_seed(3))


def _assert_matches_reference(model, source: dict, activation: str = "quick_gelu"):
    video = _video(model.info.size)
    with torch.no_grad():
        ours = model.encode_frames(video, (1,))[:, 0]
        expected = reference_features(source, video[:, :, 1], activation=activation)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
        # meanP: the clip feature is the mean of every frame's reference feature
        frames = torch.stack([reference_features(source, video[:, :, t], activation=activation)
                              for t in range(FRAMES)], dim=1)
        torch.testing.assert_close(model.forward_features(video), frames.mean(dim=1), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------- OpenAI / open_clip


@pytest.mark.parametrize("wrapping", ["plain", "open_clip"])
def test_openai_and_open_clip_state_dicts_load_and_match_the_reference(tmp_path, wrapping):
    source = openai_state()
    payload = dict(source)
    if wrapping == "open_clip":  # open_clip's training script: DDP-prefixed weights beside the optimizer state
        payload = {"epoch": 32, "name": "ViT-B-32", "state_dict": {f"module.{k}": v for k, v in source.items()}}
    path = tmp_path / "clip.pt"
    torch.save(payload, path)
    model = _tiny()
    report = ckpt.load_checkpoint(model, path, head="optional")
    assert report.layout == "openai-clip" and not report.head_loaded
    notes = " ".join(report.notes)
    assert "ignored 8 text-tower tensors" in notes and "QuickGELU assumed" in notes
    sd = model.state_dict()
    torch.testing.assert_close(sd["visual.transformer.resblocks.1.attn.in_proj.weight"],
                               source["visual.transformer.resblocks.1.attn.in_proj_weight"], rtol=0, atol=0)
    torch.testing.assert_close(sd["visual.proj"], source["visual.proj"], rtol=0, atol=0)  # (width, E), used as x @ proj
    torch.testing.assert_close(sd["visual.positional_embedding"], source["visual.positional_embedding"], rtol=0, atol=0)
    _assert_matches_reference(model, source)


def test_a_pretrained_clip_has_no_classifier_for_eval():
    with pytest.raises(VidpruneError, match="no classifier"):
        ckpt.load_checkpoint(_tiny(), openai_state())


def test_text_tower_is_ignored_but_other_strays_are_reported():
    state = openai_state()
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(WIDTH)  # open_clip's layer scale: not ours
    with pytest.raises(VidpruneError) as err:
        ckpt.load_checkpoint(_tiny(), state, head="optional")
    message = str(err.value)
    assert "unexpected 1: visual.transformer.resblocks.0.ls_1.gamma" in message
    assert "token_embedding" not in message and "ln_final" not in message


def test_openai_torchscript_archive_needs_trust(tmp_path):
    source = openai_state()
    root = nn.Module()
    for key, value in source.items():  # a module tree with the archive's parameter names
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(value.half(), requires_grad=False))  # OpenAI ships fp16
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(root), str(path))
    with pytest.raises(VidpruneError, match="TorchScript archive.*--trust-checkpoint"):
        ckpt.load_checkpoint(_tiny(), path, head="optional")
    model = _tiny()
    ckpt.load_checkpoint(model, path, head="optional", trust=True)
    assert model.visual.proj.dtype == torch.float32
    torch.testing.assert_close(model.visual.proj, source["visual.proj"].half().float(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- Hugging Face


def _hf_folder(tmp_path, state: dict, vision_config: dict):
    safetensors = pytest.importorskip("safetensors.torch")
    folder = tmp_path / "hf-clip"
    folder.mkdir()
    safetensors.save_file(state, str(folder / "model.safetensors"))
    config = {"architectures": ["CLIPModel"], "projection_dim": EMBED,
              "text_config": {"num_attention_heads": 1, "hidden_size": 4},
              "vision_config": dict({"hidden_size": WIDTH, "image_size": SIZE}, **vision_config)}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_hf_clip_model_splits_qkv_and_transposes_the_projection(tmp_path):
    source = openai_state(text=False)
    hf = hf_state(source)
    folder = _hf_folder(tmp_path, hf, {"num_attention_heads": HEADS, "patch_size": PATCH, "hidden_act": "quick_gelu"})
    model = _tiny()
    report = ckpt.load_checkpoint(model, folder, head="optional")
    assert report.layout == "hf-clip"
    assert any("text-tower" in n for n in report.notes) and not any("QuickGELU assumed" in n for n in report.notes)
    qkv = model.visual.transformer.resblocks[0].attn.in_proj
    layer = "vision_model.encoder.layers.0.self_attn."
    for third, name in enumerate("qkv"):
        rows = slice(third * WIDTH, (third + 1) * WIDTH)
        torch.testing.assert_close(qkv.weight[rows], hf[layer + f"{name}_proj.weight"], rtol=0, atol=0)
        torch.testing.assert_close(qkv.bias[rows], hf[layer + f"{name}_proj.bias"], rtol=0, atol=0)
    assert model.visual.proj.shape == (WIDTH, EMBED)
    torch.testing.assert_close(model.visual.proj, hf["visual_projection.weight"].t(), rtol=0, atol=0)
    _assert_matches_reference(model, source)


def test_hf_config_gelu_switches_the_activation_and_heads_are_checked(tmp_path):
    source = openai_state(text=False)
    folder = _hf_folder(tmp_path, hf_state(source), {"num_attention_heads": HEADS, "hidden_act": "gelu"})
    model = _tiny()
    report = ckpt.load_checkpoint(model, folder, head="optional")
    assert model.activation == "gelu" and any("gelu instead of" in n for n in report.notes)
    _assert_matches_reference(model, source, activation="gelu")
    video = _video()[:, :, 0]
    with torch.no_grad():  # the two activations differ enough for the check above to tell them apart
        gap = (reference_features(source, video) - reference_features(source, video, activation="gelu")).abs().max()
    assert gap > 1e-3
    (folder / "config.json").write_text(json.dumps({"vision_config": {"num_attention_heads": 4}}))
    with pytest.raises(VidpruneError, match="num_attention_heads=4"):
        ckpt.load_checkpoint(_tiny(), folder, head="optional")
    (folder / "config.json").write_text(json.dumps({"vision_config": {"hidden_act": "silu"}}))
    with pytest.raises(VidpruneError, match="activation 'silu' is not supported"):
        ckpt.load_checkpoint(_tiny(), folder, head="optional")


def test_hf_vision_model_without_projection_says_which_weights_to_use():
    with pytest.raises(VidpruneError, match="CLIPVisionModelWithProjection"):
        ckpt.load_checkpoint(_tiny(), hf_state(openai_state(), projection=False), head="optional")


# ------------------------------------------------------------------------------------- mismatches


def test_wrong_width_or_depth_names_the_tensors():
    with pytest.raises(VidpruneError) as err:
        ckpt.load_checkpoint(_tiny(), openai_state(width=96), head="optional")
    message = str(err.value)
    assert "does not fit backbone 'clip-tiny'" in message and "--backbone clip-b16" in message
    assert "visual.class_embedding (96,) vs (192,)" in message
    with pytest.raises(VidpruneError, match=r"unexpected 12: visual\.transformer\.resblocks\.2\."):
        ckpt.load_checkpoint(_tiny(), openai_state(layers=3), head="optional")
    with pytest.raises(VidpruneError, match=r"missing 14: head.bias, head.weight, visual\.transformer\.resblocks\.1\."):
        ckpt.load_checkpoint(_tiny(), openai_state(layers=1), head="optional")
    resnet = {"visual.conv1.weight": torch.zeros(32, 3, 3, 3), "visual.layer1.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(VidpruneError, match="ResNet CLIP"):
        ckpt.load_checkpoint(_tiny(), resnet, head="optional")


def test_clip_layouts_are_not_offered_to_vit_backbones():
    with pytest.raises(VidpruneError, match="layout not recognised for a 'vit'"):
        ckpt.detect_layout(openai_state(), "vit")


def test_temporal_head_starts_fresh_when_fine_tuning_from_clip():
    model = CLIPVideo(WIDTH, LAYERS, HEADS, PATCH, embed_dim=EMBED, frames=FRAMES, size=SIZE, classes=3,
                      temporal="transformer", temporal_layers=1)
    source = openai_state()
    report = ckpt.load_checkpoint(model, source, head="optional")
    notes = " ".join(report.notes)
    assert "no fusion_model weights" in notes and "no classifier" in notes
    torch.testing.assert_close(model.visual.proj, source["visual.proj"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------- geometry


def test_position_table_is_resized_in_2d_keeping_the_class_token():
    source = openai_state(size=32)  # a 2x2 patch grid
    table = source["visual.positional_embedding"]
    table[1:] = 0.25  # a constant patch field stays constant under any interpolation
    model = _tiny(size=64)  # a 4x4 patch grid
    report = ckpt.load_checkpoint(model, source, head="optional")
    assert any("from a 2x2 to a 4x4 patch grid" in n for n in report.notes)
    loaded = model.visual.positional_embedding
    assert loaded.shape == (17, WIDTH)
    torch.testing.assert_close(loaded[0], table[0], rtol=0, atol=0)
    torch.testing.assert_close(loaded[1:], torch.full((16, WIDTH), 0.25), rtol=0, atol=1e-6)
    # the rest of the tower does not depend on the size: it still matches the reference with the new table
    resized = dict(source, **{"visual.positional_embedding": loaded.detach().clone()})
    _assert_matches_reference(model, resized)


def test_resize_clip_pos_table_follows_the_grid_and_rejects_non_square_tables():
    # a table varying only along the columns keeps that: each row of the grid is the same after resizing
    grid = torch.arange(4.0).repeat(4).reshape(16, 1).expand(16, 3)
    table = torch.cat([torch.full((1, 3), -1.0), grid])
    out = resize_clip_pos_table(table, 6)[1:].reshape(6, 6, 3)
    torch.testing.assert_close(out, out[:1].expand(6, 6, 3))
    assert bool((out[0, 1:, 0] > out[0, :-1, 0]).all())  # still increasing along the columns
    assert resize_clip_pos_table(table, 4) is table
    with pytest.raises(VidpruneError, match="not a class token plus a square patch grid"):
        resize_clip_pos_table(torch.zeros(6, 3), 2)


@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_infer_backbone_tells_b16_from_b32_by_the_patch_kernel(layout):
    def state(patch, size):
        s = openai_state(width=768, layers=12, patch=patch, size=size, embed=512, device="meta")
        return hf_state(s) if layout == "hf" else s

    assert ckpt.infer_backbone(state(16, 224), "clip") == "clip-b16"
    assert ckpt.infer_backbone(state(32, 224), "clip") == "clip-b32"
    assert ckpt.infer_backbone(state(32, 288), "clip") == "clip-b32"  # trained at another size: 9x9 grid
    assert ckpt.infer_backbone(state(16, 384), "clip") == "clip-b16"
    assert ckpt.infer_backbone(openai_state(), "clip") == "clip-tiny"
    assert ckpt.checkpoint_classes(openai_state(), "clip") is None
