"""ONNX export: the graph runs in onnxruntime and matches PyTorch, on an input other than the one it was
exported with (a traced token selection would only match the export input), and methods that cannot
export faithfully refuse with the reason. Tiny models (vit-tiny, 8 frames x 32 px) keep this file fast."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from vidprune import models  # noqa: E402
from vidprune.cli.app import app  # noqa: E402
from vidprune.errors import VidpruneError  # noqa: E402
from vidprune.export import export_onnx, require_export_packages  # noqa: E402
from vidprune.measure.flops import example_input  # noqa: E402

TINY = dict(frames=8, size=32, classes=10)
# Independent of export.py's defaults: fp32 graphs of these tiny models agree to ~1e-6.
TOLERANCE = 1e-4


def run_onnx(path, video: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: video.numpy()})[0]


@pytest.fixture(scope="module")
def evad_export(tmp_path_factory, one_thread):
    model = models.create_model("vit-tiny", "evad", 0.5, **TINY)
    path = tmp_path_factory.mktemp("onnx") / "evad.onnx"
    return model, export_onnx(model, path)


def test_evad_round_trip_matches_pytorch_on_two_inputs(evad_export):
    model, report = evad_export
    assert report.path.is_file() and report.size_mib > 0
    assert report.exporter == "dynamo" and report.opset == 18
    assert report.input_shapes == {"video": (1, 3, 8, 32, 32)} and report.output_shape == (1, 10)
    assert report.checked_inputs == 2 and report.max_abs_diff < TOLERANCE and report.top1_agreement == 1.0
    for seed in (0, 1):
        video = example_input(model, 1, seed=seed)
        with torch.no_grad():
            expected = model(video).numpy()
        np.testing.assert_allclose(run_onnx(report.path, video), expected, atol=TOLERANCE, rtol=0)


def test_evad_graph_selects_tokens_from_its_input(evad_export, monkeypatch):
    """On inputs where EVAD keeps different tokens, the graph still matches: the selection is computed in
    the graph, not frozen as the export input's indices."""
    import vidprune.methods.evad as evad_module

    model, report = evad_export
    kept = []
    original = evad_module.keep_top

    def recording_keep_top(state, scores, k):
        result = original(state, scores, k)
        kept.append(result.pos.clone())
        return result

    monkeypatch.setattr(evad_module, "keep_top", recording_keep_top)
    outputs = []
    videos = [example_input(model, 1, seed=seed) for seed in (0, 7)]
    for video in videos:
        with torch.no_grad():
            outputs.append(model(video).numpy())
    first, second = kept[: len(kept) // 2], kept[len(kept) // 2:]
    assert any(not torch.equal(a, b) for a, b in zip(first, second)), "inputs did not change EVAD's selection"
    for video, expected in zip(videos, outputs):
        np.testing.assert_allclose(run_onnx(report.path, video), expected, atol=TOLERANCE, rtol=0)


def test_unpruned_model_exports_with_torchscript_exporter_at_batch_two(tmp_path, one_thread):
    model = models.create_model("vit-tiny", "none", **TINY)
    report = export_onnx(model, tmp_path / "none.onnx", batch=2, exporter="torchscript")
    assert report.exporter == "torchscript" and report.input_shapes["video"] == (2, 3, 8, 32, 32)
    assert report.output_shape == (2, 10) and report.max_abs_diff < TOLERANCE
    video = example_input(model, 2, seed=3)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(report.path, video), model(video).numpy(), atol=TOLERANCE, rtol=0)
    assert not model.training  # export leaves the model's mode as it found it


@pytest.mark.parametrize("method,backbone,options,reason", [
    ("random", "vit-tiny", {}, "torch.Generator"),
    ("sttm", "vit-tiny", {}, "torch.Generator"),
    ("mads", "vivit-tiny", {"strategy": "threshold"}, "strategy=topk"),
])
def test_non_exportable_method_says_why(tmp_path, method, backbone, options, reason):
    model = models.create_model(backbone, method, options=options, **TINY)
    path = tmp_path / "x.onnx"
    with pytest.raises(VidpruneError, match=f"'{method}' cannot be exported") as info:
        export_onnx(model, path)
    assert reason in str(info.value)
    assert not path.exists()


class TracedConstant(nn.Module):
    """Uses a value read from its input as a Python number: the TorchScript tracer freezes it."""

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum())


def test_graph_right_only_on_the_export_input_is_refused_and_removed(tmp_path):
    path = tmp_path / "baked.onnx"
    with pytest.raises(VidpruneError, match="second, different input"):
        export_onnx(TracedConstant(), path, exporter="torchscript")
    assert not path.exists()


def test_missing_onnxruntime_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(VidpruneError, match=r"onnxruntime.*pip install 'vidprune\[export\]'"):
        require_export_packages(check=True)
    assert require_export_packages(check=False) is None  # --no-check does not need it


# ------------------------------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_exports_evad_and_reports_the_check(tmp_path, one_thread):
    path = tmp_path / "model.onnx"
    result = invoke("export", "--method", "evad", "--keep", "0.7", "--backbone", "vit-tiny", "--frames", 8,
                    "--size", 32, "--classes", 10, "--onnx", path)
    assert result.exit_code == 0, result.output
    assert "runs in onnxruntime, max |diff| =" in result.stdout
    assert "trtexec --onnx=" in result.stdout
    video = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(11))
    assert run_onnx(path, video).shape == (1, 10)


@pytest.mark.parametrize("args,message", [
    (["--method", "evadd"], "unknown method 'evadd'"),
    (["--method", "evad", "--keep", "1.5"], "outside (0, 1]"),
    (["--method", "random"], "'random' cannot be exported"),
    (["--method", "evad", "--checkpoint", "missing.pth"], "does not exist"),
    (["--method", "evad", "--set", "w_kf=2,4"], "--set w_kf=2,4 gives several values, but an export builds one model"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    result = invoke("export", *args, "--backbone", "vit-tiny", "--frames", 8, "--size", 32,
                    "--onnx", tmp_path / "x.onnx")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "x.onnx").exists()
