"""The token state that flows through a backbone, and the gather helpers every token method shares.

Static shapes on purpose: a reduction keeps the same number of tokens in every sample of a batch (top-k
plus gather), so batches stay rectangular, FLOP counters see the true work and export stays possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch


@dataclass
class TokenState:
    """Tokens of a batch plus what a method needs to know about them.

    x:           (B, N, D) features.
    pos:         (B, N) index of each token in the original token grid (t * H' * W' + h * W' + w);
                 prefix tokens (CLS, pose tokens) carry negative indices -1, -2, ...
    size:        (B, N) how many original tokens each token stands for (1 until tokens are merged).
    n_protected: number of leading tokens that no reduction may remove (CLS and similar).
    grid:        (T', H', W') of the original token grid.
    """

    x: torch.Tensor
    pos: torch.Tensor
    grid: tuple[int, int, int]
    size: Optional[torch.Tensor] = None
    n_protected: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.x.shape[1]

    def temporal_index(self) -> torch.Tensor:
        """(B, N) temporal slice of each grid token; prefix tokens get -1."""
        hw = self.grid[1] * self.grid[2]
        return torch.where(self.pos >= 0, torch.div(self.pos, hw, rounding_mode="floor"), -1)

    def gather(self, index: torch.Tensor) -> "TokenState":
        """Keep the tokens at `index` (B, K), in that order, for every per-token tensor."""
        x = self.x.gather(1, index.unsqueeze(-1).expand(-1, -1, self.x.shape[-1]))
        pos = self.pos.gather(1, index)
        size = None if self.size is None else self.size.gather(1, index)
        return replace(self, x=x, pos=pos, size=size)


def keep_count(num_tokens: int, keep: float, minimum: int = 0) -> int:
    """floor(N * keep), never below `minimum` nor above N.

    The small epsilon stops float error (0.7 * 1000 = 699.999...) from dropping a token the user asked for.
    """
    k = math.floor(num_tokens * keep + 1e-9)
    return max(min(k, num_tokens), minimum, 1)


def keep_top(state: TokenState, scores: torch.Tensor, k: int) -> TokenState:
    """Keep the protected prefix plus the k - n_protected highest-scoring other tokens of every sample.

    scores: (B, N). Protected tokens are forced in by an infinite score; the kept tokens stay in their
    original order so position-dependent code downstream sees the same layout.
    """
    n = state.num_tokens
    k = max(min(k, n), state.n_protected)
    if k == n:
        return state
    if state.n_protected:
        scores = scores.clone()
        scores[:, : state.n_protected] = float("inf")
    index = scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    return state.gather(index)
