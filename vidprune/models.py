"""Build a measured model: a registered backbone with a registered method in place, optionally with
pretrained weights.

`create_model` is the one way a backbone and its method are put together (the sweep, eval, train, export and
Python users all call it); with `checkpoint=` it also settles what the caller left open from the checkpoint
(backbone, frames, size, classes) and loads the weights. `make_method` swaps one method for another on the
same weights. Both seed what they initialise from `seed`, so two builds of the same configuration have the
same random weights whatever the caller did with the global random state before (a method whose behaviour
depends on its weights, such as MADS's learned threshold, then measures the same in every process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from vidprune import hub
from vidprune.checkpoints import (RawCheckpoint, checkpoint_classes, checkpoint_geometry, infer_backbone,
                                  load_checkpoint, read_checkpoint, restore_method_state)
from vidprune.errors import VidpruneError
from vidprune.registry import REFERENCE_METHOD, backbones, get_backbone, get_method, parse_options

DEFAULT_CLASSES = 400  # Kinetics-400: the classifier size of a model built without a checkpoint or `classes`

CheckpointSource = Union[str, Path, dict, RawCheckpoint]


def create_model(backbone: Optional[str] = None, method: str = REFERENCE_METHOD, keep: Optional[float] = None,
                 frames: Optional[int] = None, size: Optional[int] = None, classes: Optional[int] = None,
                 attention: str = "sdpa", options: Optional[dict] = None, seed: int = 0, *,
                 checkpoint: Optional[CheckpointSource] = None, trust_checkpoint: bool = False,
                 head: str = "require") -> nn.Module:
    """Build `backbone` with `method` in place at knob value `keep` (the method's default when None).

    Without `checkpoint` the weights are random (seeded by `seed`), `backbone` defaults to the method's
    `default_backbone` and `classes` to 400.

    `checkpoint`: a file (.pth/.pt/.bin/.safetensors), a Hugging Face model folder, a hub model
    `hf:ORG/NAME[@REVISION]` (`vidprune.hub`), a state dict, or a `checkpoints.RawCheckpoint` already read
    (`trust_checkpoint`: unpickle Python objects, see `checkpoints.read_checkpoint`). What is left as None
    comes from it: the backbone its metadata names or its tensors show, the frames and size its metadata or
    config.json record, the classes of its classifier. A config.json written by transformers decides the
    architecture (`hub.settle_backbone`: the registered backbone with exactly that architecture, else
    '<family>(<source>)' built at the config's dimensions); its `id2label` names become
    `model.class_names`. A value passed explicitly wins where the weights can follow it (another frame count or
    size: position tables are resized; another class count with head="optional": a fresh classifier);
    where they cannot, the VidpruneError names both (the backbone the tensors are those of, the classes of
    the checkpoint's classifier). The weights are then loaded (`head`: "require" when the classifier must
    come from the checkpoint, "optional" to fine-tune a pre-trained encoder; see
    `checkpoints.load_checkpoint`), a method trained with the checkpoint (`vidprune train`) gets its own
    parameters back, and the load's `LoadReport` (layout, notes) is `model.checkpoint_report`.
    """
    if head not in ("require", "optional"):
        raise ValueError("head must be 'require' or 'optional'")
    method_cls = get_method(method)
    raw = None
    differs: list[str] = []  # explicit geometry the checkpoint's config.json records otherwise
    if checkpoint is not None:
        raw = checkpoint if isinstance(checkpoint, RawCheckpoint) else read_checkpoint(checkpoint, trust=trust_checkpoint)
        config = hub.transformers_config(raw.meta)
        if config is not None:
            # a transformers config.json decides the architecture; frames and size are its unless passed
            described = hub.describe_config(config, raw.meta.get("source") or raw.path or "the checkpoint")
            backbone = hub.settle_backbone(described, backbone)
            recorded_frames, recorded_size = described.frames, described.size
            differs = [f"{what} {asked} (its config.json: {recorded})" for what, asked, recorded in
                       (("frames", frames, recorded_frames), ("size", size, recorded_size))
                       if asked is not None and recorded is not None and asked != recorded]
        else:
            backbone = backbone or _checkpoint_backbone(raw)
            recorded_frames, recorded_size = checkpoint_geometry(raw)
        frames = frames if frames is not None else recorded_frames
        size = size if size is not None else recorded_size
        if classes is None:
            classes = checkpoint_classes(raw.state, get_backbone(backbone).family)
    backbone = backbone or method_cls.default_backbone
    classes = DEFAULT_CLASSES if classes is None else classes
    spec = get_backbone(backbone)
    if spec.family not in method_cls.families:
        supported = [b for b, s in backbones().items() if s.family in method_cls.families]
        raise VidpruneError(
            f"method '{method}' does not support backbone '{backbone}'. "
            f"Use one of: {', '.join(supported) or 'none registered'}."
        )
    if attention not in ("sdpa", "math"):
        raise VidpruneError(f"attention must be 'sdpa' or 'math', got '{attention}'.")
    if classes < 1:
        raise VidpruneError(f"--classes must be at least 1, got {classes}.")
    kwargs = dict(spec.defaults)
    if frames is not None:
        kwargs["frames"] = frames
    if size is not None:
        kwargs["size"] = size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(classes=classes, attention=attention, **kwargs)
    model.set_method(make_method(model.info, method, keep, options, seed=seed))
    model.backbone_name = backbone
    if raw is not None:
        model.checkpoint_report = load_checkpoint(model, raw, head=head)
        if differs:
            model.checkpoint_report.notes.append(f"built at {', '.join(differs)} as asked; the position tables "
                                                 "follow, but accuracy may differ from the model's own geometry")
        restore_method_state(raw, model.method)
        names = hub.label_names(raw.meta)
        if names is not None and len(names) == model.classes and model.checkpoint_report.head_loaded:
            model.class_names = names
    return model.eval()


def _checkpoint_backbone(raw: RawCheckpoint) -> str:
    """The backbone a checkpoint's metadata names (`vidprune train`), else the one its tensors show."""
    named = raw.meta.get("backbone") or infer_backbone(raw.state)
    if not named:
        raise VidpruneError("cannot tell which backbone the checkpoint is: pass --backbone (see `vidprune list`).")
    return named


def make_method(info, method: str, keep: Optional[float] = None, options: Optional[dict] = None,
                seed: int = 0) -> nn.Module:
    """A `method` instance for a backbone's geometry (`model.info`), its knob and options validated: what
    `create_model` puts in place, and what swaps one method for another on the same weights."""
    method_cls = get_method(method)
    if info.family not in method_cls.families:
        raise VidpruneError(f"method '{method}' does not support the '{info.family}' backbone family.")
    knob_value = None
    if method_cls.knob is not None:
        knob_value = method_cls.knob.validate(method_cls.knob.default if keep is None else keep)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return method_cls(info, knob_value, seed=seed, **parse_options(method_cls, options))
