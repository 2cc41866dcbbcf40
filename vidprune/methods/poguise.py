"""PO-GUISE: pose-guided token selection and merging (Pizarro et al., "Pose-guided token selection for the
recognition of activities of daily living"), Sec. 3.1-3.3 and Algorithm 1.

The method puts a learnable class token and hm_res^2 learnable heatmap (pose) tokens in front of the
visual tokens, X = (X_cls, X_p, X_vis); the class token feeds the classifier and the pose tokens a
ViTPose-style heatmap head. Between the attention and the MLP of layers 4, 7 and 10 (the ends of the
first three of the stages 4, 3, 3, 2) every visual token i is scored by the head-averaged attention it
pays to the semantic tokens,
    T(i) = kappa * A(i, cls) + (1 - kappa) * sum_j A(i, pose_j),
the top floor(rho * N_vis) visual tokens are kept and floor(lambda * N_disc) of the discarded ones
survive merged: each discarded token's candidate is its most similar other discarded token (cosine of
their attention rows among the discarded tokens), and the tokens most similar to their candidates are
averaged with them (Algorithm 1, its literal bugs fixed). Class and pose tokens are never removed.
Every choice the paper leaves open is in docs/methods/poguise.md.
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
from vidprune.methods.base import TokenMethod, resolve_layers
from vidprune.registry import Knob, Option, register_method
from vidprune.tokens import TokenState, keep_count

# cls: PR(C), kappa = 1 (Top-K / EViT-style); pose: PR(P), kappa = 0; cls+pose: PO-GUISE's score;
# mf: PR(MF), attention to the middle temporal slice (EVAD-like); auto: cls+pose with heatmap tokens, else cls.
SCORES = ("auto", "cls+pose", "cls", "pose", "mf")
SIMILARITIES = ("attention", "features")


def merge_count(n_discarded: int, ratio: float) -> int:
    """floor(lambda * N_disc); 0 when fewer than two tokens are discarded (a token cannot merge with itself)."""
    if n_discarded < 2:
        return 0
    return min(math.floor(n_discarded * ratio + 1e-9), n_discarded)


def merge_discarded(x: torch.Tensor, size: torch.Tensor, pos: torch.Tensor, vectors: torch.Tensor,
                    n_merge: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 on the discarded tokens of a batch, with its literal bugs fixed.

    x (B, Nd, D) features, size (B, Nd) tokens each stands for, pos (B, Nd) grid positions, vectors
    (B, Nd, F) what the cosine similarity compares. Every token's candidate is its most similar *other*
    token (diagonal at -inf, not 0, so a token with only negative similarities never picks itself); the
    n_merge tokens with the strongest similarity to their candidate are each averaged with it (the plain
    mean of the two feature vectors, as the text says). Returns (B, n_merge) features, sizes (the sum of
    the pair's) and positions (the selected token's), in the selected tokens' original order.
    """
    b, nd, d = x.shape
    unit = F.normalize(vectors, dim=-1)
    similarity = torch.bmm(unit, unit.transpose(1, 2))
    self_pair = torch.eye(nd, dtype=torch.bool, device=x.device)
    similarity = similarity.masked_fill(self_pair, float("-inf"))
    strongest, candidate = similarity.max(dim=-1)
    chosen = strongest.topk(n_merge, dim=1).indices.sort(dim=1).values
    partner = candidate.gather(1, chosen)
    take = lambda t, i: t.gather(1, i.unsqueeze(-1).expand(-1, -1, d))  # noqa: E731
    merged = (take(x, chosen) + take(x, partner)) / 2
    return merged, size.gather(1, chosen) + size.gather(1, partner), pos.gather(1, chosen)


class SemanticAttention(AttentionTap):
    """Attention tap for a selecting layer: for each block of queries (B, H, c, N) it takes the head mean,
    scores every query by its attention to the keys weighted by `key_weights` (B, N) and, when the merge
    compares attention rows, keeps the head-averaged rows (B, N, N)."""

    def __init__(self, key_weights: torch.Tensor, keep_rows: bool):
        self.key_weights = key_weights
        self.keep_rows = keep_rows
        self.scores: Optional[torch.Tensor] = None
        self.rows: Optional[torch.Tensor] = None

    def __call__(self, probs: torch.Tensor, start: int, samples: slice = slice(None)) -> None:
        """probs (b, H, c, N): queries start..start+c of the samples `samples` of the batch."""
        _, _, c, n = probs.shape
        mean = probs.mean(dim=1)
        if self.scores is None:
            batch = self.key_weights.shape[0]
            self.scores = probs.new_empty(batch, n)
            if self.keep_rows:
                self.rows = probs.new_empty(batch, n, n)
        # A batched matmul rather than einsum: every FLOP counter knows bmm.
        weights = self.key_weights[samples].to(mean.dtype).unsqueeze(-1)
        self.scores[samples, start:start + c] = torch.bmm(mean, weights).squeeze(-1)
        if self.keep_rows:
            self.rows[samples, start:start + c] = mean


class HeatmapHead(nn.Module):
    """ViTPose's classic decoder [38] on the pose tokens: the hm_res x hm_res token map through two 4x4
    stride-2 deconvolutions (256 channels, BN, ReLU) and a 1x1 convolution to L landmark heatmaps of
    4 hm_res x 4 hm_res. The LayerNorm stands in for the backbone's last norm ViTPose decodes after
    (VideoMAE's blocks end without one)."""

    def __init__(self, dim: int, landmarks: int, hm_res: int, channels: int = 256):
        super().__init__()
        self.hm_res = hm_res
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(dim, channels, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.final = nn.Conv2d(channels, landmarks, 1)

    def forward(self, pose_tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = pose_tokens.shape
        grid = self.norm(pose_tokens).transpose(1, 2).reshape(b, d, self.hm_res, self.hm_res)
        return self.final(self.deconv(grid))


@register_method
class POGUISE(TokenMethod):
    name = "poguise"
    description = ("pose-guided selection (attention to class + heatmap tokens) and merging of the discarded "
                   "tokens between attention and MLP of layers 4, 7, 10")
    paper = ("Pizarro et al., Pose-guided token selection for the recognition of activities of daily living "
             "(PO-GUISE)")
    knob = Knob("rho", 0.6, 0.0, 1.0, "fraction of the current visual tokens kept by the score at each selecting layer")
    options = (
        Option.number("lambda", 0.3, "fraction of the discarded tokens that survive merged (paper default 0.3)",
                      0.0, 1.0, low_inclusive=False),
        Option.number("kappa", 0.1, "weight of the class-token attention in the score (the paper: 'a small constant "
                                    "factor', value not stated)", 0.0, 1.0),
        Option.choice("score", "auto", "pruning score: cls+pose (PO-GUISE), cls (PR(C)), pose (PR(P)), mf (PR(MF), "
                                       "middle slice), auto = cls+pose with heatmap tokens, cls without", SCORES),
        Option.flag("merge", True, "merge part of the discarded tokens (MG); false = pruning only"),
        Option.flag("heatmap", True, "heatmap (pose) tokens and head, HM(P); false = class token only"),
        Option.number("hm_res", 8, "heatmap token map side: hm_res^2 pose tokens", 1, integer=True),
        Option.number("landmarks", 25, "heatmap channels L (25 NTU, 13 Toyota-Smarthome)", 1, integer=True),
        Option.choice("similarity", "attention", "what the merge compares: attention (rows among the discarded "
                                                 "tokens, Table 1) or features (Algorithm 1)", SIMILARITIES),
        Option.flag("decode_heatmaps", False, "run the heatmap head in the forward pass (and count it); the paper's "
                                              "GFLOPs leave it out"),
        Option.layers("layers", "1-based selecting layers; auto = 4,7,10 for 12 blocks"),
    )
    families = ("vit",)
    default_backbone = "vit-b"

    def __init__(self, info, keep, seed: int = 0, **options):
        super().__init__(info, keep, seed=seed, **options)
        settings = self.settings
        self.layers = resolve_layers(info, settings["layers"])
        self.merge_ratio = float(settings["lambda"])
        self.merge = bool(settings["merge"])
        self.heatmap = bool(settings["heatmap"])
        self.hm_res = int(settings["hm_res"])
        self.landmarks = int(settings["landmarks"])
        self.similarity = settings["similarity"]
        self.decode_heatmaps = bool(settings["decode_heatmaps"])
        self.score = settings["score"]
        if self.score == "auto":
            self.score = "cls+pose" if self.heatmap else "cls"
        if "pose" in self.score and not self.heatmap:
            raise VidpruneError(
                f"score={self.score} needs the heatmap tokens, but heatmap=false. "
                "Use --set heatmap=true, or --set score=cls (or mf) for a model without them."
            )
        if self.decode_heatmaps and not self.heatmap:
            raise VidpruneError("decode_heatmaps=true needs the heatmap tokens: use --set heatmap=true.")
        self.kappa = {"cls": 1.0, "pose": 0.0, "cls+pose": float(settings["kappa"])}.get(self.score)
        self.num_pose = self.hm_res ** 2 if self.heatmap else 0
        # The backbone's own class token (vit-b-cls) is reused; otherwise PO-GUISE adds one (VideoMAE has none).
        self.own_cls = info.n_prefix == 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, info.dim)) if self.own_cls else None
        self.pose_tokens = nn.Parameter(torch.zeros(1, self.num_pose, info.dim)) if self.heatmap else None
        self.heatmap_head = HeatmapHead(info.dim, self.landmarks, self.hm_res) if self.heatmap else None
        generator = torch.Generator().manual_seed(seed)
        for token in (self.cls_token, self.pose_tokens):
            if token is not None:
                with torch.no_grad():
                    token.copy_(torch.randn(token.shape, generator=generator).clamp_(-2, 2) * 0.02)
        self.last_heatmaps: Optional[torch.Tensor] = None
        self.last_visual_tokens: list[int] = []

    def describe(self) -> dict:
        """The effective configuration: settings a variant does not use are None (lambda without merging, ...)."""
        return {"lambda": self.merge_ratio if self.merge else None, "kappa": self.kappa, "score": self.score,
                "merge": self.merge, "heatmap": self.heatmap, "hm_res": self.hm_res if self.heatmap else None,
                "landmarks": self.landmarks if self.heatmap else None,
                "similarity": self.similarity if self.merge else None, "decode_heatmaps": self.decode_heatmaps,
                "layers": ",".join(map(str, self.layers))}

    @property
    def num_semantic(self) -> int:
        """Class token plus pose tokens: the protected prefix."""
        return 1 + self.num_pose

    def begin_forward(self, state: TokenState) -> TokenState:
        x, pos = state.x, state.pos
        b = x.shape[0]
        prefix = [self.cls_token.to(x.dtype).expand(b, -1, -1)] if self.own_cls else [x[:, :1]]
        if self.heatmap:
            prefix.append(self.pose_tokens.to(x.dtype).expand(b, -1, -1))
        visual = x if self.own_cls else x[:, 1:]
        visual_pos = pos if self.own_cls else pos[:, 1:]
        semantic_pos = -torch.arange(1, self.num_semantic + 1, device=pos.device, dtype=pos.dtype)
        self.last_visual_tokens = [visual.shape[1]]
        self.last_heatmaps = None
        return replace(state, x=torch.cat(prefix + [visual], dim=1),
                       pos=torch.cat([semantic_pos.expand(b, -1), visual_pos], dim=1),
                       size=None, n_protected=self.num_semantic, extras=dict(state.extras))

    def selects(self, layer: int) -> bool:
        return layer + 1 in self.layers and self.keep < 1.0

    def needs_attention(self, layer: int) -> bool:
        return self.selects(layer)

    def key_weights(self, state: TokenState) -> torch.Tensor:
        """(B, N) weight of each key in T(i) = sum_j w_j A(i, j)."""
        weights = torch.zeros(state.pos.shape, dtype=state.x.dtype, device=state.x.device)
        if self.score == "mf":
            weights = (state.temporal_index() == self.info.grid[0] // 2).to(state.x.dtype)
        else:
            weights[:, 0] = self.kappa
            weights[:, 1:self.num_semantic] = 1.0 - self.kappa
        return weights

    def attention_tap(self, layer: int, state: TokenState):
        if not self.selects(layer):
            return None
        return SemanticAttention(self.key_weights(state), keep_rows=self.merge and self.similarity == "attention")

    def after_attention(self, layer: int, state: TokenState, attn) -> TokenState:
        if attn is None or not self.selects(layer):
            return state
        if not isinstance(attn, SemanticAttention):
            tap = self.attention_tap(layer, state)
            tap(attn, 0)
            attn = tap
        return self.select(state, attn)

    def select(self, state: TokenState, tap: SemanticAttention) -> TokenState:
        """Keep the semantic prefix, the top floor(rho N_vis) visual tokens by T and, merged, floor(lambda N_disc)
        of the rest; output order (prefix, kept in original order, merged), as concat(X_sel, X_merge)."""
        p = state.n_protected
        n_vis = state.num_tokens - p
        n_sel = keep_count(n_vis, self.keep)
        n_disc = n_vis - n_sel
        if n_disc == 0:
            self.last_visual_tokens.append(n_vis)
            return state
        order = torch.sort(tap.scores[:, p:], dim=1, descending=True, stable=True).indices + p
        selected = order[:, :n_sel].sort(dim=1).values
        discarded = order[:, n_sel:].sort(dim=1).values
        b = state.x.shape[0]
        prefix = torch.arange(p, device=selected.device).unsqueeze(0).expand(b, -1)
        size = state.size if state.size is not None else torch.ones_like(state.pos, dtype=state.x.dtype)
        kept = replace(state, size=size).gather(torch.cat([prefix, selected], dim=1))
        n_merge = merge_count(n_disc, self.merge_ratio) if self.merge else 0
        self.last_visual_tokens.append(n_sel + n_merge)
        if n_merge == 0:
            return kept
        disc = replace(state, size=size).gather(discarded)
        if self.similarity == "attention":
            rows = tap.rows.gather(1, discarded.unsqueeze(-1).expand(-1, -1, tap.rows.shape[-1]))
            vectors = rows.gather(2, discarded.unsqueeze(1).expand(-1, n_disc, -1))
        else:
            vectors = disc.x
        x, merged_size, pos = merge_discarded(disc.x, disc.size, disc.pos, vectors, n_merge)
        return replace(kept, x=torch.cat([kept.x, x], dim=1), pos=torch.cat([kept.pos, pos], dim=1),
                       size=torch.cat([kept.size, merged_size], dim=1))

    def pool(self, state: TokenState) -> Optional[torch.Tensor]:
        if self.decode_heatmaps:
            self.last_heatmaps = self.heatmap_head(state.x[:, 1:self.num_semantic])
            state.extras["heatmaps"] = self.last_heatmaps
        return state.x[:, 0]

    def visual_token_counts(self, n_vis: int) -> list[int]:
        """Visual tokens after each selecting layer, from the geometry alone: N_sel + N_merge, compounding."""
        counts = [n_vis]
        for _ in (self.layers if self.keep < 1.0 else ()):
            n_sel = keep_count(counts[-1], self.keep)
            n_merge = merge_count(counts[-1] - n_sel, self.merge_ratio) if self.merge else 0
            counts.append(n_sel + n_merge)
        return counts
