"""Registries of backbones and methods, and `create_model`, the one way to build a measured model.

Adding a method is one new file in `vidprune/methods/` whose class carries the `@register_method`
decorator; adding a backbone family is one new file in `vidprune/backbones/` calling
`register_backbone`. Both packages are imported on first use, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from vidprune.errors import VidpruneError, unknown_name


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

    def describe_range(self) -> str:
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        high = "inf" if math.isinf(self.high) else f"{self.high:g}"
        return f"{left}{self.low:g}, {high}{right}"

    def validate(self, value: Any) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise VidpruneError(f"{self.name} must be a number, got '{value}'.") from None
        ok_low = v >= self.low if self.low_inclusive else v > self.low
        ok_high = v <= self.high if self.high_inclusive else v < self.high
        if not (ok_low and ok_high) or math.isnan(v):
            raise VidpruneError(
                f"{self.name}={value} is outside {self.describe_range()} ({self.help}). "
                f"Pass a value in that range, e.g. --keep {self.default:g}."
            )
        if self.integer:
            if v != int(v):
                raise VidpruneError(f"{self.name} must be a whole number, got {value}.")
            return int(v)
        return v


@dataclass(frozen=True)
class Option:
    """A secondary setting of a method (set with `--set name=value`)."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = float
    # Whether `--set name=a,b` means a grid of values (numbers) or one value containing commas (layer lists).
    grid: bool = True


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
    """Option parser accepting one of `allowed` (case-insensitive)."""

    def parse(value) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return parse


@dataclass
class BackboneSpec:
    name: str
    family: str
    build: Callable[..., nn.Module]
    description: str
    defaults: dict = field(default_factory=dict)


_BACKBONES: dict[str, BackboneSpec] = {}
_METHODS: dict[str, type] = {}
_loaded = False


def register_backbone(name: str, family: str, build: Callable[..., nn.Module], description: str,
                      **defaults: Any) -> None:
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} registered twice")
    _BACKBONES[name] = BackboneSpec(name, family, build, description, defaults)


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


def backbones() -> dict[str, BackboneSpec]:
    _load_all()
    return dict(_BACKBONES)


def methods() -> dict[str, type]:
    _load_all()
    return dict(_METHODS)


def get_backbone(name: str) -> BackboneSpec:
    table = backbones()
    if name not in table:
        raise unknown_name("backbone", name, table)
    return table[name]


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


def create_model(backbone: str = "vit-b", method: str = "none", keep: Optional[float] = None,
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
    return method_cls(info, knob_value, seed=seed, **parse_options(method_cls, options))
