"""Factorised-encoder ViViT (Arnab et al. 2021, "Model 2") with RGB, depth and skeleton streams, the
backbone MADS prunes frames in.

Per frame, every modality is embedded into tokens led by that modality's own CLS token:

* rgb:      (B, 3, T, H, W) video, 2D 16x16 patches (Conv2d), learned positions;
* depth:    (B, 1, T, H, W) depth video, 2D 16x16 patches (Conv2d), learned positions;
* skeleton: (B, 3, T, J) joint coordinates (NTU RGB+D layout, J = 25 Kinect joints): each joint is one
  token (Linear 3 -> D), learned per-joint positions. Joints as a small tensor cost 26 tokens per frame
  instead of the 197 a rendered joint map would.

The spatial encoder (one set of weights shared by the modalities) runs on each frame's concatenated
tokens with a boolean attention mask: a token attends to its own modality, and CLS tokens additionally
attend to the other modalities' CLS tokens (MADS Eq. 10), so modalities meet only through their CLS.
The temporal encoder then runs on a video CLS token plus the per-frame CLS tokens of every modality
(+ learned temporal position of the frame + learned modality embedding); the head reads the video CLS.

Both encoders run their blocks through the shared block loop (`backbones/blocks.py`), spatial blocks as
layers 0 .. spatial_depth - 1 and temporal blocks after them, with the modality mask (spatial) or the
frame mask (temporal) as the blocks' attention bias. Every token is protected there: the masks are built
for a fixed token layout. A method removes whole frames instead, between the encoders, through the frame
selection hooks of `TokenMethod` (defaults: no selection, every frame seen):

* `select_after`: int or None. The first `select_after` spatial blocks run on every frame; the method then
  chooses frames, and the remaining spatial blocks and the temporal encoder run on the chosen frames
  only. None: no selection.
* `select_frames(summary)`: summary is (B, M, T, D), each frame's CLS token per modality after
  `select_after` blocks (after 0 blocks the CLS has seen nothing of its frame, so the mean of the
  modality's embedded tokens stands in); returns a `FrameSelection`.
* `forward_stats()`: a dict merged into `last_stats` after each forward.

`last_trace` holds, for one clip (the first of the batch), the tokens entering each block: for the
`spatial_depth` spatial blocks the tokens summed over the frames that block encodes (frames x tokens
per frame, all modalities), then for the `temporal_depth` temporal blocks the temporal sequence length
(1 + modalities x kept frames). `last_stats` holds frames_total and frames_kept_mean/min/max over the
batch (the kept count may vary per clip), plus the method's `forward_stats()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from vidprune.backbones.base import BackboneInfo, VideoBackbone
from vidprune.backbones.blocks import Block, run_blocks
from vidprune.backbones.vit import check_input_geometry
from vidprune.errors import VidpruneError
from vidprune.registry import register_backbone, register_family
from vidprune.tokens import TokenState

MODALITIES = ("rgb", "depth", "skeleton")
IMAGE_CHANNELS = {"rgb": 3, "depth": 1}
SKELETON_JOINTS = 25  # NTU RGB+D (Kinect v2)
SKELETON_COORDS = 3


@dataclass(frozen=True)
class ViViTInfo(BackboneInfo):
    """BackboneInfo plus what a frame method needs: the modalities and the two encoders' depths.

    `depth` is spatial_depth + temporal_depth; `grid` is (frames, H/16, W/16) of the RGB stream.
    """

    modalities: tuple[str, ...] = ("rgb",)
    spatial_depth: int = 0
    temporal_depth: int = 0
    tokens_per_frame: tuple[int, ...] = ()  # per modality, CLS included


@dataclass
class FrameSelection:
    """Frames a method keeps. index: (B, K) frame indices, ascending within the valid entries.
    valid: (B, K) bool, None = all valid; invalid entries are padding (a batch whose clips keep different
    numbers of frames), encoded but masked out of the temporal encoder.
    key_bias: (B, K) added to the temporal attention logits of each kept frame's tokens (a log soft mask,
    so training gradients reach the scorer and threshold), or None."""

    index: torch.Tensor
    valid: Optional[torch.Tensor] = None
    key_bias: Optional[torch.Tensor] = None


def parse_modalities(value: Union[str, Sequence[str]]) -> tuple[str, ...]:
    items = [v.strip().lower() for v in value.split(",")] if isinstance(value, str) else [str(v).lower() for v in value]
    items = [v for v in items if v]
    unknown = [v for v in items if v not in MODALITIES]
    if unknown or not items or len(set(items)) != len(items) or "rgb" not in items:
        raise VidpruneError(
            f"modalities {','.join(items) or '(none)'} are invalid: choose distinct names from "
            f"{', '.join(MODALITIES)}, rgb included, e.g. 'rgb' or 'rgb,depth,skeleton'."
        )
    return tuple(m for m in MODALITIES if m in items)  # canonical order: token layout never depends on spelling


def cross_modal_mask(tokens_per_modality: Sequence[int]) -> torch.Tensor:
    """(N, N) bool, True = query i may attend to key j: within a modality, or CLS to CLS across modalities.
    Each modality's block of tokens starts with its CLS."""
    modality = torch.cat([torch.full((n,), m) for m, n in enumerate(tokens_per_modality)])
    is_cls = torch.zeros(len(modality), dtype=torch.bool)
    is_cls[[sum(tokens_per_modality[:m]) for m in range(len(tokens_per_modality))]] = True
    same = modality.unsqueeze(1) == modality.unsqueeze(0)
    return same | (is_cls.unsqueeze(1) & is_cls.unsqueeze(0))


class ImageEmbed(nn.Module):
    """Per-frame 16x16 patches of a (B, C, T, H, W) stream -> (B, T, 1 + N, D), CLS first."""

    def __init__(self, channels: int, dim: int, patch: int, size: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (size // patch) ** 2, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.proj(frames).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.to(x.dtype).expand(b * t, -1, -1), x], dim=1) + self.pos_embed.to(x.dtype)
        return x.reshape(b, t, x.shape[1], x.shape[2])


class JointEmbed(nn.Module):
    """Per-frame joints of a (B, 3, T, J) skeleton stream -> (B, T, 1 + J, D), one token per joint."""

    def __init__(self, dim: int, joints: int, coords: int = SKELETON_COORDS):
        super().__init__()
        self.proj = nn.Linear(coords, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, 1 + joints, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, skeleton: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = skeleton.shape
        x = self.proj(skeleton.permute(0, 2, 3, 1))
        x = torch.cat([self.cls_token.to(x.dtype).expand(b, t, -1, -1), x], dim=2)
        return x + self.pos_embed.to(x.dtype)


class ViViT(VideoBackbone):
    family = "vivit"

    def __init__(self, dim: int, spatial_depth: int, temporal_depth: int, heads: int, frames: int = 16,
                 size: int = 224, classes: int = 400, patch: int = 16, mlp_ratio: float = 4.0,
                 attention: str = "sdpa", modalities: Union[str, Sequence[str]] = MODALITIES,
                 joints: int = SKELETON_JOINTS):
        super().__init__()
        check_input_geometry(frames, size, 1, patch)
        self.modalities = parse_modalities(modalities)
        grid = (frames, size // patch, size // patch)
        counts = tuple(joints + 1 if m == "skeleton" else grid[1] * grid[2] + 1 for m in self.modalities)
        self.info = ViViTInfo(self.family, spatial_depth + temporal_depth, dim, heads, frames, size, grid,
                              n_prefix=1, tubelet=1, patch=patch, modalities=self.modalities,
                              spatial_depth=spatial_depth, temporal_depth=temporal_depth, tokens_per_frame=counts)
        self.joints = joints
        self.embeds = nn.ModuleDict({
            m: JointEmbed(dim, joints) if m == "skeleton" else ImageEmbed(IMAGE_CHANNELS[m], dim, patch, size)
            for m in self.modalities
        })
        offsets = [0]
        for n in counts[:-1]:
            offsets.append(offsets[-1] + n)
        self.cls_offsets = tuple(offsets)
        # One modality: no mask at all, so the fused kernel keeps its fastest path.
        mask = cross_modal_mask(counts) if len(counts) > 1 else None
        self.register_buffer("modality_mask", mask, persistent=False)
        self.spatial_blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, attention) for _ in range(spatial_depth))
        self.temporal_cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.temporal_pos = nn.Parameter(torch.zeros(1, frames, dim))
        self.modality_embed = nn.Parameter(torch.zeros(1, 1, len(self.modalities), dim))
        self.temporal_blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, attention) for _ in range(temporal_depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        for p in (self.temporal_cls, self.temporal_pos, self.modality_embed):
            nn.init.trunc_normal_(p, std=0.02)

    # ------------------------------------------------------------------ inputs

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of the RGB stream, (B, 3, T, H, W)."""
        return self.stream_shape("rgb", batch)

    def stream_shape(self, modality: str, batch: int = 1) -> tuple[int, ...]:
        t, s = self.info.frames, self.info.size
        if modality == "skeleton":
            return (batch, SKELETON_COORDS, t, self.joints)
        return (batch, IMAGE_CHANNELS[modality], t, s, s)

    def make_input(self, batch: int, generator: torch.Generator):
        """A random clip: the RGB tensor for an RGB-only model, else {modality: tensor}."""
        streams = {m: torch.randn(self.stream_shape(m, batch), generator=generator) for m in self.modalities}
        return streams["rgb"] if self.modalities == ("rgb",) else streams

    def _streams(self, inputs) -> dict:
        if isinstance(inputs, torch.Tensor):
            if self.modalities != ("rgb",):
                raise VidpruneError(
                    f"this ViViT takes {', '.join(self.modalities)}: pass a dict {{modality: tensor}} "
                    "(model.make_input shows the shapes), or use an RGB-only backbone such as vivit-b-rgb."
                )
            inputs = {"rgb": inputs}
        if not isinstance(inputs, dict) or set(inputs) != set(self.modalities):
            got = ", ".join(sorted(inputs)) if isinstance(inputs, dict) else type(inputs).__name__
            raise VidpruneError(f"expected inputs for {', '.join(self.modalities)}, got {got}.")
        for m in self.modalities:
            expected = self.stream_shape(m)
            if tuple(inputs[m].shape[1:]) != expected[1:]:
                raise VidpruneError(
                    f"{m} input of shape {tuple(inputs[m].shape)} does not match the model, which expects "
                    f"(batch, {', '.join(str(s) for s in expected[1:])})."
                )
        return inputs

    # ------------------------------------------------------------------ forward

    @staticmethod
    def _layout_state(x: torch.Tensor, grid: tuple[int, int, int]) -> TokenState:
        """(S, N, D) sequences as the blocks' TokenState. The modality mask is built for this exact token
        layout, so no block may remove a token: every token is protected, and none is a grid token (negative
        positions -1, -2, ...); frames are removed between the encoders instead (`select_frames`)."""
        pos = -torch.arange(1, x.shape[1] + 1, device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        return TokenState(x=x, pos=pos, grid=grid, n_protected=x.shape[1])

    def _summary(self, x: torch.Tensor, after_blocks: int) -> torch.Tensor:
        """(B, T, N, D) tokens -> (B, M, T, D): each modality's CLS, or its mean token before any block."""
        if after_blocks > 0:
            return torch.stack([x[:, :, o] for o in self.cls_offsets], dim=1)
        ends = list(self.cls_offsets[1:]) + [x.shape[2]]
        return torch.stack([x[:, :, o + 1:e].mean(dim=2) for o, e in zip(self.cls_offsets, ends)], dim=1)

    def forward_features(self, inputs) -> torch.Tensor:
        streams = self._streams(inputs)
        x = torch.cat([self.embeds[m](streams[m]) for m in self.modalities], dim=2)
        b, t, n, d = x.shape
        method = self.method
        spatial_depth = self.info.spatial_depth
        frame_grid = (1, *self.info.grid[1:])
        k = spatial_depth if method.select_after is None else int(method.select_after)
        trace: list[int] = []
        # spatial blocks: every frame is one sequence, so a clip's tokens are a sequence's times its frames
        state = method.begin_forward(self._layout_state(x.reshape(b * t, n, d), frame_grid))
        state = run_blocks(self.spatial_blocks[:k], state, method, trace, clip_tokens=lambda tokens: tokens * t,
                           bias=self.modality_mask)
        x = state.x.reshape(b, t, n, d)

        selection = None
        if method.select_after is not None:
            selection = method.select_frames(self._summary(x, k))
            index = selection.index
            x = x.gather(1, index[:, :, None, None].expand(-1, -1, n, d))
        else:
            index = torch.arange(t, device=x.device).unsqueeze(0).expand(b, -1)
        kept = int(index.shape[1])
        valid = None if selection is None else selection.valid
        counts = [kept] * b if valid is None else [int(c) for c in valid.sum(dim=1).tolist()]
        # the trace is the first clip's: its padding frames (a batch keeping different counts) do not count
        state = run_blocks(self.spatial_blocks[k:], self._layout_state(x.reshape(b * kept, n, d), frame_grid), method,
                           trace, first_layer=k, clip_tokens=lambda tokens: tokens * counts[0], bias=self.modality_mask)
        x = state.x.reshape(b, kept, n, d)

        m = len(self.modalities)
        frame_cls = x[:, :, list(self.cls_offsets)]  # (B, K, M, D)
        pos = self.temporal_pos.to(x.dtype).expand(b, -1, -1).gather(1, index.unsqueeze(-1).expand(-1, -1, d))
        tokens = (frame_cls + pos.unsqueeze(2) + self.modality_embed.to(x.dtype)).reshape(b, kept * m, d)
        tokens = torch.cat([self.temporal_cls.to(x.dtype).expand(b, -1, -1), tokens], dim=1)
        padding = m * (kept - counts[0])
        state = run_blocks(self.temporal_blocks, self._layout_state(tokens, (t, 1, 1)), method, trace,
                           first_layer=spatial_depth, clip_tokens=lambda tokens: tokens - padding,
                           bias=self._temporal_mask(selection, m, x.dtype))
        self.last_trace = trace
        self.last_stats = {"frames_total": int(t), "frames_kept_mean": sum(counts) / len(counts),
                           "frames_kept_min": min(counts), "frames_kept_max": max(counts)}
        self.last_stats.update(method.forward_stats())
        return self.norm(state.x[:, 0])

    @staticmethod
    def _temporal_mask(selection: Optional[FrameSelection], modalities: int, dtype) -> Optional[torch.Tensor]:
        """(B, 1, 1, 1 + K*M) additive key mask: padding frames excluded, soft-mask bias added; None if unused."""
        if selection is None or (selection.valid is None and selection.key_bias is None):
            return None
        index = selection.index
        bias = torch.zeros(index.shape, dtype=dtype, device=index.device)
        if selection.key_bias is not None:
            bias = bias + selection.key_bias.to(dtype)
        if selection.valid is not None:
            if bool(selection.valid.all()):
                if selection.key_bias is None:
                    return None
            else:
                bias = bias.masked_fill(~selection.valid, torch.finfo(dtype).min)
        bias = bias.repeat_interleave(modalities, dim=1)  # frame-major, like the token layout
        bias = torch.cat([bias.new_zeros(bias.shape[0], 1), bias], dim=1)
        return bias[:, None, None, :]

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.forward_features(inputs))


# ---------------------------------------------------------------------- registered configurations

# Widths and heads are DeiT's Tiny/Small/Base; 12 spatial + 4 temporal blocks is ViViT's factorised
# encoder (Model 2) layout. MADS gives no configuration (docs/methods/mads.md compares with its Table 1).
SIZES = {
    "t": dict(dim=192, spatial_depth=12, temporal_depth=4, heads=3),
    "s": dict(dim=384, spatial_depth=12, temporal_depth=4, heads=6),
    "b": dict(dim=768, spatial_depth=12, temporal_depth=4, heads=12),
}
_NAMES = {"t": "Tiny", "s": "Small", "b": "Base"}


def _builder(modalities: str, **fixed):
    def build(frames: int = 16, size: int = 224, classes: int = 400, attention: str = "sdpa", **kwargs) -> ViViT:
        kwargs.setdefault("modalities", modalities)
        return ViViT(frames=frames, size=size, classes=classes, attention=attention, **fixed, **kwargs)

    return build


register_family("vivit", normalization="imagenet", example_backbone="vivit-b")
for _key, _cfg in SIZES.items():
    _layout = f"{_cfg['dim']} dim, {_cfg['spatial_depth']}+{_cfg['temporal_depth']} blocks, {_cfg['heads']} heads"
    register_backbone(f"vivit-{_key}", "vivit", _builder("rgb,depth,skeleton", **_cfg),
                      f"ViViT-{_NAMES[_key]} factorised encoder, RGB+depth+skeleton (MADS): {_layout}, 16x16 patches",
                      frames=16, size=224)
    register_backbone(f"vivit-{_key}-rgb", "vivit", _builder("rgb", **_cfg),
                      f"ViViT-{_NAMES[_key]} factorised encoder, RGB only: {_layout}, 16x16 patches",
                      frames=16, size=224)

_TINY = dict(dim=128, spatial_depth=2, temporal_depth=1, heads=2)
register_backbone("vivit-tiny", "vivit", _builder("rgb,depth,skeleton", **_TINY),
                  "tiny multi-modal ViViT (128 dim, 2+1 blocks, 2 heads) for tests and demos", tiny=True,
                  frames=8, size=32)
register_backbone("vivit-tiny-rgb", "vivit", _builder("rgb", **_TINY),
                  "tiny RGB ViViT (128 dim, 2+1 blocks, 2 heads) for tests and demos", tiny=True, frames=8, size=32)
