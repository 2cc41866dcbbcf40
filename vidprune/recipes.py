"""YAML recipes: a sweep written down once, with the paper's own numbers as labelled reference points."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from vidprune.errors import VidpruneError
from vidprune.sweep import ALL_METRICS

SWEEP_KEYS = {"method", "backbone", "keep", "frames", "size", "classes", "batch", "device", "dtype",
              "attention", "metrics", "repeats", "warmup", "seed", "options"}
TOP_KEYS = {"name", "description", "paper", "sweep", "convention", "references"}

# The schema: integer keys with their lowest allowed value, keys with a fixed set of values.
_INT_KEYS = {"frames": 1, "size": 1, "classes": 1, "batch": 1, "repeats": 1, "warmup": 0, "seed": 0}
_CHOICES = {"dtype": ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16"), "attention": ("sdpa", "math"),
            "metrics": ALL_METRICS}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_SCALAR = (str, int, float, bool)


def _bad(path: Path, key: str, value, allowed: str) -> VidpruneError:
    return VidpruneError(f"recipe '{path}': {key} = {value!r} is not allowed; allowed: {allowed}.")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_recipe(path: Path, data: dict) -> None:
    """Types and ranges of every key, each error naming the file, the key and the allowed values."""
    from vidprune import registry

    for key in ("name", "description", "paper"):
        if key in data and not isinstance(data[key], str):
            raise _bad(path, key, data[key], "a string")
    sweep = data["sweep"]
    if not isinstance(sweep["method"], str) or sweep["method"] not in registry.methods():
        raise _bad(path, "sweep.method", sweep["method"], ", ".join(sorted(registry.methods())))
    method_cls = registry.get_method(sweep["method"])
    if "backbone" in sweep and (not isinstance(sweep["backbone"], str) or sweep["backbone"] not in registry.backbones()):
        raise _bad(path, "sweep.backbone", sweep["backbone"], ", ".join(sorted(registry.backbones())))
    for key, low in _INT_KEYS.items():
        if key in sweep and (not isinstance(sweep[key], int) or isinstance(sweep[key], bool) or sweep[key] < low):
            raise _bad(path, f"sweep.{key}", sweep[key], f"an integer >= {low}")
    if "device" in sweep and not (isinstance(sweep["device"], str) and _DEVICE.fullmatch(sweep["device"].strip().lower())):
        raise _bad(path, "sweep.device", sweep["device"], "cpu, cuda, cuda:N, mps, auto")
    for key in ("dtype", "attention"):
        if key in sweep and sweep[key] not in _CHOICES[key]:
            raise _bad(path, f"sweep.{key}", sweep[key], ", ".join(_CHOICES[key]))
    if "metrics" in sweep:
        metrics = sweep["metrics"]
        items = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else metrics
        if not isinstance(items, list) or not items or any(m not in _CHOICES["metrics"] for m in items):
            raise _bad(path, "sweep.metrics", metrics, "a list (or comma-separated string) of " + ", ".join(_CHOICES["metrics"]))
    if "keep" in sweep:
        keep = sweep["keep"]
        if method_cls.knob is None:
            raise _bad(path, "sweep.keep", keep, f"nothing: method '{method_cls.name}' has no knob")
        values = keep if isinstance(keep, list) else [keep]
        allowed = f"numbers in {method_cls.knob.describe_range()} ({method_cls.knob.name}), one or a list"
        if not values:
            raise _bad(path, "sweep.keep", keep, allowed)
        for value in values:
            if isinstance(value, str) and ":" in value and not isinstance(keep, list):
                continue  # a range, checked when the sweep expands it
            if not _is_number(value):
                raise _bad(path, "sweep.keep", value, allowed)
            try:
                method_cls.knob.validate(value)
            except VidpruneError:
                raise _bad(path, "sweep.keep", value, allowed) from None
    if "options" in sweep:
        options = sweep["options"]
        if not isinstance(options, dict):
            raise _bad(path, "sweep.options", options, "a mapping of option name to value or list of values")
        declared = [o.name for o in method_cls.options]
        for name, value in options.items():
            if name not in declared:
                raise _bad(path, "sweep.options", name, f"options of '{method_cls.name}': {', '.join(declared) or 'none'}")
            values = value if isinstance(value, list) else [value]
            if not values or any(not isinstance(v, _SCALAR) for v in values):
                raise _bad(path, f"sweep.options.{name}", value, "a number, string or boolean, or a list of them")
    convention = data.get("convention")
    if convention is not None:
        if not isinstance(convention, dict):
            raise _bad(path, "convention", convention, "a mapping (paper_gflops_factor, scope)")
        factor = convention.get("paper_gflops_factor", 1.0)
        if not _is_number(factor) or factor <= 0:
            raise _bad(path, "convention.paper_gflops_factor", factor, "a number > 0 (2 for 2 FLOPs per MAC, ...)")
    references = data.get("references")
    if references is not None and not isinstance(references, list):
        raise _bad(path, "references", references, "a list of mappings (keep, gflops, source, ...)")
    for i, ref in enumerate(references or []):
        if not isinstance(ref, dict):
            continue  # reported below with its own message
        for key in ("keep", "gflops", "paper_gflops_factor"):
            if key in ref and (not _is_number(ref[key]) or ref[key] < 0):
                raise _bad(path, f"references[{i}].{key}", ref[key], "a number >= 0")
        if "method" in ref and ref["method"] not in registry.methods():
            raise _bad(path, f"references[{i}].method", ref["method"], ", ".join(sorted(registry.methods())))
        if "source" in ref and not isinstance(ref["source"], str):
            raise _bad(path, f"references[{i}].source", ref["source"], "a string naming the table or figure")


def load_recipe(path: str | Path) -> dict:
    """Read and check a recipe; unknown keys are errors so a typo never silently changes a sweep."""
    path = Path(path)
    if not path.is_file():
        raise VidpruneError(f"recipe '{path}' does not exist. See recipes/ for the shipped ones.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise VidpruneError(f"recipe '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sweep"), dict):
        raise VidpruneError(f"recipe '{path}' needs a 'sweep:' mapping (method, backbone, keep, ...).")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise VidpruneError(f"recipe '{path}': unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}.")
    unknown = set(data["sweep"]) - SWEEP_KEYS
    if unknown:
        raise VidpruneError(
            f"recipe '{path}': unknown sweep key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(SWEEP_KEYS))}."
        )
    if "method" not in data["sweep"]:
        raise VidpruneError(f"recipe '{path}': sweep.method is required.")
    validate_recipe(path, data)
    factor = (data.get("convention") or {}).get("paper_gflops_factor", 1.0)
    refs = []
    for ref in data.get("references") or []:
        if not isinstance(ref, dict):
            raise VidpruneError(f"recipe '{path}': each reference must be a mapping (keep, gflops, source, ...).")
        ref = dict(ref)
        ref.setdefault("paper_gflops_factor", factor)
        # A reference describes the paper's configuration, even when flags override the measured sweep.
        for key in ("backbone", "frames", "size"):
            if key in data["sweep"]:
                ref.setdefault(key, data["sweep"][key])
        refs.append(ref)
    data["references"] = refs
    return data
