"""The contract between a backbone and a token-reduction method: `TokenMethod`.

A backbone runs its blocks in the one shared loop (`backbones/blocks.py::run_blocks`) and calls the method
at named insertion points; the backbone never mentions a method by name, and every hook it may call is
declared here with a default that leaves the backbone as it is. A method is an `nn.Module`, so any
learnable part it has counts in the model's parameters and moves with `.to(device)`.

What each family calls (docs/methods/README.md, "The method contract"):

* every family: `begin_forward` (once per forward pass), then per block `before_block`, `attention_tap` /
  `needs_attention`, `attention_bias`, `after_attention`, `after_block`; after the pass `forward_stats`;
* vit, timesformer: `pool`; timesformer: `grid_until_layer` when the method is placed;
* vivit: `select_after` and `select_frames` (frames chosen between the encoders);
* clip: `encoded_frames` and `complete_frames` (frames chosen before the image encoder).

The sweep reads `measurement_notes`, `describe`, `knob` and `options`; `vidprune export` reads
`export_blocker`; tests/test_method_contract.py reads the declarations of what a method does not
guarantee (`no_op_keep`, `batch_dependence`, `flop_counter_gap`, `input_dependent_counts`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Optional

import torch
from torch import nn

from vidprune.backbones.base import BackboneInfo
from vidprune.backbones.blocks import AttentionTap
from vidprune.errors import VidpruneError
from vidprune.registry import Knob, Option, parse_layers, parse_options
from vidprune.tokens import TokenState

if TYPE_CHECKING:
    from vidprune.backbones.vivit import FrameSelection

__all__ = ["TokenMethod", "parse_layers", "proportional_layers", "resolve_layers", "EVAD_LAYERS"]


class TokenMethod(nn.Module):
    # ------------------------------------------------------------------ what the method is (class attributes)
    name: str = ""
    description: str = ""
    paper: str = ""
    knob: Optional[Knob] = None
    # Declared with Option.number / .choice / .flag / .layers: parsed and checked before the method is built.
    options: tuple[Option, ...] = ()
    families: tuple[str, ...] = ()
    default_backbone: str = "vit-b"  # what `vidprune sweep --method <name>` measures without --backbone
    # Why this method cannot export to a static ONNX graph faithfully (`vidprune export` says it); None = it
    # can. A property where it depends on the options.
    export_blocker: Optional[str] = None
    # What every result row of this method should say (e.g. that its learned parts are untrained).
    measurement_notes: tuple[str, ...] = ()

    # ------------------------------------------------------------------ what it guarantees (contract test)
    # The knob value at which the model's output equals the unpruned backbone's exactly (EVAD: rho = 1,
    # SLLM: r = 1); None when no value does (the method adds tokens or always merges).
    no_op_keep: Optional[float] = None
    # Why a clip's output depends on the other clips of its batch; None = a batched forward pass equals
    # per-clip forward passes.
    batch_dependence: Optional[str] = None
    # Why the primary FLOP counter and fvcore may disagree by more than 1%; None = they agree.
    flop_counter_gap: Optional[str] = None
    # Why the tokens (or frames) a forward pass keeps depend on the input; None = the geometry alone fixes
    # them (static shapes).
    input_dependent_counts: Optional[str] = None

    # ------------------------------------------------------------------ backbone structure
    # TimeSformer: the last block (1-based) that still sees a frames x patches grid; later blocks become
    # joint space-time blocks when the method is placed. None = every block keeps the grid.
    grid_until_layer: Optional[int] = None
    # ViViT: spatial blocks that run on every frame before `select_frames`; None = no frame selection.
    select_after: Optional[int] = None

    def __init__(self, info: BackboneInfo, keep: Optional[float], seed: int = 0, **options):
        super().__init__()
        self.info = info
        self.keep = keep
        self.seed = seed
        # every declared option, parsed and checked by its declaration, defaults filled in (parsing is
        # idempotent, so options `models.make_method` already parsed pass unchanged)
        self.settings = parse_options(type(self), options)

    # ------------------------------------------------------------------ per forward pass, every family

    def begin_forward(self, state: TokenState) -> TokenState:
        """Once per forward pass, on the embedded tokens (per encoded frame for clip, per frame for vivit)."""
        return state

    def needs_attention(self, layer: int) -> bool:
        """Whether block `layer` (0-based) must hand its attention probabilities to `after_attention`."""
        return False

    def attention_tap(self, layer: int, state: TokenState) -> Optional[AttentionTap]:
        """An `AttentionTap` that block `layer` feeds with its attention probabilities in blocks of queries:
        `tap(probs, start, samples)` with `probs` (b, heads, c, N) holding queries start..start+c of the
        samples `samples` of the batch (the backbone goes sample by sample so blocks stay cache-sized at
        any batch). Or None. Preferred over `needs_attention` when a method only needs a reduction of the
        probabilities: the full N x N tensor is then never built. A tap with `query_rows = r` is fed only
        the first r queries (the rest run fused). The tap is passed to `after_attention` in place of the
        probabilities."""
        return None

    def attention_bias(self, layer: int, state: TokenState) -> Optional[torch.Tensor]:
        """An additive bias of block `layer`'s attention logits, float, broadcastable to (B, heads, N, N)
        (e.g. log token sizes for proportional attention); None = no bias. The fused kernel gets it as its
        `attn_mask`, the explicit and tapped paths add it before the softmax; FLOP counts are unchanged.
        A divided TimeSformer block cannot take one (declare `grid_until_layer`)."""
        return None

    def before_block(self, layer: int, state: TokenState) -> TokenState:
        return state

    def after_attention(self, layer: int, state: TokenState, attn) -> TokenState:
        """Between a block's attention and its MLP; `attn` is the tap, or the (B, heads, N, N) probabilities
        when requested (or computed anyway by explicit attention), else None."""
        return state

    def after_block(self, layer: int, state: TokenState) -> TokenState:
        return state

    def forward_stats(self) -> dict:
        """Statistics of the last forward pass merged into the backbone's `last_stats` (vivit, clip)."""
        return {}

    # ------------------------------------------------------------------ family-specific hooks

    def pool(self, state: TokenState) -> Optional[torch.Tensor]:
        """(B, D) features for the head, or None for the backbone's own pooling (vit, timesformer)."""
        return None

    def select_frames(self, summary: torch.Tensor) -> "FrameSelection":
        """ViViT, when `select_after` is not None: the frames to keep from (B, M, T, D) per-frame summaries."""
        raise NotImplementedError(f"method '{self.name}' sets select_after but does not select frames")

    def encoded_frames(self, frames: int) -> tuple[int, ...]:
        """CLIP: 0-based indices of the frames of a `frames`-frame clip that reach the image encoder."""
        return tuple(range(frames))

    def complete_frames(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP: from the (B, K, E) features of the encoded frames, the (B, n, E) features the temporal head
        sees and the (n,) frame index of each."""
        return features, torch.arange(features.shape[1], device=features.device)

    # ------------------------------------------------------------------ the result row

    def describe(self) -> dict:
        """What the result row records about this method's configuration."""
        return dict(self.settings)


# The pruning layers EVAD's Appendix B states per depth (the default of evad, random and poguise).
EVAD_LAYERS: Mapping[int, tuple[int, ...]] = MappingProxyType({12: (4, 7, 10), 24: (7, 13, 19)})


def proportional_layers(depth: int, of_twelve: tuple[int, ...] = (4, 7, 10), highest: Optional[int] = None,
                        stated: Mapping[int, tuple[int, ...]] = EVAD_LAYERS) -> tuple[int, ...]:
    """Layers at the 12-block positions `of_twelve` scaled to `depth`: round(depth * p / 12), at least 1 and
    at most `highest` (default: depth); a depth in `stated` takes the layers a paper gives for it.

    The defaults are EVAD's Appendix B (4, 7, 10 of 12; 7, 13, 19 of 24): the paper's stated rule ("start at
    1/3, then every 1/4") gives 4, 7, 10 for 12 layers but not the 7, 13, 19 it uses for 24, so those two
    depths use the explicit lists and other depths scale the 12-layer positions.
    """
    if depth in stated:
        return stated[depth]
    top = depth if highest is None else highest
    return tuple(sorted({min(max(round(depth * p / 12), 1), top) for p in of_twelve}))


def resolve_layers(info: BackboneInfo, requested) -> tuple[int, ...]:
    """A layers option ('auto' = EVAD's layers for this depth) as 1-based layers that exist in the backbone."""
    try:
        layers = proportional_layers(info.depth) if requested in (None, "", "auto") else parse_layers(requested)
    except (TypeError, ValueError) as exc:
        raise VidpruneError(
            f"layers={requested!r} is invalid: {exc}. Pass 1-based block numbers, e.g. --set layers=4,7,10."
        ) from None
    if layers[-1] > info.depth:
        raise VidpruneError(
            f"layer {layers[-1]} does not exist: the backbone has {info.depth} blocks (layers are 1-based)."
        )
    return layers
