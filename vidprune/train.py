"""Fine-tune (or train from scratch) a backbone with a token method in place at a keep rate.

AdamW without weight decay on biases, norms and other 1-D tensors; linear warm-up then cosine decay,
stepped per iteration; automatic mixed precision on CUDA (bf16 where supported, else fp16 with a
gradient scaler); gradient-norm clipping; a checkpoint after every epoch (`last.pth`, plus `best.pth`
when validation top-1 improves) from which `--resume` continues exactly; one JSON line per epoch in
`metrics.jsonl`. Checkpoints use the backbone's own tensor names (the VideoMAE layout) plus a `vidprune`
block recording what `vidprune eval` needs to rebuild the model.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

import vidprune
from vidprune.errors import VidpruneError

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    data: str
    out: str
    root: Optional[str] = None
    val_data: Optional[str] = None
    val_root: Optional[str] = None
    backbone: str = "vit-tiny"
    method: str = "none"
    keep: Optional[float] = None
    options: dict = field(default_factory=dict)
    frames: Optional[int] = None
    size: Optional[int] = None
    classes: Optional[int] = None
    attention: str = "sdpa"
    checkpoint: Optional[str] = None  # initial weights (pre-trained or fine-tuned)
    epochs: int = 10
    batch: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip_grad: float = 1.0
    label_smoothing: float = 0.0
    sampling: str = "uniform"
    stride: int = 4
    norm: str = "auto"
    workers: int = 0
    cache: bool = False
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    max_steps: Optional[int] = None  # stop early (tests, smoke runs)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 1/warmup to 1, then cosine from 1 to `min_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or "cls_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class EpochLog:
    epoch: int
    step: int
    lr: float
    train_loss: float
    train_top1: float
    val_top1: Optional[float] = None
    val_top5: Optional[float] = None
    val_mean_class_accuracy: Optional[float] = None
    skipped: int = 0
    seconds: float = 0.0


@dataclass
class TrainResult:
    history: list[EpochLog]
    last: Path
    best: Optional[Path]
    best_top1: Optional[float]
    first_loss: float
    last_loss: float


class Trainer:
    def __init__(self, config: TrainConfig):
        from vidprune import models
        from vidprune.data.datasets import VideoDataset, make_loader, open_video_list
        from vidprune.data.samplers import make_sampler
        from vidprune.data.transforms import ClipTransform, resolve_normalization
        from vidprune.measure.device import resolve_device

        c = self.config = config
        for name, value, low in (("--epochs", c.epochs, 1), ("--batch", c.batch, 1)):
            if value < low:
                raise VidpruneError(f"{name} must be at least {low}, got {value}.")
        if not c.lr > 0 or c.min_lr < 0 or c.min_lr > c.lr:
            raise VidpruneError("--lr must be > 0 and --min-lr between 0 and --lr.")
        if c.warmup_epochs < 0 or c.clip_grad < 0 or c.weight_decay < 0:
            raise VidpruneError("--warmup-epochs, --clip-grad and --weight-decay must be >= 0.")
        self.device = resolve_device(c.device)
        self.out = Path(c.out)
        self.train_list = open_video_list(c.data, c.root)
        self.val_list = open_video_list(c.val_data, c.val_root) if (c.val_data or c.val_root) else None
        classes = c.classes or self.train_list.num_classes
        torch.manual_seed(c.seed)  # the initial weights are a function of the seed
        self.model = models.create_model(c.backbone, c.method, c.keep, frames=c.frames, size=c.size,
                                           classes=classes, attention=c.attention, options=c.options, seed=c.seed)
        self.init_report = None
        if c.checkpoint:
            from vidprune.checkpoints import load_checkpoint

            self.init_report = load_checkpoint(self.model, c.checkpoint, head="optional")
        info = self.model.info
        self.classes = classes
        self.normalization = resolve_normalization(c.norm, info.family)
        sampler = make_sampler(c.sampling, info.frames, c.stride)
        self.sampler_name = sampler.describe()
        train_tf = ClipTransform(info.size, normalization=self.normalization, train=True)
        val_tf = ClipTransform(info.size, normalization=self.normalization)
        self.train_set = VideoDataset(self.train_list.samples, sampler, train_tf, train=True, cache=c.cache)
        self.train_loader = make_loader(self.train_set, c.batch, c.workers, shuffle=True, seed=c.seed,
                                        pin_memory=self.device.type == "cuda", drop_last=len(self.train_set) > c.batch)
        self.val_loader = None
        if self.val_list is not None:
            val_set = VideoDataset(self.val_list.samples, sampler, val_tf, cache=c.cache)
            self.val_loader = make_loader(val_set, c.batch, c.workers, pin_memory=self.device.type == "cuda")
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, c.weight_decay), lr=c.lr, betas=(0.9, 0.999))
        self.steps_per_epoch = max(len(self.train_loader), 1)
        self.total_steps = self.steps_per_epoch * c.epochs
        if c.max_steps is not None:
            self.total_steps = min(self.total_steps, c.max_steps)
        warmup = int(round(c.warmup_epochs * self.steps_per_epoch))
        self.warmup_steps = min(warmup, max(self.total_steps - 1, 0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.warmup_steps, self.total_steps, c.min_lr / c.lr))
        use_amp = c.amp and self.device.type == "cuda"
        self.amp_dtype = None
        if use_amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler_enabled = self.amp_dtype == torch.float16
        if hasattr(torch.amp, "GradScaler"):
            self.scaler = torch.amp.GradScaler("cuda", enabled=scaler_enabled)
        else:  # torch < 2.3
            self.scaler = torch.cuda.amp.GradScaler(enabled=scaler_enabled)
        self.epoch = 0
        self.step = 0
        self.history: list[EpochLog] = []
        self.best_top1: Optional[float] = None

    # ------------------------------------------------------------------------------------ checkpoints

    def metadata(self) -> dict:
        info = self.model.info
        return {"format": "vidprune", "version": CHECKPOINT_VERSION, "vidprune_version": vidprune.__version__,
                "backbone": self.config.backbone, "method": self.config.method,
                "keep": getattr(self.model.method, "keep", None), "options": self.config.options,
                "frames": info.frames, "size": info.size, "grid": list(info.grid), "classes": self.classes,
                "class_names": self.train_list.class_names, "normalization": self.normalization,
                "sampling": self.sampler_name,
                # CLIP weights may come with GELU or QuickGELU; reloading must use the one trained with
                **({"activation": self.model.activation} if hasattr(self.model, "activation") else {})}

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                   "epoch": self.epoch, "step": self.step, "best_top1": self.best_top1,
                   "history": [asdict(h) for h in self.history], "config": asdict(self.config),
                   "vidprune": self.metadata()}
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def resume(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise VidpruneError(f"--resume '{path}' does not exist. Pass a last.pth written by `vidprune train`.")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = payload.get("vidprune", {})
        for key in ("backbone", "method"):
            if meta.get(key) != getattr(self.config, key):
                raise VidpruneError(f"--resume checkpoint was trained with {key} '{meta.get(key)}', this run uses "
                                    f"'{getattr(self.config, key)}': pass the same --{key}.")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.best_top1 = payload.get("best_top1")
        self.history = [EpochLog(**h) for h in payload.get("history", [])]

    # ------------------------------------------------------------------------------------ loops

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_epoch(self, on_step: Optional[Callable[[int, float], None]] = None) -> tuple[float, float, int]:
        c = self.config
        self.model.train()
        # reseeding per epoch makes a resumed run draw the same clips as an uninterrupted one
        torch.manual_seed(c.seed + 1000 * (self.epoch + 1))
        self.train_loader.generator.manual_seed(c.seed + self.epoch)
        loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
        for batch in self.train_loader:
            skipped += len(batch.failures)
            if batch.videos is None:
                continue
            if c.max_steps is not None and self.step >= c.max_steps:
                break
            videos = batch.videos[:, 0].to(self.device, non_blocking=True)  # one view per training clip
            labels = batch.labels.to(self.device)
            with self._autocast():
                logits = self.model(videos)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=c.label_smoothing)
            if not torch.isfinite(loss):
                raise VidpruneError(f"the loss became {float(loss)} at step {self.step}: lower --lr or use --clip-grad.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if c.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            n = labels.numel()
            loss_sum += float(loss.detach()) * n
            correct += int((logits.argmax(-1) == labels).sum())
            seen += n
            if on_step:
                on_step(self.step, float(loss.detach()))
        if not seen:
            raise VidpruneError("no training video could be decoded this epoch. Check --data and --root.")
        return loss_sum / seen, correct / seen, skipped

    def validate(self) -> Optional[dict]:
        if self.val_loader is None:
            return None
        from vidprune.evaluate import evaluate

        return evaluate(self.model, self.val_loader, self.classes, device=self.device, on_skip=lambda p, r: None)

    def fit(self, on_step: Optional[Callable[[int, float], None]] = None,
            on_epoch: Optional[Callable[[EpochLog], None]] = None, stop_after: Optional[int] = None) -> TrainResult:
        """Train to `config.epochs` (or, with `stop_after`, at most that many epochs in this call: the
        schedule stays the full run's, as when a run is interrupted and later resumed)."""
        c = self.config
        last_epoch = c.epochs if stop_after is None else min(c.epochs, self.epoch + stop_after)
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "metrics.jsonl"
        best_path: Optional[Path] = self.out / "best.pth" if (self.out / "best.pth").is_file() else None
        last_path = self.out / "last.pth"
        while self.epoch < last_epoch and (c.max_steps is None or self.step < c.max_steps):
            start = time.perf_counter()
            loss, top1, skipped = self.train_epoch(on_step)
            self.epoch += 1
            val = self.validate()
            entry = EpochLog(self.epoch, self.step, self.optimizer.param_groups[0]["lr"], loss, top1,
                             None if val is None else val["top1"], None if val is None else val["top5"],
                             None if val is None else val["mean_class_accuracy"],
                             skipped + (0 if val is None else val["skipped"]), time.perf_counter() - start)
            self.history.append(entry)
            with log_path.open("a") as fh:
                fh.write(json.dumps(asdict(entry)) + "\n")
            improved = val is not None and (self.best_top1 is None or val["top1"] > self.best_top1)
            if improved:
                self.best_top1 = val["top1"]
            self.save(last_path)
            if improved:
                best_path = self.out / "best.pth"
                self.save(best_path)
            if on_epoch:
                on_epoch(entry)
        if not self.history:
            raise VidpruneError(f"nothing to train: the run in '{self.out}' already finished {self.epoch} epochs. "
                                "Raise --epochs to continue it.")
        return TrainResult(self.history, last_path, best_path, self.best_top1, self.history[0].train_loss,
                           self.history[-1].train_loss)
