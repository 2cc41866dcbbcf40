"""Accuracy and fidelity of a model with a token method in place.

Accuracy needs labels: top-1, top-5 and mean class accuracy over a dataset, with multi-view testing
(clips x crops per video, logits averaged over the views).

Fidelity needs neither labels nor trained weights: it compares the model with a method in place to the
same weights unpruned, on the same clips (dataset clips or generated ones):
* agreement: fraction of clips whose top-1 class matches the unpruned model's;
* kl: mean KL(p_unpruned || p_pruned) of the softmax predictions, in nats;
* cosine: mean cosine similarity of the pooled features (`forward_features`, the head's input).
With the method off (keep 1.0) the forward pass is the unpruned one, so agreement is exactly 1, KL 0
and cosine 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vidprune.errors import VidpruneError

ACCURACY_COLUMNS = ("accuracy", "top1", "top5", "mean_class_accuracy")


# ------------------------------------------------------------------------------------ forward helpers


@contextmanager
def _capture_head_input(model: nn.Module) -> Iterator[list]:
    captured: list = []
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        yield captured
        return
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


def features_and_logits(model: nn.Module, video) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """(pooled features, logits) from one forward pass: the features are what the model's `head` receives
    (its `forward_features` output), captured by a hook so the backbone runs once. Features are None for a
    model without a `head` module and without `forward_features`."""
    with _capture_head_input(model) as captured:
        logits = model(video)
    if captured:
        return captured[-1], logits
    if hasattr(model, "forward_features"):
        return model.forward_features(video), logits
    return None, logits


def _flatten_views(videos) -> tuple[torch.Tensor, int, int]:
    """(B, V, C, T, H, W) -> (B*V, C, T, H, W); a (B, C, T, H, W) batch is one view, and so is a
    multi-modal input (a dict or tuple of tensors, e.g. RGB + depth + skeleton)."""
    if not isinstance(videos, torch.Tensor):
        first = next(iter(videos.values())) if isinstance(videos, dict) else videos[0]
        return videos, first.shape[0], 1
    if videos.dim() == 6:
        b, v = videos.shape[:2]
        return videos.flatten(0, 1), b, v
    return videos, videos.shape[0], 1


def view_averaged(model: nn.Module, videos: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """Features and logits per video, averaged over its views, in float32."""
    flat, b, v = _flatten_views(videos)
    feats, logits = features_and_logits(model, flat)
    logits = logits.float().reshape(b, v, -1).mean(dim=1)
    if feats is not None:
        feats = feats.float().reshape(b, v, -1).mean(dim=1)
    return feats, logits


# ------------------------------------------------------------------------------------------ meters


@dataclass
class AccuracyMeter:
    num_classes: int
    correct1: int = 0
    correct5: int = 0
    count: int = 0
    per_class_total: Optional[torch.Tensor] = None
    per_class_correct: Optional[torch.Tensor] = None

    def __post_init__(self):
        self.per_class_total = torch.zeros(self.num_classes, dtype=torch.long)
        self.per_class_correct = torch.zeros(self.num_classes, dtype=torch.long)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
        if logits.shape[-1] != self.num_classes:
            raise VidpruneError(f"the model predicts {logits.shape[-1]} classes but the dataset has "
                                f"{self.num_classes}: pass --classes {self.num_classes} or the matching checkpoint.")
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise VidpruneError(f"label {int(labels.max())} is out of range for {self.num_classes} classes.")
        k = min(5, self.num_classes)
        top = logits.topk(k, dim=-1).indices
        hit1 = top[:, 0] == labels
        self.correct1 += int(hit1.sum())
        self.correct5 += int((top == labels[:, None]).any(dim=-1).sum())
        self.count += int(labels.numel())
        self.per_class_total += torch.bincount(labels, minlength=self.num_classes)
        self.per_class_correct += torch.bincount(labels[hit1], minlength=self.num_classes)

    def result(self) -> dict:
        if not self.count:
            return {c: float("nan") for c in ACCURACY_COLUMNS}
        present = self.per_class_total > 0
        per_class = self.per_class_correct[present].double() / self.per_class_total[present].double()
        top1 = self.correct1 / self.count
        return {"accuracy": top1, "top1": top1, "top5": self.correct5 / self.count,
                "mean_class_accuracy": float(per_class.mean())}


@dataclass
class FidelityMeter:
    agree: int = 0
    kl_sum: float = 0.0
    cosine_sum: float = 0.0
    cosine_count: int = 0
    count: int = 0

    def update(self, logits: torch.Tensor, reference_logits: torch.Tensor,
               features: Optional[torch.Tensor] = None, reference_features: Optional[torch.Tensor] = None) -> None:
        # float64 so that identical inputs give exactly KL 0 (log-softmax of equal rows cancels exactly)
        logits, reference_logits = logits.detach().double().cpu(), reference_logits.detach().double().cpu()
        self.agree += int((logits.argmax(-1) == reference_logits.argmax(-1)).sum())
        log_p = F.log_softmax(reference_logits, dim=-1)
        log_q = F.log_softmax(logits, dim=-1)
        self.kl_sum += float((log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0).sum())
        self.count += logits.shape[0]
        if features is not None and reference_features is not None:
            cos = F.cosine_similarity(features.detach().double().cpu(), reference_features.detach().double().cpu(),
                                      dim=-1)
            self.cosine_sum += float(cos.clamp(-1.0, 1.0).sum())
            self.cosine_count += cos.numel()

    def result(self) -> dict:
        if not self.count:
            return {"agreement": float("nan"), "kl": float("nan"), "cosine": float("nan"), "fidelity_clips": 0}
        cosine = self.cosine_sum / self.cosine_count if self.cosine_count else float("nan")
        return {"agreement": self.agree / self.count, "kl": self.kl_sum / self.count, "cosine": cosine,
                "fidelity_clips": self.count}


# ------------------------------------------------------------------------------------------ fidelity


def _batches(clips) -> Iterable[torch.Tensor]:
    if isinstance(clips, torch.Tensor):
        yield clips
        return
    for item in clips:
        videos = getattr(item, "videos", item)
        if isinstance(videos, (tuple, list)):
            videos = videos[0]
        if videos is not None:
            yield videos


def fidelity_columns(model: nn.Module, reference_model: nn.Module, clips) -> dict:
    """agreement, kl, cosine and fidelity_clips of `model` against `reference_model` (the same weights
    without the method) over `clips`: a (B, C, T, H, W) or (B, V, C, T, H, W) tensor, an iterable of such
    batches, or a DataLoader of `vidprune.data.datasets.Batch`. Both models run in eval mode on the
    device and dtype of their parameters; the clips are moved there."""
    meter = FidelityMeter()
    was_training = (model.training, reference_model.training)
    model.eval()
    reference_model.eval()
    try:
        with torch.inference_mode():
            for videos in _batches(clips):
                ref_feats, ref_logits = view_averaged(reference_model, _to_model(reference_model, videos))
                feats, logits = view_averaged(model, _to_model(model, videos))
                meter.update(logits, ref_logits, feats, ref_feats)
    finally:
        model.train(was_training[0])
        reference_model.train(was_training[1])
    return meter.result()


def fidelity_to_unpruned(model: nn.Module, clips, seed: int = 0) -> dict:
    """`fidelity_columns` of `model` against itself with its method replaced by `none`: the same weights
    by construction, without a second copy of the model in memory."""
    reference_method = build_method(model, "none", None, seed=seed)
    param = next(model.parameters(), None)
    if param is not None:
        reference_method.to(device=param.device, dtype=param.dtype)
    original = model.method
    meter = FidelityMeter()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for videos in _batches(clips):
                videos = _to_model(model, videos)
                model.set_method(reference_method)
                ref_feats, ref_logits = view_averaged(model, videos)
                model.set_method(original)
                feats, logits = view_averaged(model, videos)
                meter.update(logits, ref_logits, feats, ref_feats)
    finally:
        model.set_method(original)
        model.train(was_training)
    return meter.result()


def _to_model(model: nn.Module, videos):
    from vidprune.measure.flops import move_inputs

    param = next(model.parameters(), None)
    if param is None:
        return videos
    return move_inputs(videos, param.device, param.dtype)


def generated_clips(model: nn.Module, count: int = 8, batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic random clips shaped for `model` (its `make_input` when it has one), for fidelity where
    no dataset is given. Random clips measure how far the method moves the model, not task accuracy."""
    from vidprune.measure.flops import example_input

    clips, made = [], 0
    while made < count:
        n = min(batch, count - made)
        clips.append(example_input(model, n, seed=seed + made))
        made += n
    return clips


# ------------------------------------------------------------------------------- multi-point evaluation


def build_method(model: nn.Module, method: str, keep: Optional[float], options: Optional[dict] = None,
                 seed: int = 0) -> nn.Module:
    """A method instance for `model`'s geometry, validated as `create_model` validates it."""
    from vidprune.models import make_method

    return make_method(model.info, method, keep, options, seed=seed)


@dataclass
class PointResult:
    accuracy: dict
    fidelity: dict
    videos: int


@dataclass
class EvalOutcome:
    results: list[PointResult]
    videos: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    views: int = 1


def evaluate_methods(model: nn.Module, methods: Sequence[nn.Module], loader, num_classes: int,
                     device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32,
                     on_batch: Optional[Callable[[int], None]] = None,
                     on_skip: Optional[Callable[[str, str], None]] = None, limit: Optional[int] = None) -> EvalOutcome:
    """Run every method in `methods` (the first is the reference, normally `none`) on the same weights and
    the same decoded batches: each batch is decoded once and every method sees it, so fidelity compares
    like with like. `model` keeps its own method afterwards."""
    from vidprune.data.datasets import SkipCounter

    device = device or next(model.parameters()).device
    original = model.method
    model.eval()
    methods = [m.to(device=device, dtype=dtype) for m in methods]
    accuracy = [AccuracyMeter(num_classes) for _ in methods]
    fidelity = [FidelityMeter() for _ in methods]
    skipped = SkipCounter(on_skip)
    seen, views = 0, 1
    try:
        with torch.inference_mode():
            for batch in loader:
                skipped.add(batch.failures)
                if batch.videos is None:
                    if on_batch:
                        on_batch(len(batch.failures))
                    continue
                videos, labels = batch.videos, batch.labels
                if limit is not None and seen + len(labels) > limit:
                    keep_n = limit - seen
                    videos, labels = videos[:keep_n], labels[:keep_n]
                views = videos.shape[1] if videos.dim() == 6 else 1
                videos = videos.to(device=device, dtype=dtype, non_blocking=True)
                reference = None
                for i, method in enumerate(methods):
                    model.set_method(method)
                    feats, logits = view_averaged(model, videos)
                    if reference is None:
                        reference = (feats, logits)
                    accuracy[i].update(logits, labels)
                    fidelity[i].update(logits, reference[1], feats, reference[0])
                seen += len(labels)
                if on_batch:
                    on_batch(len(labels) + len(batch.failures))
                if limit is not None and seen >= limit:
                    break
    finally:
        model.set_method(original)
    results = [PointResult(a.result(), f.result(), a.count) for a, f in zip(accuracy, fidelity)]
    return EvalOutcome(results, seen, skipped.skipped, views)


def evaluate(model: nn.Module, loader, num_classes: int, device=None, dtype=torch.float32, **kwargs) -> dict:
    """top1, top5, mean_class_accuracy (and accuracy = top1) of `model` as it is, over `loader`."""
    outcome = evaluate_methods(model, [model.method], loader, num_classes, device, dtype, **kwargs)
    return dict(outcome.results[0].accuracy, videos=outcome.videos, skipped=len(outcome.skipped),
                views=outcome.views)

