import json

import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure import device as dev
from vidprune.measure.device import (
    device_name,
    dtype_name,
    environment,
    resolve_device,
    resolve_dtype,
    synchronize,
)

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cpu_resolves():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@no_cuda
def test_auto_is_cpu_here_without_cuda():
    if dev._mps_available():
        pytest.skip("MPS machine")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_names_the_fix(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VidpruneError) as info:
        resolve_device(spec)
    msg = str(info.value)
    assert "cuda" in msg.lower()
    assert "--device cpu" in msg
    assert torch.__version__ in msg


def test_cuda_index_out_of_range_lists_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(VidpruneError) as info:
        resolve_device("cuda:2")
    msg = str(info.value)
    assert "2 CUDA device(s)" in msg and "cuda:0, cuda:1" in msg


def test_mps_unavailable(monkeypatch):
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    with pytest.raises(VidpruneError, match="mps"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:", "tpu", ""])
def test_bad_spec_lists_allowed(spec):
    with pytest.raises(VidpruneError) as info:
        resolve_device(spec)
    assert "cpu, cuda, cuda:N, mps, auto" in str(info.value)


def test_synchronize_cpu_is_noop():
    assert synchronize(torch.device("cpu")) is None
    assert synchronize("cpu") is None


def test_device_name_cpu_nonempty():
    name = device_name("cpu")
    assert isinstance(name, str) and name.strip()


def test_device_name_falls_back_without_proc(monkeypatch):
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError("no")))
    monkeypatch.setattr(dev.platform, "processor", lambda: "")
    monkeypatch.setattr(dev.platform, "machine", lambda: "testarch")
    assert device_name("cpu") == "testarch"


def test_environment_cpu_is_json_and_complete():
    env = environment(torch.device("cpu"))
    for key in (
        "device", "device_name", "torch_version", "cuda_version", "cudnn_version",
        "threads", "python_version", "platform", "cpu_count",
    ):
        assert key in env
    assert env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads()
    assert env["torch_version"] == torch.__version__
    assert "gpu_memory_total_mib" not in env
    assert json.loads(json.dumps(env)) == env


@needs_cuda
def test_environment_cuda():
    env = environment(torch.device("cuda"))
    assert env["gpu_memory_total_mib"] > 0
    assert "." in env["capability"]
    assert env["device_name"] == torch.cuda.get_device_name(0)
    json.dumps(env)


@needs_cuda
def test_cuda_resolves_and_syncs():
    d = resolve_device("cuda:0")
    assert d.type == "cuda"
    synchronize(d)


@pytest.mark.parametrize(
    "name,dtype",
    [
        ("fp32", torch.float32), ("float32", torch.float32), ("FP16", torch.float16),
        ("float16", torch.float16), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
    ],
)
def test_resolve_dtype(name, dtype):
    assert resolve_dtype(name) is dtype


def test_dtype_name_roundtrip():
    for short in ("fp32", "fp16", "bf16"):
        assert dtype_name(resolve_dtype(short)) == short


def test_bad_dtype():
    with pytest.raises(VidpruneError) as info:
        resolve_dtype("int8")
    assert "fp32, fp16, bf16" in str(info.value)
    with pytest.raises(VidpruneError):
        dtype_name(torch.int64)
