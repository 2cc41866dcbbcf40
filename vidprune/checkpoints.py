"""Load pretrained weights into vidprune backbones: VideoMAE / VideoMAEv2 official `.pth` files, Hugging
Face `transformers` VideoMAE files (safetensors or bin), CLIP image towers (OpenAI, open_clip, Hugging Face
CLIPModel) and vidprune's own training checkpoints.

A checkpoint layout is a (detect, convert) pair registered per backbone family, so a new family (CLIP,
TimeSformer, ...) plugs its layouts in with `register_layout` without touching this module's callers.
`convert` renames and reshapes tensors into the model's own state-dict names; the loader then checks
names and shapes and raises one `VidpruneError` listing missing, unexpected and mis-shaped tensors.

Position tables: the VideoMAE backbone uses a fixed 1-D sinusoid table over the flattened token index,
rebuilt for whatever grid the model is created with (exactly what VideoMAE does at another input size),
so a checkpoint carries nothing to resize. A checkpoint with a *learned* table (`pos_embed` that is not
the sinusoid) has it interpolated to the model's grid (bicubic in space per time slice, then linear in
time) and written over the model's table. CLIP's learned table (class token + patch grid) is resized in
2-D the way open_clip does it (bicubic, antialiased, class token kept).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.errors import VidpruneError

# Keys under which training scripts nest the weights, tried in this order (VideoMAE: model or module).
NESTING_KEYS = ("model", "module", "state_dict", "model_state_dict", "model_state")
# Prefixes that wrap a whole model: DDP's module., VideoMAE pre-training's encoder., timm/lightning's model.
_WRAPPING_PREFIXES = ("module.", "model.")
_SHOWN = 8  # names listed per category in a mismatch error


# ------------------------------------------------------------------------------------------ reading


@dataclass
class RawCheckpoint:
    state: dict[str, torch.Tensor]
    path: str = ""
    meta: dict = field(default_factory=dict)  # vidprune's own metadata, or a Hugging Face config.json


def _torch_load(path: Path, trust: bool) -> Any:
    with warnings.catch_warnings():
        # torch.load hands a TorchScript archive (OpenAI's CLIP release) to torch.jit.load with a warning;
        # with trust that is what the user asked for, without it the error below says more
        warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
        return _torch_load_quietly(path, trust)


def _torch_load_quietly(path: Path, trust: bool) -> Any:
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        # VideoMAE's training script stores its argparse.Namespace beside the weights: harmless, allow it.
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "TorchScript" in str(exc):
            raise VidpruneError(
                f"checkpoint '{path}' is a TorchScript archive (how OpenAI distributes CLIP). Reading one runs its "
                "code, so vidprune does it only with --trust-checkpoint; or save its state_dict() to a plain file."
            ) from None
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise VidpruneError(
                f"checkpoint '{path}' contains Python objects besides tensors, which vidprune does not unpickle "
                "by default (unpickling can run code). If you trust the file, pass --trust-checkpoint."
            ) from None
        raise VidpruneError(f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise VidpruneError(f"'{path}' is a safetensors file: pip install 'vidprune[hf]' (or safetensors).") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise VidpruneError(f"cannot read safetensors file '{path}': {type(exc).__name__}: {exc}") from None


def _resolve_file(path: Path) -> Path:
    """A Hugging Face model folder holds model.safetensors or pytorch_model.bin."""
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise VidpruneError(f"folder '{path}' has neither model.safetensors nor pytorch_model.bin. "
                            "Pass the checkpoint file itself.")
    if not path.is_file():
        raise VidpruneError(f"checkpoint '{path}' does not exist. Check the path passed to --checkpoint.")
    return path


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], Any]:
    """Descend through model / module / state_dict nesting to the tensors; returns (state, top-level dict)."""
    top = obj
    for _ in range(4):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _strip_wrapping(dict(obj)), top
        nested = next((obj[k] for k in NESTING_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
        if nested is None:
            break
        obj = nested
    keys = ", ".join(list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
    raise VidpruneError(f"{where} holds no state dict: expected tensors, possibly under one of "
                        f"{', '.join(NESTING_KEYS)}; found {keys}.")


def _strip_wrapping(state: dict) -> dict:
    for prefix in _WRAPPING_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_checkpoint(source: str | Path | dict, trust: bool = False) -> RawCheckpoint:
    """Tensors of a checkpoint file (.pth/.pt/.bin/.safetensors or a Hugging Face folder) or an in-memory dict."""
    if isinstance(source, dict):
        state, top = unwrap_state_dict(source)
        meta = top.get("vidprune", {}) if isinstance(top, dict) else {}
        return RawCheckpoint(state, "", dict(meta))
    path = _resolve_file(Path(source))
    if path.suffix == ".safetensors":
        state, top = _load_safetensors(path), {}
    else:
        state, top = unwrap_state_dict(_torch_load(path, trust), f"checkpoint '{path}'")
    meta: dict = dict(top.get("vidprune", {})) if isinstance(top, dict) else {}
    config = path.parent / "config.json"
    if not meta and config.is_file():
        try:
            meta = {"hf_config": json.loads(config.read_text())}
        except (OSError, json.JSONDecodeError):
            meta = {}
    return RawCheckpoint(state, str(path), meta)


# ------------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    family: str
    description: str
    detect: Callable[[dict], bool]
    # state -> (state with the model's own names, notes). ViT position tables are left under `pos_embed`.
    convert: Callable[[dict], tuple[dict, list[str]]]
    # (converted state, model, checkpoint metadata, notes): fits the state to the model's input geometry in
    # place (a position table for another size) and the model to what the metadata says (CLIP's activation),
    # before names and shapes are checked.
    fit: Optional[Callable[[dict, nn.Module, dict, list], None]] = None
    # Converted tensors whose shape follows the input size rather than the architecture: ignored when
    # inferring the backbone, so a checkpoint trained at another resolution still names its backbone.
    geometry_keys: tuple[str, ...] = ("pos_embed",)


_LAYOUTS: dict[str, list[CheckpointLayout]] = {}


def register_layout(layout: CheckpointLayout) -> None:
    """Add a layout for a backbone family; layouts are tried in registration order."""
    existing = _LAYOUTS.setdefault(layout.family, [])
    if any(l.name == layout.name for l in existing):
        raise ValueError(f"layout {layout.name!r} registered twice for family {layout.family!r}")
    existing.append(layout)


def layouts(family: str) -> list[CheckpointLayout]:
    return list(_LAYOUTS.get(family, []))


def detect_layout(state: dict, family: str) -> CheckpointLayout:
    for layout in layouts(family):
        if layout.detect(state):
            return layout
    known = ", ".join(l.name for l in layouts(family)) or "none"
    sample = ", ".join(list(state)[:6])
    raise VidpruneError(
        f"checkpoint layout not recognised for a '{family}' backbone (known layouts: {known}); its first "
        f"tensors are: {sample}. Convert it to one of those layouts, or register a layout in "
        "vidprune/checkpoints.py."
    )


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


def _is_videomae(state: dict) -> bool:
    return any(re.match(r"^(encoder\.)?(blocks\.\d+\.attn\.|patch_embed\.proj\.)", k) for k in state)


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
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^classifier\.", "head."),
]


def _is_hf_videomae(state: dict) -> bool:
    return any(re.match(r"^(videomae\.)?(embeddings\.patch_embeddings\.|encoder\.layer\.\d+\.)", k) for k in state)


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


register_layout(CheckpointLayout(
    "videomae", "vit", "VideoMAE / VideoMAEv2 official .pth (also vidprune's own checkpoints)",
    _is_videomae, _convert_videomae))
register_layout(CheckpointLayout(
    "hf-videomae", "vit", "Hugging Face transformers VideoMAE (safetensors or bin)",
    _is_hf_videomae, _convert_hf_videomae))


# ------------------------------------------------------------------------------------------ CLIP

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


def _convert_openai_clip(state: dict) -> tuple[dict, list[str]]:
    from vidprune.backbones.clip import openai_to_vidprune

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
    return any(re.match(r"^vision_model\.(embeddings\.patch_embedding\.|encoder\.layers\.\d+\.)", k) for k in state)


def _convert_hf_clip(state: dict) -> tuple[dict, list[str]]:
    notes: list[str] = []
    state = _drop_text_tower(dict(state), _HF_CLIP_TEXT_TOWER, notes)
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
    if "visual.proj" not in out:
        raise VidpruneError("the checkpoint has no visual_projection.weight (a bare CLIPVisionModel): vidprune's CLIP "
                            "backbone ends in CLIP's projection to the joint embedding. Use CLIPModel or "
                            "CLIPVisionModelWithProjection weights.")
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


def _clip_config(meta: dict) -> dict:
    """The vision part of a Hugging Face config.json (CLIPModel nests it under vision_config)."""
    config = meta.get("hf_config") or {}
    return config.get("vision_config") or config


def _fit_clip(state: dict, model: nn.Module, meta: dict, notes: list[str], *, default_activation: Optional[str]) -> None:
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
    activation = meta.get("activation") or _clip_config(meta).get("hidden_act") or default_activation
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


# ------------------------------------------------------------------------------------ position tables


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
    config = meta.get("hf_config") or {}
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


def _load_pos_table(model: nn.Module, table: torch.Tensor, meta: dict, notes: list[str]) -> None:
    from vidprune.backbones.vit import sinusoid_table

    table = table.detach().float()
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


# ------------------------------------------------------------------------------------------ loading


@dataclass
class LoadReport:
    layout: str
    path: str
    loaded: int
    notes: list[str]
    head_loaded: bool
    classes: Optional[int]

    def summary(self) -> str:
        head = "with its classifier" if self.head_loaded else "classifier left at its initialisation"
        return f"loaded {self.loaded} tensors ({self.layout} layout, {head})"


def _names(keys, limit: int = _SHOWN) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def checkpoint_classes(state: dict, family: str = "vit") -> Optional[int]:
    """Number of classes of the checkpoint's classifier, or None when it has none."""
    converted, _ = detect_layout(state, family).convert(state)
    weight = converted.get("head.weight")
    return int(weight.shape[0]) if weight is not None else None


def load_checkpoint(model: nn.Module, source: str | Path | dict | RawCheckpoint, *, head: str = "require",
                    trust: bool = False) -> LoadReport:
    """Load `source` into `model` in place.

    head: "require" (evaluation: a checkpoint without a classifier is an error), or "optional" (fine-tuning
    a pre-trained encoder: the classifier keeps its initialisation when the checkpoint has none or has a
    different number of classes).
    """
    if head not in ("require", "optional"):
        raise ValueError("head must be 'require' or 'optional'")
    raw = source if isinstance(source, RawCheckpoint) else read_checkpoint(source, trust=trust)
    family = getattr(getattr(model, "info", None), "family", None) or getattr(model, "family", "")
    layout = detect_layout(raw.state, family)
    state, notes = layout.convert(raw.state)
    notes = list(notes)
    if layout.fit is not None:
        layout.fit(state, model, raw.meta, notes)
    table = state.pop("pos_embed", None)
    if raw.meta.get("hf_config"):
        _check_hf_config(model, raw.meta["hf_config"])

    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("method.")}
    method_keys = {k for k in state if k.startswith("method.")}
    provided = {k for k in state if not k.startswith("method.")}
    missing = set(expected) - provided
    unexpected = provided - set(expected)
    method_expected = {k for k in model.state_dict() if k.startswith("method.")}
    if method_keys - method_expected:
        # trained with a method that has parameters (a learned scorer): not part of this model's method
        notes.append(f"ignored {len(method_keys - method_expected)} tensors of a method this model does not use "
                     "(method_state() returns them for that method)")
        for key in method_keys - method_expected:
            state.pop(key)
    shapes = {k for k in provided & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)}
    # Parts a pre-trained encoder lacks and fine-tuning starts from scratch: the classifier, and for some
    # families more (CLIP: the temporal fusion head).
    head_prefixes = tuple(getattr(model, "checkpoint_head_prefixes", ("head.",)))
    head_keys = {k for k in expected if k.startswith(head_prefixes)}
    head_ok = head_keys <= provided and not (head_keys & shapes)
    body_fits = not (missing - head_keys) and not unexpected and not (shapes - head_keys)
    ckpt_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else None
    model_classes = int(expected["head.weight"].shape[0]) if "head.weight" in expected else None
    other_classes = ("head.weight" in shapes and ckpt_classes != model_classes
                     and state["head.weight"].shape[1:] == expected["head.weight"].shape[1:])
    if head == "optional" and body_fits and not head_ok:
        for prefix in head_prefixes:
            group = {k for k in head_keys if k.startswith(prefix)}
            if not group or (group <= provided and not group & shapes):
                continue  # this part is complete in the checkpoint: keep it
            if prefix == "head." and other_classes:
                notes.append(f"the checkpoint's classifier has {ckpt_classes} classes, the model {model_classes}: "
                             "classifier left at its initialisation")
            elif prefix == "head.":
                notes.append("the checkpoint has no classifier: classifier left at its initialisation")
            else:
                notes.append(f"the checkpoint has no {prefix.rstrip('.')} weights: left at their initialisation")
            for k in group:
                state.pop(k, None)
            missing -= group
            shapes -= group
    elif head == "require" and body_fits and other_classes:
        raise VidpruneError(
            f"the checkpoint's classifier has {ckpt_classes} classes but the model has {model_classes}: pass "
            f"--classes {ckpt_classes} (evaluation needs the checkpoint's own classifier)."
        )
    elif head == "require" and body_fits and head_keys and head_keys <= missing:
        raise VidpruneError(
            f"checkpoint {raw.path or ''} has no classifier ({', '.join(sorted(head_keys))}): it is a pre-trained "
            "encoder. Fine-tune it first (vidprune train --checkpoint ...) or pass a fine-tuned checkpoint."
        )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
        if shapes:
            parts.append("wrong shape: " + _names(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                                                   for k in shapes))
        name = getattr(model, "backbone_name", type(model).__name__)
        raise VidpruneError(
            f"checkpoint {raw.path or '(in memory)'} ({layout.name} layout) does not fit backbone '{name}': "
            + "; ".join(parts) + ". Pick the backbone the checkpoint was trained as (e.g. --backbone "
            + {"clip": "clip-b16"}.get(family, "vit-b") + ")."
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
        if table is not None:
            _load_pos_table(model, table, raw.meta, notes)
    if method_expected and not (method_keys & method_expected):
        notes.append("the checkpoint has no weights for the method's own parameters: they keep their initialisation")
    classes = int(state["head.weight"].shape[0]) if "head.weight" in state else None
    classifier = {k for k in expected if k.startswith("head.")}
    head_loaded = bool(classifier) and classifier <= set(state)
    return LoadReport(layout.name, raw.path, len(state), notes, head_loaded, classes)


def method_state(source: str | Path | dict | RawCheckpoint, trust: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's weights for a method's own parameters (saved under `method.` by `vidprune train`),
    with the prefix removed, for `method.load_state_dict`."""
    raw = source if isinstance(source, RawCheckpoint) else read_checkpoint(source, trust=trust)
    return {k[len("method."):]: v for k, v in raw.state.items() if k.startswith("method.")}


def restore_method_state(raw: RawCheckpoint, method: nn.Module) -> bool:
    """Give `method` the parameters it was trained with (a learned scorer, FFRes, ...) when `raw` is a
    `vidprune train` checkpoint of the same method; True when something was loaded."""
    if raw.meta.get("method") != getattr(method, "name", None) or not any(True for _ in method.parameters()):
        return False
    learned = method_state(raw)
    if learned:
        method.load_state_dict(learned, strict=False)
    return bool(learned)


def _check_hf_config(model: nn.Module, config: dict) -> None:
    """Head count and patch geometry are not visible in the weights: check them against config.json."""
    config = config.get("vision_config") or config  # CLIPModel nests the image tower's settings
    info = model.info
    checks = [("num_attention_heads", info.heads, "heads"), ("tubelet_size", info.tubelet, "tubelet"),
              ("patch_size", info.patch, "patch size")]
    for key, ours, what in checks:
        if key in config and int(config[key]) != int(ours):
            raise VidpruneError(f"the checkpoint's config.json has {key}={config[key]} but the backbone has {ours} "
                                f"{what}: pick a backbone with the same {what}.")


def infer_backbone(state: dict, family: str = "vit") -> Optional[str]:
    """The registered backbone of `family` whose tensors have the checkpoint's shapes (built on the meta
    device, so trying vit-l costs nothing), or None."""
    from vidprune import registry

    layout = detect_layout(state, family)
    converted, _ = layout.convert(state)
    for key in layout.geometry_keys:
        converted.pop(key, None)
    for name, spec in registry.backbones().items():
        if spec.family != family:
            continue
        try:
            with torch.device("meta"):
                candidate = spec.build(classes=1, **spec.defaults)
        except Exception:  # a backbone that cannot build on meta is simply not a candidate
            continue
        ours = {k: v.shape for k, v in candidate.state_dict().items()
                if not k.startswith(("head.", "method.")) and k not in layout.geometry_keys}
        theirs = {k: v.shape for k, v in converted.items() if not k.startswith(("head.", "method."))}
        if ours == theirs:
            return name
    return None
