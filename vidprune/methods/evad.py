"""EVAD: keyframe-centric token pruning (Chen et al., ICCV 2023), Sec. 3.2 and Appendix B.

In each pruning layer attention runs on all N current tokens; the importance of token j is the
head-averaged attention it receives, with queries from the keyframe weighted by w_kf (Eq. 1):
    I_j = (1/N) * sum_i w_i * attn(i, j),   w_i = w_kf for keyframe queries, 1 otherwise.
All N1 keyframe tokens (the middle temporal slice) are kept, plus the top floor(N * rho) - N1 others;
the block's MLP then runs on the kept tokens only. Choices the paper leaves open are in
docs/methods/evad.md.
"""

from __future__ import annotations

from typing import Optional

import torch

from vidprune.backbones.blocks import AttentionTap
from vidprune.methods.base import TokenMethod, resolve_layers
from vidprune.registry import Knob, Option, register_method
from vidprune.tokens import TokenState, keep_count, keep_top


@register_method
class EVAD(TokenMethod):
    name = "evad"
    description = "keyframe-centric token pruning inside layers 4, 7, 10 (ViT-B) / 7, 13, 19 (ViT-L)"
    paper = "Chen et al., Efficient Video Action Detection with Token Dropout and Context Refinement, ICCV 2023"
    knob = Knob("rho", 0.7, 0.0, 1.0, "fraction of the current tokens kept at each pruning layer")
    options = (
        Option.number("w_kf", 4.0, "weight of keyframe queries in the importance score (Table 1g best: 4)",
                      0.0, low_inclusive=False, high_inclusive=False),
        Option.layers("layers", "1-based pruning layers; auto = 4,7,10 for 12 blocks, 7,13,19 for 24"),
    )
    families = ("vit",)
    no_op_keep = 1.0  # rho = 1 prunes nothing: no layer asks for attention, every block runs as the backbone's

    def __init__(self, info, keep, seed: int = 0, **options):
        super().__init__(info, keep, seed=seed, **options)
        self.layers = resolve_layers(info, self.settings["layers"])
        self.w_kf = float(self.settings["w_kf"])
        self.keyframe_slice = info.grid[0] // 2

    def describe(self) -> dict:
        return {"w_kf": self.w_kf, "layers": ",".join(map(str, self.layers))}

    def needs_attention(self, layer: int) -> bool:
        return layer + 1 in self.layers and self.keep < 1.0

    def keyframe_mask(self, state: TokenState) -> torch.Tensor:
        return state.temporal_index() == self.keyframe_slice

    def query_weights(self, state: TokenState, dtype: torch.dtype) -> torch.Tensor:
        return torch.where(self.keyframe_mask(state), self.w_kf, 1.0).to(dtype)

    def attention_tap(self, layer: int, state: TokenState):
        if not self.needs_attention(layer):
            return None
        return WeightedReceivedAttention(self.query_weights(state, state.x.dtype))

    def importance(self, state: TokenState, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1 on full head-averaged attention (B, H, N, N); returns (importance (B, N), keyframe mask)."""
        tap = WeightedReceivedAttention(self.query_weights(state, attn.dtype))
        tap(attn, 0)
        return tap.importance(), self.keyframe_mask(state)

    def after_attention(self, layer: int, state: TokenState, attn) -> TokenState:
        if attn is None or not self.needs_attention(layer):
            return state
        if isinstance(attn, WeightedReceivedAttention):
            scores, keyframe = attn.importance(), self.keyframe_mask(state)
        else:
            scores, keyframe = self.importance(state, attn)
        n1 = self.info.tokens_per_slice
        k = keep_count(state.num_tokens, self.keep, minimum=n1)
        return keep_top(state, scores.masked_fill(keyframe, float("inf")), k)


class WeightedReceivedAttention(AttentionTap):
    """Accumulates I_j = (1/N) sum_i w_i mean_h attn(i, j) over blocks of queries (Eq. 1)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights  # (B, N) query weights
        self.total: Optional[torch.Tensor] = None
        self.heads = 1

    def __call__(self, probs: torch.Tensor, start: int, samples: slice = slice(None)) -> None:
        """probs (b, H, c, N): queries start..start+c of the samples `samples` of the batch."""
        self.heads = probs.shape[1]
        if self.total is None:
            self.total = probs.new_zeros(self.weights.shape[0], probs.shape[-1])
        rows = self.weights[samples, None, start:start + probs.shape[2]].to(probs.dtype)
        # A batched matmul rather than einsum: every FLOP counter knows bmm.
        self.total[samples] += torch.bmm(rows, probs.sum(dim=1)).squeeze(1)

    def importance(self) -> torch.Tensor:
        n = self.weights.shape[1]
        return self.total / (self.heads * n)
