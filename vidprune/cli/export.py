"""`vidprune export`: one model with its method in place, to an ONNX file checked in onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vidprune.cli.app import (CHECKPOINT_FRAMES_OPTION, CHECKPOINT_SIZE_OPTION, TRUST_OPTION, app, console,
                              single_options, user_errors, warn)
from vidprune.errors import VidpruneError


@app.command("export")
@user_errors
def export(
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write, e.g. model.onnx"),
    method: str = typer.Option("none", "--method", "-m", help="method to put in the model (see `vidprune list`)"),
    keep: Optional[float] = typer.Option(None, "--keep", "-k", help="the method's knob (default: its default)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="method option name=value"),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b",
                                           help="backbone (default: the checkpoint's, else the method's default)"),
    frames: Optional[int] = CHECKPOINT_FRAMES_OPTION,
    size: Optional[int] = CHECKPOINT_SIZE_OPTION,
    classes: Optional[int] = typer.Option(None, "--classes", help="classifier classes (default: the checkpoint's, else 400)"),
    batch: int = typer.Option(1, "--batch", help="fixed batch size of the graph (static shapes)"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="weights: VideoMAE .pth, Hugging Face "
                                             "file/folder, hub model hf:ORG/NAME[@REVISION] or vidprune checkpoint "
                                             "(omitted: random weights)"),
    trust_checkpoint: bool = TRUST_OPTION,
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 18: TensorRT 8.6+ parses it)"),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.export, default) | torchscript"),
    no_check: bool = typer.Option(False, "--no-check",
                                  help="skip running the graph in onnxruntime against PyTorch"),
    seed: int = typer.Option(0, "--seed", help="seed of the random weights and of the check inputs"),
) -> None:
    """Export a model with its method in place to ONNX (static shapes), checked against PyTorch in
    onnxruntime on two different inputs: the first step towards a TensorRT engine (docs/export.md)."""
    from vidprune import registry
    from vidprune import models
    from vidprune.export import export_blocker, export_onnx, require_export_packages

    method_cls = registry.get_method(method)
    if keep is not None and method_cls.knob is None:
        raise VidpruneError(f"method '{method}' has no knob, so --keep does not apply: leave it out.")
    if method_cls.knob is not None and keep is not None:
        method_cls.knob.validate(keep)
    options = single_options(set_ or [], method_cls, "--set {name}={values} gives several values, but an export "
                             "builds one model: pass one, e.g. --set {name}={first}.")
    # before any model is built: a missing package should not cost a checkpoint load
    require_export_packages(check=not no_check, exporter=exporter)
    # the weights, and a scorer trained with the method, come with the model
    model = models.create_model(backbone, method, keep, frames=frames, size=size, classes=classes, options=options,
                                seed=seed, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint)
    blocker = export_blocker(model)
    if blocker:
        raise VidpruneError(f"method '{method}' cannot be exported to ONNX: {blocker}")
    backbone, classes = model.backbone_name, model.classes
    if model.checkpoint_report is not None:
        loaded = model.checkpoint_report
        console.print(f"{escape(str(checkpoint))}: {escape(loaded.summary())}")
        for note in loaded.notes:
            console.print(f"  note: {escape(note)}")
    else:
        warn("no --checkpoint: random weights (fine for timing a TensorRT engine, not for predictions)")

    with console.status(f"exporting {method} on {backbone} with the {exporter} exporter"):
        report = export_onnx(model, onnx, batch=batch, opset=opset, check=not no_check, exporter=exporter,
                             seed=seed)

    info = model.info
    table = Table(title=f"ONNX export: {method} on {backbone}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    knob = model.method.knob
    rows = [
        ("file", f"{report.path} ({report.size_mib:.1f} MiB)"
         + (f" + {len(report.files) - 1} external data file" if len(report.files) > 1 else "")),
        ("method", f"{method}" + (f" ({knob.name}={model.method.keep:g})" if knob is not None else "")),
        ("clip", f"{info.frames} frames x {info.size}x{info.size}, {classes} classes"),
        ("inputs", ", ".join(f"{n} {tuple(s)}" for n, s in report.input_shapes.items())),
        ("output", f"logits {report.output_shape}"),
        ("exporter", f"{report.exporter}, opset {report.opset}"),
        ("onnxruntime", report.onnxruntime_version or "not run"),
        ("seconds", f"{report.seconds:.1f}"),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    for note in report.notes:
        console.print(f"note: {escape(note)}")
    if report.checked:
        console.print(f"runs in onnxruntime, max |diff| = {report.max_abs_diff:.2e} vs PyTorch on "
                      f"{report.checked_inputs} different inputs, top-1 agreement {report.top1_agreement:.0%}")
    else:
        console.print("not checked (--no-check): run it in onnxruntime before building an engine")
    console.print(f"TensorRT: trtexec --onnx={escape(str(report.path))} --fp16 --saveEngine="
                  f"{escape(str(report.path.with_suffix('.engine')))}")
