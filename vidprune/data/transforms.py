"""Clip transforms in plain torch ops: short-side resize, centre / multi / random crop, normalisation.

Frames arrive as uint8 (T, H, W, 3); a transformed view leaves as float (3, T, size, size), the layout
the backbones take. Statistics are named here (`NORMALIZATIONS`); which ones a backbone family's checkpoints
were trained with the family declares beside itself (`registry.register_family(..., normalization=...)`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vidprune import registry
from vidprune.errors import VidpruneError

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    # SlowFast / TimeSformer's Kinetics statistics
    "kinetics": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
}


def add_normalization(name: str, mean: Sequence[float], std: Sequence[float]) -> None:
    """Add named statistics (3 means, 3 standard deviations) that `--norm` and a backbone family's
    `registry.register_family(..., normalization=name)` can then name."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("a normalisation needs 3 means and 3 standard deviations")
    NORMALIZATIONS[name] = (tuple(map(float, mean)), tuple(map(float, std)))


def statistics_name(mean: Sequence[float], std: Sequence[float], name: str) -> str:
    """The name of these statistics: a known one equal to them (to 1e-6), else `name`, added for them."""
    wanted = (tuple(map(float, mean)), tuple(map(float, std)))
    for known, stats in NORMALIZATIONS.items():
        if all(abs(a - b) <= 1e-6 for pair in zip(stats, wanted) for a, b in zip(*pair)):
            return known
    add_normalization(name, *wanted)
    return name


def normalization_for(family: str) -> str:
    """The statistics backbone family `family` declares (`registry.register_family`)."""
    return registry.get_family(family).normalization


def resolve_normalization(name: str, family: str) -> str:
    """`auto` means the family's statistics."""
    name = normalization_for(family) if name == "auto" else name
    if name not in NORMALIZATIONS:
        raise VidpruneError(f"--norm must be auto or one of {', '.join(NORMALIZATIONS)}, got '{name}'.")
    return name


def to_float_frames(frames) -> torch.Tensor:
    """uint8 (T, H, W, 3) array or tensor -> float (T, 3, H, W) in [0, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if video.dim() != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(video.shape)}")
    return video.permute(0, 3, 1, 2).float().div_(255.0)


def resize_short_side(video: torch.Tensor, short: int) -> torch.Tensor:
    """(T, C, H, W): scale so the shorter side is `short`, keeping the aspect ratio (bilinear, antialiased)."""
    h, w = video.shape[-2:]
    if min(h, w) == short:
        return video
    if h <= w:
        new_h, new_w = short, max(round(w * short / h), short)
    else:
        new_h, new_w = max(round(h * short / w), short), short
    return F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)


def crop(video: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return video[..., top:top + size, left:left + size]


def crop_positions(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """(top, left) of `num_crops` squares: 1 = centre; more are spread evenly along the longer side from one
    end to the other (3 = VideoMAE's left/top, centre, right/bottom)."""
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width}")
    centre_top, centre_left = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        return [(centre_top, centre_left)]
    positions = []
    for c in range(num_crops):
        if width >= height:
            positions.append((centre_top, round(c * (width - size) / (num_crops - 1))))
        else:
            positions.append((round(c * (height - size) / (num_crops - 1)), centre_left))
    return positions


def normalize(video: torch.Tensor, name, channel_dim: int = -4) -> torch.Tensor:
    """Per-channel (x - mean) / std with the statistics named `name` (or a (mean, std) pair); channels at
    dim -4 for (3, T, H, W) or (V, 3, T, H, W), or pass `channel_dim` (1 for (T, 3, H, W) frames)."""
    mean, std = NORMALIZATIONS[name] if isinstance(name, str) else name
    shape = [1] * video.dim()
    shape[channel_dim] = 3
    mean_t = torch.tensor(mean, dtype=video.dtype, device=video.device).view(shape)
    std_t = torch.tensor(std, dtype=video.dtype, device=video.device).view(shape)
    return (video - mean_t) / std_t


class ClipTransform:
    """uint8 frames of one clip -> float views (num_crops, 3, T, size, size), normalised.

    Test: resize the short side to `short_side` (default `size`, VideoMAE's test convention) and take
    `num_crops` crops. Train: resize the short side to a random length in [short_side, 1.25 * short_side]
    and take one random crop; flips only when asked, since they reverse left/right motion classes.
    """

    def __init__(self, size: int, short_side: Optional[int] = None, normalization: str = "imagenet",
                 num_crops: int = 1, train: bool = False, flip: bool = False):
        if size < 1:
            raise VidpruneError(f"--size must be positive, got {size}.")
        self.size = int(size)
        self.short_side = int(short_side or size)
        if self.short_side < self.size:
            raise VidpruneError(f"--short-side {self.short_side} is smaller than the crop size {self.size}; "
                                f"use --short-side {self.size} or more.")
        if num_crops < 1:
            raise VidpruneError(f"--crops must be at least 1, got {num_crops}.")
        if normalization not in NORMALIZATIONS:
            raise VidpruneError(f"unknown normalisation '{normalization}'. Use one of {', '.join(NORMALIZATIONS)}.")
        self.normalization = normalization
        # the statistics themselves travel with the transform: a DataLoader worker started by spawn imports
        # this module afresh, without statistics added at run time (a hub model's preprocessor config)
        self.statistics = NORMALIZATIONS[normalization]
        self.num_crops = 1 if train else int(num_crops)
        self.train = train
        self.flip = flip

    def __call__(self, frames, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        # normalising before resizing and cropping is equivalent (both are per-channel affine / convex
        # combinations) and touches each source pixel once instead of once per view
        video = normalize(to_float_frames(frames), self.statistics, channel_dim=1)
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            short = int(rng.integers(self.short_side, round(self.short_side * 1.25) + 1))
            video = resize_short_side(video, short)
            h, w = video.shape[-2:]
            top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
            views = [crop(video, top, left, self.size)]
            if self.flip and rng.random() < 0.5:
                views = [views[0].flip(-1)]
        else:
            video = resize_short_side(video, self.short_side)
            h, w = video.shape[-2:]
            views = [crop(video, top, left, self.size) for top, left in crop_positions(h, w, self.size, self.num_crops)]
        return torch.stack([v.permute(1, 0, 2, 3) for v in views])  # (V, 3, T, size, size)
