"""`vidprune train`: a tiny run on real decoded synthetic videos lowers the loss, writes checkpoints that
`vidprune eval` reads back, resumes exactly, and follows the warm-up + cosine schedule."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vidprune.checkpoints import load_checkpoint
from vidprune.cli.app import app
from vidprune.data import synthetic
from vidprune.errors import VidpruneError
from vidprune.models import create_model
from vidprune.train import TrainConfig, Trainer, lr_factor, parameter_groups

FRAMES, SIZE = 4, 32


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthetic.synthesize(out, train_per_class=3, val_per_class=1, frames=FRAMES, size=SIZE, seed=2, num_classes=2)
    return out


def _config(synth, out, **kwargs) -> TrainConfig:
    base = dict(data=str(synth / "train.txt"), val_data=str(synth / "val.txt"), out=str(out), backbone="vit-tiny",
                frames=FRAMES, size=SIZE, epochs=2, batch=3, lr=1e-3, warmup_epochs=0.5, device="cpu", cache=True)
    base.update(kwargs)
    return TrainConfig(**base)


def test_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 4, 20, 0.01) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert factors[-1] == pytest.approx(0.01)


def test_no_weight_decay_on_biases_and_norms():
    model = create_model("vit-tiny", "none", frames=FRAMES, size=SIZE, classes=2)
    decay, no_decay = parameter_groups(model, 0.05)
    assert no_decay["weight_decay"] == 0.0
    assert any(p is model.blocks[0].norm1.weight for p in no_decay["params"])
    assert any(p is model.blocks[0].attn.qkv.weight for p in decay["params"])
    assert not any(p is model.blocks[0].attn.qkv.bias for p in decay["params"])


def test_tiny_training_run_lowers_the_loss_and_writes_checkpoints(synth, tmp_path):
    trainer = Trainer(_config(synth, tmp_path / "run", epochs=6, method="evad", keep=0.5))
    result = trainer.fit()
    assert len(result.history) == 6
    assert result.last_loss < result.first_loss
    lines = [json.loads(text) for text in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in lines] == [1, 2, 3, 4, 5, 6]
    assert all(entry["val_top1"] is not None for entry in lines)
    assert result.best is not None and result.best.is_file()
    # the checkpoint loads back into a fresh model (eval's path), with its geometry recorded
    payload = torch.load(result.last, map_location="cpu", weights_only=True)
    assert payload["vidprune"]["backbone"] == "vit-tiny" and payload["vidprune"]["frames"] == FRAMES
    fresh = create_model("vit-tiny", "evad", 0.5, frames=FRAMES, size=SIZE, classes=2)
    report = load_checkpoint(fresh, result.last)
    assert report.head_loaded
    clip = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(clip), trainer.model(clip))


def test_resume_continues_exactly(synth, tmp_path):
    straight = Trainer(_config(synth, tmp_path / "straight", epochs=2))
    straight.fit()
    first = Trainer(_config(synth, tmp_path / "split", epochs=2))
    first.fit(stop_after=1)  # interrupted after epoch 1 of 2
    resumed = Trainer(_config(synth, tmp_path / "split", epochs=2))
    resumed.resume(tmp_path / "split" / "last.pth")
    assert resumed.epoch == 1
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(VidpruneError, match="--method"):
        Trainer(_config(synth, tmp_path / "other", method="random", keep=0.5)).resume(tmp_path / "split" / "last.pth")


def test_cli_train_then_eval(synth, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(synth / "train.txt"), "--val-data", str(synth / "val.txt"),
                                 "--out", str(tmp_path / "run"), "--frames", str(FRAMES), "--size", str(SIZE),
                                 "--epochs", "1", "--batch", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "train loss" in result.stdout
    evaluated = runner.invoke(app, ["eval", "--data", str(synth / "val.txt"), "--checkpoint",
                                    str(tmp_path / "run" / "last.pth"), "--method", "random", "--keep", "0.5",
                                    "--device", "cpu", "--workers", "0", "--metrics", "", "--out", str(tmp_path / "res")])
    assert evaluated.exit_code == 0, evaluated.output
    bad = runner.invoke(app, ["train", "--data", str(synth / "train.txt"), "--epochs", "0"])
    assert bad.exit_code == 2
