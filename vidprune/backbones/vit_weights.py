"""Pretrained weights for the joint space-time ViT (vit.py): the VideoMAE / VideoMAEv2 official layout
(also vidprune's own checkpoints) and Hugging Face transformers' VideoMAE, plus learned position tables.

Each layout renames and reshapes a checkpoint's tensors into VideoViT's own names; vidprune.checkpoints
checks names and shapes and loads them. The registry imports this module with the backbone files, which
registers the layouts.

Position tables: VideoViT uses a fixed 1-D sinusoid table over the flattened token index, rebuilt for
whatever grid the model is created with (exactly what VideoMAE does at another input size), so a
checkpoint carries nothing to resize. A checkpoint with a *learned* table (`pos_embed` that is not the
sinusoid) has it interpolated to the model's grid (bicubic in space per time slice, then linear in time)
and written over the model's table.

Hub configs (vidprune.hub): a transformers VideoMAE config.json (model_type 'videomae') and OpenGVLab's
VideoMAEv2 ones ('VideoMAEv2_*', settings under model_config) give VideoViT's width, depth, heads, MLP
width, tubelet, patch, frames and size; a transformers VideoMAE loads with its config's layer-norm eps.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.backbones.vit import VideoViT, sinusoid_table
from vidprune.checkpoints import CheckpointLayout, hf_config, register_layout
from vidprune.errors import VidpruneError
from vidprune.hub import HubArchitecture, mlp_ratio, register_hub_architecture, square, transformers_config

# VideoViT's position table: a non-persistent buffer, so it is loaded apart from the state dict.
_POSITIONS = "pos_embed"


def _fold_qv_bias(q_bias: torch.Tensor, v_bias: torch.Tensor) -> torch.Tensor:
    """VideoMAE / BEiT learn q and v biases only; the key bias is fixed at zero (it cancels in softmax)."""
    return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])


_PRETRAIN_ONLY = re.compile(r"^(decoder\.|decoder_|encoder_to_decoder|mask_token|videomae\.decoder|decoder$)")


def _drop_pretraining(state: dict, notes: list[str]) -> dict:
    dropped = [k for k in state if _PRETRAIN_ONLY.match(k)]
    if dropped:
        notes.append(f"ignored {len(dropped)} pre-training decoder tensors (encoder weights only)")
    return {k: v for k, v in state.items() if k not in dropped}


def _final_norm(state: dict, name: str, notes: list[str]) -> dict:
    """A checkpoint without fc_norm normalises every token before pooling (`norm` / `layernorm`); ours
    normalises the pooled feature. Loading one into the other is the only place to put it, and not exact."""
    if f"{name}.weight" in state and "fc_norm.weight" not in state:
        state["fc_norm.weight"] = state.pop(f"{name}.weight")
        state["fc_norm.bias"] = state.pop(f"{name}.bias")
        notes.append(f"loaded the checkpoint's per-token '{name}' into fc_norm, which vidprune applies after mean "
                     "pooling: not identical (fine-tune before trusting accuracy)")
    return state


def _has_temporal_attention(state: dict) -> bool:
    """TimeSformer's divided blocks (official or transformers' names): not a joint ViT, whatever else matches."""
    return any(re.search(r"(^|\.)(temporal_attn|temporal_attention|time_embed|time_embeddings)(\.|$)", k) for k in state)


def _is_videomae(state: dict) -> bool:
    return (any(re.match(r"^(encoder\.)?(blocks\.\d+\.attn\.|patch_embed\.proj\.)", k) for k in state)
            and not _has_temporal_attention(state))


def _convert_videomae(state: dict) -> tuple[dict, list[str]]:
    notes: list[str] = []
    state = _drop_pretraining(dict(state), notes)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state.items()}
        notes.append("stripped the pre-training 'encoder.' prefix")
    folded = 0
    for key in [k for k in state if k.endswith(".attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        v_key = prefix + "v_bias"
        if v_key not in state:
            raise VidpruneError(f"checkpoint has {key} but no {v_key}: q and v biases come in pairs.")
        state[prefix + "qkv.bias"] = _fold_qv_bias(state.pop(key), state.pop(v_key))
        folded += 1
    if folded:
        notes.append(f"folded separate q/v biases into qkv.bias (zero k bias) in {folded} blocks")
    state = _final_norm(state, "norm", notes)
    return state, notes


_HF_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.position_embeddings$", _POSITIONS),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^classifier\.", "head."),
]


def _is_hf_videomae(state: dict) -> bool:
    return (any(re.match(r"^(videomae\.)?(embeddings\.patch_embeddings\.|encoder\.layer\.\d+\.)", k) for k in state)
            and not _has_temporal_attention(state))


def _convert_hf_videomae(state: dict) -> tuple[dict, list[str]]:
    notes: list[str] = []
    state = _drop_pretraining(dict(state), notes)
    state = {k[len("videomae."):] if k.startswith("videomae.") else k: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    attention: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value|q_bias|v_bias)(?:\.(weight|bias))?$", key)
        if m:
            part = m.group(2) if m.group(3) is None else f"{m.group(2)}.{m.group(3)}"
            attention.setdefault(int(m.group(1)), {})[part] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            new, n = re.subn(pattern, replacement, key)
            if n:
                out[new] = value
                break
        else:
            out[key] = value  # fc_norm, layernorm, or something unexpected that the check below reports
    for layer, parts in sorted(attention.items()):
        names = ("query.weight", "key.weight", "value.weight")
        missing = [n for n in names if n not in parts]
        if missing:
            raise VidpruneError(f"layer {layer} of the checkpoint lacks attention.attention.{missing[0]}.")
        out[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([parts[n] for n in names])
        if "q_bias" in parts and "v_bias" in parts:
            out[f"blocks.{layer}.attn.qkv.bias"] = _fold_qv_bias(parts["q_bias"], parts["v_bias"])
        elif all(f"{n}.bias" in parts for n in ("query", "key", "value")):
            out[f"blocks.{layer}.attn.qkv.bias"] = torch.cat([parts[f"{n}.bias"] for n in ("query", "key", "value")])
        elif not any("bias" in p for p in parts):
            out[f"blocks.{layer}.attn.qkv.bias"] = torch.zeros(parts["query.weight"].shape[0] * 3,
                                                              dtype=parts["query.weight"].dtype)
            if layer == 0:
                notes.append("the checkpoint's attention has no biases: loaded zero qkv biases")
        else:
            raise VidpruneError(f"layer {layer} of the checkpoint has an incomplete set of attention biases "
                                f"({', '.join(sorted(p for p in parts if 'bias' in p))}).")
    if attention:
        notes.append(f"concatenated query/key/value into qkv in {len(attention)} layers")
    out = _final_norm(out, "layernorm", notes)
    return out, notes


def resize_pos_table(table: torch.Tensor, source_grid: tuple[int, int, int],
                     target_grid: tuple[int, int, int]) -> torch.Tensor:
    """Learned (1, T*H*W, D) table from one token grid to another: bicubic in space per time slice, then
    linear in time (align_corners=False), the spatial step being what VideoMAE's fine-tuning script does."""
    t, h, w = source_grid
    nt, nh, nw = target_grid
    d = table.shape[-1]
    if table.shape[-2] != t * h * w:
        raise ValueError(f"table of {table.shape[-2]} positions is not a {t}x{h}x{w} grid")
    if (t, h, w) == (nt, nh, nw):
        return table
    x = table.reshape(t, h, w, d).permute(0, 3, 1, 2).float()  # (T, D, H, W)
    if (h, w) != (nh, nw):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False)
    if t != nt:
        x = x.permute(2, 3, 1, 0).reshape(nh * nw, d, t)  # (HW, D, T)
        x = F.interpolate(x, size=nt, mode="linear", align_corners=False)
        x = x.reshape(nh, nw, d, nt).permute(3, 2, 0, 1)
    return x.permute(0, 2, 3, 1).reshape(1, nt * nh * nw, d).to(table.dtype)


def _source_grid(n: int, target: tuple[int, int, int], meta: dict) -> tuple[int, int, int]:
    """The checkpoint's token grid: from its metadata when known, else the same number of time slices as
    the model with a square spatial grid (VideoMAE's assumption), else the model's spatial grid."""
    grid = meta.get("grid")
    config = hf_config(meta)
    if not grid and all(k in config for k in ("num_frames", "image_size", "tubelet_size", "patch_size")):
        side = int(config["image_size"]) // int(config["patch_size"])
        grid = (int(config["num_frames"]) // int(config["tubelet_size"]), side, side)
    if grid and math.prod(grid) == n:
        return tuple(int(g) for g in grid)
    t, h, w = target
    side = math.isqrt(n // t) if n % t == 0 else 0
    if side and side * side * t == n:
        return (t, side, side)
    if n % (h * w) == 0:
        return (n // (h * w), h, w)
    raise VidpruneError(f"cannot tell the token grid of the checkpoint's {n}-entry position table "
                        f"(the model's grid is {t}x{h}x{w}): build the model with the checkpoint's frames or "
                        "size, or keep its config.json beside it.")


def _load_pos_table(model: nn.Module, outside: dict, meta: dict, notes: list[str]) -> None:
    table = outside[_POSITIONS].detach().float()
    if table.dim() == 2:
        table = table.unsqueeze(0)
    n, d = table.shape[-2:]
    if torch.allclose(table, sinusoid_table(n, d), atol=1e-4):
        notes.append("the checkpoint's position table is the fixed sinusoid: the model's own table for its grid is used")
        return
    target = model.info.grid
    source = _source_grid(n, target, meta)
    resized = resize_pos_table(table, source, target)
    if source != tuple(target):
        notes.append(f"interpolated the learned position table from a {'x'.join(map(str, source))} to a "
                     f"{'x'.join(map(str, target))} token grid")
    else:
        notes.append("loaded the checkpoint's learned position table")
    model.pos_embed.data = resized.to(model.pos_embed.device, model.pos_embed.dtype)


def _fit_hf_videomae(state: dict, model: nn.Module, meta: dict, notes: list[str]) -> None:
    """A transformers VideoMAE normalises with its config's layer_norm_eps inside the blocks (1e-12 by
    default, where the official code uses 1e-6) and with nn.LayerNorm's default 1e-5 after mean pooling:
    the model follows, so its logits are transformers'. Only for a config.json transformers wrote."""
    config = transformers_config(meta)
    if config is None or not isinstance(model, VideoViT):
        return
    eps = float(config.get("layer_norm_eps", _VIDEOMAE_CONFIG["layer_norm_eps"]))
    for block in model.blocks:
        block.norm1.eps = block.norm2.eps = eps
    # with use_mean_pooling=false transformers normalises every token with `layernorm` (loaded into fc_norm)
    model.fc_norm.eps = 1e-5 if config.get("use_mean_pooling", True) else eps


register_layout(CheckpointLayout(
    "videomae", "vit", "VideoMAE / VideoMAEv2 official .pth (also vidprune's own checkpoints)",
    _is_videomae, _convert_videomae, geometry_keys=(_POSITIONS,), outside_keys=(_POSITIONS,),
    load_outside=_load_pos_table))
register_layout(CheckpointLayout(
    "hf-videomae", "vit", "Hugging Face transformers VideoMAE (safetensors or bin)",
    _is_hf_videomae, _convert_hf_videomae, fit=_fit_hf_videomae, geometry_keys=(_POSITIONS,),
    outside_keys=(_POSITIONS,), load_outside=_load_pos_table))


# ------------------------------------------------------------------------------------------ hub configs

# transformers' VideoMAEConfig defaults (a config.json may leave out what it does not change)
_VIDEOMAE_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        hidden_act="gelu", image_size=224, patch_size=16, num_channels=3, num_frames=16,
                        tubelet_size=2, layer_norm_eps=1e-12, use_mean_pooling=True)


def _videomae_arguments(config: dict) -> dict:
    c = {**_VIDEOMAE_CONFIG, **config}
    if c["hidden_act"] != "gelu":
        raise VidpruneError(f"not supported: hidden_act '{c['hidden_act']}' (vidprune's ViT blocks use the exact GELU)")
    if int(c["num_channels"]) != 3:
        raise VidpruneError(f"not supported: {c['num_channels']} input channels (vidprune's backbones take RGB)")
    dim = int(c["hidden_size"])
    return dict(dim=dim, depth=int(c["num_hidden_layers"]), heads=int(c["num_attention_heads"]),
                mlp_ratio=mlp_ratio(dim, int(c["intermediate_size"])), frames=int(c["num_frames"]),
                size=square(c["image_size"], "image_size"), tubelet=int(c["tubelet_size"]),
                patch=square(c["patch_size"], "patch_size"))


def _videomae_v2_arguments(config: dict) -> dict:
    """OpenGVLab's VideoMAEv2 repositories (remote code): the official encoder, its settings under model_config."""
    c = config.get("model_config")
    if not isinstance(c, dict):
        raise VidpruneError("not supported: a VideoMAEv2 config.json without its model_config")
    if c.get("cos_attn"):
        raise VidpruneError("not supported: cosine attention (cos_attn), which vidprune's ViT blocks do not compute")
    if float(c.get("init_values") or 0) > 0:
        raise VidpruneError("not supported: layer scale (init_values > 0), which vidprune's ViT blocks do not have")
    if int(c.get("in_chans", 3)) != 3:
        raise VidpruneError(f"not supported: {c['in_chans']} input channels (vidprune's backbones take RGB)")
    dim = int(c.get("embed_dim", 768))
    return dict(dim=dim, depth=int(c.get("depth", 12)), heads=int(c.get("num_heads", 12)),
                mlp_ratio=mlp_ratio(dim, round(dim * float(c.get("mlp_ratio", 4.0)))), frames=int(c.get("num_frames", 16)),
                size=square(c.get("img_size", 224), "img_size"), tubelet=int(c.get("tubelet_size", 2)),
                patch=square(c.get("patch_size", 16), "patch_size"))


register_hub_architecture(HubArchitecture("vit", "VideoMAE", ("videomae",), VideoViT, _videomae_arguments))
register_hub_architecture(HubArchitecture("vit", "VideoMAEv2", ("videomaev2*",), VideoViT, _videomae_v2_arguments))
