"""Pretrained weights for the factorised ViViT (vivit.py): none are loaded yet.

What this module declares is why a Hugging Face ViViT cannot be: transformers' VivitModel /
VivitForVideoClassification (google/vivit-b-16x2-kinetics400) is ViViT "Model 1", one joint
spatio-temporal transformer over tubelet tokens, while vidprune's vivit family is the factorised encoder
("Model 2": a spatial transformer per frame, then a temporal one over the frames' class tokens). No
renaming maps one onto the other, so a hub config of that model type stops with the reason.
"""

from __future__ import annotations

from vidprune.hub import HubArchitecture, register_hub_architecture

register_hub_architecture(HubArchitecture(
    "vivit", "ViViT", ("vivit",),
    unsupported="transformers' ViViT (VivitModel / VivitForVideoClassification) is ViViT model 1, joint "
                "spatio-temporal attention over tubelet tokens, while vidprune's vivit backbones are the factorised "
                "encoder (model 2: a spatial transformer per frame, then a temporal one), so its weights have no "
                "counterpart there."))
