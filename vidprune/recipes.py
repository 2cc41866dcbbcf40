"""YAML recipes: a sweep written down once, with the paper's own numbers as labelled reference points."""

from __future__ import annotations

from pathlib import Path

import yaml

from vidprune.errors import VidpruneError
from vidprune.measure.device import DEVICE_CHOICES, is_device_name
from vidprune.metrics import selectable
from vidprune.spec import RecipeKey, parse_keeps, parse_metrics, settings

TOP_KEYS = {"name", "description", "paper", "sweep", "convention", "references"}
_SCALAR = (str, int, float, bool)


def recipe_keys() -> dict[str, tuple[str, RecipeKey]]:
    """{YAML key under `sweep:`: (SweepSpec field, how it is checked)}, from the spec's field metadata."""
    return {(meta.recipe.key or f.name): (f.name, meta.recipe) for f, meta in settings() if meta.recipe is not None}


SWEEP_KEYS = set(recipe_keys())


def _bad(path: Path, key: str, value, allowed: str) -> VidpruneError:
    return VidpruneError(f"recipe '{path}': {key} = {value!r} is not allowed; allowed: {allowed}.")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# One check per RecipeKey kind: (path, YAML key, value, rule, method class) -> None, or raise.


def _check_registered(path, key, value, rule, method_cls):
    from vidprune import registry

    known = getattr(registry, rule.names)()
    if not isinstance(value, str) or value not in known:
        raise _bad(path, f"sweep.{key}", value, ", ".join(sorted(known)))


def _check_integer(path, key, value, rule, method_cls):
    if not isinstance(value, int) or isinstance(value, bool) or value < rule.low:
        raise _bad(path, f"sweep.{key}", value, f"an integer >= {rule.low}")


def _check_device(path, key, value, rule, method_cls):
    if not is_device_name(value):
        raise _bad(path, f"sweep.{key}", value, DEVICE_CHOICES)


def _check_choice(path, key, value, rule, method_cls):
    if value not in rule.choices:
        raise _bad(path, f"sweep.{key}", value, ", ".join(rule.choices))


def _check_metrics(path, key, value, rule, method_cls):
    known = selectable()
    items = [m.strip() for m in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or any(m not in known for m in items):
        raise _bad(path, f"sweep.{key}", value, "a list (or comma-separated string) of " + ", ".join(known))


def _check_knob(path, key, value, rule, method_cls):
    if method_cls.knob is None:
        raise _bad(path, f"sweep.{key}", value, f"nothing: method '{method_cls.name}' has no knob")
    values = value if isinstance(value, list) else [value]
    allowed = f"numbers in {method_cls.knob.describe_range()} ({method_cls.knob.name}), one or a list"
    if not values:
        raise _bad(path, f"sweep.{key}", value, allowed)
    for item in values:
        if isinstance(item, str) and ":" in item and not isinstance(value, list):
            continue  # a range, checked when the sweep expands it
        if not _is_number(item):
            raise _bad(path, f"sweep.{key}", item, allowed)
        try:
            method_cls.knob.validate(item)
        except VidpruneError:
            raise _bad(path, f"sweep.{key}", item, allowed) from None


def _check_options(path, key, value, rule, method_cls):
    if not isinstance(value, dict):
        raise _bad(path, f"sweep.{key}", value, "a mapping of option name to value or list of values")
    declared = [o.name for o in method_cls.options]
    for name, option_value in value.items():
        if name not in declared:
            raise _bad(path, f"sweep.{key}", name, f"options of '{method_cls.name}': {', '.join(declared) or 'none'}")
        values = option_value if isinstance(option_value, list) else [option_value]
        if not values or any(not isinstance(v, _SCALAR) for v in values):
            raise _bad(path, f"sweep.{key}.{name}", option_value, "a number, string or boolean, or a list of them")


_CHECKS = {"registered": _check_registered, "integer": _check_integer, "device": _check_device,
           "choice": _check_choice, "metrics": _check_metrics, "knob": _check_knob, "options": _check_options}
# Checked after the rest, since they depend on the method (which is checked first).
_METHOD_DEPENDENT = ("knob", "options")

# How a recipe's value becomes the spec field's value, where it differs.
_READS = {
    "knob": lambda keep: parse_keeps(",".join(str(k) for k in keep) if isinstance(keep, list) else str(keep)),
    "metrics": lambda metrics: parse_metrics(metrics) if isinstance(metrics, str) else tuple(metrics),
    "options": lambda options: dict(options or {}),
}


def validate_recipe(path: Path, data: dict) -> None:
    """Types and ranges of every key, each error naming the file, the key and the allowed values."""
    from vidprune import registry

    for key in ("name", "description", "paper"):
        if key in data and not isinstance(data[key], str):
            raise _bad(path, key, data[key], "a string")
    sweep = data["sweep"]
    keys = recipe_keys()
    method_field = keys["method"][1]
    _CHECKS[method_field.kind](path, "method", sweep["method"], method_field, None)
    method_cls = registry.get_method(sweep["method"])
    ordered = sorted(keys.items(), key=lambda item: item[1][1].kind in _METHOD_DEPENDENT)
    for key, (_, rule) in ordered:
        if key in sweep and key != "method":
            _CHECKS[rule.kind](path, key, sweep[key], rule, method_cls)
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


def recipe_settings(recipe: dict) -> dict:
    """A loaded recipe's `sweep:` mapping as SweepSpec field values (keep -> keeps, a metrics string -> names)."""
    keys = recipe_keys()
    result = {}
    for key, value in recipe["sweep"].items():
        name, rule = keys[key]
        result[name] = _READS[rule.kind](value) if rule.kind in _READS else value
    return result


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
        raise VidpruneError(f"recipe '{path}': unknown key(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(TOP_KEYS))}.")
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
