"""Models from the Hugging Face hub by name (`--checkpoint hf:ORG/NAME`), all offline.

Tiny random models are built with transformers itself (VideoMAE, TimeSformer, CLIP), their weights moved
off transformers' initialisation so that every tensor matters, and `save_pretrained` into a fake hub cache
(the layout huggingface_hub reads: models--ORG--NAME/refs/<revision> -> snapshots/<commit>/) under
HF_HOME with HF_HUB_OFFLINE=1, or into a plain folder. Our backbone built from the config.json alone must
give transformers' logits (CLIP: the per-frame image embeddings our temporal head pools) on the same clip.
Download errors come from monkeypatched huggingface_hub functions; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vidprune import checkpoints as ckpt
from vidprune import hub, registry
from vidprune.accuracy import open_dataset
from vidprune.cli.app import app
from vidprune.data import synthetic
from vidprune.data.transforms import statistics_name
from vidprune.errors import VidpruneError
from vidprune.models import create_model

huggingface_hub = pytest.importorskip("huggingface_hub")

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 4, 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOLERANCE = 1e-5  # float32, two implementations of the same arithmetic
EQUIVALENCE: dict[str, float] = {}  # family -> max |ours - transformers'|, printed at the end of the module


# ------------------------------------------------------------------------------------------ fixtures


def _perturbed(model, seed: int):
    """transformers initialises biases, norms and q/v biases at 0 or 1: move every tensor so each one counts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny transformers models saved as hub folders, by name: (folder, the transformers model)."""
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("hub-models")
    names = [m.name for m in synthetic.MOTIONS[:3]]
    labels = dict(enumerate(reversed(names)))  # the dataset's classes, in another order than classes.txt
    torch.manual_seed(0)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    clip_vision = dict(image_size=SIZE, patch_size=16, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4)
    configs = {
        # dimensions no registered backbone has: built from the config as vit(hf:...)
        "videomae": (transformers.VideoMAEForVideoClassification, transformers.VideoMAEConfig(
            image_size=SIZE, patch_size=16, num_frames=FRAMES, tubelet_size=2, num_labels=3, id2label=labels,
            label2id={v: k for k, v in labels.items()}, **small)),
        # vit-tiny's dimensions: settled to the registered backbone
        "videomae-vit-tiny": (transformers.VideoMAEForVideoClassification, transformers.VideoMAEConfig(
            image_size=SIZE, patch_size=16, num_frames=FRAMES, tubelet_size=2, hidden_size=192, num_hidden_layers=4,
            num_attention_heads=3, intermediate_size=768, num_labels=3)),
        "timesformer": (transformers.TimesformerForVideoClassification, transformers.TimesformerConfig(
            image_size=SIZE, patch_size=16, num_frames=FRAMES, num_labels=5, **small)),
        "timesformer-tiny": (transformers.TimesformerForVideoClassification, transformers.TimesformerConfig(
            image_size=SIZE, patch_size=16, num_frames=FRAMES, hidden_size=192, num_hidden_layers=4,
            num_attention_heads=3, intermediate_size=768, num_labels=4)),
        "clip-vision-projection": (transformers.CLIPVisionModelWithProjection,
                                   transformers.CLIPVisionConfig(projection_dim=48, **clip_vision)),
        "clip-vision": (transformers.CLIPVisionModel, transformers.CLIPVisionConfig(**clip_vision)),
        "clip": (transformers.CLIPModel, transformers.CLIPConfig(
            vision_config=clip_vision, projection_dim=40,
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1))),
        "vivit": (transformers.VivitForVideoClassification, transformers.VivitConfig(
            image_size=SIZE, num_frames=FRAMES, tubelet_size=[2, 16, 16], num_labels=3, **small)),
    }
    models = {}
    for seed, (name, (cls, config)) in enumerate(configs.items()):
        model = _perturbed(cls(config), seed)
        model.save_pretrained(out / name)
        models[name] = (out / name, model)
    # what VideoMAEImageProcessor writes, with statistics of its own
    (out / "videomae" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "VideoMAEImageProcessor", "do_resize": True, "size": {"shortest_edge": 40},
        "do_center_crop": True, "crop_size": {"height": SIZE, "width": SIZE}, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    return models


def _publish(cache: Path, repo: str, folder: Path, revision: str = "main", commit: str = COMMIT) -> None:
    """Put `folder` into the hub cache as repo `repo` at `revision`, as huggingface_hub lays a download out."""
    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, root / "snapshots" / commit, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, saved):
    """An offline hub cache under HF_HOME holding every saved model as tiny-org/<name>. huggingface_hub reads
    the environment when it is imported, so its constants are set too (for this process; children get the
    environment)."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    for name, (folder, _) in saved.items():
        _publish(cache, f"tiny-org/{name}", folder)
    for key, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(registry, "_RESOLVED", {})  # resolved backbones name a source: none from another test
    return cache


def _clip(seed: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _record(family: str, diff: float) -> None:
    EQUIVALENCE[family] = max(EQUIVALENCE.get(family, 0.0), diff)


@pytest.fixture(scope="module", autouse=True)
def _report_equivalence():
    yield
    if EQUIVALENCE:
        print("\nmax |ours - transformers'|: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(EQUIVALENCE.items())))


# ------------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("name, family, backbone", [
    ("videomae", "vit", "vit(hf:tiny-org/videomae)"),
    ("videomae-vit-tiny", "vit", "vit-tiny"),
    ("timesformer", "timesformer", "timesformer(hf:tiny-org/timesformer)"),
    ("timesformer-tiny", "timesformer", "timesformer-tiny"),
])
def test_classifier_logits_equal_transformers(fake_hub, saved, one_thread, name, family, backbone):
    folder, theirs = saved[name]
    clip = _clip()
    with torch.no_grad():
        expected = theirs(pixel_values=clip.transpose(1, 2)).logits  # transformers takes (B, T, C, H, W)
    by_name = create_model(checkpoint=f"hf:tiny-org/{name}")  # no backbone, frames, size or classes
    by_folder = create_model(checkpoint=folder)
    assert by_name.backbone_name == backbone
    assert by_folder.backbone_name == backbone.replace("hf:tiny-org/", str(folder.parent.resolve()) + "/")
    assert (by_name.info.frames, by_name.info.size, by_name.classes) == (FRAMES, SIZE, theirs.config.num_labels)
    assert by_name.checkpoint_report.head_loaded and by_name.checkpoint_report.path == f"hf:tiny-org/{name}"
    # transformers' layer-norm epsilon (VideoMAE: 1e-12 in the blocks where the official code has 1e-6)
    assert by_name.blocks[0].norm1.eps == theirs.config.layer_norm_eps
    for model in (by_name, by_folder):
        with torch.no_grad():
            diff = float((model(clip) - expected).abs().max())
        _record(family, diff)
        assert diff <= TOLERANCE, f"{name}: max |diff| {diff:.2e}"


def _image_embeddings(model, name: str, frames: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.get_image_features(pixel_values=frames) if name == "clip" else model(pixel_values=frames)
    if torch.is_tensor(out):  # transformers 4's get_image_features
        return out
    return out.image_embeds if name == "clip-vision-projection" else out.pooler_output


@pytest.mark.parametrize("name", ["clip-vision-projection", "clip-vision", "clip"])
def test_clip_frame_embeddings_equal_transformers(fake_hub, saved, one_thread, name):
    """Our frame-level CLIP feeds each frame's image embedding to its temporal head: those must be
    transformers' image embeddings (CLIPVisionModel: its pooled output, there being no projection)."""
    folder, theirs = saved[name]
    clip = _clip()
    frames = clip.transpose(1, 2).reshape(-1, 3, SIZE, SIZE)
    expected = _image_embeddings(theirs, name, frames)
    for source in (f"hf:tiny-org/{name}", folder):
        # CLIP has no classifier: a fresh one (head="optional"), and any frame count
        model = create_model(checkpoint=source, head="optional", frames=FRAMES)
        assert model.backbone_name.startswith("clip(") and model.info.size == SIZE
        with torch.no_grad():
            ours = model.encode_frames(clip, tuple(range(FRAMES))).reshape(frames.shape[0], -1)
        diff = float((ours - expected).abs().max())
        _record("clip", diff)
        assert diff <= TOLERANCE, f"{name}: max |diff| {diff:.2e}"


def test_a_pruning_method_runs_on_a_hub_architecture(fake_hub, one_thread):
    model = create_model(method="evad", keep=0.5, checkpoint="hf:tiny-org/videomae")
    reference = create_model(checkpoint="hf:tiny-org/videomae")
    with torch.no_grad():
        pruned, full = model(_clip()), reference(_clip())
    assert pruned.shape == full.shape and not torch.allclose(pruned, full)
    assert model.last_trace[-1] < reference.last_trace[-1]


def test_a_hub_backbone_by_name_builds_its_architecture_with_random_weights(fake_hub):
    spec = registry.get_backbone("vit(hf:tiny-org/videomae)")
    assert spec.family == "vit" and spec.defaults == {"frames": FRAMES, "size": SIZE}
    model = create_model("vit(hf:tiny-org/videomae)")
    assert (model.info.dim, model.info.depth, model.info.heads) == (64, 2, 4)
    assert "vit(hf:tiny-org/videomae)" not in registry.backbones()  # resolved, not declared
    with pytest.raises(VidpruneError, match=r"names a model, not a backbone.*--checkpoint hf:tiny-org/videomae"):
        registry.get_backbone("hf:tiny-org/videomae")
    with pytest.raises(VidpruneError, match=r"TimeSformer model of the 'timesformer' family.*'timesformer\(hf:"):
        registry.get_backbone("vit(hf:tiny-org/timesformer)")


def test_the_config_decides_and_conflicts_name_both(fake_hub):
    source = "hf:tiny-org/videomae-vit-tiny"
    assert create_model("vit-tiny", checkpoint=source).backbone_name == "vit-tiny"
    with pytest.raises(VidpruneError, match=r"--backbone vit-s \(width 384.*\) is not the architecture of "
                                            r"hf:tiny-org/videomae-vit-tiny's config.json \(width 192.*decides: vit-tiny"):
        create_model("vit-s", checkpoint=source)
    with pytest.raises(VidpruneError, match=r"--backbone timesformer-tiny is a 'timesformer' backbone but .* VideoMAE"):
        create_model("timesformer-tiny", checkpoint=source)
    with pytest.raises(VidpruneError, match="classifier has 3 classes but the model has 7.*--classes 3"):
        create_model(classes=7, checkpoint=source)
    longer = create_model(frames=8, checkpoint=source)  # the sinusoid table follows: a choice, with a note
    assert longer.info.frames == 8
    assert any("frames 8 (its config.json: 4)" in note for note in longer.checkpoint_report.notes)


def test_label_names_and_preprocessing_from_the_folder(fake_hub):
    raw = ckpt.read_checkpoint("hf:tiny-org/videomae")
    assert raw.meta["source"] == "hf:tiny-org/videomae"
    names = [m.name for m in synthetic.MOTIONS[:3]][::-1]
    assert hub.label_names(raw.meta) == names
    assert create_model(checkpoint=raw).class_names == names
    prep = hub.preprocessing(raw.meta)
    assert (prep.mean, prep.std, prep.short_side, prep.crop) == ((0.5,) * 3, (0.25,) * 3, 40, SIZE)
    assert prep.short_side_for(SIZE) == 40 and prep.short_side_for(2 * SIZE) == 80  # same field of view
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert statistics_name(*imagenet, "unused") == "imagenet"  # known statistics keep their name
    # transformers' placeholder names are no names
    assert hub.label_names(ckpt.read_checkpoint("hf:tiny-org/timesformer").meta) is None
    assert create_model(checkpoint="hf:tiny-org/timesformer").class_names is None


def test_a_revision_is_a_snapshot_of_its_own(fake_hub, saved):
    other = "f" * 40
    _publish(fake_hub, "tiny-org/pinned", saved["videomae-vit-tiny"][0], revision="v1", commit=other)
    assert create_model(checkpoint="hf:tiny-org/pinned@v1").backbone_name == "vit-tiny"
    assert create_model(checkpoint=f"hf:tiny-org/pinned@{other}").backbone_name == "vit-tiny"
    with pytest.raises(VidpruneError, match="not in the Hugging Face cache.*download it once with network, or set HF_HOME"):
        create_model(checkpoint="hf:tiny-org/pinned")  # main was never downloaded


def test_videomae_v2_config_maps_onto_the_official_layout(tmp_path, monkeypatch):
    """OpenGVLab's VideoMAEv2 repositories: remote code (not in transformers), the official encoder's tensors
    under model., its settings under model_config. The config decides vit-tiny; the weights load exactly."""
    from test_checkpoints import _videomae_state, _zero_k_bias

    source = _zero_k_bias(create_model("vit-tiny", frames=FRAMES, size=SIZE, classes=3, seed=4))
    folder = tmp_path / "videomaev2"
    folder.mkdir()
    torch.save({f"model.{k}": v for k, v in _videomae_state(source).items()}, folder / "pytorch_model.bin")
    config = {"model_type": "VideoMAEv2_Base", "architectures": ["VideoMAEv2_Base"], "model_config": {
        "img_size": SIZE, "patch_size": 16, "in_chans": 3, "num_classes": 3, "embed_dim": 192, "depth": 4,
        "num_heads": 3, "mlp_ratio": 4, "qkv_bias": True, "layer_norm_eps": 1e-6, "tubelet_size": 2,
        "use_mean_pooling": True, "num_frames": FRAMES, "cos_attn": False, "init_values": 0.0}}
    (folder / "config.json").write_text(json.dumps(config))
    model = create_model(checkpoint=folder)
    assert model.backbone_name == "vit-tiny" and model.checkpoint_report.layout == "videomae"
    with torch.no_grad():
        torch.testing.assert_close(model(_clip()), source(_clip()), rtol=0, atol=0)
    config["model_config"]["cos_attn"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(VidpruneError, match=r"\(VideoMAEv2\): not supported: cosine attention"):
        create_model(checkpoint=folder)


# ------------------------------------------------------------------------------------------ not supported


def test_families_we_do_not_reproduce_say_why(fake_hub, saved, tmp_path):
    with pytest.raises(VidpruneError, match=r"hf:tiny-org/vivit: not supported: transformers' ViViT .* model 1"):
        create_model(checkpoint="hf:tiny-org/vivit")
    folder = tmp_path / "joint-timesformer"
    shutil.copytree(saved["timesformer"][0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "attention_type": "joint_space_time"}))
    with pytest.raises(VidpruneError, match=r"not supported: attention_type 'joint_space_time'"):
        create_model(checkpoint=folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(VidpruneError, match=r"not supported: its config.json describes a 'bert' model.*supported: .*VideoMAE"):
        create_model(checkpoint=folder)


# ------------------------------------------------------------------------------------------ download errors


def _hub_exception(name: str):
    """An instance of huggingface_hub's exception `name`, without the HTTP response its constructor wants."""
    cls = getattr(huggingface_hub.utils, name)
    error = cls.__new__(cls)
    Exception.__init__(error, f"{name} (simulated)\nsecond line of the hub's message")
    return error


@pytest.mark.parametrize("exception, expected", [
    ("GatedRepoError", r"is a gated repository.*accept its conditions at https://huggingface.co/tiny-org/x, then "
                       r"log in \(`hf auth login`\) or set HF_TOKEN"),
    ("RepositoryNotFoundError", r"no such model repository on the Hugging Face hub.*check ORG/NAME"),
    ("RevisionNotFoundError", r"hf:tiny-org/x@nope: the repository has no revision 'nope'"),
    ("LocalEntryNotFoundError", r"not in the Hugging Face cache.*download it once with network, or set HF_HOME"),
    ("EntryNotFoundError", r"has no config.json, so it is not a transformers model repository"),
])
def test_hub_errors_are_one_line_with_the_fix(monkeypatch, tmp_path, exception, expected):
    def refuse(repo_id, filename, **kwargs):
        raise _hub_exception(exception)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    source = "hf:tiny-org/x@nope" if exception == "RevisionNotFoundError" else "hf:tiny-org/x"
    with pytest.raises(VidpruneError, match=expected) as caught:
        create_model(checkpoint=source)
    assert "\n" not in str(caught.value)
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    result = CliRunner().invoke(app, ["eval", "--checkpoint", source, "--data", str(tmp_path / "list.txt"),
                                      "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "res")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output


def test_missing_weights_and_a_missing_package(monkeypatch, fake_hub, saved):
    def config_only(repo_id, filename, **kwargs):
        if filename == "config.json":
            return str(saved["videomae"][0] / filename)
        raise _hub_exception("EntryNotFoundError")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", config_only)
    with pytest.raises(VidpruneError, match="has neither model.safetensors nor pytorch_model.bin"):
        create_model(checkpoint="hf:tiny-org/videomae")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(VidpruneError, match=r"needs huggingface_hub: pip install 'vidprune\[hf\]'"):
        create_model(checkpoint="hf:tiny-org/videomae")


def test_not_cached_and_offline_is_the_real_hub_error(fake_hub):
    """No monkeypatching: huggingface_hub itself, offline, with an empty cache for this repository."""
    with pytest.raises(VidpruneError, match=r"hf:nobody/nothing is not in the Hugging Face cache .*HF_HUB_OFFLINE is "
                                            r"set.*download it once with network, or set HF_HOME"):
        create_model(checkpoint="hf:nobody/nothing")


# ------------------------------------------------------------------------------------------ datasets, CLI


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthetic.synthesize(out, train_per_class=0, val_per_class=2, frames=FRAMES, size=SIZE, seed=1, num_classes=3)
    return out


def test_dataset_classes_follow_the_checkpoint_labels_by_name(fake_hub, synth, saved):
    said = []
    setup = open_dataset(data=synth / "val.txt", root=None, checkpoint="hf:tiny-org/videomae", trust_checkpoint=False,
                         method_cls=registry.get_method("none"), backbone=None, frames=None, size=None, classes=None,
                         attention="sdpa", seed=0, say=said.append)
    model_names = saved["videomae"][1].config.id2label
    dataset_names = (synth / "classes.txt").read_text().split()
    for sample in setup.videos.samples:  # every video is labelled with the model's index of its class
        assert model_names[sample.label] == sample.path.parent.name == dataset_names[2 - sample.label]
    assert any("class names: 3 from the checkpoint's config.json" in line for line in said)
    assert any("matched to the checkpoint's labels by name (2 at another index" in line for line in said)
    assert setup.preprocessing is not None and setup.preprocessing.short_side == 40


def test_eval_by_hub_name_without_backbone_in_a_fresh_process(fake_hub, synth, tmp_path):
    """`vidprune eval --checkpoint hf:ORG/NAME --data LIST`, as a user runs it: a new process whose
    huggingface_hub reads HF_HOME and HF_HUB_OFFLINE from the environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "vidprune", "eval", "--checkpoint", "hf:tiny-org/videomae",
                             "--data", str(synth / "val.txt"), "--method", "evad", "--keep", "0.5", "--device", "cpu",
                             "--workers", "0", "--out", str(tmp_path / "res")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    names = ", ".join(m.name for m in synthetic.MOTIONS[:3][::-1])
    assert f"class names: 3 from the checkpoint's config.json ({names})" in result.stdout
    assert "hf:tiny-org/videomae: loaded" in result.stdout
    files = list((tmp_path / "res").glob("eval-evad_vit-hf-tiny-org-videomae_4x32_*.csv"))
    assert len(files) == 1, list((tmp_path / "res").iterdir())
    df = pd.read_csv(files[0])
    assert df["backbone"].unique().tolist() == ["vit(hf:tiny-org/videomae)"]
    assert df["checkpoint"].unique().tolist() == ["hf:tiny-org/videomae"]
    assert df["normalization"].unique().tolist() == ["hf:tiny-org/videomae preprocessor"]
    assert (df["eval_videos"] == 6).all() and df["top1"].notna().all()


def test_a_hub_architecture_sweeps_in_worker_processes(fake_hub, tmp_path):
    """--executor subprocess: each point's process resolves 'vit(hf:...)' from the cache on its own."""
    result = CliRunner().invoke(app, ["sweep", "--method", "evad", "--keep", "0.5", "--backbone",
                                      "vit(hf:tiny-org/videomae)", "--metrics", "flops,params", "--device", "cpu",
                                      "--executor", "subprocess", "--out", str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(next((tmp_path / "res").glob("evad_vit-hf-tiny-org-videomae_4x32_*.csv")))
    assert df["status"].tolist() == ["ok", "ok"] and df.loc[1, "gflops"] < df.loc[0, "gflops"]
