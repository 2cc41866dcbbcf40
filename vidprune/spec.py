"""What a sweep measures: its settings (`SweepSpec`), its points, and a point's identity (`config_hash`).

A sweep setting is one field of `SweepSpec`, declared with `setting(...)`, whose metadata says everything
else about it:

* `wire`: it travels to a worker process (`--isolate`, Ray, Slurm): `spec_to_dict` / `spec_from_dict`;
* `hashed`: how it enters `config_hash`: `ALWAYS`; `WHEN_SET`, only when set, so that the hashes of tables
  written before the setting existed stay valid; `POINT`, through the point's own coordinate (method,
  keep, options); or `NOT`; with `normalize` for equal values spelled differently (fp32 / float32);
* `recipe`: whether a recipe's `sweep:` mapping may set it, under which key and checked how
  (`vidprune.recipes` derives its keys and checks from this);
* `flag`: the `vidprune sweep` option that overrides it (`vidprune.cli.settings` builds it).

Importing this module does not import torch, so the command line can build its options from these fields;
what needs the registry or the device module imports it when called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from vidprune.errors import VidpruneError
from vidprune.metrics import ALL_METRICS, selectable

# How a setting enters config_hash.
ALWAYS, WHEN_SET, POINT, NOT = "always", "when set", "point", "not"


@dataclass(frozen=True)
class RecipeKey:
    """How a recipe sets a field: its YAML key (default: the field's name) and what it accepts. `kind` names
    a check in `vidprune.recipes`: registered (a name in `registry.<names>()`), integer (>= low), choice,
    device, metrics, knob (the method's knob values) or options (the method's options)."""

    kind: str
    key: Optional[str] = None
    low: int = 0
    choices: tuple = ()
    names: str = ""


@dataclass(frozen=True)
class Flag:
    """The `vidprune sweep` option that overrides a setting. `group` places it in --help: "model" options
    follow --recipe, "run" options follow the executor's. The option's value type is the field's (a flag
    for a bool) unless `parse` turns the text typed into the field's value."""

    names: tuple[str, ...]
    help: str
    group: str = "model"
    parse: Optional[Callable[[str], Any]] = None


@dataclass(frozen=True)
class Setting:
    wire: bool
    hashed: str
    normalize: Optional[Callable[[Any, "SweepSpec"], Any]] = None
    recipe: Optional[RecipeKey] = None
    flag: Optional[Flag] = None


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, wire: bool = True,
            hashed: str, normalize: Optional[Callable] = None, recipe: Optional[RecipeKey] = None,
            flag: Optional[Flag] = None) -> Any:
    """A `SweepSpec` field with its `Setting` (see the module docstring)."""
    if hashed not in (ALWAYS, WHEN_SET, POINT, NOT):
        raise ValueError(f"hashed must be one of always, when set, point, not; got {hashed!r}")
    return field(default=default, default_factory=default_factory,
                 metadata={"setting": Setting(wire, hashed, normalize, recipe, flag)})


# --------------------------------------------------------------------- how values enter config_hash


def _backbone_defaults(spec: "SweepSpec") -> dict:
    from vidprune import registry

    try:
        return registry.get_backbone(spec.backbone).defaults
    except VidpruneError:
        return {}


def _geometry(name: str) -> Callable[[Any, "SweepSpec"], Any]:
    """Frames or size with the backbone's default filled in: --frames 16 and no --frames are one point."""
    def normalize(value, spec):
        return value if value is not None else _backbone_defaults(spec).get(name)

    return normalize


def _device_name(value, spec) -> str:
    # as requested: `auto` stays `auto`, since a driver handing points to Ray or Slurm cannot know where
    # they land (the row's `device` column says where they did)
    return str(value).strip().lower()


def _dtype_name(value, spec) -> str:
    from vidprune.measure import device as devices

    try:
        return devices.dtype_name(devices.resolve_dtype(value))
    except VidpruneError:
        return str(value)


def _metric_set(value, spec) -> list:
    return sorted(set(value))


def parse_metrics(text: str) -> tuple[str, ...]:
    """`--metrics a,b` (or a recipe's comma-separated string) into names; checked when the runner starts."""
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


# ------------------------------------------------------------------------------------------ the spec


@dataclass
class SweepSpec:
    """Every setting of a sweep; one field each (see the module docstring for the metadata)."""

    method: str = setting(hashed=POINT, recipe=RecipeKey("registered", names="methods"))
    keeps: list[float] = setting(default_factory=list, hashed=POINT, recipe=RecipeKey("knob", key="keep"))
    options: dict = setting(default_factory=dict, hashed=POINT,  # option name -> list of raw values (a grid)
                            recipe=RecipeKey("options"))
    backbone: Optional[str] = setting(  # None: the method's `default_backbone`
        None, hashed=ALWAYS, recipe=RecipeKey("registered", names="backbones"),
        flag=Flag(("--backbone", "-b"), "backbone (default: the method's, vit-b for evad)"))
    frames: Optional[int] = setting(None, hashed=ALWAYS, normalize=_geometry("frames"), recipe=RecipeKey("integer", low=1),
                                    flag=Flag(("--frames",), "frames per clip (default: the backbone's, 16)"))
    size: Optional[int] = setting(None, hashed=ALWAYS, normalize=_geometry("size"), recipe=RecipeKey("integer", low=1),
                                  flag=Flag(("--size",), "input height = width in pixels (default 224)"))
    classes: int = setting(400, hashed=ALWAYS, recipe=RecipeKey("integer", low=1),
                           flag=Flag(("--classes",), "classifier classes (default 400)"))
    batch: int = setting(1, hashed=ALWAYS, recipe=RecipeKey("integer", low=1),
                         flag=Flag(("--batch",), "clips per forward for latency/throughput (default 1)"))
    device: str = setting("auto", hashed=ALWAYS, normalize=_device_name, recipe=RecipeKey("device"),
                          flag=Flag(("--device",), "cpu | cuda | cuda:N | mps | auto (default auto)"))
    dtype: str = setting("fp32", hashed=ALWAYS, normalize=_dtype_name,
                         recipe=RecipeKey("choice", choices=("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")),
                         flag=Flag(("--dtype",), "fp32 | fp16 | bf16 (default fp32)"))
    attention: str = setting("sdpa", hashed=ALWAYS, recipe=RecipeKey("choice", choices=("sdpa", "math")),
                             flag=Flag(("--attention",), "sdpa (fused) | math (explicit) (default sdpa)"))
    metrics: tuple[str, ...] = setting(  # default: every selectable metric of the table
        default_factory=selectable, hashed=ALWAYS, normalize=_metric_set, recipe=RecipeKey("metrics"),
        flag=Flag(("--metrics",), f"subset of {','.join(ALL_METRICS)} (default all; flops alone takes seconds)",
                  parse=parse_metrics))
    repeats: Optional[int] = setting(None, hashed=ALWAYS, recipe=RecipeKey("integer", low=1),
                                     flag=Flag(("--repeats",), "timed runs per point (default 5 on CPU, 30 on GPU, "
                                               "more for fast models: at least 1 s of timed runs)"))
    warmup: Optional[int] = setting(None, hashed=ALWAYS, recipe=RecipeKey("integer", low=0),
                                    flag=Flag(("--warmup",), "untimed warm-up runs (default 2 on CPU, 10 on GPU)"))
    seed: int = setting(0, hashed=ALWAYS, recipe=RecipeKey("integer", low=0),
                        flag=Flag(("--seed",), "seed for inputs and random choices (default 0)"))
    autocast: bool = setting(False, hashed=WHEN_SET, flag=Flag(
        ("--autocast",), "keep fp32 weights and run under torch.autocast in --dtype (default: cast the weights to "
        "--dtype)", group="run"))
    compile: bool = setting(False, hashed=WHEN_SET, flag=Flag(
        ("--compile",), "torch.compile each model before timing (the warm-up compiles every token-count shape)",
        group="run"))
    power: bool = setting(False, hashed=WHEN_SET, flag=Flag(
        ("--power",), "average watts and joules per clip over a timed window (NVML on NVIDIA GPUs, tegrastats on "
        "Jetson)", group="run"))
    peak: bool = setting(False, hashed=WHEN_SET, flag=Flag(
        ("--peak",), "achieved FLOP/s as a fraction of a GEMM microbenchmark in --dtype (column peak_fraction)",
        group="run"))
    fidelity_clips: Optional[int] = setting(None, hashed=WHEN_SET, flag=Flag(
        ("--fidelity-clips",), "generated clips for agreement/kl/cosine when no --data (default 4 on CPU, 32 on GPU)",
        group="run"))
    # labelled paper points from a recipe: they stay with the driver
    references: list[dict] = setting(default_factory=list, wire=False, hashed=NOT)
    recipe: Optional[str] = setting(None, wire=False, hashed=NOT)  # the recipe file, for provenance

    def __post_init__(self):
        if self.backbone is None:
            from vidprune import registry

            self.backbone = getattr(registry.get_method(self.method), "default_backbone", "vit-b")
        if isinstance(self.metrics, list):  # from a recipe, the command line or the wire
            self.metrics = tuple(self.metrics)


def settings() -> list[tuple[dataclasses.Field, Setting]]:
    """Every field of SweepSpec with its Setting, in declaration order."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(SweepSpec)]


@dataclass
class Point:
    method: str
    keep: Optional[float]
    options: dict

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.options.items())
        return f"{self.method}" + ("" if self.keep is None else f" keep={self.keep:g}") + extra


# ------------------------------------------------------------------------------------------ the wire


def spec_to_dict(spec: SweepSpec) -> dict:
    """The settings a worker needs, as plain JSON-able values."""
    wire = {}
    for f, meta in settings():
        if meta.wire:
            value = getattr(spec, f.name)
            wire[f.name] = list(value) if isinstance(value, tuple) else value
    return wire


def spec_from_dict(data: dict) -> SweepSpec:
    return SweepSpec(**data)


# ------------------------------------------------------------------------------------- the identity


def config_payload(spec: SweepSpec, point: Point) -> dict:
    """Everything that defines a measured point, with device-independent defaults filled in, so that
    `--keep 0.7 --set w_kf=4` and `--keep 0.70 --set w_kf=4.0` are the same point: the point's coordinates,
    then every setting hashed ALWAYS, and every setting hashed WHEN_SET that is set."""
    from vidprune import registry

    try:
        options = registry.parse_options(registry.get_method(point.method), point.options)
    except VidpruneError:
        options = dict(point.options)
    payload = {"method": point.method, "keep": None if point.keep is None else float(point.keep), "options": options}
    for f, meta in settings():
        value = getattr(spec, f.name)
        if meta.hashed == ALWAYS or (meta.hashed == WHEN_SET and value):
            payload[f.name] = meta.normalize(value, spec) if meta.normalize else value
    return payload


def stable_hash(payload) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_hash(spec: SweepSpec, point: Point) -> str:
    """The identity of a point across runs: `--resume` skips a point whose hash already has an `ok` row."""
    return stable_hash(config_payload(spec, point))


# ------------------------------------------------------------------------------ reading what users type


def parse_keeps(text: str) -> list[float]:
    """'0.6,0.7,0.8' or a range 'start:stop:step' (stop included)."""
    values: list[float] = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        if ":" in part:
            pieces = part.split(":")
            if len(pieces) != 3:
                raise VidpruneError(f"--keep range '{part}' must be start:stop:step, e.g. 0.5:0.9:0.1.")
            try:
                start, stop, step = (float(p) for p in pieces)
            except ValueError:
                raise VidpruneError(f"--keep range '{part}' must contain numbers, e.g. 0.5:0.9:0.1.") from None
            if step <= 0 or stop < start:
                raise VidpruneError(f"--keep range '{part}' needs step > 0 and stop >= start, e.g. 0.5:0.9:0.1.")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values.extend(round(start + i * step, 10) for i in range(count))
        else:
            try:
                values.append(float(part))
            except ValueError:
                raise VidpruneError(f"--keep value '{part}' is not a number. Use e.g. --keep 0.6,0.7,0.8.") from None
    if not values:
        raise VidpruneError("--keep is empty. Use e.g. --keep 0.6,0.7,0.8 or --keep 0.5:0.9:0.1.")
    return list(dict.fromkeys(values))


def parse_set(items: list[str], method_cls: type) -> dict:
    """`--set name=a,b` items into {name: [values]}; non-grid options keep commas in one value."""
    grid_of = {o.name: o.grid for o in method_cls.options}
    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise VidpruneError(f"--set '{item}' must look like name=value, e.g. --set w_kf=2,4.")
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in grid_of:
            known = ", ".join(grid_of) or "none"
            raise VidpruneError(f"method '{method_cls.name}' has no option '{name}' (its options: {known}).")
        result[name] = [v.strip() for v in value.split(",")] if grid_of[name] else [value.strip()]
    return result
