"""MADS: multi-modal frame pruning by CLS scoring (Higashi, Ishibashi, Meng), Sec. 3.2, on a ViViT.

Frame scores (Eqs. 11-12): s_f^m = MLP_m(CLS_f^m), S_f = sum_m s_f^m, so every modality keeps the same
frames. Two selection strategies, chosen with `--set strategy=...`:

* topk (Sec. 3.2.2): theta = mean_f S_f (Eq. 16), soft_f = sigmoid(s * (S_f - theta)) (Eq. 17), the
  clip split into n segments and the top K frames of each segment kept. The total kept is
  floor(F * keep); each segment gets floor(total / n) and the total % n remaining frames go to the
  segments whose best not-yet-kept frame scores highest (one each), so every segment contributes and
  the count is fixed (static shapes).
* threshold (Sec. 3.2.1): a learnable threshold tau; frames with S_f >= tau are kept (the lowest-scoring
  fraction r = 1 - keep is pruned). tau is trained with L_th = lambda * |tau - (mu + z_r * sigma)|
  (Eqs. 13-15; mu, sigma the per-clip mean and population std of S_f, z_r = Phi^-1(r)). Training uses a
  soft mask (log sigmoid(s * (S_f - tau)) added to the temporal attention logits), inference the hard
  mask, so the number of kept frames varies per clip. Until tau has been trained (`tau_trained`), the
  hard mask uses the per-clip target mu + z_r * sigma that L_th pulls tau to.

Placement: the first `score_after` spatial blocks run on every frame, the frame CLS tokens after them are
scored, and the remaining spatial blocks and the whole temporal encoder run on the kept frames only.
Choices the paper leaves open and the cost formula are in docs/methods/mads.md.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.backbones.vivit import FrameSelection, ViViTInfo
from vidprune.errors import VidpruneError
from vidprune.methods.base import TokenMethod
from vidprune.registry import Knob, Option, register_method
from vidprune.tokens import keep_count

STRATEGIES = ("topk", "threshold")
ACCURACY_NOTE = {
    "topk": "accuracy needs a trained checkpoint: untrained frame scorers pick arbitrary frames "
            "(the cost does not depend on the weights)",
    "threshold": "accuracy needs a trained checkpoint: untrained frame scorers and tau pick arbitrary frames, "
                 "and the number kept (hence the cost) depends on the scores of each clip",
}


class FrameScorer(nn.Module):
    """MLP_m of Eq. 11 (architecture not stated): Linear(D, D/4), GELU, Linear(D/4, 1)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = max(dim // 4, 1)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(cls))).squeeze(-1)


@register_method
class MADS(TokenMethod):
    name = "mads"
    description = "multi-modal frame pruning by CLS scoring: top-K per segment or a learnable threshold (ViViT)"
    paper = ("Higashi, Ishibashi, Meng, Multi-Modal Video Action Recognition with Learnable Frame Pruning via "
             "Temporal Token Scoring")
    knob = Knob("frame_keep", 0.5, 0.0, 1.0,
                "fraction of frames kept = 1 - pruning rate r (topk: exactly floor(F*keep) frames; "
                "threshold: the rate tau is trained towards, realised per clip)")
    options = (
        Option.choice("strategy", "topk", "topk (top-K per temporal segment) or threshold (learnable tau)", STRATEGIES),
        Option.number("segments", 4, "topk: number of temporal segments n (not stated in the paper)", 1, integer=True),
        Option.number("slope", 1.0, "slope s of the sigmoid soft mask (not stated in the paper)", 0.0,
                      low_inclusive=False, high_inclusive=False),
        Option.number("lambda", 1.0, "threshold: weight lambda of L_th (not stated in the paper)", 0.0,
                      high_inclusive=False),
        Option.number("score_after", 1, "spatial blocks run on every frame before scoring (0: score the mean patch "
                      "embedding, so pruned frames skip the whole spatial encoder)", 0, integer=True),
    )
    families = ("vivit",)
    default_backbone = "vivit-b"
    no_op_keep = 1.0  # frame_keep = 1 selects nothing: the plain backbone (the scorers stay unused)

    def __init__(self, info, keep, seed: int = 0, **options):
        super().__init__(info, keep, seed=seed, **options)
        if not isinstance(info, ViViTInfo):
            raise VidpruneError("mads prunes frames of a ViViT: use a vivit backbone, e.g. --backbone vivit-b.")
        values = self.settings
        self.strategy = values["strategy"]
        self.segments = values["segments"]
        self.slope = values["slope"]
        self.lam = values["lambda"]
        self.score_after = values["score_after"]
        self.frames = info.frames
        if self.score_after > info.spatial_depth:
            raise VidpruneError(
                f"score_after={self.score_after} exceeds the {info.spatial_depth} spatial blocks of this ViViT; "
                f"use 0..{info.spatial_depth}."
            )
        self.scorers = nn.ModuleDict({m: FrameScorer(info.dim) for m in info.modalities})
        self.kept_frames = keep_count(self.frames, self.keep)
        if self.strategy == "topk":
            if self.segments > self.frames:
                raise VidpruneError(
                    f"segments={self.segments} exceeds the {self.frames} frames of a clip; use at most {self.frames}."
                )
            if self.keep < 1.0 and self.kept_frames < self.segments:
                raise VidpruneError(
                    f"frame_keep={self.keep:g} keeps {self.kept_frames} of {self.frames} frames, fewer than the "
                    f"{self.segments} segments (each keeps at least one); raise --keep to "
                    f">= {self.segments / self.frames:g} or lower --set segments."
                )
            self.bounds = [(i * self.frames // self.segments, (i + 1) * self.frames // self.segments)
                           for i in range(self.segments)]
            self.per_segment, self.extra = divmod(self.kept_frames, self.segments)
        else:
            # z_r = Phi^-1(r): a fraction r of normal scores lies below mu + z_r * sigma; those are pruned.
            self.z_r = NormalDist().inv_cdf(1.0 - self.keep) if self.keep < 1.0 else float("-inf")
            self.tau = nn.Parameter(torch.zeros(()))
            self.register_buffer("tau_trained", torch.tensor(False))
        self.last_scores: Optional[torch.Tensor] = None
        self.selection_stats: dict = {}  # what the last frame selection adds to the backbone's last_stats

    @property
    def select_after(self) -> Optional[int]:
        """Spatial blocks before the frame decision; None at keep 1 (nothing to prune: the plain backbone)."""
        return None if self.keep >= 1.0 else self.score_after

    @property
    def input_dependent_counts(self) -> Optional[str]:
        if self.strategy == "threshold" and (self.keep or 1.0) < 1.0:
            return "strategy=threshold keeps a different number of frames per clip (those scoring above tau)"
        return None

    @property
    def export_blocker(self) -> Optional[str]:
        if self.input_dependent_counts:
            return (f"{self.input_dependent_counts}, a data-dependent shape that a static graph cannot hold. Export "
                    "--set strategy=topk instead (exactly floor(frames * keep) frames per clip).")
        return None

    def forward_stats(self) -> dict:
        return dict(self.selection_stats)

    def describe(self) -> dict:
        out = {"strategy": self.strategy, "slope": self.slope, "score_after": self.score_after}
        if self.strategy == "topk":
            out["segments"] = self.segments
        else:
            out["lambda"] = self.lam
        return out

    # ------------------------------------------------------------------ scoring (Eqs. 11-12)

    def frame_scores(self, summary: torch.Tensor) -> torch.Tensor:
        """(B, M, T, D) per-modality frame CLS -> (B, T) summed scores S_f."""
        return sum(self.scorers[m](summary[:, i]) for i, m in enumerate(self.info.modalities))

    def select_frames(self, summary: torch.Tensor) -> FrameSelection:
        scores = self.frame_scores(summary)
        self.last_scores = scores
        if self.strategy == "topk":
            selection = self._top_k_segments(scores)
        else:
            selection = self._threshold(scores)
        return selection

    # ------------------------------------------------------------------ top-K segments (Eqs. 16-17)

    def soft_mask(self, scores: torch.Tensor) -> torch.Tensor:
        theta = scores.mean(dim=1, keepdim=True)
        return torch.sigmoid(self.slope * (scores - theta))

    def _top_k_segments(self, scores: torch.Tensor) -> FrameSelection:
        soft = self.soft_mask(scores)
        chosen, spare_score, spare_index = [], [], []
        for start, stop in self.bounds:
            take = min(self.per_segment + 1, stop - start)
            top = soft[:, start:stop].topk(take, dim=1)  # sorted, best first
            chosen.append(top.indices[:, : self.per_segment] + start)
            if take > self.per_segment:
                spare_score.append(top.values[:, self.per_segment])
                spare_index.append(top.indices[:, self.per_segment] + start)
            else:
                spare_score.append(torch.full_like(soft[:, 0], float("-inf")))
                spare_index.append(torch.zeros_like(chosen[-1][:, 0]))
        index = torch.cat(chosen, dim=1)
        if self.extra:
            best = torch.stack(spare_score, dim=1).topk(self.extra, dim=1).indices
            index = torch.cat([index, torch.stack(spare_index, dim=1).gather(1, best)], dim=1)
        index = index.sort(dim=1).values
        bias = None
        if self.training:  # log soft mask on the kept frames: hard choice, soft weighting for gradients
            theta = scores.mean(dim=1, keepdim=True)
            bias = F.logsigmoid(self.slope * (scores - theta)).gather(1, index)
        self.selection_stats = {"accuracy_note": ACCURACY_NOTE["topk"]}
        return FrameSelection(index=index, key_bias=bias)

    # ------------------------------------------------------------------ learnable threshold (Eqs. 13-15)

    def threshold_target(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, 1) mu + z_r * sigma per clip (population std, Eq. 13), detached: L_th moves tau only."""
        scores = scores.detach()
        mu = scores.mean(dim=1, keepdim=True)
        sigma = scores.std(dim=1, unbiased=False, keepdim=True)
        return mu + self.z_r * sigma

    def threshold_loss(self, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L_th = lambda * |tau - (mu + z_r sigma)|, averaged over the clips of the last forward (or `scores`)."""
        if self.strategy != "threshold":
            raise VidpruneError("threshold_loss belongs to strategy=threshold; this mads uses topk.")
        scores = self.last_scores if scores is None else scores
        if scores is None:
            raise VidpruneError("threshold_loss needs frame scores: run a forward pass first.")
        if self.training:
            self.tau_trained.fill_(True)
        return self.lam * (self.tau - self.threshold_target(scores)).abs().mean()

    def _threshold(self, scores: torch.Tensor) -> FrameSelection:
        b, t = scores.shape
        if self.training:
            index = torch.arange(t, device=scores.device).unsqueeze(0).expand(b, -1)
            bias = F.logsigmoid(self.slope * (scores - self.tau.to(scores.dtype)))
            self.selection_stats = {}
            return FrameSelection(index=index, key_bias=bias)
        trained = bool(self.tau_trained)
        threshold = self.tau.to(scores.dtype) if trained else self.threshold_target(scores)
        keep = scores >= threshold
        # never an empty clip: the best frame always stays
        keep = keep | F.one_hot(scores.argmax(dim=1), t).bool()
        counts = keep.sum(dim=1)
        kept = int(counts.max())
        frame = torch.arange(t, device=scores.device).unsqueeze(0)
        order = torch.where(keep, frame, frame + t).argsort(dim=1)[:, :kept]  # kept frames first, in time order
        valid = torch.arange(kept, device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
        self.selection_stats = {
            "threshold": "learned tau" if trained else "per-clip target mu + z_r*sigma (tau untrained)",
            "accuracy_note": ACCURACY_NOTE["threshold"],
        }
        return FrameSelection(index=order, valid=None if bool(valid.all()) else valid)
