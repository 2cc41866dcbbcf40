"""Build a measured model: a registered backbone with a registered method in place.

`create_model` is the one way a backbone and its method are put together (the sweep, eval, train, export and
Python users all call it); `make_method` swaps one method for another on the same weights. Both seed what
they initialise from `seed`, so two builds of the same configuration have the same random weights whatever
the caller did with the global random state before (a method whose behaviour depends on its weights, such as
MADS's learned threshold, then measures the same in every process).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vidprune.errors import VidpruneError
from vidprune.registry import REFERENCE_METHOD, backbones, get_backbone, get_method, parse_options


def create_model(backbone: str = "vit-b", method: str = REFERENCE_METHOD, keep: Optional[float] = None,
                 frames: Optional[int] = None, size: Optional[int] = None, classes: int = 400,
                 attention: str = "sdpa", options: Optional[dict] = None, seed: int = 0) -> nn.Module:
    """Build `backbone` with `method` in place at knob value `keep` (the method's default when None)."""
    spec = get_backbone(backbone)
    method_cls = get_method(method)
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
    return model.eval()


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
