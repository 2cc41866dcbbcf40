"""`create_model(checkpoint=...)`: backbone, geometry and classes settled from the checkpoint unless passed,
the weights loaded exactly as `load_checkpoint` loads them by hand, conflicts named; and the split of the
weight code: each family's layouts live beside it and are found without `vidprune.checkpoints` naming them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_checkpoints import _hf_state, _videomae_state, _zero_k_bias
from vidprune import checkpoints as ckpt
from vidprune import registry
from vidprune.backbones.vit import VideoViT
from vidprune.data.transforms import resolve_normalization
from vidprune.errors import VidpruneError
from vidprune.methods.none import NoReduction
from vidprune.models import create_model

FRAMES, SIZE, CLASSES = 4, 32, 5
ROOT = Path(__file__).resolve().parents[1]


def _source():
    """A vit-tiny at 4 frames x 32 px with 5 classes, whose biases and norms are not at their defaults."""
    model = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=CLASSES, seed=3)
    noise = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=noise) * 0.1)
    return _zero_k_bias(model)


def _clip(model):
    return torch.randn(model.input_shape(2), generator=torch.Generator().manual_seed(1))


def _logits(model, clip):
    with torch.no_grad():
        return model(clip)


def _by_hand(path, **kwargs):
    model = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=CLASSES, seed=9, **kwargs)
    ckpt.load_checkpoint(model, path)
    return model


@pytest.fixture
def videomae_file(tmp_path):
    source = _source()
    path = tmp_path / "videomae.pth"
    torch.save({"model": _videomae_state(source), "epoch": 1}, path)
    return source, path


@pytest.fixture
def hf_folder(tmp_path):
    source = _source()
    folder = tmp_path / "hf-videomae"
    folder.mkdir()
    torch.save(_hf_state(source), folder / "pytorch_model.bin")
    config = {"architectures": ["VideoMAEForVideoClassification"], "num_frames": FRAMES, "image_size": SIZE,
              "tubelet_size": 2, "patch_size": 16, "num_attention_heads": 3, "hidden_size": 192}
    (folder / "config.json").write_text(json.dumps(config))
    return source, folder


def test_videomae_file_gives_the_logits_of_loading_by_hand(videomae_file):
    source, path = videomae_file
    # a plain VideoMAE file records no geometry: frames and size are passed, backbone and classes inferred
    model = create_model(frames=FRAMES, size=SIZE, checkpoint=path, seed=9)
    assert model.backbone_name == "vit-tiny" and model.classes == CLASSES
    assert (model.info.frames, model.info.size) == (FRAMES, SIZE)
    report = model.checkpoint_report
    assert report.layout == "videomae" and report.head_loaded
    clip = _clip(model)
    expected = _logits(_by_hand(path), clip)
    torch.testing.assert_close(_logits(model, clip), expected, rtol=0, atol=0)
    torch.testing.assert_close(expected, _logits(source, clip), rtol=0, atol=0)


def test_hf_folder_settles_geometry_from_its_config(hf_folder):
    source, folder = hf_folder
    model = create_model(checkpoint=folder)  # no backbone, frames, size or classes
    assert (model.backbone_name, model.info.frames, model.info.size, model.classes) == ("vit-tiny", FRAMES, SIZE, CLASSES)
    assert model.checkpoint_report.layout == "hf-videomae"
    clip = _clip(model)
    torch.testing.assert_close(_logits(model, clip), _logits(_by_hand(folder), clip), rtol=0, atol=0)
    torch.testing.assert_close(_logits(model, clip), _logits(source, clip), rtol=0, atol=0)


def test_a_raw_checkpoint_and_a_method_in_place(hf_folder):
    _, folder = hf_folder
    raw = ckpt.read_checkpoint(folder)
    pruned = create_model(method="evad", keep=0.5, checkpoint=raw)
    by_hand = create_model("vit-tiny", "evad", 0.5, frames=FRAMES, size=SIZE, classes=CLASSES)
    ckpt.load_checkpoint(by_hand, raw)
    clip = _clip(pruned)
    torch.testing.assert_close(_logits(pruned, clip), _logits(by_hand, clip), rtol=0, atol=0)
    assert pruned.method.name == "evad"


def test_explicit_values_win_where_the_weights_follow(hf_folder):
    _, folder = hf_folder
    longer = create_model(frames=8, checkpoint=folder)  # the sinusoid table is rebuilt for 8 frames
    assert (longer.info.frames, longer.info.size) == (8, SIZE)
    fresh = create_model(classes=7, checkpoint=folder, head="optional")  # another label set: a new classifier
    assert fresh.classes == 7 and not fresh.checkpoint_report.head_loaded
    assert any("5 classes" in n for n in fresh.checkpoint_report.notes)


def test_conflicts_name_both_values(videomae_file):
    _, path = videomae_file
    with pytest.raises(VidpruneError, match=r"does not fit backbone 'vit-s'.*those of 'vit-tiny'.*--backbone vit-tiny"):
        create_model("vit-s", frames=FRAMES, size=SIZE, checkpoint=path)
    with pytest.raises(VidpruneError, match="classifier has 5 classes but the model has 7.*--classes 5"):
        create_model(frames=FRAMES, size=SIZE, classes=7, checkpoint=path)
    with pytest.raises(VidpruneError, match=r"not recognised for a 'clip' backbone.*tensors of 'vit-tiny'"):
        create_model("clip-tiny", checkpoint=path)
    with pytest.raises(VidpruneError, match="cannot tell which backbone"):
        create_model(checkpoint={"foo.weight": torch.zeros(1)})


def test_without_a_checkpoint_the_method_decides_the_backbone():
    with torch.device("meta"):
        assert create_model().backbone_name == "vit-b"
        assert create_model(method="sllm").backbone_name == "clip-b32"
        assert create_model().checkpoint_report is None and create_model().classes == 400


# ------------------------------------------------------------------------------------- the split


def test_checkpoints_module_imports_no_backbone():
    code = ("import sys, vidprune.checkpoints; "
            "print(sorted(m for m in sys.modules if m.startswith('vidprune.backbones')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_checkpoints_module_names_no_family_and_finds_their_layouts():
    tree = ast.parse((ROOT / "vidprune" / "checkpoints.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.startswith("vidprune.backbones") for m in imported)
    texts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = set(registry.families()) | {layout.name for group in ckpt._LAYOUTS.values() for layout in group}
    assert names >= {"vit", "clip", "videomae", "hf-clip"} and not names & texts
    # a fresh process that imports only the generic module still finds the family's layout
    code = ("import torch, vidprune.checkpoints as c; "
            "l = c.detect_layout({'blocks.0.attn.qkv.weight': torch.zeros(1)}); print(l.name, l.convert.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["videomae", "vidprune.backbones.vit_weights"]


class _ToyViT(VideoViT):
    family = "toyvit"


def test_a_new_family_brings_its_layout_and_normalization(monkeypatch):
    """Everything a family adds is registered beside it; the loader, create_model and --norm auto follow."""
    registry.backbones()  # the real families first, so that loading them later cannot clash
    monkeypatch.setitem(registry._FAMILIES, "toyvit", registry.BackboneFamily("toyvit", "kinetics", "toy-tiny"))
    monkeypatch.setitem(registry._BACKBONES, "toy-tiny", registry.BackboneSpec(
        "toy-tiny", "toyvit", lambda **kw: _ToyViT(192, 2, 3, **kw), "test", dict(frames=FRAMES, size=SIZE)))
    monkeypatch.setattr(NoReduction, "families", NoReduction.families + ("toyvit",))
    monkeypatch.setitem(ckpt._LAYOUTS, "toyvit", [])
    ckpt.register_layout(ckpt.CheckpointLayout(
        "toy", "toyvit", "our names under toy.", lambda s: all(k.startswith("toy.") for k in s),
        lambda s: ({k[len("toy."):]: v for k, v in s.items()}, ["stripped toy."])))
    source = create_model("toy-tiny", classes=3, seed=1)
    state = {f"toy.{k}": v.clone() for k, v in source.state_dict().items()}
    model = create_model(checkpoint=state, seed=2)
    assert model.backbone_name == "toy-tiny" and model.checkpoint_report.layout == "toy"
    assert ckpt.infer_backbone(state) == "toy-tiny" and ckpt.checkpoint_classes(state) == 3
    clip = _clip(model)
    torch.testing.assert_close(_logits(model, clip), _logits(source, clip), rtol=0, atol=0)
    assert resolve_normalization("auto", "toyvit") == "kinetics"
