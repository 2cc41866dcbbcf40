"""Frame-level CLIP image encoders (ViT-B/32, ViT-B/16) with a temporal head, as ActionCLIP builds them.

Every frame of the clip is encoded on its own by CLIP's image tower (patch conv, class token, learned
positions, ln_pre, pre-norm blocks with QuickGELU, ln_post on the class token, projection to E = 512).
The per-frame features then meet only in the temporal head: mean pooling (ActionCLIP's "meanP") or
ActionCLIP's "Transf" head (learned frame positions, a 6-layer transformer of width E, a residual, then
the mean). A linear classifier over E stands in for matching against cached class-prompt embeddings
(the same classes x E multiply-accumulates).

Module names follow OpenAI CLIP (`visual.conv1`, `visual.class_embedding`, `visual.positional_embedding`,
`visual.ln_pre`, `visual.transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}`,
`visual.ln_post`, `visual.proj`) and ActionCLIP (`fusion_model.frame_position_embeddings`,
`fusion_model.transformer.resblocks.N`). The one difference is the attention input projection: CLIP keeps
it as the raw parameters `attn.in_proj_weight` / `attn.in_proj_bias` of `nn.MultiheadAttention`; here it
is one qkv `nn.Linear` named `attn.in_proj` (the fused `nn.MultiheadAttention` fast path is invisible to
FLOP counters). `clip_weights.py` beside this file loads OpenAI, open_clip and Hugging Face CLIP files into
these names (`openai_to_vidprune`; text tower ignored, position table resized).

Frame methods (SLLM) decide which frames reach the image encoder and what the head sees instead of the
others, through the frame hooks of `TokenMethod` (defaults: every frame, features as they are):
  * `encoded_frames(frames) -> tuple[int, ...]`: 0-based indices of the frames to encode;
  * `complete_frames(features) -> (features, frame_index)`: from the (B, K, E) features of the encoded
    frames, the (B, n, E) features the temporal head sees and the (n,) frame index of each;
  * `forward_stats() -> dict`: counts for the result row.
Token methods see the usual insertion points of the shared block loop (`backbones/blocks.py`) inside the
image encoder, once per encoded frame (the batch of the TokenState is batch x encoded frames; its grid is
one frame's (1, H', W') with the class token protected).

`last_trace`: tokens entering each image-encoder block, summed over the encoded frames of one clip (so
8 encoded ViT-B/32 frames give 8 x 50 = 400 per block). `last_stats`: `frames_encoded` (frames that went
through the image encoder), `frames_restored` (features a frame method produced instead), `frames_to_head`
(features the temporal head pooled), plus what the method adds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from vidprune.backbones.base import BackboneInfo, VideoBackbone
from vidprune.backbones.blocks import AttentionTap, MultiHeadAttention, run_blocks
from vidprune.backbones.vit import check_input, check_input_geometry
from vidprune.errors import VidpruneError
from vidprune.registry import register_backbone, register_family
from vidprune.tokens import TokenState

# ActionCLIP sizes its frame-position table by CLIP's text context length.
FRAME_POSITIONS = 77


@dataclass(frozen=True)
class FrameBackboneInfo(BackboneInfo):
    """BackboneInfo plus the width of the per-frame feature a frame method works on."""

    embed_dim: int = 512


class QuickGELU(nn.Module):
    """CLIP's activation; elementwise, so it adds no counted FLOPs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# OpenAI's CLIP was trained with QuickGELU; open_clip's own (non-OpenAI) ViTs and some Hugging Face CLIP
# models with the exact GELU. The weights look the same either way, so the loader sets it from what the
# checkpoint says (Hugging Face `hidden_act`); the names are transformers' `hidden_act` values.
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class Attention(MultiHeadAttention):
    """CLIP's multi-head self-attention with its one input projection as a qkv linear (`in_proj`, `out_proj`)."""

    def __init__(self, dim: int, heads: int, attention: str = "sdpa"):
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        super().__init__(dim, heads, attention)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.in_proj(x)

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(x)


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), MLP ratio 4 with QuickGELU."""

    def __init__(self, dim: int, heads: int, attention: str = "sdpa", activation: str = "quick_gelu"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attention)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(dim, 4 * dim)), ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", nn.Linear(4 * dim, dim)),
        ]))

    def attend(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None, return_probs: bool = False,
               tap: Optional[AttentionTap] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        out, probs = self.attn(self.ln_1(x), bias, return_probs, tap)
        return x + out, probs

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The block without a method (text tower, temporal head, SLLM's FFRes); `mask` as `attend`'s bias."""
        return self.feed_forward(self.attend(x, mask)[0])


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attention: str = "sdpa"):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, attention) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower for one frame: (N, 3, H, W) images -> (N, E) features."""

    def __init__(self, size: int, patch: int, width: int, layers: int, heads: int, output_dim: int,
                 attention: str = "sdpa"):
        super().__init__()
        scale = width ** -0.5
        self.patch = patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, attention)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The frame feature: ln_post on the class token, projected to E."""
        return self.ln_post(x[:, 0]) @ self.proj


class MeanHead(nn.Module):
    """ActionCLIP's "meanP": the mean of the frame features."""

    def forward(self, features: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=1)


class TemporalTransformerHead(nn.Module):
    """ActionCLIP's "Transf" fusion: frame positions, a transformer over the frames, a residual, the mean.

    Frame positions are looked up by each feature's original frame index, so a head that sees only some
    frames (SLLM without restoration) still places them in time.
    """

    def __init__(self, width: int, layers: int = 6, attention: str = "sdpa"):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(FRAME_POSITIONS, width)
        self.transformer = Transformer(width, layers, max(1, width // 64), attention)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.02)

    def forward(self, features: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        x = features + self.frame_position_embeddings(frame_index).to(features.dtype)
        return (self.transformer(x) + features).mean(dim=1)


class CLIPVideo(VideoBackbone):
    """Frame-level CLIP video model: image tower per frame, frame method, temporal head, classifier."""

    family = "clip"
    # What a pre-trained CLIP image tower does not contain, so that `vidprune train --checkpoint` starts
    # them from their initialisation (vidprune.checkpoints.load_checkpoint): the classifier and ActionCLIP's fusion head.
    checkpoint_head_prefixes = ("head.", "fusion_model.")

    def __init__(self, width: int, layers: int, heads: int, patch: int, embed_dim: int = 512,
                 frames: int = 8, size: int = 224, classes: int = 400, attention: str = "sdpa",
                 temporal: str = "mean", temporal_layers: int = 6):
        super().__init__()
        if frames < 1:
            raise VidpruneError(f"--frames must be at least 1, got {frames}.")
        check_input_geometry(frames, size, 1, patch)
        if temporal not in ("mean", "transformer"):
            raise ValueError("temporal must be 'mean' or 'transformer'")
        if temporal == "transformer" and frames > FRAME_POSITIONS:
            raise VidpruneError(
                f"--frames {frames} exceeds the {FRAME_POSITIONS} frame positions of the temporal transformer "
                f"head. Use at most {FRAME_POSITIONS} frames or a mean-pooling backbone."
            )
        side = size // patch
        self.info = FrameBackboneInfo(self.family, layers, width, heads, frames, size, (frames, side, side),
                                      n_prefix=1, tubelet=1, patch=patch, embed_dim=embed_dim)
        self.visual = VisionTransformer(size, patch, width, layers, heads, embed_dim, attention)
        self.fusion_model = MeanHead() if temporal == "mean" else TemporalTransformerHead(
            embed_dim, temporal_layers, attention)
        self.temporal = temporal
        self.head = nn.Linear(embed_dim, classes)

    @property
    def activation(self) -> str:
        """The image tower's MLP activation: 'quick_gelu' (OpenAI CLIP, the default) or 'gelu'."""
        act = self.visual.transformer.resblocks[0].mlp.gelu if self.info.depth else None
        return next((name for name, cls in ACTIVATIONS.items() if type(act) is cls), "quick_gelu")

    def set_activation(self, name: str) -> None:
        """Use `name` ('quick_gelu' or 'gelu') in every image-tower MLP, to match the loaded weights."""
        if name not in ACTIVATIONS:
            raise VidpruneError(f"CLIP activation '{name}' is not supported (supported: {', '.join(ACTIVATIONS)}): "
                                "vidprune's CLIP image tower cannot reproduce these weights.")
        for block in self.visual.transformer.resblocks:
            block.mlp.gelu = ACTIVATIONS[name]()

    def encode_frames(self, video: torch.Tensor, frames: tuple[int, ...]) -> torch.Tensor:
        """(B, len(frames), E) image-encoder features of the given 0-based frames of each clip."""
        features, _ = self._encode(video, frames)
        return features

    def _encode(self, video: torch.Tensor, frames: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
        b = video.shape[0]
        k = len(frames)
        if k != video.shape[2]:
            index = torch.as_tensor(frames, device=video.device, dtype=torch.long)
            video = video.index_select(2, index)
        channels, height, width = video.shape[1], video.shape[3], video.shape[4]
        images = video.transpose(1, 2).reshape(b * k, channels, height, width)
        x = self.visual.embed(images)
        side = self.info.grid[1]
        pos = torch.arange(-1, side * side, device=x.device).unsqueeze(0).expand(b * k, -1)
        state = TokenState(x=x, pos=pos, grid=(1, side, side), n_protected=1)
        state = self.method.begin_forward(state)
        trace: list[int] = []
        # the batch is clips x encoded frames: a clip's tokens are a sequence's times the encoded frames
        state = run_blocks(self.visual.transformer.resblocks, state, self.method, trace,
                           clip_tokens=lambda tokens: tokens * k)
        return self.visual.head(state.x).reshape(b, k, -1), trace

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, E) clip feature: encoded frames, completed by the frame method, pooled over time."""
        check_input(video, self.input_shape())
        encoded = tuple(self.method.encoded_frames(self.info.frames))
        features, trace = self._encode(video, encoded)
        features, frame_index = self.method.complete_frames(features)
        self.last_trace = trace
        stats = {"frames_encoded": len(encoded), "frames_restored": 0, "frames_to_head": int(features.shape[1])}
        stats.update(self.method.forward_stats())
        self.last_stats = stats
        return self.fusion_model(features, frame_index)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video))


class CLIPTextEncoder(nn.Module):
    """CLIP's text tower (causal transformer over 77 tokens, feature at the end-of-text token).

    Not part of the video model: ActionCLIP-style papers add one label prompt per video to their GFLOPs,
    so this module measures that fixed part (docs/methods/sllm.md). `make_input` gives token ids, so
    `vidprune.measure.flops.count_flops` counts it like any model.
    """

    def __init__(self, width: int = 512, layers: int = 12, heads: int = 8, embed_dim: int = 512,
                 context_length: int = 77, vocab_size: int = 49408, attention: str = "sdpa"):
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.transformer = Transformer(width, layers, heads, attention)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width ** -0.5)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def make_input(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Token ids of `batch` prompts; the largest id marks the end of text, as CLIP's tokenizer does."""
        tokens = torch.randint(1, self.vocab_size - 1, (batch, self.context_length), generator=generator)
        tokens[:, -1] = self.vocab_size - 1
        return tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, self.attn_mask.to(x.dtype)))
        end = tokens.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), end] @ self.text_projection


def _builder(width: int, layers: int, heads: int, patch: int, **fixed):
    def build(frames: int = 8, size: int = 224, classes: int = 400, attention: str = "sdpa", **kwargs) -> CLIPVideo:
        return CLIPVideo(width, layers, heads, patch, frames=frames, size=size, classes=classes,
                         attention=attention, **fixed, **kwargs)

    return build


# CLIP's own image statistics (OpenAI's preprocessing). Its checkpoint layouts are in clip_weights.py.
register_family("clip", normalization="clip", example_backbone="clip-b16")
register_backbone("clip-b32", "clip", _builder(768, 12, 12, 32),
                  "CLIP ViT-B/32 per frame (50 tokens, 768 wide, 12 blocks, 512-d) + mean pooling (ActionCLIP meanP)",
                  frames=8, size=224)
register_backbone("clip-b16", "clip", _builder(768, 12, 12, 16),
                  "CLIP ViT-B/16 per frame (197 tokens, 768 wide, 12 blocks, 512-d) + mean pooling (ActionCLIP meanP)",
                  frames=8, size=224)
register_backbone("clip-b32-transf", "clip", _builder(768, 12, 12, 32, temporal="transformer"),
                  "CLIP ViT-B/32 per frame + ActionCLIP's Transf head (6-layer temporal transformer, 512 wide)",
                  frames=8, size=224)
register_backbone("clip-b16-transf", "clip", _builder(768, 12, 12, 16, temporal="transformer"),
                  "CLIP ViT-B/16 per frame + ActionCLIP's Transf head (6-layer temporal transformer, 512 wide)",
                  frames=8, size=224)
# A small configuration for tests and quick demos: same code, narrow and shallow.
register_backbone("clip-tiny", "clip", _builder(192, 2, 3, 16, embed_dim=128),
                  "tiny frame-level CLIP (192 wide, 2 blocks, 16x16 patches, 128-d) + mean pooling, for tests",
                  tiny=True, frames=8, size=64)
