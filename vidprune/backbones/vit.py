"""Joint space-time ViT as VideoMAE builds it.

Tubelet embedding (Conv3d 2x16x16), a fixed sinusoidal position table, pre-norm blocks (qkv with bias,
MLP ratio 4, GELU), no CLS token, mean pooling + fc_norm + linear head. Module names follow VideoMAE's
(`patch_embed.proj`, `blocks.N.attn.qkv`, `fc_norm`, `head`) so its checkpoints map onto them.
"""

from __future__ import annotations

import torch
from torch import nn

from vidprune.backbones.base import BackboneInfo, VideoBackbone
from vidprune.backbones.blocks import Block, run_blocks
from vidprune.errors import VidpruneError
from vidprune.registry import register_backbone, register_family
from vidprune.tokens import TokenState


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed table: sin on even channels, cos on odd, wavelengths 10000^(2i/d)."""
    position = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)
    channel = torch.arange(dim, dtype=torch.float64)
    angle = position / torch.pow(10000.0, 2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    table = torch.zeros(n_position, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


class PatchEmbed3D(nn.Module):
    def __init__(self, dim: int, tubelet: int, patch: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


class VideoViT(VideoBackbone):
    """Joint space-time ViT. `tubelet=1, cls_token=True, pool="cls"` gives the per-frame-patch ViT with a
    class token that STTM uses; the defaults are VideoMAE's."""

    family = "vit"

    def __init__(self, dim: int, depth: int, heads: int, frames: int = 16, size: int = 224,
                 classes: int = 400, tubelet: int = 2, patch: int = 16, mlp_ratio: float = 4.0,
                 attention: str = "sdpa", in_chans: int = 3, cls_token: bool = False, pool: str = "mean"):
        super().__init__()
        check_input_geometry(frames, size, tubelet, patch)
        if pool not in ("mean", "cls") or (pool == "cls" and not cls_token):
            raise ValueError("pool must be 'mean', or 'cls' with cls_token=True")
        grid = (frames // tubelet, size // patch, size // patch)
        n_prefix = 1 if cls_token else 0
        self.info = BackboneInfo(self.family, depth, dim, heads, frames, size, grid, n_prefix, tubelet, patch)
        self.pool = pool
        self.patch_embed = PatchEmbed3D(dim, tubelet, patch, in_chans)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.register_buffer("pos_embed", sinusoid_table(grid[0] * grid[1] * grid[2], dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, attention) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def embed(self, video: torch.Tensor) -> TokenState:
        """Tokens of the clip with their grid positions; the class token, if any, leads with position -1."""
        check_input(video, self.input_shape())
        x = self.patch_embed(video) + self.pos_embed.to(video.dtype)
        b, n, _ = x.shape
        pos = torch.arange(n, device=x.device).unsqueeze(0).expand(b, -1)
        if self.cls_token is None:
            return TokenState(x=x, pos=pos, grid=self.info.grid)
        cls = self.cls_token.to(x.dtype).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = torch.cat([torch.full((b, 1), -1, device=x.device, dtype=pos.dtype), pos], dim=1)
        return TokenState(x=x, pos=pos, grid=self.info.grid, n_protected=1)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) before the head."""
        state = self.method.begin_forward(self.embed(video))
        trace: list[int] = []
        state = run_blocks(self.blocks, state, self.method, trace)
        self.last_trace = trace
        pooled = self.method.pool(state)
        if pooled is None:
            pooled = state.x[:, 0] if self.pool == "cls" else state.x.mean(dim=1)
        return self.fc_norm(pooled)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(video))


def check_input_geometry(frames: int, size: int, tubelet: int, patch: int) -> None:
    if frames < tubelet or frames % tubelet:
        raise VidpruneError(
            f"--frames {frames} is not divisible by the tubelet size {tubelet}. "
            f"Use a multiple of {tubelet}, e.g. --frames {max(tubelet, frames - frames % tubelet)}."
        )
    if size < patch or size % patch:
        raise VidpruneError(
            f"--size {size} is not divisible by the patch size {patch}. "
            f"Use a multiple of {patch}, e.g. --size {max(patch, size - size % patch)}."
        )


def check_input(video: torch.Tensor, expected: tuple[int, ...]) -> None:
    if video.dim() != 5 or tuple(video.shape[1:]) != tuple(expected[1:]):
        raise VidpruneError(
            f"input of shape {tuple(video.shape)} does not match the model, which expects "
            f"(batch, {', '.join(str(s) for s in expected[1:])}) = (B, C, T, H, W)."
        )


def _builder(dim: int, depth: int, heads: int, **fixed):
    def build(frames: int = 16, size: int = 224, classes: int = 400, attention: str = "sdpa",
              **kwargs) -> VideoViT:
        return VideoViT(dim, depth, heads, frames=frames, size=size, classes=classes, attention=attention,
                        **fixed, **kwargs)

    return build


# VideoMAE normalises with ImageNet's statistics. Its checkpoint layouts are in vit_weights.py.
register_family("vit", normalization="imagenet", example_backbone="vit-b")
register_backbone("vit-s", "vit", _builder(384, 12, 6), "VideoMAE ViT-S: 384 dim, 12 blocks, 6 heads, tubelet 2x16x16",
                  frames=16, size=224)
register_backbone("vit-b", "vit", _builder(768, 12, 12), "VideoMAE ViT-B: 768 dim, 12 blocks, 12 heads, tubelet 2x16x16",
                  frames=16, size=224)
register_backbone("vit-l", "vit", _builder(1024, 24, 16), "VideoMAE ViT-L: 1024 dim, 24 blocks, 16 heads, tubelet 2x16x16",
                  frames=16, size=224)
# Per-frame 16x16 patches (no tubelet) with a class token and joint attention: STTM's ViT-S / ViT-B.
register_backbone("vit-s-cls", "vit", _builder(384, 12, 6, tubelet=1, cls_token=True, pool="cls"),
                  "ViT-S with per-frame 16x16 patches, CLS token, joint attention (STTM)", frames=8, size=224)
register_backbone("vit-b-cls", "vit", _builder(768, 12, 12, tubelet=1, cls_token=True, pool="cls"),
                  "ViT-B with per-frame 16x16 patches, CLS token, joint attention (STTM)", frames=8, size=224)
# A small configuration for tests and quick demos on a laptop: same code, fewer channels and blocks.
register_backbone("vit-tiny", "vit", _builder(192, 4, 3), "tiny joint ViT (192 dim, 4 blocks, 3 heads) for tests and demos",
                  tiny=True, frames=8, size=64)
register_backbone("vit-tiny-cls", "vit", _builder(192, 4, 3, tubelet=1, cls_token=True, pool="cls"),
                  "tiny ViT with per-frame patches and a CLS token (vit-s-cls's layout) for tests",
                  tiny=True, frames=4, size=64)
