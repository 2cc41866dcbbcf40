"""Joint space-time ViT as VideoMAE builds it.

Tubelet embedding (Conv3d 2x16x16), a fixed sinusoidal position table, pre-norm blocks (qkv with bias,
MLP ratio 4, GELU), no CLS token, mean pooling + fc_norm + linear head. Module names follow VideoMAE's
(`patch_embed.proj`, `blocks.N.attn.qkv`, `fc_norm`, `head`) so its checkpoints map onto them.
"""

from __future__ import annotations

from functools import partial
import torch
import torch.nn.functional as F
from torch import nn

from vidprune.backbones.base import BackboneInfo, VideoBackbone
from vidprune.errors import VidpruneError
from vidprune.registry import register_backbone
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


class Attention(nn.Module):
    """Multi-head self-attention, fused (`sdpa`) or explicit (`math`).

    A block whose method needs the attention probabilities computes them explicitly, whatever the
    backbone's setting, because the fused kernel never materialises them.
    """

    def __init__(self, dim: int, heads: int, attention: str = "sdpa"):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.attention = attention
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_probs: bool = False, tap=None):
        """`tap`, when given, receives the probabilities chunk by chunk (see `explicit_attention`)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        probs = None
        if tap is not None:
            out = explicit_attention(q, k, v, self.scale, tap)
        elif self.attention == "sdpa" and not return_probs:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            probs = (q * self.scale) @ k.transpose(-2, -1)
            probs = probs.softmax(dim=-1)
            out = probs @ v
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        return out, probs


# Elements of one block of attention probabilities (one sample, all heads, a run of queries): small
# enough to stay in cache while the softmax, the AV product and the tap read it.
TAP_CHUNK_ELEMENTS = 2**21


def explicit_attention(q, k, v, scale: float, tap) -> torch.Tensor:
    """softmax(QK^T)V computed in blocks of one sample's queries, handing each block of probabilities
    (1, H, c, N) to `tap(probs, start, samples)` (queries start..start+c of the samples `samples`, a
    slice), so a method can reduce the attention it needs without the full N x N tensor ever existing.

    A tap with `query_rows = r` needs only the first r queries' probabilities (e.g. the class token's
    row): those rows are computed explicitly and the others by the fused kernel. Either way the
    multiply-accumulates are those of the one-shot form (QK^T and AV over all N x N pairs).
    """
    b, h, n, _ = q.shape
    needed = getattr(tap, "query_rows", None)
    if needed is not None and needed < n:
        head = explicit_attention(q[:, :, :needed], k, v, scale, tap)
        rest = F.scaled_dot_product_attention(q[:, :, needed:], k, v, scale=scale)
        return torch.cat([head, rest], dim=2)
    rows = max(8, min(n, TAP_CHUNK_ELEMENTS // max(1, h * k.shape[2])))
    # q, k, v are strided views of the qkv output: without one contiguous copy here every block's
    # matmul would copy all of K and V again (it made the explicit path ~4x slower at batch 8).
    q = q * scale
    keys = k.transpose(-2, -1).contiguous()
    values = v.contiguous()
    out = torch.empty_like(q)
    # blocks of one sample so that a block stays cache-sized at any batch: the loop count is the number
    # of blocks (B * N / c), the same work split as blocks spanning the batch, not a loop of Python work per sample
    for i in range(b):
        sample = slice(i, i + 1)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            probs = torch.matmul(q[sample, :, start:stop], keys[sample]).softmax(dim=-1)
            out[sample, :, start:stop] = torch.matmul(probs, values[sample])
            tap(probs, start, sample)
    return out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; other families reuse it with their own attention module."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: str, attention_cls: type = None):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = (attention_cls or Attention)(dim, heads, attention)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))


def run_blocks(blocks: nn.ModuleList, state: TokenState, method, trace: list[int]) -> TokenState:
    """The block loop with the method's insertion points; `trace` gets the tokens entering each block."""
    for i, blk in enumerate(blocks):
        state = method.before_block(i, state)
        trace.append(int(state.num_tokens))
        tap = method.attention_tap(i, state)
        need_probs = tap is None and method.needs_attention(i)
        attn_out, probs = blk.attn(blk.norm1(state.x), return_probs=need_probs, tap=tap)
        state.x = state.x + attn_out
        state = method.after_attention(i, state, tap if tap is not None else probs)
        state.x = state.x + blk.mlp(blk.norm2(state.x))
        state = method.after_block(i, state)
    return state


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
                  frames=8, size=64)
