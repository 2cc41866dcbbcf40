"""Registries of backbone families, backbones and methods: declarations only (`vidprune.models` builds).

Adding a method is one new file in `vidprune/methods/` whose class carries the `@register_method`
decorator; adding a backbone family is one new file in `vidprune/backbones/` calling `register_family`
and `register_backbone` (and, for its pretrained weights, a `<family>_weights.py` beside it registering
checkpoint layouts). Both packages are imported on first use, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional, Sequence

from torch import nn

from vidprune.errors import VidpruneError, unknown_name


# The method every sweep measures first and every speed-up is relative to: the unpruned backbone.
REFERENCE_METHOD = "none"


@dataclass(frozen=True)
class NumberRange:
    """The numbers a knob or option accepts: low..high, each end open or closed, optionally whole numbers."""

    low: float = -math.inf
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = True
    integer: bool = False

    def describe(self) -> str:
        left = "[" if self.low_inclusive and not math.isinf(self.low) else "("
        right = "]" if self.high_inclusive and not math.isinf(self.high) else ")"
        return f"{left}{_bound(self.low)}, {_bound(self.high)}{right}"

    def contains(self, v: float) -> bool:
        ok_low = v >= self.low if self.low_inclusive else v > self.low
        ok_high = v <= self.high if self.high_inclusive else v < self.high
        return ok_low and ok_high and not math.isnan(v)

    def check(self, name: str, value: Any, example: str, why: str = "") -> float:
        """`value` as a float (an int for whole-number ranges), or a VidpruneError that names `name`, the bad
        value and the range; `example` is the flag that fixes it, `why` what the number means."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise VidpruneError(f"{name} must be a number in {self.describe()}, got '{value}'.") from None
        if not self.contains(v):
            meaning = f" ({why})" if why else ""
            raise VidpruneError(f"{name}={value} is outside {self.describe()}{meaning}. "
                                f"Pass a value in that range, e.g. {example}.")
        if self.integer:
            if v != int(v):
                raise VidpruneError(f"{name} must be a whole number in {self.describe()}, got {value}.")
            return int(v)
        return v


def _bound(x: float) -> str:
    return ("-inf" if x < 0 else "inf") if math.isinf(x) else f"{x:g}"


@dataclass(frozen=True)
class Knob:
    """The main dial of a method: what `--keep` sets.

    `cost_increases`: whether a higher value costs more (True for keep rates: higher keeps more tokens, the
    setting is less aggressive), or less (False for a sampling stride or a merge ratio: higher is more
    aggressive). `vidprune tune` reads it to know which end of the range is the aggressive one."""

    name: str
    default: float
    low: float
    high: float
    help: str
    low_inclusive: bool = False
    high_inclusive: bool = True
    integer: bool = False
    cost_increases: bool = True

    @property
    def range(self) -> NumberRange:
        return NumberRange(self.low, self.high, self.low_inclusive, self.high_inclusive, self.integer)

    def describe_range(self) -> str:
        return self.range.describe()

    def validate(self, value: Any) -> float:
        return self.range.check(self.name, value, f"--keep {self.default:g}", self.help)


def parse_bool(value) -> bool:
    """Option parser for true/false switches given on the command line or in YAML."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def choice(*allowed: str) -> Callable[[Any], str]:
    """Option parser accepting one of `allowed`: case, surrounding blanks and the separators ' ', '-', '_'
    do not matter ('Top-K' is topk, 'two_stage' is two-stage); the canonical spelling is returned."""
    compact = {_compact(a): a for a in allowed}

    def parse(value) -> str:
        text = str(value).strip().lower()
        if text in allowed:
            return text
        if _compact(text) in compact:
            return compact[_compact(text)]
        raise ValueError(f"expected one of {', '.join(allowed)}")

    return parse


def _compact(text: str) -> str:
    return text.lower().replace(" ", "").replace("-", "").replace("_", "")


def parse_layers(value) -> tuple[int, ...]:
    """1-based layer list from '4,7,10', a list, or a single int."""
    if isinstance(value, str):
        items = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    layers = tuple(sorted({int(v) for v in items}))
    if not layers or layers[0] < 1:
        raise ValueError("layers are 1-based block numbers, e.g. 4,7,10")
    return layers


AUTO_LAYERS = ("", "auto")  # a layer option left to the method's depth-dependent default


def _layer_text(value) -> str:
    """A layer option as the method receives it: 'auto', or a checked list such as '4,7,10' (a YAML list
    becomes that text). Whether the layers exist is checked against the backbone's depth when the method
    is built."""
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    if text not in AUTO_LAYERS:
        try:
            parse_layers(text)
        except (TypeError, ValueError):
            raise ValueError("expected 1-based block numbers such as 4,7,10, or auto") from None
    return text


@dataclass(frozen=True)
class Option:
    """A secondary setting of a method (set with `--set name=value`).

    Declare one with a constructor rather than a hand-written parser: `Option.number` (a range, reusing
    the knob's check and message), `Option.choice`, `Option.flag` and `Option.layers`. `parse` turns a
    raw value into the method's value or raises (ValueError for a message `parse_options` completes with
    the option's name, VidpruneError for a complete one); `kind` and `accepts` describe what it takes
    (`vidprune list --json`)."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = float
    # Whether `--set name=a,b` means a grid of values (numbers) or one value containing commas (layer lists).
    grid: bool = True
    kind: str = "number"  # number | integer | choice | flag | layers | text
    accepts: Any = None  # number: the range as text, e.g. '(0, 1]'; choice: the allowed values

    @classmethod
    def number(cls, name: str, default: float, help: str, low: float = -math.inf, high: float = math.inf, *,
               low_inclusive: bool = True, high_inclusive: bool = True, integer: bool = False) -> "Option":
        """A number in low..high (ends inclusive unless said otherwise; integer: whole numbers only, given
        to the method as int)."""
        allowed = NumberRange(low, high, low_inclusive, high_inclusive, integer)
        example = f"--set {name}={default}"
        return cls(name, default, help, partial(allowed.check, name, example=example),
                   kind="integer" if integer else "number", accepts=allowed.describe())

    @classmethod
    def choice(cls, name: str, default: str, help: str, allowed: Sequence[str]) -> "Option":
        """One of `allowed` (see `choice` for the spellings accepted)."""
        return cls(name, default, help, choice(*allowed), kind="choice", accepts=tuple(allowed))

    @classmethod
    def flag(cls, name: str, default: bool, help: str) -> "Option":
        """true/false (also 1/0, yes/no, on/off)."""
        return cls(name, default, help, parse_bool, kind="flag", accepts=(True, False))

    @classmethod
    def layers(cls, name: str, help: str, default: str = "auto") -> "Option":
        """1-based block numbers such as 4,7,10 (one value: commas do not make a grid), or auto."""
        return cls(name, default, help, _layer_text, grid=False, kind="layers")

    def describe(self) -> dict:
        """What `vidprune list --json` shows for this option."""
        out = {"default": self.default, "help": self.help, "type": self.kind}
        if self.kind in ("number", "integer") and self.accepts:
            out["range"] = self.accepts
        elif self.kind == "choice":
            out["choices"] = list(self.accepts)
        return out


@dataclass(frozen=True)
class BackboneFamily:
    """What every backbone of a family shares, declared once beside the family (`register_family`)."""

    name: str
    # The input statistics its checkpoints were trained with: a name in vidprune.data.transforms.NORMALIZATIONS,
    # what `--norm auto` means for this family.
    normalization: str = "imagenet"
    # The backbone an error suggests when a checkpoint fits none of the family's ("--backbone vit-b").
    example_backbone: str = ""


@dataclass
class BackboneSpec:
    name: str
    family: str
    build: Callable[..., nn.Module]
    description: str
    defaults: dict = field(default_factory=dict)
    # A configuration small enough for tests (tests/test_method_contract.py runs every method on each).
    tiny: bool = False


_FAMILIES: dict[str, BackboneFamily] = {}
_BACKBONES: dict[str, BackboneSpec] = {}
_METHODS: dict[str, type] = {}
_loaded = False
# Backbones that are not declared one by one but named after where their architecture is described, such as
# 'vit(hf:MCG-NJU/videomae-base)' (a Hugging Face config.json, vidprune.hub): a resolver turns such a name
# into a BackboneSpec, or returns None for names it does not handle. Resolved specs are kept apart from the
# declared ones, so `backbones()` (what `vidprune list` shows and checkpoints are matched against) is unchanged.
_RESOLVERS: list[Callable[[str], Optional[BackboneSpec]]] = []
_RESOLVED: dict[str, BackboneSpec] = {}


def register_family(name: str, *, normalization: str = "imagenet", example_backbone: str = "") -> None:
    """Declare a backbone family (see `BackboneFamily`); a family left undeclared gets the defaults."""
    if name in _FAMILIES:
        raise ValueError(f"backbone family {name!r} registered twice")
    _FAMILIES[name] = BackboneFamily(name, normalization, example_backbone)


def register_backbone(name: str, family: str, build: Callable[..., nn.Module], description: str, *,
                      tiny: bool = False, **defaults: Any) -> None:
    """`defaults` (frames, size, ...) are passed to `build`; `tiny` marks a configuration for tests."""
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} registered twice")
    _BACKBONES[name] = BackboneSpec(name, family, build, description, defaults, tiny)


def register_backbone_resolver(resolve: Callable[[str], Optional[BackboneSpec]]) -> None:
    """Let `get_backbone` build backbones named by `resolve` (see `_RESOLVERS`): it returns the spec of a
    name it handles (raising a VidpruneError when that name is wrong), None for any other name."""
    if resolve not in _RESOLVERS:
        _RESOLVERS.append(resolve)


def register_method(cls: type) -> type:
    """Class decorator. The class declares `name`, `knob`, `options`, `families` and `description`."""
    for attr in ("name", "knob", "options", "families", "description"):
        if not hasattr(cls, attr):
            raise TypeError(f"method class {cls.__name__} lacks the class attribute {attr!r}")
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in ("vidprune.backbones", "vidprune.methods"):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")


def families() -> dict[str, BackboneFamily]:
    """Every declared backbone family (loading the backbone modules, and with them their checkpoint layouts)."""
    _load_all()
    return dict(_FAMILIES)


def get_family(name: str) -> BackboneFamily:
    """The declaration of family `name`, or the defaults for a family that declares nothing."""
    return families().get(name) or BackboneFamily(name)


def backbones() -> dict[str, BackboneSpec]:
    _load_all()
    return dict(_BACKBONES)


def methods() -> dict[str, type]:
    _load_all()
    return dict(_METHODS)


def get_backbone(name: str) -> BackboneSpec:
    """A declared backbone, or one a resolver builds from its name (`register_backbone_resolver`)."""
    table = backbones()
    if name in table:
        return table[name]
    if name not in _RESOLVED:
        for resolve in _RESOLVERS:
            spec = resolve(name)
            if spec is not None:
                _RESOLVED[name] = spec
                break
        else:
            raise unknown_name("backbone", name, table)
    return _RESOLVED[name]


def get_method(name: str) -> type:
    table = methods()
    if name not in table:
        raise unknown_name("method", name, table)
    return table[name]


def parse_options(method_cls: type, raw: Optional[dict]) -> dict:
    """Validate `--set` options against what the method declares; unknown names are errors."""
    declared = {o.name: o for o in method_cls.options}
    parsed = {name: o.default for name, o in declared.items()}
    for key, value in (raw or {}).items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise VidpruneError(
                f"method '{method_cls.name}' has no option '{key}' (its options: {known})."
            )
        try:
            parsed[key] = declared[key].parse(value)
        except VidpruneError:
            raise
        except (TypeError, ValueError) as exc:
            raise VidpruneError(f"option {key}={value!r} of '{method_cls.name}' is invalid: {exc}") from None
    return parsed
