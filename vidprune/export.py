"""ONNX export of a model with its method in place: the path to TensorRT on Jetson boards.

Shapes are static: the batch, the clip geometry and every method's kept-token count are fixed when the
graph is exported (our methods keep floor(N * keep) tokens through top-k + gather, whatever the input),
so TensorRT can build one engine. What must not be fixed is *which* tokens survive: that depends on the
input, and an exporter that traced a selection as constants would give a graph that is right on the
export input and wrong on every other. So `export_onnx` checks the graph in onnxruntime against PyTorch
on the export input and on a second, different input, and refuses a graph that disagrees.

Exporter: `dynamo` (torch.export + onnxscript, PyTorch's default) unless asked otherwise. On our models it
agrees with the TorchScript exporter wherever both succeed, but it refuses data-dependent shapes (MADS
with a learned threshold) where the TorchScript tracer silently bakes in the count it saw, it accepts a
translation for the stable sort PO-GUISE ranks tokens with, and the TorchScript exporter is deprecated.
docs/export.md lists which methods export and why the others do not.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from vidprune.errors import VidpruneError

EXPORTERS = ("dynamo", "torchscript")
# The lowest opset the dynamo exporter implements natively (it only version-converts below it). Higher
# defaults (20) use ops such as Gelu that TensorRT 8.x on JetPack 5/6 does not parse.
DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
INSTALL_HINT = "pip install 'vidprune[export]'"


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how well the graph agrees with PyTorch.

    input_shapes: graph input name -> shape (one `video` input, or one per modality for a ViViT).
    max_abs_diff / top1_agreement: over the checked inputs (None when not checked).
    """

    path: Path
    method: str
    backbone: str
    exporter: str
    opset: int
    input_shapes: dict[str, tuple[int, ...]]
    output_shape: tuple[int, ...]
    max_abs_diff: Optional[float]
    top1_agreement: Optional[float]
    checked_inputs: int
    atol: float
    rtol: float
    onnxruntime_version: Optional[str]
    size_mib: float
    seconds: float
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        return self.checked_inputs > 0


def export_blocker(model: nn.Module) -> Optional[str]:
    """Why `model`'s method cannot export faithfully, or None when it can."""
    method = getattr(model, "method", None)
    if method is None:
        return None
    return getattr(method, "export_blocker", None)


def require_export_packages(check: bool = True, exporter: str = "dynamo") -> Optional[str]:
    """Import what the export needs, or raise a VidpruneError naming the install command.
    Returns onnxruntime's version when `check` (it runs the exported graph)."""
    needed = ["onnx"] + (["onnxscript"] if exporter == "dynamo" else []) + (["onnxruntime"] if check else [])
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise VidpruneError(f"ONNX export needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}"
                            + (" (or pass --no-check to skip the onnxruntime comparison)." if missing == ["onnxruntime"]
                               else "."))
    if check:
        import onnxruntime

        return onnxruntime.__version__
    return None


class _PositionalInputs(nn.Module):
    """A model taking {modality: tensor} as a module taking the tensors positionally, so the graph gets one
    named input per modality."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *streams: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, streams)))


def _stable_sort_as_topk(self, dim: int = -1, descending: bool = False, stable: bool = True):
    """aten.sort(stable=True) as ONNX TopK over the whole axis. TopK breaks ties by the lower index first,
    which is exactly a stable sort in either direction (PO-GUISE ranks its tokens with it)."""
    from onnxscript import opset18 as op

    k = op.Reshape(op.Gather(op.Shape(self), dim), op.Constant(value_ints=[1]))
    return op.TopK(self, k, axis=dim, largest=descending, sorted=True)


def _named_inputs(inputs) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    if isinstance(inputs, dict):
        return list(inputs), tuple(inputs.values())
    return ["video"], (inputs,)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress, graphs and warnings meant for their own developers; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript",
                                              "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _run_exporter(module: nn.Module, args: tuple, names: list[str], path: Path, opset: int, exporter: str) -> None:
    common = dict(input_names=names, output_names=["logits"], opset_version=opset)
    if exporter == "dynamo":
        # external_data=False: one self-contained file for trtexec (the exporter still splits the weights
        # off above ONNX's 2 GB protobuf limit).
        torch.onnx.export(module, args, str(path), dynamo=True, external_data=False,
                          custom_translation_table={torch.ops.aten.sort.stable: _stable_sort_as_topk}, **common)
    else:
        torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=True, **common)


def _graph_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(model: nn.Module, path, batch: int = 1, opset: Optional[int] = None, check: bool = True,
                atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, exporter: str = "dynamo",
                seed: int = 0) -> ExportReport:
    """Export `model` (a `models.create_model` model, method in place) to the ONNX file `path` for a
    fixed batch, in fp32 on CPU.

    With `check`, run the graph in onnxruntime on the export input and on a second input (seed + 1) and
    compare with PyTorch: a VidpruneError when any output differs by more than atol + rtol * |reference|.
    """
    started = time.perf_counter()
    if exporter not in EXPORTERS:
        raise VidpruneError(f"exporter must be one of {', '.join(EXPORTERS)}, got '{exporter}'.")
    if batch < 1:
        raise VidpruneError(f"--batch must be at least 1, got {batch}.")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < 13:
        raise VidpruneError(f"--opset {opset} is too old for these models (LayerNorm, TopK); use 17 or 18.")
    method_name = getattr(getattr(model, "method", None), "name", "none")
    blocker = export_blocker(model)
    if blocker:
        raise VidpruneError(f"method '{method_name}' cannot be exported to ONNX: {blocker}")
    ort_version = require_export_packages(check, exporter)
    path = Path(path)
    if path.is_dir():
        raise VidpruneError(f"--onnx '{path}' is a folder; pass a file name such as {path / 'model.onnx'}.")
    path.parent.mkdir(parents=True, exist_ok=True)

    from vidprune.measure.flops import example_input

    was_training = model.training
    params = list(model.parameters())
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)  # the caller's model stays put
    model.eval()
    try:
        inputs = [example_input(model, batch, seed=seed)]
        if check:
            inputs.append(example_input(model, batch, seed=seed + 1))
        names, args = _named_inputs(inputs[0])
        module = _PositionalInputs(model, names).eval() if isinstance(inputs[0], dict) else model
        with torch.no_grad():
            references = [module(*_named_inputs(x)[1]) for x in inputs]
        try:
            with _quiet():
                _run_exporter(module, args, names, path, opset, exporter)
        except VidpruneError:
            raise
        except Exception as exc:  # the exporters raise many types; the root cause is what the user can act on
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            raise VidpruneError(
                f"the {exporter} exporter could not export method '{method_name}': {_root_cause(exc)}. "
                f"Try --exporter {other}, or a method that exports (docs/export.md).") from None
    finally:
        # the TorchScript exporter restores the mode of the module it was given, recursively
        model.train(was_training)

    report = ExportReport(
        path=path, method=method_name, backbone=getattr(model, "backbone_name", type(model).__name__),
        exporter=exporter, opset=_graph_opset(path),
        input_shapes={n: tuple(a.shape) for n, a in zip(names, args)},
        output_shape=tuple(references[0].shape), max_abs_diff=None, top1_agreement=None, checked_inputs=0,
        atol=atol, rtol=rtol, onnxruntime_version=ort_version, size_mib=0.0, seconds=0.0,
        files=[p for p in (path, Path(f"{path}.data")) if p.is_file()])
    if report.opset != opset:
        report.notes.append(f"asked for opset {opset}; the exporter wrote opset {report.opset}")
    report.size_mib = sum(p.stat().st_size for p in report.files) / 2**20
    if check:
        try:
            _compare(report, inputs, references)
        except VidpruneError:
            for written in report.files:  # a wrong graph must not reach a TensorRT build by accident
                written.unlink(missing_ok=True)
            raise
    report.seconds = time.perf_counter() - started
    return report


def _compare(report: ExportReport, inputs: list, references: list[torch.Tensor]) -> None:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in session.get_inputs()]
    worst, agree, total, failures = 0.0, 0, 0, []
    for which, (x, reference) in enumerate(zip(inputs, references)):
        names, tensors = _named_inputs(x)
        feeds = {n: t.numpy() for n, t in zip(names, tensors) if n in graph_inputs}
        got = session.run(None, feeds)[0]
        want = reference.numpy()
        if got.shape != want.shape:
            raise VidpruneError(f"the exported graph returns shape {got.shape}, PyTorch {want.shape}: "
                                "the export is wrong; please report it.")
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max()))
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += int(np.prod(want.shape[:-1]))
        if not bool((diff <= report.atol + report.rtol * np.abs(want)).all()):
            failures.append("the export input" if which == 0 else "a second, different input")
    report.max_abs_diff, report.top1_agreement, report.checked_inputs = worst, agree / max(total, 1), len(inputs)
    if failures:
        raise VidpruneError(
            f"the exported graph of method '{report.method}' disagrees with PyTorch on {' and '.join(failures)} "
            f"(max |diff| = {worst:.3g} > atol {report.atol:g} + rtol {report.rtol:g} x |output|). "
            + ("It matches on the export input only, so the exporter baked an input-dependent choice into "
               "constants: this method cannot export faithfully. " if failures == ["a second, different input"]
               else "")
            + f"{report.path} was removed; try the other --exporter or report it.")
    if agree < total:
        report.notes.append(f"top-1 differs on {total - agree} of {total} outputs although every logit is within "
                            "tolerance (near-tied classes)")
