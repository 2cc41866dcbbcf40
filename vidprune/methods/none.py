"""The unpruned backbone: the reference row of every sweep."""

from vidprune.methods.base import TokenMethod
from vidprune.registry import REFERENCE_METHOD, register_method


@register_method
class NoReduction(TokenMethod):
    name = REFERENCE_METHOD
    description = "the unpruned backbone (reference)"
    knob = None
    options = ()
    families = ("vit", "clip", "vivit", "timesformer")
