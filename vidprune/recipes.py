"""YAML recipes: a sweep written down once, with the paper's own numbers as labelled reference points."""

from __future__ import annotations

from pathlib import Path

import yaml

from vidprune.errors import VidpruneError

SWEEP_KEYS = {"method", "backbone", "keep", "frames", "size", "classes", "batch", "device", "dtype",
              "attention", "metrics", "repeats", "warmup", "seed", "options"}
TOP_KEYS = {"name", "description", "paper", "sweep", "convention", "references"}


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
