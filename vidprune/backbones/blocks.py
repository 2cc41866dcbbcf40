"""The block loop every backbone family runs, and the attention and blocks it is built from.

`run_blocks` is the one place where a backbone hands its tokens to the method in place. For every block
it calls, in this order:

    before_block(layer, state)                  -> state   (e.g. drop tokens before the block)
    trace.append(tokens entering the block)
    attention_tap(layer, state)                 -> tap or None
    needs_attention(layer)                      -> bool    (only asked when there is no tap)
    attention_bias(layer, state)                -> additive bias of the attention logits, or None
    block.attend(x, bias, return_probs, tap)    -> x after the attention residual, probabilities or None
    after_attention(layer, state, tap or probs) -> state   (e.g. prune between attention and MLP)
    block.feed_forward(x)                       -> x after the MLP residual
    after_block(layer, state)                   -> state   (e.g. merge tokens after the block)

The method is any object with those hooks (`BlockHooks`; `methods.base.TokenMethod` declares them with
defaults). Backbones never import methods, so the loop takes the method as that protocol.

A block is anything with `attend` and `feed_forward` (`LoopBlock`): the pre-norm `Block` here (joint ViT,
ViViT), TimeSformer's divided block and CLIP's residual attention block (their own module names, so
their checkpoints load as they are).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.tokens import TokenState

# Elements of one block of attention probabilities (one sample, all heads, a run of queries): small
# enough to stay in cache while the softmax, the AV product and the tap read it.
TAP_CHUNK_ELEMENTS = 2**21


class AttentionTap:
    """What a method hands a block (`TokenMethod.attention_tap`) to receive the attention probabilities
    chunk by chunk instead of as one (B, heads, N, N) tensor.

    `__call__(probs, start, samples)`: `probs` (b, heads, c, N) holds queries start..start+c of the
    samples `samples` (a slice) of the batch. `query_rows = r` asks for the first r queries only (e.g. the
    class token's row): the other queries then run in the fused kernel."""

    query_rows: Optional[int] = None

    def __call__(self, probs: torch.Tensor, start: int, samples: slice = slice(None)) -> None:
        raise NotImplementedError


class BlockHooks(Protocol):
    """The insertion points `run_blocks` calls (see `methods.base.TokenMethod` for what each may do)."""

    def before_block(self, layer: int, state: TokenState) -> TokenState: ...

    def attention_tap(self, layer: int, state: TokenState) -> Optional[AttentionTap]: ...

    def needs_attention(self, layer: int) -> bool: ...

    def attention_bias(self, layer: int, state: TokenState) -> Optional[torch.Tensor]: ...

    def after_attention(self, layer: int, state: TokenState, attn) -> TokenState: ...

    def after_block(self, layer: int, state: TokenState) -> TokenState: ...


class LoopBlock(Protocol):
    def attend(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None, return_probs: bool = False,
               tap: Optional[AttentionTap] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor: ...


def run_blocks(blocks: Iterable[LoopBlock], state: TokenState, method: BlockHooks, trace: list[int], *,
               first_layer: int = 0, clip_tokens: Optional[Callable[[int], int]] = None,
               bias: Optional[torch.Tensor] = None) -> TokenState:
    """Run `blocks` on `state` with the method's insertion points; returns the final state.

    first_layer: the 0-based layer number of the first block, when a backbone runs its blocks in several
        stretches (ViViT: spatial blocks before and after the frame selection, then temporal blocks).
    trace: gets, per block, the tokens entering it for the first clip of the batch: the sequence length,
        or `clip_tokens(sequence length)` when a clip is several sequences (CLIP and ViViT encode frames
        as a batch of sequences) or carries padding.
    bias: an attention bias the backbone itself imposes on every block (ViViT's modality mask: bool, True
        = may attend, or additive float); the method's `attention_bias` is added to it.
    """
    for offset, blk in enumerate(blocks):
        layer = first_layer + offset
        state = method.before_block(layer, state)
        tokens = int(state.num_tokens)
        trace.append(tokens if clip_tokens is None else int(clip_tokens(tokens)))
        tap = method.attention_tap(layer, state)
        need_probs = tap is None and method.needs_attention(layer)
        block_bias = combine_biases(bias, method.attention_bias(layer, state))
        state.x, probs = blk.attend(state.x, block_bias, return_probs=need_probs, tap=tap)
        state = method.after_attention(layer, state, tap if tap is not None else probs)
        state.x = blk.feed_forward(state.x)
        state = method.after_block(layer, state)
    return state


def combine_biases(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """One attention bias from two (either may be None); a bool mask (True = may attend) becomes 0 / -inf."""
    if a is None or b is None:
        return b if a is None else a
    dtype = b.dtype if a.dtype == torch.bool else a.dtype
    return additive(a, dtype) + additive(b, dtype)


def additive(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if bias.dtype != torch.bool:
        return bias.to(dtype)
    return torch.zeros(bias.shape, dtype=dtype, device=bias.device).masked_fill(~bias, float("-inf"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mode: str,
              bias: Optional[torch.Tensor] = None, return_probs: bool = False,
              tap: Optional[AttentionTap] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """softmax(q k^T scale + bias) v for (B, heads, N, d) q, k, v; returns (output, probabilities or None).

    mode 'sdpa' runs the fused kernel (the bias as its float or bool `attn_mask`), 'math' the explicit
    product, which also returns the probabilities; a block whose method asks for them (`return_probs`)
    computes them explicitly whatever the mode, since the fused kernel never materialises them. A `tap`
    gets them chunk by chunk instead (`explicit_attention`).
    """
    if tap is not None:
        return explicit_attention(q, k, v, scale, tap, bias), None
    if mode == "sdpa" and not return_probs:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = add_bias(logits, bias)
    probs = logits.softmax(dim=-1)
    return probs @ v, probs


def add_bias(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits with a bool mask (True = may attend) or an additive float bias applied."""
    if bias.dtype == torch.bool:
        return logits.masked_fill(~bias, float("-inf"))
    return logits + bias


def _rows(bias: Optional[torch.Tensor], start: int, stop: int) -> Optional[torch.Tensor]:
    """The bias of queries start..stop (a bias broadcast along the queries is the same for all)."""
    if bias is None or bias.dim() < 2 or bias.shape[-2] == 1:
        return bias
    return bias[..., start:stop, :]


def _sample(bias: Optional[torch.Tensor], sample: slice) -> Optional[torch.Tensor]:
    """The bias of one sample of the batch (a bias without a batch dimension, or of size 1, is shared)."""
    if bias is None or bias.dim() < 4 or bias.shape[0] == 1:
        return bias
    return bias[sample]


def explicit_attention(q, k, v, scale: float, tap: AttentionTap, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(QK^T + bias)V computed in blocks of one sample's queries, handing each block of
    probabilities (1, H, c, N) to `tap(probs, start, samples)` (queries start..start+c of the samples
    `samples`, a slice), so a method can reduce the attention it needs without the full N x N tensor ever
    existing. `bias` broadcasts to (B, H, N, N), as SDPA's `attn_mask`.

    A tap with `query_rows = r` needs only the first r queries' probabilities (e.g. the class token's
    row): those rows are computed explicitly and the others by the fused kernel. Either way the
    multiply-accumulates are those of the one-shot form (QK^T and AV over all N x N pairs).
    """
    b, h, n, _ = q.shape
    needed = tap.query_rows
    if needed is not None and needed < n:
        head = explicit_attention(q[:, :, :needed], k, v, scale, tap, _rows(bias, 0, needed))
        rest = F.scaled_dot_product_attention(q[:, :, needed:], k, v, attn_mask=_rows(bias, needed, n), scale=scale)
        return torch.cat([head, rest], dim=2)
    rows = max(8, min(n, TAP_CHUNK_ELEMENTS // max(1, h * k.shape[2])))
    # q, k, v are strided views of the qkv output: without one contiguous copy here every block's
    # matmul would copy all of K and V again (it made the explicit path ~4x slower at batch 8).
    q = q * scale
    keys = k.transpose(-2, -1).contiguous()
    values = v.contiguous()
    out = torch.empty_like(q)
    # blocks of one sample so that a block stays cache-sized at any batch: the loop count is the number
    # of blocks (B * N / c), the same work split as blocks spanning the batch, not a loop of Python work per sample
    for i in range(b):
        sample = slice(i, i + 1)
        sample_bias = _sample(bias, sample)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            logits = torch.matmul(q[sample, :, start:stop], keys[sample])
            if sample_bias is not None:
                logits = add_bias(logits, _rows(sample_bias, start, stop))
            probs = logits.softmax(dim=-1)
            out[sample, :, start:stop] = torch.matmul(probs, values[sample])
            tap(probs, start, sample)
    return out


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention, fused (`sdpa`) or explicit (`math`), with an optional bias and tap.

    Subclasses create the input (q, k, v) and output projections under their family's checkpoint names
    and say which they are (`project_in`, `project_out`)."""

    def __init__(self, dim: int, heads: int, attention: str = "sdpa"):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.attention = attention

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None, return_probs: bool = False,
                tap: Optional[AttentionTap] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, N, D) -> ((B, N, D), probabilities (B, heads, N, N) when computed explicitly, else None)."""
        b, n, d = x.shape
        q, k, v = self.project_in(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out, probs = attention(q, k, v, self.scale, self.attention, bias, return_probs, tap)
        return self.project_out(out.transpose(1, 2).reshape(b, n, d)), probs


class Attention(MultiHeadAttention):
    """VideoMAE's names: `qkv` (with bias) and `proj`."""

    def __init__(self, dim: int, heads: int, attention: str = "sdpa"):
        super().__init__(dim, heads, attention)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (VideoMAE's names: norm1, attn, norm2, mlp)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: str):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, heads, attention)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attend(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None, return_probs: bool = False,
               tap: Optional[AttentionTap] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        out, probs = self.attn(self.norm1(x), bias, return_probs, tap)
        return x + out, probs

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(x))
