"""Pretrained weights for TimeSformer (timesformer.py): the official layout (facebookresearch/TimeSformer,
also vidprune's own checkpoints) and Hugging Face transformers' TimesformerForVideoClassification /
TimesformerModel, plus the transformers config.json that describes one.

The official names are TimeSformer's own (`blocks.N.temporal_attn.qkv`, `pos_embed`, `time_embed`, ...),
so that layout only unwraps. transformers renames every module (mapping below) and keeps the same
tensors: a qkv linear per attention, `temporal_dense` = the official `temporal_fc`, the class token's
position in row 0 of `position_embeddings`. Its token order differs (patch-major, (h, w, t), where
vidprune is frame-major), which no weight depends on. Position tables of another size are resized the
way both implementations do at run time: nearest neighbour in space (class token kept) and in time.

A method that makes the later blocks joint (STTM, `TokenMethod.grid_until_layer`) removes their temporal
attention; the checkpoint's temporal tensors for those blocks are then left out, with a note.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.backbones.timesformer import TimeSformer
from vidprune.checkpoints import CheckpointLayout, register_layout
from vidprune.errors import VidpruneError
from vidprune.hub import HubArchitecture, mlp_ratio, register_hub_architecture, square, transformers_config

_SPATIAL, _TEMPORAL = "pos_embed", "time_embed"
_TEMPORAL_PARTS = ("temporal_norm1.", "temporal_attn.", "temporal_fc.")


def _is_timesformer(state: dict) -> bool:
    return any(re.match(r"^(blocks\.\d+\.temporal_attn\.|time_embed$)", k) for k in state)


def _convert_timesformer(state: dict) -> tuple[dict, list[str]]:
    return dict(state), []


_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", _SPATIAL),
    (r"^embeddings\.time_embeddings$", _TEMPORAL),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.temporal_attention\.attention\.qkv\.", r"blocks.\1.temporal_attn.qkv."),
    (r"^encoder\.layer\.(\d+)\.temporal_attention\.output\.dense\.", r"blocks.\1.temporal_attn.proj."),
    (r"^encoder\.layer\.(\d+)\.temporal_dense\.", r"blocks.\1.temporal_fc."),
    (r"^encoder\.layer\.(\d+)\.temporal_layernorm\.", r"blocks.\1.temporal_norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def _is_hf_timesformer(state: dict) -> bool:
    return any(re.match(r"^(timesformer\.)?(embeddings\.time_embeddings$|encoder\.layer\.\d+\.temporal_)", k)
               for k in state)


def _convert_hf_timesformer(state: dict) -> tuple[dict, list[str]]:
    notes: list[str] = []
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key[len("timesformer."):] if key.startswith("timesformer.") else key
        for pattern, replacement in _HF_RENAMES:
            new, n = re.subn(pattern, replacement, key)
            if n:
                out[new] = value
                break
        else:
            out[key] = value  # something unexpected, which the loader's check reports
    # qkv_bias=false in the config: transformers' qkv linears have no bias, vidprune's have one at zero
    added = 0
    for key in [k for k in out if re.match(r"^blocks\.\d+\.(temporal_)?attn\.qkv\.weight$", k)]:
        bias = key[: -len("weight")] + "bias"
        if bias not in out:
            out[bias] = torch.zeros(out[key].shape[0], dtype=out[key].dtype)
            added += 1
    if added:
        notes.append(f"the checkpoint's attention has no qkv biases: loaded zero biases in {added} attentions")
    return out, notes


def _resize_positions(state: dict, model: TimeSformer, notes: list[str]) -> None:
    spatial, ours = state.get(_SPATIAL), model.pos_embed
    if spatial is not None and spatial.dim() == 3 and spatial.shape != ours.shape and spatial.shape[-1] == ours.shape[-1]:
        n, d = spatial.shape[1] - 1, spatial.shape[-1]
        source, side = math.isqrt(n), model.info.grid[1]
        if source * source != n:
            raise VidpruneError(f"the checkpoint's TimeSformer position table has {n + 1} rows, not a class token "
                                "plus a square patch grid: it cannot be resized. Build the model at its --size.")
        grid = spatial[:, 1:].transpose(1, 2).reshape(1, d, source, source).float()
        grid = F.interpolate(grid, size=(side, side), mode="nearest").flatten(2).transpose(1, 2).to(spatial.dtype)
        state[_SPATIAL] = torch.cat([spatial[:, :1], grid], dim=1)
        notes.append(f"resized the spatial position table from {source}x{source} to {side}x{side} patches "
                     "(nearest, as TimeSformer does; class token kept)")
    temporal, frames = state.get(_TEMPORAL), model.info.frames
    if temporal is not None and temporal.dim() == 3 and temporal.shape[1] != frames \
            and temporal.shape[-1] == model.time_embed.shape[-1]:
        resized = F.interpolate(temporal.transpose(1, 2).float(), size=frames, mode="nearest")
        state[_TEMPORAL] = resized.transpose(1, 2).to(temporal.dtype)
        notes.append(f"resized the temporal position table from {temporal.shape[1]} to {frames} frames (nearest, "
                     "as TimeSformer does)")


def _drop_joint_blocks(state: dict, model: TimeSformer, notes: list[str]) -> None:
    joint = [i for i, block in enumerate(model.blocks) if not block.divided]
    dropped = [k for k in state for i in joint if k.startswith(tuple(f"blocks.{i}.{p}" for p in _TEMPORAL_PARTS))]
    for key in dropped:
        state.pop(key)
    if dropped:
        notes.append(f"left out the temporal attention of blocks {joint[0] + 1}-{joint[-1] + 1}, which the method "
                     "in place runs as joint space-time blocks")


def _fit(state: dict, model: nn.Module, meta: dict, notes: list[str]) -> None:
    if not isinstance(model, TimeSformer):
        return
    _resize_positions(state, model, notes)
    _drop_joint_blocks(state, model, notes)
    config = transformers_config(meta)
    if config is not None:
        if config.get("hidden_act", "gelu") != "gelu":
            raise VidpruneError(f"the checkpoint's config.json has hidden_act '{config['hidden_act']}': not supported "
                                "(vidprune's TimeSformer blocks use the exact GELU).")
        eps = float(config.get("layer_norm_eps", _TIMESFORMER_CONFIG["layer_norm_eps"]))
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = eps


_GEOMETRY = (_SPATIAL, _TEMPORAL)
register_layout(CheckpointLayout(
    "timesformer", "timesformer", "official TimeSformer .pyth (model_state, model.*; also vidprune's own checkpoints)",
    _is_timesformer, _convert_timesformer, fit=_fit, geometry_keys=_GEOMETRY))
register_layout(CheckpointLayout(
    "hf-timesformer", "timesformer", "Hugging Face transformers TimesformerForVideoClassification / TimesformerModel",
    _is_hf_timesformer, _convert_hf_timesformer, fit=_fit, geometry_keys=_GEOMETRY))


# ------------------------------------------------------------------------------------------ hub configs

# transformers' TimesformerConfig defaults (a config.json may leave out what it does not change)
_TIMESFORMER_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           hidden_act="gelu", image_size=224, patch_size=16, num_channels=3, num_frames=8,
                           layer_norm_eps=1e-6, attention_type="divided_space_time")


def _timesformer_arguments(config: dict) -> dict:
    c = {**_TIMESFORMER_CONFIG, **config}
    if c["attention_type"] != "divided_space_time":
        raise VidpruneError(f"not supported: attention_type '{c['attention_type']}' (vidprune's TimeSformer is the "
                            "divided space-time one)")
    if c["hidden_act"] != "gelu":
        raise VidpruneError(f"not supported: hidden_act '{c['hidden_act']}' (vidprune's TimeSformer blocks use the "
                            "exact GELU)")
    if int(c["num_channels"]) != 3:
        raise VidpruneError(f"not supported: {c['num_channels']} input channels (vidprune's backbones take RGB)")
    dim = int(c["hidden_size"])
    return dict(dim=dim, depth=int(c["num_hidden_layers"]), heads=int(c["num_attention_heads"]),
                mlp_ratio=mlp_ratio(dim, int(c["intermediate_size"])), frames=int(c["num_frames"]),
                size=square(c["image_size"], "image_size"), patch=square(c["patch_size"], "patch_size"))


register_hub_architecture(HubArchitecture("timesformer", "TimeSformer", ("timesformer",), TimeSformer,
                                          _timesformer_arguments))
