"""TimeSformer with divided space-time attention (Bertasius et al., ICML 2021), as its official code builds it.

Per-frame 16x16 patches (Conv2d), a class token, learnable spatial (`pos_embed`, CLS included) and
temporal (`time_embed`) position embeddings. Each divided block runs temporal attention over the T
tokens of one patch location (`temporal_norm1`, `temporal_attn`, `temporal_fc`), then spatial attention
over the patches of one frame plus a copy of the class token (`norm1`, `attn`), whose T outputs are
averaged back into the one class token, then the MLP on all tokens. Pooling: final `norm`, class token,
`head`. Module names follow the official code so its checkpoints map onto them.

Token order is frame-major (t, h, w), like vit.py, so TokenState positions mean the same in both families
(the official code keeps (h, w, t) order; attention is order-invariant, only the reshapes differ).

After a token-merging method has run, the tokens are no longer a frames x patches grid and divided
attention is undefined. A method that breaks the grid says after which block it does so
(`TokenMethod.grid_until_layer`, 1-based); `set_method` turns every later block into a joint space-time block that
runs its spatial attention weights (`attn`) over all tokens at once and carries no temporal parameters.
That is what STTM implies: "global self-attention ... on time and space dimensions in deep layers",
which "reduces the model's parameter count by 11.7%" (121.6M -> 107.4M = 6 blocks without temporal
attention, plus STTM's own parameters). See docs/methods/sttm.md.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import nn

from vidprune.backbones.base import BackboneInfo, VideoBackbone
from vidprune.backbones.blocks import Attention, AttentionTap, Mlp, run_blocks
from vidprune.backbones.vit import check_input, check_input_geometry
from vidprune.registry import register_backbone, register_family
from vidprune.tokens import TokenState


class PatchEmbed2D(nn.Module):
    def __init__(self, dim: int, patch: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T, N, D): every frame is patched on its own."""
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.proj(frames).flatten(2).transpose(1, 2)
        return x.reshape(b, t, x.shape[1], x.shape[2])


class DividedBlock(nn.Module):
    """Divided space-time block over `frames` frames; `make_joint()` turns it into a joint space-time block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: str, frames: int):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.frames = frames
        self.norm1 = norm(dim)
        self.attn = Attention(dim, heads, attention)
        self.temporal_norm1: Optional[nn.Module] = norm(dim)
        self.temporal_attn: Optional[nn.Module] = Attention(dim, heads, attention)
        self.temporal_fc: Optional[nn.Module] = nn.Linear(dim, dim)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    @property
    def divided(self) -> bool:
        return self.temporal_attn is not None

    def make_joint(self) -> None:
        self.temporal_norm1 = self.temporal_attn = self.temporal_fc = None

    def attend(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None, return_probs: bool = False,
               tap: Optional[AttentionTap] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The attention half of the block (residuals included); returns (x, spatial or joint probs).

        x: (B, 1 + T*n, D), class token first, patches frame-major. Probabilities (and `tap` chunks) of a
        divided block are the spatial attention's, batched over frames: (B*T, heads, 1 + n, 1 + n), the
        class-token copy of each frame first. An attention bias needs joint attention: a divided block has
        no N x N logits to add it to.
        """
        if not self.divided:
            out, probs = self.attn(self.norm1(x), bias, return_probs, tap)
            return x + out, probs
        if bias is not None:
            raise RuntimeError("a divided TimeSformer block has no N x N attention logits for an attention bias; "
                               "a method that biases attention must make the block joint (grid_until_layer)")
        frames = self.frames
        b, tokens, d = x.shape
        if (tokens - 1) % frames:
            raise RuntimeError(
                f"divided attention needs 1 + frames x patches tokens, got {tokens} for {frames} frames; "
                "a method that breaks the grid must declare grid_until_layer"
            )
        n = (tokens - 1) // frames
        cls, patches = x[:, :1], x[:, 1:]
        # temporal attention: the T tokens of each patch location attend to each other
        xt = patches.reshape(b, frames, n, d).transpose(1, 2).reshape(b * n, frames, d)
        res_t, _ = self.temporal_attn(self.temporal_norm1(xt))
        res_t = self.temporal_fc(res_t).reshape(b, n, frames, d).transpose(1, 2).reshape(b, frames * n, d)
        patches = patches + res_t
        # spatial attention: each frame's patches plus a copy of the class token
        xs = torch.cat([cls.expand(b, frames, d).reshape(b * frames, 1, d),
                        patches.reshape(b * frames, n, d)], dim=1)
        res_s, probs = self.attn(self.norm1(xs), return_probs=return_probs, tap=tap)
        cls_res = res_s[:, 0].reshape(b, frames, d).mean(dim=1, keepdim=True)
        res_s = res_s[:, 1:].reshape(b, frames * n, d)
        return torch.cat([cls, patches], dim=1) + torch.cat([cls_res, res_s], dim=1), probs

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(x))


class TimeSformer(VideoBackbone):
    family = "timesformer"

    def __init__(self, dim: int, depth: int, heads: int, frames: int = 8, size: int = 224, classes: int = 400,
                 patch: int = 16, mlp_ratio: float = 4.0, attention: str = "sdpa", in_chans: int = 3):
        super().__init__()
        check_input_geometry(frames, size, 1, patch)
        side = size // patch
        grid = (frames, side, side)
        self.info = BackboneInfo(self.family, depth, dim, heads, frames, size, grid, 1, 1, patch)
        self.patch_embed = PatchEmbed2D(dim, patch, in_chans)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + 1, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, frames, dim))
        self.blocks = nn.ModuleList(DividedBlock(dim, heads, mlp_ratio, attention, frames) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        for p in (self.cls_token, self.pos_embed, self.time_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def set_method(self, method: nn.Module) -> None:
        """Place `method`; blocks after its `grid_until_layer` become joint space-time blocks."""
        until = method.grid_until_layer
        until = self.info.depth if until is None else int(until)
        for i, blk in enumerate(self.blocks):
            if i < until and not blk.divided:
                raise ValueError(
                    f"block {i + 1} was already made joint by an earlier method; build a fresh model"
                )
            if i >= until and blk.divided:
                blk.make_joint()
        self.method = method

    def position_table(self) -> torch.Tensor:
        """(T*n, D) position embedding of every grid token, frame-major: spatial + temporal, as added in
        `embed` (what STTM aggregates as E; the class token's own embedding is not part of it)."""
        t, n = self.info.frames, self.info.tokens_per_slice
        return (self.pos_embed[0, 1:].unsqueeze(0) + self.time_embed[0].unsqueeze(1)).reshape(t * n, -1)

    def embed(self, video: torch.Tensor) -> TokenState:
        check_input(video, self.input_shape())
        x = self.patch_embed(video)  # (B, T, n, D)
        b, t, n, d = x.shape
        table = self.position_table().to(x.dtype)
        x = x.reshape(b, t * n, d) + table
        cls = (self.cls_token + self.pos_embed[:, :1]).to(x.dtype).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = torch.arange(-1, t * n, device=x.device).unsqueeze(0).expand(b, -1)
        return TokenState(x=x, pos=pos, grid=self.info.grid, n_protected=1, extras={"pos_table": table})

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        state = self.method.begin_forward(self.embed(video))
        trace: list[int] = []
        state = run_blocks(self.blocks, state, self.method, trace)
        self.last_trace = trace
        pooled = self.method.pool(state)
        if pooled is None:
            pooled = state.x[:, 0]
        return self.norm(pooled)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video))


def _builder(dim: int, depth: int, heads: int):
    def build(frames: int = 8, size: int = 224, classes: int = 400, attention: str = "sdpa", **kwargs) -> TimeSformer:
        return TimeSformer(dim, depth, heads, frames=frames, size=size, classes=classes, attention=attention, **kwargs)

    return build


register_family("timesformer", normalization="imagenet", example_backbone="timesformer-b")
register_backbone("timesformer-b", "timesformer", _builder(768, 12, 12),
                  "TimeSformer-B, divided space-time attention, per-frame 16x16 patches, CLS (8x224)",
                  frames=8, size=224)
register_backbone("timesformer-tiny", "timesformer", _builder(192, 4, 3),
                  "tiny TimeSformer (192 dim, 4 blocks, 3 heads) for tests and demos", tiny=True, frames=4, size=64)
