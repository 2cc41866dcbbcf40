"""The contract between a backbone's block loop and a token-reduction method.

A backbone runs its blocks in one loop and calls the method at named insertion points; the backbone
never mentions a method by name. A method is an `nn.Module`, so any learnable part it has counts in the
model's parameters and moves with `.to(device)`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vidprune.backbones.base import BackboneInfo
from vidprune.registry import Knob, Option
from vidprune.tokens import TokenState


class TokenMethod(nn.Module):
    name: str = ""
    description: str = ""
    paper: str = ""
    knob: Optional[Knob] = None
    options: tuple[Option, ...] = ()
    families: tuple[str, ...] = ()
    default_backbone: str = "vit-b"  # what `vidprune sweep --method <name>` measures without --backbone
    # Why this method cannot export to a static ONNX graph faithfully (`vidprune export` says it); None = it
    # can. A property where it depends on the options.
    export_blocker: Optional[str] = None

    def __init__(self, info: BackboneInfo, keep: Optional[float], seed: int = 0, **options):
        super().__init__()
        self.info = info
        self.keep = keep
        self.seed = seed
        self.settings = options

    def begin_forward(self, state: TokenState) -> TokenState:
        return state

    def needs_attention(self, layer: int) -> bool:
        """Whether block `layer` (0-based) must hand its attention probabilities to `after_attention`."""
        return False

    def attention_tap(self, layer: int, state: TokenState):
        """A callable `tap(probs, start, samples=slice(None))` that block `layer` feeds with its attention
        probabilities in blocks of queries: `probs` (b, heads, c, N) holds queries start..start+c of the
        samples `samples` of the batch (the backbone goes sample by sample so blocks stay cache-sized at
        any batch). Or None. Preferred over `needs_attention` when a method only needs a reduction of the
        probabilities: the full N x N tensor is then never built. A tap with a `query_rows = r` attribute
        is fed only the first r queries (the rest run fused). The tap is passed to `after_attention` in
        place of the probabilities."""
        return None

    def before_block(self, layer: int, state: TokenState) -> TokenState:
        return state

    def after_attention(self, layer: int, state: TokenState, attn: Optional[torch.Tensor]) -> TokenState:
        """Between a block's attention and its MLP; `attn` is (B, heads, N, N) when requested."""
        return state

    def after_block(self, layer: int, state: TokenState) -> TokenState:
        return state

    def pool(self, state: TokenState) -> Optional[torch.Tensor]:
        """(B, D) features for the head, or None for the backbone's own pooling (mean or CLS)."""
        return None

    def describe(self) -> dict:
        """What the result row records about this method's configuration."""
        return dict(self.settings)


def parse_layers(value) -> tuple[int, ...]:
    """1-based layer list from '4,7,10', a list, or a single int."""
    if isinstance(value, str):
        items = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    layers = tuple(sorted({int(v) for v in items}))
    if not layers or layers[0] < 1:
        raise ValueError("layers are 1-based block numbers, e.g. 4,7,10")
    return layers


def proportional_layers(depth: int) -> tuple[int, ...]:
    """The pruning layers of EVAD's Appendix B (4, 7, 10 of 12; 7, 13, 19 of 24), scaled to other depths.

    The paper's stated rule ("start at 1/3, then every 1/4") gives 4, 7, 10 for 12 layers but not the
    7, 13, 19 it uses for 24, so those two depths use the explicit lists and other depths scale the
    12-layer positions: round(depth * {4, 7, 10} / 12).
    """
    explicit = {12: (4, 7, 10), 24: (7, 13, 19)}
    if depth in explicit:
        return explicit[depth]
    layers = sorted({min(max(round(depth * p / 12), 1), depth) for p in (4, 7, 10)})
    return tuple(layers)


def resolve_layers(info: BackboneInfo, requested) -> tuple[int, ...]:
    from vidprune.errors import VidpruneError

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
