"""The unpruned backbone: the reference row of every sweep."""

from vidprune.methods.base import TokenMethod
from vidprune.registry import register_method


@register_method
class NoReduction(TokenMethod):
    name = "none"
    description = "the unpruned backbone (reference)"
    knob = None
    options = ()
    families = ("vit", "clip", "vivit", "timesformer")
