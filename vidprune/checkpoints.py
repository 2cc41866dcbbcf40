"""Read checkpoints and load them into vidprune backbones: the generic part, for every family.

This module reads files (`.pth`/`.pt`/`.bin`, safetensors, Hugging Face model folders, hub models by name
through `vidprune.hub`; pickles only with trust), unwraps the state dict from training scripts' nesting,
keeps the registry of checkpoint layouts and detects which one a state dict is in, and loads: names and
shapes checked in one `VidpruneError` listing missing, unexpected and mis-shaped tensors, the classifier
required or optional, a `LoadReport`, and a method's own trained parameters kept apart (`method_state`,
`restore_method_state`).

The layouts themselves live beside their backbone family: a `CheckpointLayout` is a (detect, convert)
pair, plus optional hooks that fit the converted tensors to the model's input geometry, registered with
`register_layout` when the family's module is imported (`vidprune/backbones/vit_weights.py`: VideoMAE
and Hugging Face VideoMAE; `vidprune/backbones/timesformer_weights.py`: official and Hugging Face
TimeSformer; `vidprune/backbones/clip_weights.py`: OpenAI / open_clip and Hugging Face CLIP). The
registry imports those modules on first use, so this module never names a family, and `infer_backbone` /
`checkpoint_classes` ask whichever registered layouts recognise a state dict.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from vidprune import hub, registry
from vidprune.errors import VidpruneError

# Keys under which training scripts nest the weights, tried in this order (VideoMAE: model or module).
NESTING_KEYS = ("model", "module", "state_dict", "model_state_dict", "model_state")
# Prefixes that wrap a whole model: DDP's module., VideoMAE pre-training's encoder., timm/lightning's model.
_WRAPPING_PREFIXES = ("module.", "model.")
_SHOWN = 8  # names listed per category in a mismatch error


# ------------------------------------------------------------------------------------------ reading


@dataclass
class RawCheckpoint:
    state: dict[str, torch.Tensor]
    path: str = ""
    meta: dict = field(default_factory=dict)  # vidprune's own metadata, or a Hugging Face config.json


def _torch_load(path: Path, trust: bool) -> Any:
    with warnings.catch_warnings():
        # torch.load hands a TorchScript archive (OpenAI's CLIP release) to torch.jit.load with a warning;
        # with trust that is what the user asked for, without it the error below says more
        warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
        return _torch_load_quietly(path, trust)


def _torch_load_quietly(path: Path, trust: bool) -> Any:
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        # VideoMAE's training script stores its argparse.Namespace beside the weights: harmless, allow it.
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "TorchScript" in str(exc):
            raise VidpruneError(
                f"checkpoint '{path}' is a TorchScript archive (how OpenAI distributes CLIP). Reading one runs its "
                "code, so vidprune does it only with --trust-checkpoint; or save its state_dict() to a plain file."
            ) from None
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise VidpruneError(
                f"checkpoint '{path}' contains Python objects besides tensors, which vidprune does not unpickle "
                "by default (unpickling can run code). If you trust the file, pass --trust-checkpoint."
            ) from None
        raise VidpruneError(f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise VidpruneError(f"'{path}' is a safetensors file: pip install 'vidprune[hf]' (or safetensors).") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise VidpruneError(f"cannot read safetensors file '{path}': {type(exc).__name__}: {exc}") from None


def _resolve_file(path: Path) -> Path:
    """A Hugging Face model folder holds model.safetensors or pytorch_model.bin."""
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise VidpruneError(f"folder '{path}' has neither model.safetensors nor pytorch_model.bin. "
                            "Pass the checkpoint file itself.")
    if not path.is_file():
        raise VidpruneError(f"checkpoint '{path}' does not exist. Check the path passed to --checkpoint.")
    return path


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], Any]:
    """Descend through model / module / state_dict nesting to the tensors; returns (state, top-level dict)."""
    top = obj
    for _ in range(4):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _strip_wrapping(dict(obj)), top
        nested = next((obj[k] for k in NESTING_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
        if nested is None:
            break
        obj = nested
    keys = ", ".join(list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
    raise VidpruneError(f"{where} holds no state dict: expected tensors, possibly under one of "
                        f"{', '.join(NESTING_KEYS)}; found {keys}.")


def _strip_wrapping(state: dict) -> dict:
    for prefix in _WRAPPING_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_checkpoint(source: str | Path | dict, trust: bool = False) -> RawCheckpoint:
    """Tensors of a checkpoint file (.pth/.pt/.bin/.safetensors), a Hugging Face model folder, a hub model
    `hf:ORG/NAME[@REVISION]` (downloaded through the hub cache, `vidprune.hub`) or an in-memory dict.

    A folder's config.json (and preprocessor config) go into `meta` (`hub.folder_metadata`), with where the
    model came from (`meta["source"]`: the hf: name, or the folder); `path` is the hf: name or the file."""
    if isinstance(source, dict):
        state, top = unwrap_state_dict(source)
        meta = top.get("vidprune", {}) if isinstance(top, dict) else {}
        return RawCheckpoint(state, "", dict(meta))
    named = None
    if hub.is_hub_ref(source):
        named = str(hub.parse_ref(source))
        source = hub.download(named)
    path = _resolve_file(Path(source))
    if path.suffix == ".safetensors":
        state, top = _load_safetensors(path), {}
    else:
        state, top = unwrap_state_dict(_torch_load(path, trust), f"checkpoint '{path}'")
    meta: dict = dict(top.get("vidprune", {})) if isinstance(top, dict) else {}
    if not meta and (path.parent / hub.CONFIG_FILE).is_file():
        try:
            meta = hub.folder_metadata(path.parent, named or str(path.parent.resolve()))
        except VidpruneError:
            if named:
                raise
            meta = {}  # an unreadable config.json beside a local file: the tensors alone decide
    return RawCheckpoint(state, named or str(path), meta)


# ------------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    family: str
    description: str
    detect: Callable[[dict], bool]
    # state -> (state with the model's own names, notes).
    convert: Callable[[dict], tuple[dict, list[str]]]
    # (converted state, model, checkpoint metadata, notes): fits the state to the model's input geometry in
    # place (a position table for another size) and the model to what the metadata says (CLIP's activation),
    # before names and shapes are checked.
    fit: Optional[Callable[[dict, nn.Module, dict, list], None]] = None
    # Converted tensors whose shape follows the input size rather than the architecture: ignored when
    # inferring the backbone, so a checkpoint trained at another resolution still names its backbone.
    geometry_keys: tuple[str, ...] = ()
    # Converted tensors the model keeps outside its state dict (VideoMAE's position table, a non-persistent
    # buffer): taken out before names and shapes are checked, and given to `load_outside` as
    # (model, {key: tensor}, checkpoint metadata, notes) once the state dict has loaded.
    outside_keys: tuple[str, ...] = ()
    load_outside: Optional[Callable[[nn.Module, dict, dict, list], None]] = None


# family -> its layouts, in registration order. Filled by the families' own modules (vidprune/backbones/*),
# which the registry imports on first use.
_LAYOUTS: dict[str, list[CheckpointLayout]] = {}


def register_layout(layout: CheckpointLayout) -> None:
    """Add a layout for a backbone family; layouts are tried in registration order."""
    existing = _LAYOUTS.setdefault(layout.family, [])
    if any(known.name == layout.name for known in existing):
        raise ValueError(f"layout {layout.name!r} registered twice for family {layout.family!r}")
    existing.append(layout)


def _registered() -> dict[str, list[CheckpointLayout]]:
    registry.families()  # imports every backbone family, which registers its layouts
    return _LAYOUTS


def layouts(family: str) -> list[CheckpointLayout]:
    return list(_registered().get(family, []))


def _first_match(state: dict, family: str) -> Optional[CheckpointLayout]:
    return next((layout for layout in layouts(family) if layout.detect(state)), None)


def detect_layout(state: dict, family: Optional[str] = None) -> CheckpointLayout:
    """The layout `state` is in: among `family`'s layouts, or every family's when None."""
    candidates = [family] if family is not None else list(_registered())
    for name in candidates:
        found = _first_match(state, name)
        if found is not None:
            return found
    sample = ", ".join(list(state)[:6])
    if family is None:
        known = ", ".join(layout.name for group in _registered().values() for layout in group) or "none"
        raise VidpruneError(f"checkpoint layout not recognised (known layouts: {known}); its first tensors are: "
                            f"{sample}. Convert it to one of those layouts, or register a layout beside its backbone "
                            "family (docs/architecture.md).")
    known = ", ".join(layout.name for layout in layouts(family)) or "none"
    problem = f"checkpoint layout not recognised for a '{family}' backbone (known layouts: {known})"
    for other in _registered():
        found = _first_match(state, other) if other != family else None
        try:
            trained_as = _backbone_with_shapes(state, found) if found is not None else None
        except VidpruneError:
            trained_as = None
        if trained_as:
            raise VidpruneError(f"{problem}: it is a '{other}' checkpoint ({found.name} layout) with the tensors of "
                                f"'{trained_as}'. Pass --backbone {trained_as}.")
    raise VidpruneError(
        f"{problem}; its first tensors are: {sample}. Convert it to one of those layouts, or register a layout "
        f"beside the '{family}' family (docs/architecture.md)."
    )


def hf_config(meta: dict) -> dict:
    """The image/video tower's part of a Hugging Face config.json kept in the checkpoint's metadata
    (multi-modal models such as CLIPModel nest it under vision_config); {} without one."""
    config = meta.get("hf_config") or {}
    return config.get("vision_config") or config


def checkpoint_geometry(raw: RawCheckpoint) -> tuple[Optional[int], Optional[int]]:
    """(frames, size) the checkpoint records: vidprune's metadata, else a Hugging Face config.json; None
    for what neither says."""
    meta = raw.meta
    config = meta.get("hf_config") or {}
    vision = config.get("vision_config") or {}
    frames = meta.get("frames", config.get("num_frames"))
    size = meta.get("size", config.get("image_size", vision.get("image_size")))
    return (int(frames) if frames is not None else None, int(size) if size is not None else None)


# ------------------------------------------------------------------------------------------ loading


@dataclass
class LoadReport:
    layout: str
    path: str
    loaded: int
    notes: list[str]
    head_loaded: bool
    classes: Optional[int]

    def summary(self) -> str:
        head = "with its classifier" if self.head_loaded else "classifier left at its initialisation"
        return f"loaded {self.loaded} tensors ({self.layout} layout, {head})"


def _names(keys, limit: int = _SHOWN) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def checkpoint_classes(state: dict, family: Optional[str] = None) -> Optional[int]:
    """Number of classes of the checkpoint's classifier, or None when it has none (`family`: where to look
    for its layout; None: every family's layouts)."""
    converted, _ = detect_layout(state, family).convert(state)
    weight = converted.get("head.weight")
    return int(weight.shape[0]) if weight is not None else None


def load_checkpoint(model: nn.Module, source: str | Path | dict | RawCheckpoint, *, head: str = "require",
                    trust: bool = False) -> LoadReport:
    """Load `source` into `model` in place.

    head: "require" (evaluation: a checkpoint without a classifier is an error), or "optional" (fine-tuning
    a pre-trained encoder: the classifier keeps its initialisation when the checkpoint has none or has a
    different number of classes).
    """
    if head not in ("require", "optional"):
        raise ValueError("head must be 'require' or 'optional'")
    raw = source if isinstance(source, RawCheckpoint) else read_checkpoint(source, trust=trust)
    family = getattr(getattr(model, "info", None), "family", None) or getattr(model, "family", "")
    layout = detect_layout(raw.state, family)
    state, notes = layout.convert(raw.state)
    notes = list(notes)
    if layout.fit is not None:
        layout.fit(state, model, raw.meta, notes)
    outside = {key: state.pop(key) for key in layout.outside_keys if key in state}
    _check_hf_config(model, hf_config(raw.meta))

    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("method.")}
    method_keys = {k for k in state if k.startswith("method.")}
    provided = {k for k in state if not k.startswith("method.")}
    missing = set(expected) - provided
    unexpected = provided - set(expected)
    method_expected = {k for k in model.state_dict() if k.startswith("method.")}
    if method_keys - method_expected:
        # trained with a method that has parameters (a learned scorer): not part of this model's method
        notes.append(f"ignored {len(method_keys - method_expected)} tensors of a method this model does not use "
                     "(method_state() returns them for that method)")
        for key in method_keys - method_expected:
            state.pop(key)
    shapes = {k for k in provided & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)}
    # Parts a pre-trained encoder lacks and fine-tuning starts from scratch: the classifier, and for some
    # families more (CLIP: the temporal fusion head).
    head_prefixes = tuple(getattr(model, "checkpoint_head_prefixes", ("head.",)))
    head_keys = {k for k in expected if k.startswith(head_prefixes)}
    head_ok = head_keys <= provided and not (head_keys & shapes)
    body_fits = not (missing - head_keys) and not unexpected and not (shapes - head_keys)
    ckpt_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else None
    model_classes = int(expected["head.weight"].shape[0]) if "head.weight" in expected else None
    other_classes = ("head.weight" in shapes and ckpt_classes != model_classes
                     and state["head.weight"].shape[1:] == expected["head.weight"].shape[1:])
    if head == "optional" and body_fits and not head_ok:
        for prefix in head_prefixes:
            group = {k for k in head_keys if k.startswith(prefix)}
            if not group or (group <= provided and not group & shapes):
                continue  # this part is complete in the checkpoint: keep it
            if prefix == "head." and other_classes:
                notes.append(f"the checkpoint's classifier has {ckpt_classes} classes, the model {model_classes}: "
                             "classifier left at its initialisation")
            elif prefix == "head.":
                notes.append("the checkpoint has no classifier: classifier left at its initialisation")
            else:
                notes.append(f"the checkpoint has no {prefix.rstrip('.')} weights: left at their initialisation")
            for k in group:
                state.pop(k, None)
            missing -= group
            shapes -= group
    elif head == "require" and body_fits and other_classes:
        raise VidpruneError(
            f"the checkpoint's classifier has {ckpt_classes} classes but the model has {model_classes}: pass "
            f"--classes {ckpt_classes} (evaluation needs the checkpoint's own classifier)."
        )
    elif head == "require" and body_fits and head_keys and head_keys <= missing:
        raise VidpruneError(
            f"checkpoint {raw.path or ''} has no classifier ({', '.join(sorted(head_keys))}): it is a pre-trained "
            "encoder. Fine-tune it first (vidprune train --checkpoint ...) or pass a fine-tuned checkpoint."
        )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
        if shapes:
            parts.append("wrong shape: " + _names(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                                                   for k in shapes))
        name = getattr(model, "backbone_name", type(model).__name__)
        raise VidpruneError(
            f"checkpoint {raw.path or '(in memory)'} ({layout.name} layout) does not fit backbone '{name}': "
            + "; ".join(parts) + ". " + _backbone_hint(raw, family, name)
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
        if outside and layout.load_outside is not None:
            layout.load_outside(model, outside, raw.meta, notes)
    if method_expected and not (method_keys & method_expected):
        notes.append("the checkpoint has no weights for the method's own parameters: they keep their initialisation")
    classes = int(state["head.weight"].shape[0]) if "head.weight" in state else None
    classifier = {k for k in expected if k.startswith("head.")}
    head_loaded = bool(classifier) and classifier <= set(state)
    return LoadReport(layout.name, raw.path, len(state), notes, head_loaded, classes)


def _backbone_hint(raw: RawCheckpoint, family: str, model_backbone: str) -> str:
    """Which backbone to pass instead: the one the checkpoint records or its tensors show, else the family's
    usual one."""
    try:
        trained_as = raw.meta.get("backbone") or infer_backbone(raw.state, family)
    except VidpruneError:
        trained_as = None
    if trained_as and trained_as != model_backbone:
        return f"Its tensors are those of '{trained_as}': pass --backbone {trained_as}."
    example = registry.get_family(family).example_backbone
    return ("Pick the backbone the checkpoint was trained as" + (f" (e.g. --backbone {example})." if example
                                                               else " (see `vidprune list`)."))


def method_state(source: str | Path | dict | RawCheckpoint, trust: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's weights for a method's own parameters (saved under `method.` by `vidprune train`),
    with the prefix removed, for `method.load_state_dict`."""
    raw = source if isinstance(source, RawCheckpoint) else read_checkpoint(source, trust=trust)
    return {k[len("method."):]: v for k, v in raw.state.items() if k.startswith("method.")}


def restore_method_state(raw: RawCheckpoint, method: nn.Module) -> bool:
    """Give `method` the parameters it was trained with (a learned scorer, FFRes, ...) when `raw` is a
    `vidprune train` checkpoint of the same method; True when something was loaded."""
    if raw.meta.get("method") != getattr(method, "name", None) or not any(True for _ in method.parameters()):
        return False
    learned = method_state(raw)
    if learned:
        method.load_state_dict(learned, strict=False)
    return bool(learned)


def _check_hf_config(model: nn.Module, config: dict) -> None:
    """Head count and patch geometry are not visible in the weights: check them against config.json (the
    tower's part, `hf_config`)."""
    info = model.info
    checks = [("num_attention_heads", info.heads, "heads"), ("tubelet_size", info.tubelet, "tubelet"),
              ("patch_size", info.patch, "patch size")]
    for key, ours, what in checks:
        if key in config and int(config[key]) != int(ours):
            raise VidpruneError(f"the checkpoint's config.json has {key}={config[key]} but the backbone has {ours} "
                                f"{what}: pick a backbone with the same {what}.")


def infer_backbone(state: dict, family: Optional[str] = None) -> Optional[str]:
    """The registered backbone whose tensors have the checkpoint's shapes (built on the meta device, so
    trying vit-l costs nothing), or None. `family`: only its backbones (its layouts must recognise `state`);
    None: those of every family with a layout that recognises `state`."""
    if family is not None:
        candidates = [detect_layout(state, family)]
    else:
        candidates = [found for name in _registered() for found in [_first_match(state, name)] if found is not None]
    for layout in candidates:
        found = _backbone_with_shapes(state, layout)
        if found:
            return found
    return None


def _backbone_with_shapes(state: dict, layout: CheckpointLayout) -> Optional[str]:
    converted, _ = layout.convert(state)
    for key in layout.geometry_keys:
        converted.pop(key, None)
    theirs = {k: v.shape for k, v in converted.items() if not k.startswith(("head.", "method."))}
    for name, spec in registry.backbones().items():
        if spec.family != layout.family:
            continue
        try:
            with torch.device("meta"):
                candidate = spec.build(classes=1, **spec.defaults)
        except Exception:  # a backbone that cannot build on meta is simply not a candidate
            continue
        ours = {k: v.shape for k, v in candidate.state_dict().items()
                if not k.startswith(("head.", "method.")) and k not in layout.geometry_keys}
        if ours == theirs:
            return name
    return None
