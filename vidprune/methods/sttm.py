"""STTM: spatial-temporal token merging (Feng et al., ACM TOMM 2024), Sec. 3.

After block k of each merge layer, the L current tokens X (class token excluded, it is never merged)
with their position embeddings E become L' = floor(L * (1 - merge_ratio)) tokens:
  1. meta tokens: greedy most-orthogonal selection (Motionformer) of alpha * L' candidates, the first
     pick random (seeded), each next the token whose largest |cosine| to the picks so far is smallest;
     the L' candidates the class token attends to most are kept (EViT's attentiveness);
  2. C = softmax(phi(X) phi(M)^T), normalised over the column (input tokens) then the row (meta tokens),
     phi a learnable encoder with l2-normalised outputs;
  3. appearance A = C^T X, motion P = C^T E, output Y = varphi([A, P]) with varphi linear 2D -> D;
     P replaces E at the next merge.
The first merge (layer 6 of 12) is spatial: it runs within each frame (temporal slice). Later ones
(layer 9) are spatio-temporal over all tokens. Both share one module. Every choice the paper leaves
open is in docs/methods/sttm.md.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.backbones.blocks import AttentionTap
from vidprune.errors import VidpruneError
from vidprune.methods.base import TokenMethod, parse_layers, proportional_layers
from vidprune.registry import Knob, Option, register_method
from vidprune.tokens import TokenState, keep_count

MERGE_MODES = ("two-stage", "spatial", "global")
FILTERS = ("attention", "similarity", "none")
PHI_KINDS = ("mlp", "linear")


def default_layers(depth: int) -> tuple[int, ...]:
    """The paper's 6 and 9 of 12 blocks, scaled to other depths (2, 3 of 4; 12, 18 of 24), never the last
    block (a merge after it would feed no block)."""
    return proportional_layers(depth, (6, 9), highest=max(depth - 1, 1), stated={})


def resolve_merge_layers(depth: int, requested) -> tuple[int, ...]:
    try:
        layers = default_layers(depth) if requested in (None, "", "auto") else parse_layers(requested)
    except (TypeError, ValueError) as exc:
        raise VidpruneError(
            f"layers={requested!r} is invalid: {exc}. Pass 1-based block numbers, e.g. --set layers=6,9."
        ) from None
    if layers[-1] >= depth:
        raise VidpruneError(
            f"STTM merges after a block, so layer {layers[-1]} must be below the backbone's {depth} blocks "
            f"(a merge after the last block feeds no block). Use e.g. --set layers={','.join(map(str, default_layers(depth)))}."
        )
    return layers


def most_orthogonal(x: torch.Tensor, count: int, first: torch.Tensor) -> torch.Tensor:
    """Greedy most-orthogonal selection (Motionformer's orthogonal landmarks), batched over groups.

    x: (G, L, D); first: (G,) index of the first pick. Each next pick is the unpicked token whose largest
    absolute cosine similarity to the picks so far is smallest (ties: the lowest index). Returns (G, count)
    indices in pick order.

    All |cosines| come from one Gram matrix per group, L x L x D MACs (G L^2 floats of memory, in chunks of
    groups); each pick then reads one row of it. The per-pick form, one (L, D) x (D,) product per pick,
    does (count - 1) L D MACs but reads every token again per pick: memory-bound, over 10x slower on a CPU
    at batch 8 (benchmarks/sttm_selection.py). Both compute the same dot products; only their rounding may
    differ by an ulp between the two matrix kernels, which can reorder two candidates whose scores agree to
    float precision. tests/test_sttm_selection.py checks that the picks equal the per-pick loop's on random
    tokens (widths 3 to 1024) and on exact ties.
    """
    g, length, d = x.shape
    if count <= 1:
        return first[:, None][:, :count].clone()
    picks = torch.empty((g, count), dtype=torch.long, device=x.device)
    groups = max(1, GRAM_ELEMENTS // (length * length))
    # normalised a few groups at a time, straight into their Gram matrices: the unit tokens are still in
    # cache for the product (about 2x faster than normalising all groups first at batch 8)
    step = max(1, NORMALIZE_ELEMENTS // (length * d))
    for start in range(0, g, groups):
        stop = min(g, start + groups)
        parts = []
        for i in range(start, stop, step):
            unit = F.normalize(x[i:min(stop, i + step)], dim=-1)
            parts.append(torch.bmm(unit, unit.transpose(1, 2)))
        gram = parts[0] if len(parts) == 1 else torch.cat(parts)
        picks[start:stop] = _greedy_on_gram(gram, count, first[start:stop])
    return picks


# Gram matrices of at most this many elements at a time (256 MiB in fp32): groups beyond are done in chunks
GRAM_ELEMENTS = 2**26
# tokens normalised at a time (8 MiB in fp32)
NORMALIZE_ELEMENTS = 2**21


def _greedy_on_gram(gram: torch.Tensor, count: int, first: torch.Tensor) -> torch.Tensor:
    """The picks from the groups' cosine matrices (G, L, L); overwrites their diagonals."""
    g, length, _ = gram.shape
    # +inf on the diagonal: folding a pick's row into `closest` marks the pick itself as never again eligible
    gram.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    # row t of group i (flattened to row i * L + t) holds cos of token t to every token of its group; the
    # absolute value is taken per pick on the one row read, not on all L^2
    rows = gram.reshape(g * length, length)
    offsets = torch.arange(g, device=gram.device) * length
    # largest |cosine| of each token to the picks so far
    closest = torch.full((g, length), -1.0, dtype=gram.dtype, device=gram.device)
    current = first
    picks = [current]
    for _ in range(count - 1):
        torch.maximum(closest, rows.index_select(0, offsets + current).abs_(), out=closest)
        current = closest.argmin(dim=1)
        picks.append(current)
    return torch.stack(picks, dim=1)


def correspondence(logits: torch.Tensor) -> torch.Tensor:
    """C from similarities (G, L, L'): exp, normalised over the column (input tokens), then over the row
    (meta tokens), i.e. softmax over the row of the column-log-softmax: one Sinkhorn step. Rows sum to 1."""
    return (logits - logits.logsumexp(dim=1, keepdim=True)).softmax(dim=-1)


class Merger(nn.Module):
    """The learnable part of STTM: phi (correspondence encoder) and varphi (fusion, 2D -> D)."""

    def __init__(self, dim: int, phi: str = "mlp", motion: bool = True):
        super().__init__()
        if phi == "mlp":
            self.phi = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        else:
            self.phi = nn.Linear(dim, dim)
        self.fusion = nn.Linear(2 * dim, dim) if motion else None

    def correspondence(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """C (G, L, L') between the tokens x (G, L, D) and the meta tokens x[meta] (G, L')."""
        f = F.normalize(self.phi(x), dim=-1)
        # M is a subset of X, so phi(M) is a gather of phi(X), not a second pass of phi
        fm = f.gather(1, meta[..., None].expand(-1, -1, f.shape[-1]))
        return correspondence(torch.bmm(f, fm.transpose(1, 2)))

    def forward(self, x: torch.Tensor, e: Optional[torch.Tensor], meta: torch.Tensor):
        """Returns (Y, P or None, C)."""
        c = self.correspondence(x, meta)
        ct = c.transpose(1, 2)
        appearance = torch.bmm(ct, x)
        if self.fusion is None:
            return appearance, None, c
        motion = torch.bmm(ct, e)
        return self.fusion(torch.cat([appearance, motion], dim=-1)), motion, c


class FilterAttention(AttentionTap):
    """Attention tap for the meta-token filter: the class token's head-averaged attention row (EViT), or,
    without a class token, the head-averaged attention each token receives. Rows are (B', N) where B' is
    the batch, or batch x frames for a divided TimeSformer block (one class-token copy per frame).

    With a class token only its query row is needed (`query_rows = 1`): the block computes that one row
    explicitly and every other query with the fused kernel, at the same multiply-accumulate count."""

    def __init__(self, has_cls: bool):
        self.has_cls = has_cls
        self.query_rows = 1 if has_cls else None
        self._parts: dict[int, torch.Tensor] = {}  # first sample of a slice -> its rows

    def __call__(self, probs: torch.Tensor, start: int, samples: slice = slice(None)) -> None:
        """probs (b, H, c, N): queries start..start+c of the samples `samples` of the batch."""
        key = samples.start or 0
        if self.has_cls:
            if start == 0:
                self._parts[key] = probs[:, :, 0].mean(dim=1)
            return
        part = probs.mean(dim=1).sum(dim=1)
        self._parts[key] = part if key not in self._parts else self._parts[key] + part

    @property
    def rows(self) -> Optional[torch.Tensor]:
        if not self._parts:
            return None
        return torch.cat([self._parts[k] for k in sorted(self._parts)]) if len(self._parts) > 1 else \
            next(iter(self._parts.values()))


@register_method
class STTM(TokenMethod):
    name = "sttm"
    description = "spatial-temporal token merging: per frame after block 6, spatio-temporal after block 9"
    paper = ("Feng et al., Efficient Video Transformers via Spatial-temporal Token Merging for Action "
             "Recognition, ACM TOMM 2024")
    knob = Knob("merge_ratio", 0.5, 0.0, 1.0,
                "fraction of the tokens merged away at each STTM: L' = floor(L (1 - merge_ratio))",
                high_inclusive=False, cost_increases=False)
    options = (
        Option.layers("layers", "1-based blocks after which STTM merges; auto = 6,9 for 12 blocks"),
        Option.choice("merge", "two-stage", "two-stage: per frame at the first layer, spatio-temporal after; "
                      "spatial: per frame at every layer; global: spatio-temporal at every layer (Table 5)", MERGE_MODES),
        Option.number("alpha", 1.5, "orthogonal-selection oversampling: alpha x L' candidates, filtered to L'", 1.0,
                      high_inclusive=False),
        Option.choice("filter", "attention", "meta-token filter: attention (class token's attention, EViT), "
                      "similarity (dot product with the class token), none (Table 2)", FILTERS),
        Option.flag("motion", True, "aggregate position embeddings as motion and fuse [A, P]; false = appearance "
                    "only, no fusion layer (Table 1)"),
        Option.choice("phi", "mlp", "correspondence encoder: mlp (D-2D-D, matches the paper's parameter counts) or "
                      "linear (D-D)", PHI_KINDS),
        Option.flag("share", True, "one STTM module shared by all merge layers, as the paper states; false = one per "
                    "layer"),
    )
    families = ("vit", "timesformer")
    default_backbone = "vit-b-cls"
    export_blocker = ("it draws the first meta token of every merge from a seeded torch.Generator at every forward "
                      "pass, which neither ONNX exporter can capture. Measure STTM in PyTorch, or export evad or "
                      "poguise.")

    def __init__(self, info, keep, seed: int = 0, **options):
        super().__init__(info, keep, seed=seed, **options)
        self.merge_ratio = float(keep)
        settings = self.settings
        self.layers = resolve_merge_layers(info.depth, settings["layers"])
        self.mode = settings["merge"]
        if self.mode == "two-stage":
            kinds = ["spatial"] + ["spatio-temporal"] * (len(self.layers) - 1)
        else:
            kinds = ["spatial" if self.mode == "spatial" else "spatio-temporal"] * len(self.layers)
        self.stages = dict(zip(self.layers, kinds))
        self.alpha = float(settings["alpha"])
        self.filter = settings["filter"]
        self.motion = bool(settings["motion"])
        self.phi_kind = settings["phi"]
        self.share = bool(settings["share"])
        self.mergers = nn.ModuleList(Merger(info.dim, self.phi_kind, self.motion)
                                     for _ in range(1 if self.share else len(self.layers)))
        # TimeSformer: blocks after the first merge see no frames x patches grid, so they run joint attention
        self.grid_until_layer = self.layers[0]
        if info.family == "vit":
            # vit.py adds this fixed table (no parameters) to the grid tokens: it is E for the first merge.
            # A backbone with other position embeddings hands its table over in state.extras["pos_table"].
            from vidprune.backbones.vit import sinusoid_table

            self.register_buffer("position_table", sinusoid_table(info.num_grid_tokens, info.dim)[0],
                                 persistent=False)
        else:
            self.position_table = None
        self._generator = torch.Generator()
        self._filter_rows: Optional[torch.Tensor] = None

    def describe(self) -> dict:
        return {"layers": ",".join(map(str, self.layers)), "merge": self.mode,
                "stages": ",".join(f"{kind}@{layer}" for layer, kind in self.stages.items()),
                "alpha": self.alpha, "filter": self.filter, "motion": self.motion, "phi": self.phi_kind,
                "share": self.share}

    # ------------------------------------------------------------------ insertion points

    def begin_forward(self, state: TokenState) -> TokenState:
        # the random first orthogonal pick is redrawn from the seed at every forward: deterministic
        self._generator.manual_seed(self.seed)
        self._filter_rows = None
        return state

    def attention_tap(self, layer: int, state: TokenState):
        if layer + 1 in self.stages and self.filter == "attention":
            return FilterAttention(has_cls=state.n_protected > 0)
        return None

    def after_attention(self, layer: int, state: TokenState, attn) -> TokenState:
        if layer + 1 in self.stages and self.filter == "attention" and attn is not None:
            if isinstance(attn, torch.Tensor):  # a backbone without taps hands over the full probabilities
                tap = FilterAttention(has_cls=state.n_protected > 0)
                tap(attn, 0)
                attn = tap
            self._filter_rows = attn.rows
        return state

    def after_block(self, layer: int, state: TokenState) -> TokenState:
        if layer + 1 not in self.stages:
            return state
        merger = self.mergers[0 if self.share else self.layers.index(layer + 1)]
        return self.merge(state, self.stages[layer + 1], merger)

    # ------------------------------------------------------------------ the merge

    def counts(self, tokens: int) -> tuple[int, int]:
        """(L', candidates) for a group of `tokens` tokens."""
        out = keep_count(tokens, 1.0 - self.merge_ratio)
        if self.filter == "none":
            return out, out
        return out, min(tokens, max(out, math.floor(self.alpha * out + 1e-9)))

    def merge(self, state: TokenState, kind: str, merger: Merger) -> TokenState:
        b, _, d = state.x.shape
        prefix = state.n_protected
        tokens = state.x[:, prefix:]
        length = tokens.shape[1]
        groups = self.info.grid[0] if kind == "spatial" else 1
        if length % groups:
            raise RuntimeError(f"a spatial merge needs the same number of tokens in each of {groups} frames, got {length}")
        per_group = length // groups
        out, candidates = self.counts(per_group)
        x = tokens.reshape(b * groups, per_group, d)

        # the same first pick for every sample: a batched forward equals per-sample forwards
        first = torch.randint(per_group, (groups,), generator=self._generator).to(x.device).repeat(b)
        meta = most_orthogonal(x, candidates, first)
        if candidates > out:
            scores = self._filter_scores(state, meta, x, groups)
            meta = meta.gather(1, scores.topk(out, dim=1).indices)
        meta = meta.sort(dim=1).values

        e = self._embeddings(state).reshape(b * groups, per_group, d) if merger.fusion is not None else None
        y, motion, c = merger(x, e, meta)

        pos = state.pos[:, prefix:].reshape(b * groups, per_group).gather(1, meta).reshape(b, -1)
        size = state.size[:, prefix:] if state.size is not None else torch.ones_like(state.pos[:, prefix:], dtype=x.dtype)
        size = (c * size.reshape(b * groups, per_group, 1).to(c.dtype)).sum(dim=1).reshape(b, -1)
        prefix_size = torch.ones(b, prefix, dtype=size.dtype, device=size.device)
        extras = dict(state.extras)
        if motion is not None:
            extras["sttm_motion"] = motion.reshape(b, -1, d)
        return replace(state, x=torch.cat([state.x[:, :prefix], y.reshape(b, -1, d)], dim=1),
                       pos=torch.cat([state.pos[:, :prefix], pos], dim=1),
                       size=torch.cat([prefix_size, size], dim=1), extras=extras)

    def _embeddings(self, state: TokenState) -> torch.Tensor:
        """E of the current tokens (B, L, D): P of the previous merge, else the grid position embeddings."""
        if "sttm_motion" in state.extras:
            return state.extras["sttm_motion"]
        table = state.extras.get("pos_table", self.position_table)
        if table is None:
            raise RuntimeError("the backbone provides no position table for STTM's motion features")
        return table.to(state.x.dtype)[state.pos[:, state.n_protected:]]

    def _filter_scores(self, state: TokenState, candidates: torch.Tensor, x: torch.Tensor, groups: int) -> torch.Tensor:
        """(G, K) filter score of each candidate meta token: higher is kept."""
        b = state.x.shape[0]
        if self.filter == "similarity":
            # the class token, or without one the mean token as its stand-in
            anchor = state.x[:, 0] if state.n_protected else state.x.mean(dim=1)
            anchor = anchor.repeat_interleave(groups, dim=0)
            chosen = x.gather(1, candidates[..., None].expand(-1, -1, x.shape[-1]))
            return torch.bmm(chosen, anchor[:, :, None]).squeeze(-1)
        rows, self._filter_rows = self._filter_rows, None
        if rows is None:
            raise RuntimeError("STTM's attention filter got no attention probabilities from the block")
        if rows.shape[0] == b:
            scores = rows[:, state.n_protected:]
        else:  # a divided TimeSformer block: per-frame spatial attention, the class-token copy first
            scores = rows.reshape(b, -1, rows.shape[-1])[:, :, 1:].reshape(b, -1)
        return scores.reshape(b * groups, -1).gather(1, candidates)
