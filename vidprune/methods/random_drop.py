"""Random token dropping: the control that tells whether a method's scoring is worth anything.

It removes tokens at the same layers and keep rate as EVAD (so the token counts, and hence the FLOPs,
match EVAD's exactly), but picks the survivors uniformly at random. The generator is re-seeded at every
forward pass, so the model is a deterministic function of its input under `--seed`, while the samples of
a batch still draw different subsets.
"""

from __future__ import annotations

from typing import Optional

import torch

from vidprune.methods.base import TokenMethod, resolve_layers
from vidprune.registry import Knob, Option, register_method
from vidprune.tokens import TokenState, keep_count, keep_top


@register_method
class RandomDrop(TokenMethod):
    name = "random"
    description = "drop tokens uniformly at random at EVAD's layers and keep rate (control)"
    knob = Knob("rho", 0.7, 0.0, 1.0, "fraction of the current tokens kept at each pruning layer")
    options = (
        Option.layers("layers", "1-based pruning layers; auto = EVAD's layers for this depth"),
        Option.flag("keyframe", False, "also protect the keyframe tokens, as EVAD does"),
    )
    families = ("vit",)
    no_op_keep = 1.0  # rho = 1 keeps every token in its place (the draws still happen, unused)
    batch_dependence = ("the survivors of every clip of a batch are drawn from one generator stream, so a clip's "
                        "draw depends on its position in the batch; token counts do not")
    export_blocker = ("it draws its survivors from a seeded torch.Generator at every forward pass, which neither "
                      "ONNX exporter can capture (and ONNX's own random ops would draw different tokens). It is the "
                      "control for measurements: export evad for deployment (same layers and token counts, hence "
                      "the same cost).")

    def __init__(self, info, keep, seed: int = 0, **options):
        super().__init__(info, keep, seed=seed, **options)
        self.layers = resolve_layers(info, self.settings["layers"])
        self.protect_keyframe = bool(self.settings["keyframe"])
        self._generator = torch.Generator()

    def describe(self) -> dict:
        return {"layers": ",".join(map(str, self.layers)), "keyframe": self.protect_keyframe}

    def begin_forward(self, state: TokenState) -> TokenState:
        self._generator.manual_seed(self.seed)
        return state

    def after_attention(self, layer: int, state: TokenState, attn: Optional[torch.Tensor]) -> TokenState:
        if layer + 1 not in self.layers:
            return state
        scores = torch.rand(state.x.shape[:2], generator=self._generator).to(state.x.device)
        minimum = 0
        if self.protect_keyframe:
            keyframe = state.temporal_index() == self.info.grid[0] // 2
            scores = scores.masked_fill(keyframe, float("inf"))
            minimum = self.info.tokens_per_slice
        return keep_top(state, scores, keep_count(state.num_tokens, self.keep, minimum))
