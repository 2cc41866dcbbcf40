"""Accuracy and fidelity: the meters against hand-worked cases, the fidelity identities (keep 1.0 ->
agreement exactly 1, KL 0, cosine 1), multi-point evaluation over real decoded videos with a skipped
file, and `vidprune eval` / `vidprune data synth` end to end."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vidprune import registry
from vidprune.accuracy import dataset_row, evaluate_dataset, open_dataset
from vidprune.cli.app import app
from vidprune.data import synthetic
from vidprune.data.datasets import VideoDataset, VideoSample, make_loader, read_list_file
from vidprune.data.samplers import make_sampler
from vidprune.data.transforms import ClipTransform
from vidprune.evaluate import (AccuracyMeter, FidelityMeter, build_method, evaluate, evaluate_methods,
                               features_and_logits, fidelity_columns, fidelity_to_unpruned,
                               generated_clips)
from vidprune.models import create_model
from vidprune.spec import Point

FRAMES, SIZE = 4, 32


def _pair(method: str = "evad", keep: float = 1.0, classes: int = 3):
    """The unpruned model and the same weights with `method` in place."""
    reference = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=classes)
    pruned = create_model("vit-tiny", method, keep, frames=FRAMES, size=SIZE, classes=classes)
    pruned.load_state_dict(reference.state_dict())
    return pruned, reference


def _clips(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthetic.synthesize(out, train_per_class=0, val_per_class=2, frames=FRAMES, size=SIZE, seed=1, num_classes=3)
    return out


# ------------------------------------------------------------------------------------------ meters


def test_accuracy_meter_top1_top5_and_mean_class_accuracy():
    meter = AccuracyMeter(num_classes=6)
    logits = torch.tensor([
        [9, 1, 0, 0, 0, 0],  # label 0: top-1 hit
        [0, 9, 8, 7, 6, 5],  # label 0: top-1 miss, and not in the top 5 (class 0 ranks last)
        [0, 1, 9, 0, 0, 0],  # label 1: miss, but in the top 5
        [0, 0, 0, 9, 0, 0],  # label 3: hit
    ], dtype=torch.float)
    meter.update(logits, torch.tensor([0, 0, 1, 3]))
    result = meter.result()
    assert result["top1"] == result["accuracy"] == 2 / 4
    assert result["top5"] == 3 / 4
    # classes present: 0 (1 of 2), 1 (0 of 1), 3 (1 of 1)
    assert result["mean_class_accuracy"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)


def test_top5_with_fewer_than_five_classes_is_always_a_hit():
    meter = AccuracyMeter(num_classes=3)
    meter.update(torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0]))
    assert meter.result()["top5"] == 1.0


def test_fidelity_meter_against_hand_computation():
    ref = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out = torch.tensor([[0.0, 2.0], [0.0, 3.0]])
    meter = FidelityMeter()
    meter.update(out, ref, torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    result = meter.result()
    assert result["agreement"] == 0.5
    p, q = ref.double().softmax(-1), out.double().softmax(-1)
    expected_kl = float((p * (p / q).log()).sum(-1).mean())
    assert result["kl"] == pytest.approx(expected_kl, rel=1e-12)
    assert result["cosine"] == pytest.approx(0.5)  # orthogonal (0) and identical (1) features
    assert result["fidelity_clips"] == 2


# ------------------------------------------------------------------------------------------ identities


@pytest.mark.parametrize("method", ["evad", "random"])
def test_keep_one_is_the_unpruned_model(method):
    pruned, reference = _pair(method, 1.0)
    result = fidelity_columns(pruned, reference, _clips())
    assert result["agreement"] == 1.0
    assert result["kl"] == 0.0
    assert result["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert result["fidelity_clips"] == 4


def test_pruning_moves_the_model_and_fidelity_sees_it():
    pruned, reference = _pair("evad", 0.3)
    result = fidelity_columns(pruned, reference, [_clips(3, 0), _clips(3, 1)])
    assert result["fidelity_clips"] == 6
    assert result["kl"] > 0
    assert result["cosine"] < 1.0
    assert 0.0 <= result["agreement"] <= 1.0


def test_fidelity_to_unpruned_swaps_the_method_in_place():
    pruned, reference = _pair("evad", 0.3)
    method = pruned.method
    clips = _clips(3)
    assert fidelity_to_unpruned(pruned, clips) == fidelity_columns(pruned, reference, clips)
    assert pruned.method is method
    keep_all, _ = _pair("evad", 1.0)
    assert fidelity_to_unpruned(keep_all, clips)["agreement"] == 1.0


def test_fidelity_over_views_and_generated_clips():
    pruned, reference = _pair("evad", 1.0)
    views = torch.randn(2, 3, 3, FRAMES, SIZE, SIZE)  # 2 videos x 3 views
    assert fidelity_columns(pruned, reference, views)["fidelity_clips"] == 2
    clips = generated_clips(reference, count=5, batch=2)
    assert [c.shape[0] for c in clips] == [2, 2, 1]
    assert fidelity_columns(pruned, reference, clips)["agreement"] == 1.0


def test_features_are_the_head_input():
    model = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=3)
    clip = _clips(2)
    with torch.no_grad():
        feats, logits = features_and_logits(model, clip)
        torch.testing.assert_close(feats, model.forward_features(clip))
        torch.testing.assert_close(logits, model.head(feats))


# ------------------------------------------------------------------------------------------ datasets


def test_evaluate_methods_on_decoded_videos_skips_a_missing_file(synth, tmp_path):
    videos = read_list_file(synth / "val.txt")
    samples = videos.samples + [VideoSample(tmp_path / "gone.mp4", 0)]
    dataset = VideoDataset(samples, make_sampler("uniform", FRAMES), ClipTransform(SIZE, num_crops=2), num_clips=2)
    model = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=3)
    methods = [model.method, build_method(model, "evad", 1.0), build_method(model, "evad", 0.3)]
    skipped = []
    outcome = evaluate_methods(model, methods, make_loader(dataset, batch_size=4), 3,
                               on_skip=lambda path, reason: skipped.append(path))
    assert outcome.videos == 6 and outcome.views == 4
    assert skipped == [str(tmp_path / "gone.mp4")] and len(outcome.skipped) == 1
    reference, same, pruned = outcome.results
    assert reference.fidelity["agreement"] == same.fidelity["agreement"] == 1.0
    assert same.accuracy == reference.accuracy
    assert pruned.fidelity["kl"] > 0
    assert model.method is methods[0]  # the model gets its own method back
    single = evaluate(model, make_loader(dataset, batch_size=3), 3, on_skip=lambda p, r: None)
    assert single["top1"] == reference.accuracy["top1"] and single["skipped"] == 1 and single["views"] == 4


def test_dataset_pass_from_python_reports_through_plain_callables(synth):
    """vidprune.accuracy without the command line: warnings, lines and progress go to the callables given,
    and by default to `warnings.warn` and nowhere."""
    (synth / "with_bad_line.txt").write_text((synth / "val.txt").read_text() + "nolabel.mp4\n")
    warned, said, opened, advanced = [], [], [], []

    @contextmanager
    def progress(description, total):
        opened.append((description, total))
        yield advanced.append

    dataset = dict(data=synth / "with_bad_line.txt", root=None, checkpoint=None, trust_checkpoint=False,
                   method_cls=registry.get_method("evad"), backbone="vit-tiny", frames=FRAMES, size=SIZE,
                   classes=None, attention="sdpa", seed=0)
    setup = open_dataset(**dataset, warn=warned.append, say=said.append)
    assert setup.classes == 3 and said == []
    assert len(warned) == 2 and warned[0].startswith("bad list line") and "nolabel.mp4" in warned[0]
    assert warned[1].startswith("no --checkpoint: random weights")
    points = [Point("none", None, {}), Point("evad", 1.0, {})]
    run = dict(device=torch.device("cpu"), dtype=torch.float32, seed=0, sampling="uniform", stride=4, clips=2,
               crops=1, short_side=None, norm="auto", batch=4, workers=0, limit=None)
    result = evaluate_dataset(setup, points, **run, progress=progress, warn=warned.append)
    assert opened == [("2 point(s) on 6 videos x 2 views", 6)] and sum(advanced) == 6
    assert result.videos == 6 and result.views == 2 and len(warned) == 2
    assert result.columns[1]["agreement"] == 1.0 and result.columns[1]["fidelity_source"] == "dataset"
    row = dataset_row({"gflops": 1.5, "notes": "measured"}, setup, result, result.columns[1])
    assert row["gflops_per_video"] == 3.0 and row["eval_videos"] == 6
    assert row["notes"] == "measured | random weights (no checkpoint)"

    with pytest.warns(UserWarning) as caught:
        setup = open_dataset(**dataset)
    assert [str(w.message) for w in caught] == warned[:2]
    assert evaluate_dataset(setup, points[:1], **run).videos == 6  # no progress display, no warnings needed


# ------------------------------------------------------------------------------------------ CLI


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_data_synth(tmp_path):
    result = _invoke("data", "synth", "--out", tmp_path / "d", "--train", 1, "--val", 1, "--classes", 2,
                     "--frames", 4, "--size", 32)
    assert result.exit_code == 0, result.output
    assert "wrote 4 videos" in result.stdout
    assert len(read_list_file(tmp_path / "d" / "train.txt").samples) == 2
    bad = _invoke("data", "synth", "--out", tmp_path / "e", "--classes", 1)
    assert bad.exit_code == 2


def test_cli_eval_writes_accuracy_and_fidelity_columns(synth, tmp_path):
    model = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=3)
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "vidprune": {"backbone": "vit-tiny", "frames": FRAMES, "size": SIZE}},
               checkpoint)
    (synth / "extra.txt").write_text((synth / "val.txt").read_text() + "missing/video.mp4 1\nnolabel.mp4\n")
    result = _invoke("eval", "--data", synth / "extra.txt", "--checkpoint", checkpoint, "--method", "evad",
                     "--keep", "0.5,1.0", "--clips", 2, "--device", "cpu", "--workers", 0, "--out", tmp_path / "res")
    assert result.exit_code == 0, result.output
    files = list((tmp_path / "res").glob("eval-evad_vit-tiny_4x32_*.csv"))
    assert len(files) == 1
    df = pd.read_csv(files[0])
    assert df["method"].tolist() == ["none", "evad", "evad"]
    assert (df["accuracy"] == df["top1"]).all()
    for col in ("top5", "mean_class_accuracy", "agreement", "kl", "cosine", "gflops", "gflops_per_video"):
        assert df[col].notna().all(), col
    assert df.loc[0, "agreement"] == 1.0 and df.loc[2, "agreement"] == 1.0 and df.loc[2, "kl"] == 0.0
    assert (df["eval_videos"] == 6).all() and (df["eval_skipped"] == 1).all() and (df["bad_lines"] == 1).all()
    assert (df["views"] == 2).all()
    assert df.loc[1, "gflops"] < df.loc[0, "gflops"]
    assert math.isclose(df.loc[1, "gflops_per_video"], 2 * df.loc[1, "gflops"])
    plotted = _invoke("plot", files[0], "--out", tmp_path / "plots")
    assert plotted.exit_code == 0, plotted.output
    assert list((tmp_path / "plots").glob("*accuracy*"))


def test_cli_eval_saves_through_the_result_store_with_config_hashes(synth, tmp_path, monkeypatch):
    """Two evals in the same second get two tables (the store reserves the name), and every row carries the
    config_hash a sweep of the same settings would give it, also without efficiency metrics."""
    from datetime import datetime, timezone

    import vidprune.cli.accuracy as cli_accuracy
    from vidprune.spec import SweepSpec, config_hash
    from vidprune.sweep import expand_points

    class SameSecond(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    monkeypatch.setattr(cli_accuracy, "datetime", SameSecond)
    args = ("eval", "--data", synth / "val.txt", "--backbone", "vit-tiny", "--frames", FRAMES, "--size", SIZE,
            "--classes", 3, "--method", "evad", "--keep", "0.5,0.7", "--metrics", "", "--device", "cpu",
            "--workers", 0, "--out", tmp_path / "res")
    for _ in range(2):
        result = _invoke(*args)
        assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "res").glob("eval-evad_*.csv"))
    assert files == ["eval-evad_vit-tiny_4x32_cpu_fp32_" + files[0].split("_")[-2] + "_20300102030405-2.csv",
                     "eval-evad_vit-tiny_4x32_cpu_fp32_" + files[0].split("_")[-2] + "_20300102030405.csv"]
    spec = SweepSpec(method="evad", keeps=[0.5, 0.7], backbone="vit-tiny", frames=FRAMES, size=SIZE, classes=3,
                     device="cpu", metrics=())
    expected = [config_hash(spec, point) for point in expand_points(spec)]
    for name in files:
        df = pd.read_csv(tmp_path / "res" / name, dtype={"config_hash": "string"})
        assert list(df["config_hash"]) == expected
        assert df["top1"].notna().all() and (df["status"] == "ok").all()


def test_cli_eval_user_errors_are_one_line(synth, tmp_path):
    result = _invoke("eval", "--backbone", "vit-tiny")
    assert result.exit_code == 2
    model = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=7)
    checkpoint = tmp_path / "seven.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    result = _invoke("eval", "--data", synth / "val.txt", "--checkpoint", checkpoint, "--frames", FRAMES, "--size", SIZE,
                     "--classes", 3, "--device", "cpu", "--workers", 0, "--out", tmp_path / "res")
    assert result.exit_code == 2
    assert "--classes 7" in result.output
