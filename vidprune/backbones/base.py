"""What every backbone tells the method placed in it."""

from __future__ import annotations

from dataclasses import dataclass


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
