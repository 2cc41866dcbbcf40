"""SLLM / FFRes: sample less (encode every r-th frame), learn more (restore the skipped frames' features).

Cheng, Guo, Nie, Cheng, Kankanhalli, "Sample Less, Learn More: Efficient Action Recognition via Frame
Feature Restoration". A frame method on a frame-level backbone (`clip` family):

* Sample less (Eq. 4): only frames j = 1 (mod r), 1-based, i.e. 0-based 0, r, 2r, ..., reach the image
  encoder: ceil(T / r) of T.
* Learn more (Eqs. 6-7): a skipped frame m between consecutive encoded frames l and l + r gets
  F_m = (1 - lambda) * h(g_l, g_r) + lambda * h(g_r, g_l), lambda = (m - l) / r, where h is FFRes: a
  small trainable transformer (3 layers, Sec. 3.4) over the pair (anchor, other) whose output at the
  anchor is the restored feature. A learned role embedding tells anchor from other, so h(g_l, g_r) and
  h(g_r, g_l) differ, as Eq. 6 needs; both directions of every pair run in one batched call.
* Skipped frames after the last encoded frame have no right neighbour; footnote 1 excludes them from
  FFRes. `tail=copy` (default) gives them the last encoded frame's feature, so the head still sees T
  features (the paper counts T/2 restored features at r = 2); `tail=drop` leaves them out.
* `restore=false` is the "w/o FFRes" ablation: the head sees only the encoded frames.

Training (Algorithm 1, Eq. 10): `restoration_loss` compares the restored features with the frozen,
gradient-free encoder's features of the same frames. Eq. 10 as printed is -KL(g || F) and would be
maximised; we minimise KL(softmax(g) || softmax(F)) (or cosine / MSE with `loss=`). The FFRes weights
here are untrained: efficiency sweeps are exact, accuracy needs a trained checkpoint.
Choices the paper leaves open are in docs/methods/sllm.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.backbones.clip import FrameBackboneInfo, Transformer
from vidprune.errors import VidpruneError
from vidprune.methods.base import TokenMethod
from vidprune.registry import Knob, Option, register_method

UNTRAINED_NOTE = ("sllm: FFRes weights are untrained (cost is exact; accuracy needs a trained FFRes "
                  "checkpoint, trained with SLLM.restoration_loss)")


@dataclass(frozen=True)
class SamplingPlan:
    """Which frames of a T-frame clip the image encoder sees (0-based indices)."""

    frames: int
    r: int
    encoded: tuple[int, ...]  # j = 1 (mod r), 1-based
    restored: tuple[int, ...]  # skipped frames with an encoded frame on both sides: FFRes restores them
    trailing: tuple[int, ...]  # skipped frames after the last encoded frame (footnote 1)


def sampling_plan(frames: int, r: int) -> SamplingPlan:
    if frames < 1 or r < 1 or int(r) != r:
        raise VidpruneError(f"sampling needs frames >= 1 and a whole r >= 1, got frames={frames}, r={r}.")
    encoded = tuple(range(0, frames, r))
    last = encoded[-1]
    skipped = [t for t in range(frames) if t % r]
    return SamplingPlan(frames, r, encoded, tuple(t for t in skipped if t < last),
                        tuple(t for t in skipped if t > last))


def restoration_divergence(restored: torch.Tensor, target: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """A divergence >= 0 between restored features F and target features g (..., E), averaged over frames.

    kl: KL(softmax(g) || softmax(F)), the minimisable form of Eq. 10 (which is its negative);
    cosine: 1 - cos(F, g) (Table 7 reports the cosine similarity); mse: mean squared error.
    """
    if kind == "kl":
        log_p = F.log_softmax(target.float(), dim=-1)
        log_q = F.log_softmax(restored.float(), dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(restored.float(), target.float(), dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(restored.float(), target.float())
    raise VidpruneError(f"loss must be kl, cosine or mse, got '{kind}'.")


class FFRes(nn.Module):
    """h(anchor, other): a pre-norm transformer over the two-token sequence [anchor, other] -> anchor row."""

    def __init__(self, dim: int, layers: int = 3):
        super().__init__()
        self.role_embedding = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.transformer = Transformer(dim, layers, max(1, dim // 64))

    def forward(self, anchor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        x = torch.stack([anchor, other], dim=1) + self.role_embedding.to(anchor.dtype)
        return self.transformer(x)[:, 0]

    def both_directions(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_l->r, F_r->l), each (B, K-1, E), for every pair of consecutive encoded frames (B, K, E)."""
        left, right = kept[:, :-1], kept[:, 1:]
        b, pairs, e = left.shape
        anchors = torch.cat([left, right], dim=1).reshape(-1, e)
        others = torch.cat([right, left], dim=1).reshape(-1, e)
        out = self(anchors, others).reshape(b, 2 * pairs, e)
        return out[:, :pairs], out[:, pairs:]


@register_method
class SLLM(TokenMethod):
    name = "sllm"
    description = ("frame method: encode frames 1, 1+r, 1+2r, ... only; FFRes restores the others' features "
                   "(untrained: cost only, accuracy needs a trained checkpoint)")
    paper = "Cheng et al., Sample Less, Learn More: Efficient Action Recognition via Frame Feature Restoration"
    knob = Knob("r", 2, 1, math.inf,
                "sampling filter r (integer >= 1, default 2): encode frames j = 1 (mod r), restore the rest",
                low_inclusive=True, high_inclusive=False, integer=True, cost_increases=False)
    options = (
        Option.flag("restore", True, "restore the skipped frames with FFRes (false: the head sees the encoded frames only)"),
        Option.choice("tail", "copy", "skipped frames after the last encoded one: copy its feature, or drop them",
                      ("copy", "drop")),
        Option.number("ffres_layers", 3, "transformer layers in FFRes (Sec. 3.4: 3)", 1, integer=True),
        Option.choice("loss", "kl", "restoration loss for training: kl (Eq. 10, minimisable form), cosine or mse",
                      ("kl", "cosine", "mse")),
    )
    families = ("clip",)
    default_backbone = "clip-b32"
    measurement_notes = (UNTRAINED_NOTE,)
    no_op_keep = 1  # r = 1 encodes every frame and restores none: the head sees the backbone's features

    def __init__(self, info, keep, seed: int = 0, **options):
        super().__init__(info, keep, seed=seed, **options)
        if not isinstance(info, FrameBackboneInfo):
            raise VidpruneError("sllm needs a frame-level backbone (e.g. --backbone clip-b32).")
        self.r = int(self.knob.validate(self.knob.default if keep is None else keep))
        self.restore = bool(self.settings["restore"])
        self.tail = self.settings["tail"]
        self.loss = self.settings["loss"]
        self.ffres_layers = int(self.settings["ffres_layers"])
        self.plan = sampling_plan(info.frames, self.r)
        self.ffres = FFRes(info.embed_dim, self.ffres_layers)
        output = self._output_frames()
        self.register_buffer("output_index", torch.tensor(output, dtype=torch.long), persistent=False)
        for prefix, frames in (("out", output), ("res", self.plan.restored)):
            a, b, wa, wb = self._mixing_table(frames)
            self.register_buffer(f"{prefix}_a", torch.tensor(a, dtype=torch.long), persistent=False)
            self.register_buffer(f"{prefix}_b", torch.tensor(b, dtype=torch.long), persistent=False)
            self.register_buffer(f"{prefix}_wa", torch.tensor(wa, dtype=torch.float32), persistent=False)
            self.register_buffer(f"{prefix}_wb", torch.tensor(wb, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ what goes where

    @property
    def runs_ffres(self) -> bool:
        return self.restore and bool(self.plan.restored)

    def _output_frames(self) -> tuple[int, ...]:
        plan = self.plan
        if not self.restore:
            return plan.encoded
        frames = set(plan.encoded) | set(plan.restored)
        if self.tail == "copy":
            frames |= set(plan.trailing)
        return tuple(sorted(frames))

    def _mixing_table(self, frames) -> tuple[list, list, list, list]:
        """Per output frame: out = wa * src[a] + wb * src[b], src = [encoded (K), F_l->r (P), F_r->l (P)]."""
        k = len(self.plan.encoded)
        pairs = k - 1
        a, b, wa, wb = [], [], [], []
        for t in frames:
            if t % self.r == 0:  # encoded
                a.append(t // self.r), b.append(t // self.r), wa.append(1.0), wb.append(0.0)
            elif t in self.plan.trailing:  # copy of the last encoded frame
                a.append(k - 1), b.append(k - 1), wa.append(1.0), wb.append(0.0)
            else:
                pair = t // self.r
                lam = (t - pair * self.r) / self.r
                a.append(k + pair), b.append(k + pairs + pair), wa.append(1.0 - lam), wb.append(lam)
        return a, b, wa, wb

    @staticmethod
    def _mix(src: torch.Tensor, a, b, wa, wb) -> torch.Tensor:
        wa = wa.to(src.dtype)[None, :, None]
        wb = wb.to(src.dtype)[None, :, None]
        return wa * src.index_select(1, a) + wb * src.index_select(1, b)

    def _sources(self, kept: torch.Tensor) -> torch.Tensor:
        f_lr, f_rl = self.ffres.both_directions(kept)
        return torch.cat([kept, f_lr, f_rl], dim=1)

    # ------------------------------------------------------------------ the frame hooks of the clip backbone

    def encoded_frames(self, frames: int) -> tuple[int, ...]:
        if frames != self.plan.frames:
            raise VidpruneError(f"sllm was built for {self.plan.frames} frames but got {frames}.")
        return self.plan.encoded

    def complete_frames(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, E) encoded features -> (B, n, E) features in frame order, and their frame indices."""
        if not self.restore:
            return kept, self.output_index
        src = self._sources(kept) if self.runs_ffres else kept
        return self._mix(src, self.out_a, self.out_b, self.out_wa, self.out_wb), self.output_index

    def forward_stats(self) -> dict:
        restored = len(self.plan.restored) if self.restore else 0
        copied = len(self.plan.trailing) if self.restore and self.tail == "copy" else 0
        pairs = len(self.plan.encoded) - 1 if self.runs_ffres else 0
        return {"frames_restored": restored, "frames_copied": copied, "ffres_pairs": pairs}

    def describe(self) -> dict:
        return {"r": self.r, "restore": self.restore, "tail": self.tail, "ffres_layers": self.ffres_layers,
                "loss": self.loss, "encoded": ",".join(str(t + 1) for t in self.plan.encoded),
                "weights": "untrained: accuracy needs a trained FFRes checkpoint"}

    # ------------------------------------------------------------------ training

    def restored_features(self, kept: torch.Tensor) -> torch.Tensor:
        """(B, R, E) FFRes outputs for the restored frames `plan.restored`, from the encoded features."""
        if not self.runs_ffres:
            raise VidpruneError(
                f"nothing to restore at r={self.r} with {self.plan.frames} frames"
                + ("" if self.restore else " and restore=false") + ". Use r >= 2 and restore=true."
            )
        return self._mix(self._sources(kept), self.res_a, self.res_b, self.res_wa, self.res_wb)

    def restoration_loss(self, model: nn.Module, video: torch.Tensor) -> torch.Tensor:
        """L_res for a batch (Algorithm 1): restored features vs the gradient-free encoder's features of the
        same frames. Add it to the task loss (L_cls or L_sim); gradients reach FFRes (and the encoder
        through the encoded frames, if it is trainable)."""
        kept = model.encode_frames(video, self.plan.encoded)
        restored = self.restored_features(kept)
        with torch.no_grad():
            target = model.encode_frames(video, self.plan.restored)
        return restoration_divergence(restored, target, self.loss)
