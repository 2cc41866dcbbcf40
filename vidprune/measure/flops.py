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

AGREEMENT_TOLERANCE = 0.01  # counters more than 1% apart get a note in the output


@dataclass
class FlopReport:
    gflops: float
    gflops_fvcore: Optional[float] = None
    gflops_thop: Optional[float] = None
    counter: str = "torch.utils.flop_counter"
    notes: list[str] = field(default_factory=list)
    fvcore_unsupported: dict = field(default_factory=dict)

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
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping = _cpu_sdpa_formula()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.inference_mode(), counter:
        model(*inputs)
    return counter.get_total_flops() / 2 / 1e9


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


def count_thop(model: nn.Module, inputs: tuple) -> float:
    from thop import profile

    # thop adds buffers and hooks to every module it visits; profile a copy so the model stays clean.
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
        return _to(inputs, device or "cpu", dtype)
    video = torch.randn(model.input_shape(batch), generator=generator, dtype=torch.float32)
    return video.to(device=device or "cpu", dtype=dtype)


def _to(inputs, device, dtype):
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device=device, dtype=dtype if inputs.is_floating_point() else inputs.dtype)
    if isinstance(inputs, dict):
        return {k: _to(v, device, dtype) for k, v in inputs.items()}
    return type(inputs)(_to(v, device, dtype) for v in inputs)


def count_flops(model: nn.Module, counters: Sequence[str] = ("torch", "fvcore", "thop"),
                seed: int = 0) -> FlopReport:
    """Count one clip (batch 1) on CPU in fp32 with every requested counter."""
    model = model.eval()
    device = next(model.parameters()).device
    if device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    model = model.float()
    inputs = (example_input(model, 1, seed=seed),)
    report = FlopReport(gflops=count_torch(model, inputs))
    if "fvcore" in counters:
        try:
            report.gflops_fvcore, report.fvcore_unsupported = count_fvcore(model, inputs)
        except Exception as exc:  # a counter failing must not lose the point; it is reported instead
            report.notes.append(f"fvcore failed: {type(exc).__name__}: {exc}")
    if "thop" in counters:
        try:
            report.gflops_thop = count_thop(model, inputs)
        except Exception as exc:
            report.notes.append(f"thop failed: {type(exc).__name__}: {exc}")
    if report.gflops_fvcore is not None and not report.counters_agree:
        report.notes.append(
            f"fvcore ({report.gflops_fvcore:.3f}) and the primary counter ({report.gflops:.3f}) differ by "
            f"{100 * relative_gap(report.gflops, report.gflops_fvcore):.1f}% (fvcore unsupported ops: "
            f"{', '.join(report.fvcore_unsupported) or 'none'})"
        )
    if report.gflops_thop is not None and relative_gap(report.gflops, report.gflops_thop) > AGREEMENT_TOLERANCE:
        report.notes.append(
            f"thop reads {report.gflops_thop:.3f} vs {report.gflops:.3f}: it hooks modules only and misses the "
            "attention matmuls (see docs/measurement.md)"
        )
    return report
