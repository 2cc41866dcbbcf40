"""`vidprune train`: fine-tune (or train from scratch) a backbone with a method in place; the training
itself is vidprune/train.py."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidprune.cli.app import FRAMES_OPTION, SEED_OPTION, SET_ONE_OPTION, SIZE_OPTION, app, console, progress_bar, user_errors
from vidprune.errors import VidpruneError


@app.command("train")
@user_errors
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="training list file ('relative/path.mp4 label' lines)"),
    root: Optional[Path] = typer.Option(None, "--root", help="video folder (alone: one sub-folder per class)"),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="validation list file"),
    val_root: Optional[Path] = typer.Option(None, "--val-root", help="validation video folder (default: --root)"),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="folder for last.pth, best.pth, metrics.jsonl"),
    backbone: str = typer.Option("vit-tiny", "--backbone", "-b"),
    method: str = typer.Option("none", "--method", "-m", help="method in place while training"),
    keep: Optional[float] = typer.Option(None, "--keep", "-k", help="the method's knob value"),
    set_: Optional[List[str]] = SET_ONE_OPTION,
    frames: Optional[int] = FRAMES_OPTION,
    size: Optional[int] = SIZE_OPTION,
    classes: Optional[int] = typer.Option(None, "--classes", help="default: the dataset's"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="initial weights (VideoMAE, Hugging Face or vidprune)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue from a last.pth"),
    epochs: int = typer.Option(10, "--epochs"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(1e-3, "--lr", help="peak learning rate"),
    min_lr: float = typer.Option(1e-6, "--min-lr"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs"),
    clip_grad: float = typer.Option(1.0, "--clip-grad", help="max gradient norm (0 = off)"),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    sampling: str = typer.Option("uniform", "--sampling", help="uniform | dense"),
    stride: int = typer.Option(4, "--stride"),
    norm: str = typer.Option("auto", "--norm"),
    workers: int = typer.Option(0, "--workers"),
    cache: bool = typer.Option(False, "--cache", help="keep decoded videos in memory (small datasets)"),
    device: str = typer.Option("auto", "--device"),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="mixed precision on CUDA"),
    seed: int = SEED_OPTION,
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many optimizer steps"),
) -> None:
    """Train a backbone with a method in place; writes checkpoints and a metrics log."""
    from vidprune import registry
    from vidprune.spec import parse_set
    from vidprune.train import EpochLog, TrainConfig, Trainer

    if data is None and root is None:
        raise VidpruneError("no training data: pass --data LIST (and --root DIR) or --root DIR with class folders.")
    method_cls = registry.get_method(method)
    options = {k: v[0] for k, v in parse_set(set_ or [], method_cls).items()}
    config = TrainConfig(data=str(data) if data else None, root=str(root) if root else None,
                         val_data=str(val_data) if val_data else None,
                         val_root=str(val_root or root) if (val_data or val_root) and (val_root or root) else None,
                         out=str(out), backbone=backbone, method=method, keep=keep, options=options, frames=frames,
                         size=size, classes=classes, checkpoint=str(checkpoint) if checkpoint else None,
                         epochs=epochs, batch=batch, lr=lr, min_lr=min_lr, weight_decay=weight_decay,
                         warmup_epochs=warmup_epochs, clip_grad=clip_grad, label_smoothing=label_smoothing,
                         sampling=sampling, stride=stride, norm=norm, workers=workers, cache=cache, device=device,
                         amp=amp, seed=seed, max_steps=max_steps)
    trainer = Trainer(config)
    if trainer.init_report is not None:
        console.print(f"{checkpoint}: {trainer.init_report.summary()}")
    if resume is not None:
        trainer.resume(resume)
        console.print(f"resumed from {resume} at epoch {trainer.epoch}, step {trainer.step}")
    with progress_bar() as progress:
        task = progress.add_task(f"epoch {trainer.epoch + 1}/{epochs}", total=trainer.total_steps,
                                 completed=trainer.step)

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step,
                            description=f"epoch {trainer.epoch + 1}/{epochs} loss {loss:.3f}")

        def on_epoch(entry: EpochLog) -> None:
            val = "" if entry.val_top1 is None else f", val top-1 {entry.val_top1:.3f}"
            progress.console.print(f"epoch {entry.epoch}: train loss {entry.train_loss:.4f}, train top-1 "
                                   f"{entry.train_top1:.3f}{val} ({entry.seconds:.0f} s)")

        result = trainer.fit(on_step, on_epoch)
    console.print(f"train loss {result.first_loss:.4f} -> {result.last_loss:.4f}")
    if result.best_top1 is not None:
        console.print(f"best validation top-1 {result.best_top1:.4f}: {result.best}")
    console.print(f"wrote {result.last} and {trainer.out / 'metrics.jsonl'}")
