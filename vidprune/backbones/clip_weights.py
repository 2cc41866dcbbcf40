"""Pretrained weights for the frame-level CLIP backbones (clip.py): OpenAI CLIP / open_clip / ActionCLIP
state dicts (also vidprune's own clip checkpoints) and Hugging Face transformers' CLIPModel, image tower only.

Each layout renames and reshapes a checkpoint's tensors into CLIPVideo's own names (OpenAI's, but for the
qkv linear `attn.in_proj`: `openai_to_vidprune`); vidprune.checkpoints checks names and shapes and loads
them. Before that check, the learned position table (class token + patch grid) is resized in 2-D the way
open_clip does it (bicubic, antialiased, class token kept) and the image tower takes the activation the
checkpoint was trained with. The registry imports this module with the backbone files, which registers
the layouts.
"""

from __future__ import annotations

import math
import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.backbones.clip import ACTIVATIONS, CLIPVideo
from vidprune.checkpoints import CheckpointLayout, hf_config, register_layout
from vidprune.errors import VidpruneError
from vidprune.hub import HubArchitecture, register_hub_architecture, square, transformers_config

_CLIP_POSITIONS = "visual.positional_embedding"
# The text tower and the contrastive temperature of a full CLIP state dict (OpenAI, open_clip, ActionCLIP's
# CLIP part), plus the three scalars OpenAI's TorchScript archive stores. vidprune keeps the image tower only.
_CLIP_TEXT_TOWER = re.compile(r"^(token_embedding\.|positional_embedding$|transformer\.|ln_final\.|text_projection$|"
                              r"logit_scale$|logit_bias$|text\.|attn_mask$|input_resolution$|context_length$|vocab_size$)")
_HF_CLIP_TEXT_TOWER = re.compile(r"^(text_model\.|text_projection\.|logit_scale$|logit_bias$)")


def _drop_text_tower(state: dict, pattern: re.Pattern, notes: list[str]) -> dict:
    dropped = [k for k in state if pattern.match(k)]
    if dropped:
        notes.append(f"ignored {len(dropped)} text-tower tensors (vidprune uses CLIP's image tower only)")
    return {k: v for k, v in state.items() if k not in dropped}


def _is_openai_clip(state: dict) -> bool:
    return any(re.match(r"^visual\.(conv1\.weight$|transformer\.resblocks\.\d+\.)", k) for k in state)


def openai_to_vidprune(state_dict: dict) -> dict:
    """Rename an OpenAI CLIP / ActionCLIP state dict's `attn.in_proj_weight`/`in_proj_bias` to the qkv
    linear used here (`attn.in_proj.weight`/`.bias`); every other key already matches."""
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith("attn.in_proj_weight"):
            key = key[: -len("in_proj_weight")] + "in_proj.weight"
        elif key.endswith("attn.in_proj_bias"):
            key = key[: -len("in_proj_bias")] + "in_proj.bias"
        renamed[key] = value
    return renamed


def _convert_openai_clip(state: dict) -> tuple[dict, list[str]]:
    notes: list[str] = []
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in state):
        raise VidpruneError("the checkpoint is a ResNet CLIP image tower (RN50 and similar); vidprune's clip "
                            "backbones are ViTs: pass a ViT-B/32 or ViT-B/16 CLIP checkpoint.")
    state = _drop_text_tower(dict(state), _CLIP_TEXT_TOWER, notes)
    renamed = openai_to_vidprune(state)
    if any(k.endswith("attn.in_proj_weight") for k in state):
        notes.append("renamed nn.MultiheadAttention's in_proj_weight/in_proj_bias (q, k, v rows) to the qkv linear")
    return renamed, notes


_HF_CLIP_RENAMES = [
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", _CLIP_POSITIONS),
    # transformers spells it pre_layrnorm (kept for its own checkpoints); accept the corrected spelling too
    (r"^vision_model\.pre_lay(?:e?r)norm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"visual.transformer.resblocks.\1.attn.out_proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual.transformer.resblocks.\1.ln_1."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual.transformer.resblocks.\1.ln_2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.", r"visual.transformer.resblocks.\1.mlp.c_fc."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.", r"visual.transformer.resblocks.\1.mlp.c_proj."),
]


def _is_hf_clip(state: dict) -> bool:
    # transformers 5 saves a bare CLIPVisionModel without the vision_model. prefix
    return any(re.match(r"^(vision_model\.)?(embeddings\.patch_embedding\.|encoder\.layers\.\d+\.self_attn\.)", k)
               for k in state)


_HF_CLIP_TOWER = re.compile(r"^(embeddings\.|encoder\.|pre_lay(?:e?r)norm\.|post_layernorm\.)")


def _convert_hf_clip(state: dict) -> tuple[dict, list[str]]:
    notes: list[str] = []
    state = _drop_text_tower(dict(state), _HF_CLIP_TEXT_TOWER, notes)
    state = {f"vision_model.{k}" if _HF_CLIP_TOWER.match(k) else k: v for k, v in state.items()}
    state.pop("vision_model.embeddings.position_ids", None)  # a buffer of 0..n-1, rebuilt by transformers
    out: dict[str, torch.Tensor] = {}
    attention: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            attention.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = value
            continue
        if key == "visual_projection.weight":
            # nn.Linear(width, embed_dim, bias=False) stores (embed_dim, width); CLIP's proj is x @ (width, embed_dim)
            out["visual.proj"] = value.t().contiguous()
            continue
        for pattern, replacement in _HF_CLIP_RENAMES:
            new, n = re.subn(pattern, replacement, key)
            if n:
                out[new] = value
                break
        else:
            out[key] = value  # something unexpected, which the loader's check reports
    for layer, parts in sorted(attention.items()):
        for kind in ("weight", "bias"):
            names = [f"{p}.{kind}" for p in "qkv"]
            missing = [n for n in names if n not in parts]
            if missing:
                raise VidpruneError(f"layer {layer} of the checkpoint lacks self_attn.{missing[0].replace('.', '_proj.')}: "
                                    "q, k and v projections come together.")
            # OpenAI packs in_proj rows as [q; k; v], which is what our qkv linear splits
            out[f"visual.transformer.resblocks.{layer}.attn.in_proj.{kind}"] = torch.cat([parts[n] for n in names])
    if attention:
        notes.append(f"concatenated q_proj/k_proj/v_proj into the qkv linear in {len(attention)} layers")
    return out, notes


def resize_clip_pos_table(table: torch.Tensor, side: int) -> torch.Tensor:
    """CLIP's (1 + s*s, D) position table for a side x side patch grid: the class-token row as it is, the
    patch rows as an s x s image resized bicubically with antialiasing (open_clip's resize_pos_embed)."""
    n, d = table.shape
    source = math.isqrt(n - 1) if n > 1 else 0
    if source * source != n - 1:
        raise VidpruneError(f"the checkpoint's CLIP position table has {n} rows, which is not a class token plus a "
                            "square patch grid: it cannot be resized. Build the model at the checkpoint's --size.")
    if source == side:
        return table
    grid = table[1:].float().reshape(1, source, source, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(side * side, d).to(table.dtype)
    return torch.cat([table[:1], grid])


def _identity_projection(state: dict, model: nn.Module, notes: list[str]) -> None:
    """A bare CLIPVisionModel has no projection: its frame feature is the pooled class token itself, which a
    model whose embedding is as wide as the tower reproduces with an identity projection."""
    width, embed = model.info.dim, getattr(model.info, "embed_dim", None)
    if embed != width:
        raise VidpruneError("the checkpoint has no visual_projection.weight (a bare CLIPVisionModel), so its frame "
                            f"feature is {width} wide, but the backbone projects to {embed}: build it from the "
                            "checkpoint's config.json (leave --backbone out), or use CLIPModel or "
                            "CLIPVisionModelWithProjection weights.")
    state["visual.proj"] = torch.eye(width, dtype=model.visual.proj.dtype)
    notes.append("the checkpoint has no visual projection (CLIPVisionModel): the frame feature is its pooled "
                 "output, through an identity projection")


def _fit_clip(state: dict, model: nn.Module, meta: dict, notes: list[str], *, default_activation: Optional[str]) -> None:
    if "visual.proj" not in state and hasattr(model, "visual"):
        _identity_projection(state, model, notes)
    config = transformers_config(meta)
    if config is not None and hasattr(model, "visual"):
        eps = float(hf_config(meta).get("layer_norm_eps", _CLIP_VISION_CONFIG["layer_norm_eps"]))
        for module in model.visual.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = eps
    table = state.get(_CLIP_POSITIONS)
    ours = getattr(getattr(model, "visual", None), "positional_embedding", None)
    if table is not None and ours is not None and table.dim() == 2 and table.shape != ours.shape \
            and table.shape[1] == ours.shape[1]:
        side = model.info.grid[1]
        source = math.isqrt(table.shape[0] - 1)
        state[_CLIP_POSITIONS] = resize_clip_pos_table(table, side)
        notes.append(f"interpolated the CLIP position table from a {source}x{source} to a {side}x{side} patch grid "
                     "(class token kept)")
    if not hasattr(model, "set_activation"):
        return
    activation = meta.get("activation") or hf_config(meta).get("hidden_act") or default_activation
    if activation is None:
        model.set_activation("quick_gelu")
        notes.append("the checkpoint does not record its MLP activation: QuickGELU assumed (OpenAI CLIP, open_clip's "
                     "'openai' and *-quickgelu weights); open_clip weights trained with GELU would give wrong features")
        return
    model.set_activation(str(activation))
    if activation != "quick_gelu":
        notes.append(f"the checkpoint's image tower uses {activation} instead of OpenAI's QuickGELU: the model follows it")


register_layout(CheckpointLayout(
    "openai-clip", "clip", "OpenAI CLIP / open_clip ViT state dicts (also ActionCLIP's and vidprune's own clip checkpoints)",
    _is_openai_clip, _convert_openai_clip,
    fit=lambda state, model, meta, notes: _fit_clip(state, model, meta, notes, default_activation=None),
    geometry_keys=(_CLIP_POSITIONS,)))
register_layout(CheckpointLayout(
    "hf-clip", "clip", "Hugging Face transformers CLIPModel / CLIPVisionModelWithProjection (safetensors or bin)",
    _is_hf_clip, _convert_hf_clip,
    # transformers' CLIPVisionConfig defaults hidden_act to quick_gelu and config.json omits defaults
    fit=lambda state, model, meta, notes: _fit_clip(state, model, meta, notes, default_activation="quick_gelu"),
    geometry_keys=(_CLIP_POSITIONS,)))


# ------------------------------------------------------------------------------------------ hub configs

# transformers' CLIPVisionConfig defaults (a config.json may leave out what it does not change)
_CLIP_VISION_CONFIG = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _clip_arguments(config: dict) -> dict:
    """CLIPModel (model_type 'clip': the image tower under vision_config, the projection width at the top)
    or CLIPVisionModel[WithProjection] ('clip_vision_model'); a bare CLIPVisionModel's frame feature is its
    pooled output, so its embedding is the tower's width."""
    full = str(config.get("model_type", "")).lower() == "clip"
    vision = {**_CLIP_VISION_CONFIG, **((config.get("vision_config") or {}) if full else config)}
    width = int(vision["hidden_size"])
    if int(vision["intermediate_size"]) != 4 * width:
        raise VidpruneError(f"not supported: intermediate_size {vision['intermediate_size']} is not 4 x hidden_size "
                            f"{width} (vidprune's CLIP blocks have an MLP ratio of 4)")
    if vision["hidden_act"] not in ACTIVATIONS:
        raise VidpruneError(f"not supported: hidden_act '{vision['hidden_act']}' (vidprune's CLIP tower has "
                            f"{', '.join(ACTIVATIONS)})")
    if int(vision["num_channels"]) != 3:
        raise VidpruneError(f"not supported: {vision['num_channels']} input channels (vidprune's backbones take RGB)")
    bare = not full and "CLIPVisionModel" in (config.get("architectures") or [])
    embed = width if bare else int(config.get("projection_dim", vision["projection_dim"]) if full
                                   else vision["projection_dim"])
    return dict(width=width, layers=int(vision["num_hidden_layers"]), heads=int(vision["num_attention_heads"]),
                patch=square(vision["patch_size"], "patch_size"), embed_dim=embed,
                size=square(vision["image_size"], "image_size"))


register_hub_architecture(HubArchitecture("clip", "CLIP", ("clip", "clip_vision_model"), CLIPVideo, _clip_arguments))
