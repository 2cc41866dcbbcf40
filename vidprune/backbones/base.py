"""What every backbone tells the method placed in it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn


@dataclass(frozen=True)
class BackboneInfo:
    family: str
    depth: int
    dim: int
    heads: int
    frames: int
    size: int
    grid: tuple[int, int, int]  # (T', H', W') tokens along time, height, width
    n_prefix: int = 0  # leading tokens that are not grid tokens (CLS, pose tokens)
    tubelet: int = 2
    patch: int = 16

    @property
    def num_grid_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def tokens_per_slice(self) -> int:
        return self.grid[1] * self.grid[2]


class VideoBackbone(nn.Module):
    """The contract the sweep, the methods and the evaluators read from every backbone family:
    `info` (set by the family), the method in place, and what the last forward pass did:
    `last_trace` (tokens entering each block for the first clip) and `last_stats` (input-dependent
    statistics, e.g. frames kept)."""

    info: BackboneInfo
    # The vidprune.checkpoints.LoadReport of the weights `models.create_model(checkpoint=...)` loaded.
    checkpoint_report = None
    # The classifier's class names, by index, when the checkpoint names them (a config.json's id2label).
    class_names: Optional[list[str]] = None

    def __init__(self):
        super().__init__()
        self.method: Optional[nn.Module] = None
        self.last_trace: list[int] = []
        self.last_stats: dict = {}

    def set_method(self, method: nn.Module) -> None:
        self.method = method

    @property
    def classes(self) -> int:
        """Classes the classifier (`head`) predicts."""
        return self.head.out_features

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """(B, C, T, H, W) of one RGB clip batch."""
        return (batch, 3, self.info.frames, self.info.size, self.info.size)
