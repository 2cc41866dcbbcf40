"""Models from the Hugging Face hub by name, and what a transformers `config.json` says about a model.

`hf:ORG/NAME[@REVISION]` names a model repository. `download` fetches its config.json, its preprocessor
config and its weights with `huggingface_hub.hf_hub_download`, so the hub's own cache, `HF_HOME` /
`HF_HUB_CACHE`, `HF_HUB_OFFLINE` and the token (`HF_TOKEN` or `hf auth login`) work as they do for
transformers; nothing of that is reimplemented here. `vidprune.checkpoints.read_checkpoint` reads the
downloaded folder, and a local folder in the same layout (config.json beside model.safetensors or
pytorch_model.bin), the same way. huggingface_hub is imported only when a `hf:` name is used.

A config.json written by transformers (it has a `model_type`) decides the architecture. Each backbone
family declares, beside its checkpoint layouts (`vidprune/backbones/<family>_weights.py`), a
`HubArchitecture`: the model types it reproduces and how a config becomes the constructor arguments of
its backbone class (width, depth, heads, patch, tubelet, frames, image size, ...), or why it cannot
("not supported: ..."). `settle_backbone` names the registered backbone with exactly that architecture
or, when none has it, the backbone `<family>(<source>)` (e.g. `vit(hf:ORG/NAME)` or `vit(/path/to/folder)`),
which the resolver registered here builds from the config in any process that can read it (a
`--executor subprocess` worker, a Ray or Slurm worker sharing the cache).

`label_names` reads `id2label`, `preprocessing` the preprocessor config's mean/std and resize/crop sizes.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from vidprune import registry
from vidprune.errors import VidpruneError

HUB_PREFIX = "hf:"
CONFIG_FILE = "config.json"
# An image processor's settings (what hub models carry), then a video processor's (transformers 5 writes it).
PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INSTALL = "pip install 'vidprune[hf]' (or pip install huggingface_hub)"
OFFLINE_FIX = "download it once with network, or set HF_HOME to a cache that has it"
_REPO = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")
# transformers' placeholder label names (a config saved without real ones)
_PLACEHOLDER_LABEL = re.compile(r"^LABEL_\d+$")


# ------------------------------------------------------------------------------------------ names


@dataclass(frozen=True)
class HubRef:
    """A model repository on the hub, at a revision (branch, tag or commit; None: main)."""

    repo: str
    revision: Optional[str] = None

    def __str__(self) -> str:
        return HUB_PREFIX + self.repo + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(source: Any) -> bool:
    """Whether `source` (a str or Path, as a command line passes it) names a hub model: `hf:...`."""
    return isinstance(source, (str, Path)) and str(source).startswith(HUB_PREFIX)


def parse_ref(source: Any) -> HubRef:
    text = str(source)[len(HUB_PREFIX):].replace("\\", "/").strip()
    repo, _, revision = text.partition("@")
    if not _REPO.match(repo) or "@" in revision or (text.endswith("@") and not revision):
        raise VidpruneError(f"'{source}' is not a Hugging Face model name: write hf:ORG/NAME or hf:ORG/NAME@REVISION "
                            "(a branch, tag or commit), e.g. hf:MCG-NJU/videomae-base-finetuned-kinetics.")
    return HubRef(repo, revision or None)


# ------------------------------------------------------------------------------------------ download


def _hub():
    try:
        import huggingface_hub
        from huggingface_hub import constants, utils  # noqa: F401  (submodules used below: loaded here)
    except ImportError:
        raise VidpruneError(f"reading a model from the Hugging Face hub needs huggingface_hub: {INSTALL}.") from None
    return huggingface_hub


def _errors():
    """huggingface_hub's exception types (in `huggingface_hub.utils` in every version vidprune supports)."""
    return _hub().utils


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _hub_error(exc: Exception, ref: HubRef, what: str) -> VidpruneError:
    """One line with the fix for a huggingface_hub download error (most specific exception type first)."""
    hub = _hub()
    errors = hub.utils
    if isinstance(exc, errors.GatedRepoError):
        return VidpruneError(f"{ref} is a gated repository and no token with access to it was found: accept its "
                             f"conditions at https://huggingface.co/{ref.repo}, then log in (`hf auth login`) or set "
                             "HF_TOKEN.")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return VidpruneError(f"{ref}: no such model repository on the Hugging Face hub (or it is private and no token "
                             "with access to it was found): check ORG/NAME, or for a private repository log in "
                             "(`hf auth login`) or set HF_TOKEN.")
    if isinstance(exc, errors.RevisionNotFoundError):
        return VidpruneError(f"{ref}: the repository has no revision '{ref.revision or 'main'}': pass a branch, tag "
                             f"or commit it has (hf:{ref.repo}@REVISION), or leave out @REVISION for main.")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        offline = " (HF_HUB_OFFLINE is set)" if hub.constants.HF_HUB_OFFLINE else ""
        return VidpruneError(f"{ref} is not in the Hugging Face cache ({hub.constants.HF_HUB_CACHE}; missing {what}) "
                             f"and the hub cannot be reached{offline}: {OFFLINE_FIX}.")
    if isinstance(exc, errors.HFValidationError):
        return VidpruneError(f"'{ref}' is not a valid Hugging Face repository name ({_first_line(exc)}): write "
                             "hf:ORG/NAME[@REVISION].")
    if isinstance(exc, errors.HfHubHTTPError):
        return VidpruneError(f"{ref}: the Hugging Face hub refused the download of {what} ({_first_line(exc)}): "
                             "check the name, and your token (HF_TOKEN) for a private or gated repository.")
    return VidpruneError(f"{ref}: cannot download {what}: {type(exc).__name__}: {_first_line(exc)}.")


def _fetch(ref: HubRef, filename: str, revision: Optional[str] = None) -> Path:
    """One file of the repository through the hub cache (`revision`: a commit, to stay on one snapshot)."""
    return Path(_hub().hf_hub_download(ref.repo, filename, revision=revision or ref.revision))


def _fetch_config(ref: HubRef) -> Path:
    errors = _errors()
    try:
        return _fetch(ref, CONFIG_FILE)
    except errors.LocalEntryNotFoundError as exc:
        raise _hub_error(exc, ref, CONFIG_FILE) from None
    except errors.EntryNotFoundError:
        raise VidpruneError(f"{ref} has no {CONFIG_FILE}, so it is not a transformers model repository: vidprune reads "
                            "those by name. Download its checkpoint file (`hf download REPO FILE`) and pass the file "
                            "to --checkpoint.") from None
    except VidpruneError:
        raise
    except Exception as exc:
        raise _hub_error(exc, ref, CONFIG_FILE) from None


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def download(source: Any) -> Path:
    """The local folder (a snapshot in the hub cache) holding the config.json, the preprocessor config
    (when the repository has one) and the weights (model.safetensors, else pytorch_model.bin) of hub model
    `source` (`hf:ORG/NAME[@REVISION]`), downloaded if not cached."""
    ref = parse_ref(source)
    errors = _errors()
    folder = _fetch_config(ref).parent
    # the config's snapshot folder is named by its commit: fetch the rest at that commit, so every file comes
    # from the same snapshot (and a cached file needs no request)
    commit = folder.name if _COMMIT.match(folder.name) else None
    for name in PREPROCESSOR_FILES:
        try:
            _fetch(ref, name, commit)
            break
        except errors.EntryNotFoundError:  # the repository has none, or offline and not cached: it is optional
            continue
        except Exception as exc:
            raise _hub_error(exc, ref, name) from None
    not_cached = None
    for name in WEIGHT_FILES:
        try:
            _fetch(ref, name, commit)
            return folder
        except errors.LocalEntryNotFoundError as exc:
            not_cached = not_cached or exc
        except errors.EntryNotFoundError:
            continue
        except Exception as exc:
            raise _hub_error(exc, ref, name) from None
    if not_cached is not None:
        raise _hub_error(not_cached, ref, f"its weights ({' or '.join(WEIGHT_FILES)})")
    raise VidpruneError(f"{ref} has neither {' nor '.join(WEIGHT_FILES)} (weights split into shards with an "
                        "*.index.json are not read yet): download the weights and pass a single file to --checkpoint.")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VidpruneError(f"cannot read {what} '{path}': {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise VidpruneError(f"{what} '{path}' is not a JSON object.")
    return data


def read_config(source: str) -> dict:
    """The config.json of hub model `source` (only that file is downloaded) or of the local folder `source`."""
    if is_hub_ref(source):
        return _read_json(_fetch_config(parse_ref(source)), CONFIG_FILE)
    path = Path(source) / CONFIG_FILE
    if not path.is_file():
        raise VidpruneError(f"'{source}' is neither a hf:ORG/NAME model nor a folder with a {CONFIG_FILE}.")
    return _read_json(path, CONFIG_FILE)


def folder_metadata(folder: Path, source: str) -> dict:
    """What `checkpoints.RawCheckpoint.meta` records for a model folder: its config.json (`hf_config`), its
    preprocessor config (`hf_preprocessor`, when present) and where it came from (`source`: the hf: name,
    or the folder's absolute path)."""
    meta: dict = {"hf_config": _read_json(folder / CONFIG_FILE, CONFIG_FILE), "source": source}
    for name in PREPROCESSOR_FILES:
        if (folder / name).is_file():
            meta["hf_preprocessor"] = _read_json(folder / name, name)
            break
    return meta


# ------------------------------------------------------------------------------------------ configs


def transformers_config(meta: dict) -> Optional[dict]:
    """The checkpoint's config.json when transformers wrote it (it names a `model_type`), else None."""
    config = meta.get("hf_config")
    return config if isinstance(config, dict) and config.get("model_type") else None


def square(value: Any, what: str) -> int:
    """An image or patch size from a config: an int, or a [height, width] pair that must be square."""
    if isinstance(value, (list, tuple)):
        if len(set(int(v) for v in value)) != 1:
            raise VidpruneError(f"not supported: {what} {list(value)} is not square (vidprune's backbones take "
                                "square frames and patches)")
        value = value[0]
    return int(value)


def mlp_ratio(dim: int, hidden: int) -> float:
    """The ratio a backbone class takes (it builds int(dim * ratio) hidden units) for exactly `hidden`."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


@dataclass(frozen=True)
class HubArchitecture:
    """How a backbone family reads a transformers config.json (declared beside its checkpoint layouts).

    `model_types`: the config's `model_type` values it covers (lower case; shell patterns allowed, e.g.
    'videomaev2*'). `arguments(config)`: the keyword arguments of `build`, the family's backbone class
    (which also takes `classes` and `attention`), with `frames` and `size` where the config records them;
    it raises a VidpruneError starting "not supported: " for a config the class cannot reproduce.
    `unsupported`: for a model type the family knows but cannot load at all, the reason.
    """

    family: str
    name: str
    model_types: tuple[str, ...]
    build: Optional[Callable[..., nn.Module]] = None
    arguments: Optional[Callable[[dict], dict]] = None
    unsupported: str = ""


_ARCHITECTURES: list[HubArchitecture] = []


def register_hub_architecture(architecture: HubArchitecture) -> None:
    if any(known.name == architecture.name for known in _ARCHITECTURES):
        raise ValueError(f"hub architecture {architecture.name!r} registered twice")
    if not architecture.unsupported and (architecture.build is None or architecture.arguments is None):
        raise ValueError(f"hub architecture {architecture.name!r} needs build and arguments (or unsupported)")
    _ARCHITECTURES.append(architecture)


def architectures() -> list[HubArchitecture]:
    registry.families()  # imports every backbone family, which registers its architectures
    return list(_ARCHITECTURES)


@dataclass(frozen=True)
class HubModel:
    """The architecture a config.json describes: the family's class and its constructor arguments."""

    architecture: HubArchitecture
    arguments: dict
    source: str  # hf:ORG/NAME[@REVISION], or the folder it was read from

    @property
    def family(self) -> str:
        return self.architecture.family

    @property
    def frames(self) -> Optional[int]:
        return self.arguments.get("frames")

    @property
    def size(self) -> Optional[int]:
        return self.arguments.get("size")

    def build(self, classes: int = 400, attention: str = "sdpa", **overrides: Any) -> nn.Module:
        return self.architecture.build(**{**self.arguments, **overrides}, classes=classes, attention=attention)


def describe_config(config: dict, source: str) -> HubModel:
    """The family and constructor arguments a transformers config.json describes; a VidpruneError "not
    supported: <reason>" for a model no family reproduces."""
    model_type = str(config.get("model_type") or "").lower()
    known = architectures()
    for architecture in known:
        if not any(fnmatch.fnmatchcase(model_type, pattern) for pattern in architecture.model_types):
            continue
        if architecture.unsupported:
            raise VidpruneError(f"{source}: not supported: {architecture.unsupported}")
        try:
            arguments = architecture.arguments(config)
        except VidpruneError as exc:
            raise VidpruneError(f"{source} ({architecture.name}): {exc}") from None
        return HubModel(architecture, arguments, source)
    classes = ", ".join(config.get("architectures") or []) or "no architectures listed"
    supported = ", ".join(f"{a.name} ({'/'.join(a.model_types)})" for a in known if not a.unsupported)
    raise VidpruneError(f"{source}: not supported: its config.json describes a '{model_type or '?'}' model ({classes}), "
                        f"which no vidprune backbone family reproduces (supported: {supported}). Use a model of a "
                        "supported family, or add the family (docs/architecture.md).")


# ------------------------------------------------------------------------------------------ backbones


def _meta_build(build: Callable[[], nn.Module]) -> Optional[nn.Module]:
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # a backbone that cannot be built at this geometry is simply not a match
        return None


def _simple_attributes(model: nn.Module) -> dict:
    return {k: v for k, v in vars(model).items()
            if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple))}


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    """Same class, geometry (`info`), tensor shapes and settings: the same weights would load into both
    and give the same outputs."""
    if type(a) is not type(b) or a.info != b.info or _simple_attributes(a) != _simple_attributes(b):
        return False
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    return shapes_a == {k: tuple(v.shape) for k, v in b.state_dict().items()}


def describe(model: nn.Module) -> str:
    """The architecture in a few words, for messages that compare two."""
    info = model.info
    parts = [f"width {info.dim}", f"{info.depth} blocks", f"{info.heads} heads", f"patch {info.patch}"]
    if info.tubelet != 1:
        parts.append(f"tubelet {info.tubelet}")
    embed = getattr(info, "embed_dim", None)
    if embed is not None:
        parts.append(f"embedding {embed}")
    parts.append(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    return ", ".join(parts)


def _registered_at(spec: registry.BackboneSpec, model: HubModel) -> Optional[nn.Module]:
    geometry = {k: v for k, v in (("frames", model.frames), ("size", model.size)) if v is not None}
    return _meta_build(lambda: spec.build(classes=1, **{**spec.defaults, **geometry}))


def settle_backbone(model: HubModel, backbone: Optional[str] = None) -> str:
    """The backbone for the architecture `model` describes: `backbone` when given and the same architecture
    (else a VidpruneError naming both), else the registered backbone with that architecture, else
    '<family>(<source>)', built from the config by the resolver below."""
    wanted = _meta_build(lambda: model.build(classes=1))
    if wanted is None:
        raise VidpruneError(f"{model.source}: the {model.architecture.name} architecture of its config.json "
                            f"({model.arguments}) cannot be built: not supported by the '{model.family}' backbone class.")
    if backbone is not None:
        spec = registry.get_backbone(backbone)
        if spec.family != model.family:
            raise VidpruneError(f"--backbone {backbone} is a '{spec.family}' backbone but {model.source} is a "
                                f"{model.architecture.name} model ('{model.family}' family): leave --backbone out "
                                f"(its config.json decides: {settle_backbone(model)}).")
        candidate = _registered_at(spec, model)
        if candidate is None or not same_architecture(candidate, wanted):
            theirs = describe(candidate) if candidate is not None else "cannot be built at that geometry"
            raise VidpruneError(f"--backbone {backbone} ({theirs}) is not the architecture of {model.source}'s "
                                f"config.json ({describe(wanted)}): leave --backbone out (its config.json decides: "
                                f"{settle_backbone(model)}).")
        return backbone
    for name, spec in registry.backbones().items():
        if spec.family == model.family:
            candidate = _registered_at(spec, model)
            if candidate is not None and same_architecture(candidate, wanted):
                return name
    return f"{model.family}({model.source})"


def _build_from_config(architecture: HubArchitecture, fixed: dict, classes: int = 400, attention: str = "sdpa",
                       **geometry: Any) -> nn.Module:
    return architecture.build(**fixed, **geometry, classes=classes, attention=attention)


def backbone_spec(name: str, model: HubModel) -> registry.BackboneSpec:
    """A backbone spec (not declared in the registry) that builds `model`'s architecture; its defaults are
    the config's frames and size (the class's own where the config records none, e.g. CLIP's frames)."""
    probe = _meta_build(lambda: model.build(classes=1))
    geometry = {"frames": probe.info.frames, "size": probe.info.size} if probe is not None else {}
    fixed = {k: v for k, v in model.arguments.items() if k not in ("frames", "size")}
    description = f"{model.architecture.name} as described by {model.source}'s config.json"
    if probe is not None:
        description += f" ({describe(probe)})"
    return registry.BackboneSpec(name, model.family, partial(_build_from_config, model.architecture, fixed),
                                 description, geometry)


_NAMED = re.compile(r"^(?P<family>[A-Za-z0-9_.-]+)\((?P<source>.+)\)$")


def _resolve_backbone(name: str) -> Optional[registry.BackboneSpec]:
    if is_hub_ref(name):
        raise VidpruneError(f"'{name}' names a model, not a backbone: pass --checkpoint {name} (its weights and "
                            f"architecture), or --backbone 'FAMILY({name})', e.g. 'vit({name})', for its architecture "
                            "with random weights.")
    match = _NAMED.match(name)
    if match is None:
        return None
    family, source = match["family"], match["source"]
    if is_hub_ref(source):
        source = str(parse_ref(source))
    model = describe_config(read_config(source), source)
    if model.family != family:
        raise VidpruneError(f"backbone '{name}': {source} is a {model.architecture.name} model of the "
                            f"'{model.family}' family: write '{model.family}({source})'.")
    return backbone_spec(name, model)


registry.register_backbone_resolver(_resolve_backbone)


# ------------------------------------------------------------------------------------------ labels, preprocessing


def _normalise_label(name: str) -> str:
    return re.sub(r"[\s_]+", " ", str(name).strip().lower())


def label_names(meta: dict) -> Optional[list[str]]:
    """The class names of the checkpoint's config.json (`id2label`, by index), or None when it has none
    (or only transformers' LABEL_0, LABEL_1, ... placeholders)."""
    config = transformers_config(meta)
    id2label = config.get("id2label") if config else None
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in id2label.items())
    except (TypeError, ValueError):
        return None
    if [i for i, _ in items] != list(range(len(items))):
        return None
    names = [v for _, v in items]
    return None if all(_PLACEHOLDER_LABEL.match(n) for n in names) else names


def match_labels(dataset_names: list[str], model_names: list[str]) -> Optional[dict[int, int]]:
    """dataset class index -> model class index, matching names (case, '_' and spaces aside), when every
    dataset class is among the model's labels; None otherwise."""
    index = {_normalise_label(n): i for i, n in enumerate(model_names)}
    mapping = {i: index.get(_normalise_label(n)) for i, n in enumerate(dataset_names)}
    return None if any(v is None for v in mapping.values()) else mapping


@dataclass(frozen=True)
class Preprocessing:
    """What a preprocessor config asks of the input: normalisation statistics and the resize / crop sizes
    (None where it does not say or does not do that step)."""

    mean: Optional[tuple[float, float, float]]
    std: Optional[tuple[float, float, float]]
    short_side: Optional[int]
    crop: Optional[int]

    def short_side_for(self, size: int) -> Optional[int]:
        """The short side to resize to before a `size` crop: the config's, scaled when the model runs at
        another size than the config crops to, so the crop covers the same part of the frame."""
        if self.short_side is None:
            return None
        if self.crop and self.crop != size:
            return max(size, round(self.short_side * size / self.crop))
        return max(size, self.short_side)

    def describe(self) -> str:
        parts = []
        if self.short_side:
            parts.append(f"short side {self.short_side}")
        if self.crop:
            parts.append(f"centre crop {self.crop}")
        if self.mean is not None:
            parts.append("mean " + ", ".join(f"{v:g}" for v in self.mean) + " / std " + ", ".join(f"{v:g}" for v in self.std))
        return "; ".join(parts)


def _triple(value: Any) -> Optional[tuple[float, float, float]]:
    if value is None:
        return None
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    return tuple(values) if len(values) == 3 and all(math.isfinite(v) for v in values) else None


def _side(value: Any, short: bool) -> Optional[int]:
    """A size entry of an image processor: an int, {"shortest_edge": n} or {"height": h, "width": w}."""
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        if short and "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(min(value["height"], value["width"]))
    return None


def preprocessing(meta: dict) -> Optional[Preprocessing]:
    """The checkpoint's preprocessor config (`hf_preprocessor` in its metadata), or None without one."""
    config = meta.get("hf_preprocessor")
    if not isinstance(config, dict):
        return None
    if config.get("do_normalize", True):
        mean, std = _triple(config.get("image_mean")), _triple(config.get("image_std"))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if mean is None or std is None or not all(s > 0 for s in std):
        mean = std = None
    short_side = _side(config.get("size"), short=True) if config.get("do_resize", True) else None
    crop = _side(config.get("crop_size"), short=False) if config.get("do_center_crop", True) else None
    return Preprocessing(mean, std, short_side, crop)
