"""Execution options recorded in rows (dtype, autocast, compile, attention), fidelity on every sweep,
speedup columns, power and peak wiring, and `sweep --data/--checkpoint`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from vidprune import metrics as metric_table
from vidprune.cli.app import app
from vidprune.errors import VidpruneError
from vidprune.measure.power import PowerReading
from vidprune.results import add_speedups, read_tables, to_frame
from vidprune.runner import COMPILE_BACKEND_ENV, Runner
from vidprune.spec import Point, SweepSpec

TINY = dict(backbone="vit-tiny", frames=4, size=32, classes=5, seed=0)


def _row(method="evad", keep=0.5, **spec_kwargs):
    spec = SweepSpec(method=method, keeps=[keep], **{**TINY, **spec_kwargs})
    return Runner(spec).measure(Point(method, None if method == "none" else keep, {}))


def test_fidelity_is_measured_by_default_and_exact_at_keep_one(one_thread):
    full = _row(keep=1.0, metrics=("fidelity",), fidelity_clips=3)
    assert full["status"] == "ok", full["error"]
    assert full["agreement"] == 1.0 and full["kl"] == 0.0 and full["fidelity_clips"] == 3
    assert full["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert full["fidelity_source"] == "generated clips"
    pruned = _row(keep=0.3, metrics=("fidelity",), fidelity_clips=3)
    assert pruned["fidelity_clips"] == 3
    assert pruned["kl"] > 0.0 and pruned["cosine"] < 1.0
    assert "fidelity" in metric_table.ALL_METRICS


def test_precision_and_attention_are_recorded(one_thread):
    row = _row(metrics=("latency",), dtype="bf16", autocast=True, attention="math", repeats=1, warmup=0)
    assert row["status"] == "ok", row["error"]
    assert (row["dtype"], row["autocast"], row["attention"], row["compile"]) == ("bf16", True, "math", False)
    cast = _row(metrics=("latency",), dtype="bf16", repeats=1, warmup=0)
    assert (cast["dtype"], cast["autocast"]) == ("bf16", False)
    with pytest.raises(VidpruneError, match="--autocast"):
        Runner(SweepSpec(method="evad", autocast=True, dtype="fp32", **TINY))


def test_compile_is_applied_and_recorded(one_thread, monkeypatch):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "eager")  # real dynamo capture, no code generation
    calls = []
    real_compile = torch.compile

    def recording_compile(model, **kwargs):
        calls.append(kwargs)
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    row = _row(metrics=("latency",), compile=True, repeats=1, warmup=1)
    assert row["status"] == "ok", row["error"]
    assert row["compile"] is True and row["latency_ms"] > 0
    assert calls == [{"dynamic": False, "backend": "eager"}]


def test_environment_travels_with_every_row(one_thread):
    row = _row(metrics=("params",))
    assert row["env_threads"] == torch.get_num_threads()
    assert row["env_python_version"]


class _FakeMeter:
    def __init__(self):
        self.windows = 0

    def measure(self, fn):
        fn()
        self.windows += 1
        return PowerReading(average_w=12.5, energy_j=25.0, seconds=2.0, samples=100, source="fake")


def test_power_columns_come_from_the_meter_over_a_long_enough_window(one_thread, monkeypatch):
    meter = _FakeMeter()
    monkeypatch.setattr("vidprune.measure.power.open_power_meter", lambda device: meter)
    spec = SweepSpec(method="evad", keeps=[0.5], metrics=("latency",), power=True, repeats=1, warmup=0, **TINY)
    runner = Runner(spec)
    row = runner.measure(Point("evad", 0.5, {}))
    assert row["status"] == "ok", row["error"]
    assert meter.windows == 1 and row["power_w"] == 12.5 and row["power_source"] == "fake"
    runs = max(1, math.ceil(metric_table.MIN_POWER_WINDOW_S * 1000 / row["latency_ms"]))
    assert row["energy_j_per_clip"] == pytest.approx(25.0 / runs)


def test_power_where_none_can_be_read_is_a_clear_error():
    with pytest.raises(VidpruneError):
        Runner(SweepSpec(method="evad", power=True, device="cpu", **TINY))
    with pytest.raises(VidpruneError, match="timed runs"):
        Runner(SweepSpec(method="evad", peak=True, metrics=("flops",), **TINY))


def test_peak_fraction_is_gflops_times_throughput_over_peak(one_thread, monkeypatch):
    from vidprune.measure.peak import PeakResult

    fake = PeakResult(device="cpu", dtype="fp32", size=64, seconds=1.0, macs_per_s=1e12,
                      float32_matmul_precision="highest")
    monkeypatch.setattr("vidprune.measure.peak.peak_matmul", lambda device, dtype: fake)
    row = _row(metrics=("flops", "latency"), peak=True, repeats=2, warmup=0)
    assert row["status"] == "ok", row["error"]
    assert row["peak_fraction"] == pytest.approx(row["gflops"] * 1e9 * row["throughput"] / 1e12)


def test_speedups_are_against_the_matching_unpruned_row():
    rows = [
        dict(method="none", backbone="b", frames=8, size=64, batch=1, device="cpu", dtype="fp32", status="ok",
             gflops=100.0, latency_ms=10.0),
        dict(method="evad", backbone="b", frames=8, size=64, batch=1.0, device="cpu", dtype="fp32", status="ok",
             gflops=40.0, latency_ms=5.0),
        # another batch has no unpruned row of its own: no speedup rather than a wrong one
        dict(method="evad", backbone="b", frames=8, size=64, batch=8, device="cpu", dtype="fp32", status="ok",
             gflops=40.0, latency_ms=20.0),
        dict(method="none", backbone="b", frames=8, size=64, status="reference", device="paper", gflops=180.0),
        dict(method="evad", backbone="b", frames=8, size=64, status="reference", device="paper", gflops=120.0),
    ]
    df = add_speedups(to_frame(rows))
    assert list(df["speedup_flops"].round(6)[:2]) == [1.0, 2.5]
    assert df["speedup_latency"][1] == 2.0
    assert math.isnan(df["speedup_flops"][2]) and math.isnan(df["speedup_latency"][2])
    assert df["speedup_flops"][4] == pytest.approx(1.5)
    assert math.isnan(df["speedup_latency"][4])


def test_sweep_with_data_adds_accuracy_and_dataset_fidelity(tmp_path):
    from vidprune.data.synthetic import synthesize

    synth = synthesize(tmp_path / "synth", train_per_class=0, val_per_class=2, frames=4, size=32, num_classes=3)
    out = tmp_path / "results"
    result = CliRunner().invoke(app, [
        "sweep", "--method", "evad", "--keep", "0.5,1.0", "--backbone", "vit-tiny", "--frames", "4", "--size", "32",
        "--data", str(synth.lists["val"]), "--root", str(synth.out), "--metrics", "flops", "--workers", "0",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    df = read_tables([str(out / "*.csv")])
    assert list(df["method"]) == ["none", "evad", "evad"]
    assert (df["eval_videos"] == 6).all() and (df["fidelity_source"] == "dataset").all()
    assert df["top1"].between(0, 1).all()
    at_one = df[(df["method"] == "evad") & (df["keep"] == 1.0)].iloc[0]
    assert at_one["agreement"] == 1.0 and at_one["kl"] == 0.0
    assert df["speedup_flops"].iloc[1] > 1.0


def test_sweep_checkpoint_without_data_says_what_to_add(tmp_path):
    missing = CliRunner().invoke(app, ["sweep", "--method", "evad", "--checkpoint", str(tmp_path / "w.pth")])
    assert missing.exit_code == 2
    assert "--data" in missing.output


def test_recipe_list_is_a_grid_only_for_grid_options(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sweep:\n  method: evad\n  backbone: vit-tiny\n  frames: 4\n  size: 32\n  keep: [0.5]\n"
                      "  metrics: flops\n  options:\n    layers: [1, 2]\n    w_kf: [1, 4]\n")
    result = CliRunner().invoke(app, ["sweep", "--recipe", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    df = read_tables([str(tmp_path / "out" / "*.csv")])
    options = [json.loads(o) for o in df["options"][df["method"] == "evad"]]
    assert [o["w_kf"] for o in options] == [1.0, 4.0]  # w_kf is a grid option: two points
    assert all(o["layers"] in ("1,2", [1, 2]) for o in options)  # layers is not: one value, both points
