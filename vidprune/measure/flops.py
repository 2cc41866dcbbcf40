"""GFLOPs in the papers' convention: 1 multiply-accumulate = 1 FLOP, per clip (batch 1), per view.

Three counters look at the same forward pass:

* primary: `torch.utils.flop_counter.FlopCounterMode` (maintained, in PyTorch, dispatch-level, so it sees
  every matmul). It counts 2 FLOPs per MAC, so we halve it. It has no formula for the CPU fused-attention
  kernel (`_scaled_dot_product_flash_attention_for_cpu`) and would count fused attention as zero on CPU;
  we give it PyTorch's own SDPA formula for that kernel.
* fvcore: traces with `torch.jit.trace`; it has no handle for `aten::scaled_dot_product_attention` and
  would silently count it as zero, so we register one. It also counts LayerNorm, so it reads slightly high.
* thop: forward hooks on modules only. It never sees functional matmuls (q @ k^T, attn @ v, fused
  attention), so it misses all attention-matrix work; docs/measurement.md explains the gap.

Speed: the primary counter and thop need shapes only, so they run on the meta device (no arithmetic,
well under a second for ViT-L) whenever the forward pass allows it. A forward pass that reads values
(`.item()`, `bool(tensor)`, a data-dependent shape) raises on meta and is counted on real CPU tensors
instead. fvcore traces with `torch.jit.trace`, whose meta kernels fail on traced sizes, so it always
runs one real forward pass: that pass is the whole cost of a default count.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from vidprune.notes import FVCORE_DIFFERS, FVCORE_FAILED, THOP_FAILED, THOP_LOW

AGREEMENT_TOLERANCE = 0.01  # counters more than 1% apart get a note in the output


@dataclass
class FlopReport:
    gflops: float
    gflops_fvcore: Optional[float] = None
    gflops_thop: Optional[float] = None
    counter: str = "torch.utils.flop_counter"
    notes: list[str] = field(default_factory=list)
    fvcore_unsupported: dict = field(default_factory=dict)
    shapes_only: bool = False  # primary count (and thop) taken on meta tensors: the forward reads no values

    @property
    def counters_agree(self) -> Optional[bool]:
        if self.gflops_fvcore is None:
            return None
        return relative_gap(self.gflops, self.gflops_fvcore) <= AGREEMENT_TOLERANCE


def relative_gap(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's own SDPA formula (2 FLOPs per MAC), applied to the CPU fused kernel it lacks one for."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_formula():
    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


def count_torch(model: nn.Module, inputs: tuple) -> float:
    """MACs / 1e9 from FlopCounterMode (which counts 2 FLOPs per MAC)."""
    return _count_call(lambda: model(*inputs))


def _count_call(run) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping = _cpu_sdpa_formula()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.inference_mode(), counter:
        run()
    return counter.get_total_flops() / 2 / 1e9


def meta_state(model: nn.Module) -> dict:
    """Shape-only (meta) stand-ins for every parameter and buffer of `model`, by qualified name."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}


def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers live on the meta device; costs no weight copy."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in memo:
            shadow = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(shadow, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else shadow
    return copy.deepcopy(model, memo)


def map_tensors(fn, inputs):
    """`fn` applied to every tensor of a model input: a tensor, or a dict / list / tuple of them (the
    multi-modal ViViT takes RGB + depth + skeleton)."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(fn, v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(map_tensors(fn, v) for v in inputs)
    return inputs


def to_meta(inputs):
    return map_tensors(lambda t: torch.empty_like(t, device="meta"), inputs)


def move_inputs(inputs, device, dtype):
    """Model inputs on `device`; floating-point tensors in `dtype`, integer ones (indices, masks) as they are."""
    return map_tensors(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype), inputs)


def count_torch_shapes_only(model: nn.Module, inputs: tuple) -> Optional[float]:
    """`count_torch` on meta tensors, or None when the forward pass reads values (then it has to run for real).

    The model's own modules run (its parameters swapped for meta stand-ins for the duration), so what a
    forward pass records on the model (`last_trace`, `last_stats`, a method's token counts) is recorded
    as usual."""
    from torch.func import functional_call

    state, meta_inputs = meta_state(model), to_meta(inputs)
    try:
        return _count_call(lambda: functional_call(model, state, meta_inputs, tie_weights=True, strict=False))
    except Exception:  # noqa: BLE001 - any value read (item, bool, nonzero, ...) fails on meta
        return None


def _sdpa_handle(inputs, outputs) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: B*H*Lq*Lk*(d_qk + d_v) MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    *batch, lq, d_qk = q
    lk, d_v = k[-2], v[-1]
    n = 1
    for s in batch:
        n *= s
    return n * lq * lk * (d_qk + d_v)


def count_fvcore(model: nn.Module, inputs: tuple) -> tuple[float, dict]:
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = analysis.total()
        unsupported = dict(analysis.unsupported_ops())
    return total / 1e9, unsupported


def count_thop(model: nn.Module, inputs: tuple, shapes_only: bool = False) -> float:
    """thop's MACs / 1e9; `shapes_only` profiles a meta copy (thop's module formulas read shapes only)."""
    from thop import profile

    # thop adds buffers and hooks to every module it visits; profile a copy so the model stays clean.
    if shapes_only:
        clone, inputs = meta_twin(model), to_meta(inputs)
    else:
        clone = copy.deepcopy(model)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        macs, _ = profile(clone, inputs=inputs, verbose=False)
    return float(macs) / 1e9


def example_input(model: nn.Module, batch: int = 1, device=None, dtype=torch.float32, seed: int = 0):
    """A deterministic input for `model`: a model with several inputs (e.g. RGB + depth + skeleton)
    provides `make_input(batch, generator)`; others a `(B, C, T, H, W)` `input_shape(batch)`."""
    generator = torch.Generator().manual_seed(seed)
    if hasattr(model, "make_input"):
        inputs = model.make_input(batch, generator)
        return move_inputs(inputs, device or "cpu", dtype)
    video = torch.randn(model.input_shape(batch), generator=generator, dtype=torch.float32)
    return video.to(device=device or "cpu", dtype=dtype)



def count_flops(model: nn.Module, counters: Sequence[str] = ("torch", "fvcore", "thop"),
                seed: int = 0) -> FlopReport:
    """Count one clip (batch 1) in fp32 with every requested counter: on meta tensors where the forward
    pass depends on shapes alone, on CPU otherwise (see the module docstring)."""
    model = model.eval()
    device = next(model.parameters()).device
    if device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    model = model.float()
    inputs = (example_input(model, 1, seed=seed),)
    gflops = count_torch_shapes_only(model, inputs)
    shapes_only = gflops is not None
    report = FlopReport(gflops=gflops if shapes_only else count_torch(model, inputs), shapes_only=shapes_only)
    if "fvcore" in counters:
        try:
            report.gflops_fvcore, report.fvcore_unsupported = count_fvcore(model, inputs)
        except Exception as exc:  # a counter failing must not lose the point; it is reported instead
            report.notes.append(FVCORE_FAILED(error=f"{type(exc).__name__}: {exc}"))
    if "thop" in counters:
        try:
            report.gflops_thop = count_thop(model, inputs, shapes_only=shapes_only)
        except Exception as exc:
            report.notes.append(THOP_FAILED(error=f"{type(exc).__name__}: {exc}"))
    if report.gflops_fvcore is not None and not report.counters_agree:
        report.notes.append(FVCORE_DIFFERS(fvcore=report.gflops_fvcore, primary=report.gflops,
                                           percent=100 * relative_gap(report.gflops, report.gflops_fvcore),
                                           unsupported=", ".join(report.fvcore_unsupported) or "none"))
    if report.gflops_thop is not None and relative_gap(report.gflops, report.gflops_thop) > AGREEMENT_TOLERANCE:
        report.notes.append(THOP_LOW(thop=report.gflops_thop, primary=report.gflops))
    return report
