import math

import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure.peak import PeakResult, default_size, fraction_of_peak, peak_matmul

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_small_cpu_gemm_gives_a_positive_finite_rate(one_thread):
    result = peak_matmul(torch.device("cpu"), torch.float32, size=96, repeats=3, warmup=1)
    assert result.size == 96 and result.dtype == "fp32" and result.device == "cpu"
    assert math.isfinite(result.macs_per_s) and result.macs_per_s > 0
    # The rate is one GEMM's n**3 MACs over one GEMM's time, in the 1 MAC = 1 FLOP convention.
    assert result.macs_per_s * result.seconds == pytest.approx(96**3)
    assert result.tflops == pytest.approx(result.macs_per_s / 1e12)
    assert result.float32_matmul_precision == torch.get_float32_matmul_precision()


@pytest.mark.parametrize("size", [0, -8, 2.5, 1024.0, "1024", True])
def test_bad_size(size):
    with pytest.raises(VidpruneError, match="size"):
        peak_matmul(torch.device("cpu"), torch.float32, size=size)


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"repeats": 1.5}])
def test_bad_repeats_or_warmup(kwargs):
    with pytest.raises(VidpruneError):
        peak_matmul(torch.device("cpu"), torch.float32, size=8, **kwargs)


def test_unsupported_dtype_lists_the_allowed_ones():
    with pytest.raises(VidpruneError, match="fp32, fp16, bf16"):
        peak_matmul(torch.device("cpu"), torch.int64, size=8)


def test_half_precision_on_cpu_runs_or_says_why(one_thread):
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        try:
            result = peak_matmul(torch.device("cpu"), dtype, size=64, repeats=2, warmup=0)
        except VidpruneError as exc:
            assert name in str(exc) and "--dtype fp32" in str(exc)
        else:
            assert result.dtype == name and result.macs_per_s > 0


def test_missing_kernel_becomes_a_clear_error(monkeypatch):
    def no_kernel(*args, **kwargs):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')

    monkeypatch.setattr(torch, "matmul", no_kernel)
    with pytest.raises(VidpruneError) as info:
        peak_matmul(torch.device("cpu"), torch.float16, size=8)
    message = str(info.value)
    assert "fp16" in message and "not implemented for 'Half'" in message and "--dtype fp32" in message


def test_default_sizes():
    assert default_size(torch.device("cuda"), torch.float16) == 4096
    assert default_size(torch.device("cpu"), torch.float32) == 1024
    assert default_size(torch.device("cpu"), torch.bfloat16) < 1024


def peak(macs_per_s):
    return PeakResult(device="cpu", dtype="fp32", size=1, seconds=1.0, macs_per_s=macs_per_s,
                      float32_matmul_precision="highest")


def test_fraction_of_peak_on_constructed_numbers():
    # 100 GFLOPs (= 1e11 MACs) per clip at 2.5 clips/s is 2.5e11 MACs/s: a quarter of 1e12.
    assert fraction_of_peak(100.0, 2.5, peak(1e12)) == pytest.approx(0.25)
    assert fraction_of_peak(0.0, 10.0, peak(1e12)) == 0.0
    # Above 1 is possible (the model's kernels beat one square GEMM) and must not be clipped.
    assert fraction_of_peak(180.0, 10.0, peak(1e12)) == pytest.approx(1.8)


@pytest.mark.parametrize("gflops,clips", [(-1.0, 1.0), (1.0, -1.0), (float("nan"), 1.0), (1.0, float("inf"))])
def test_fraction_of_peak_rejects_bad_inputs(gflops, clips):
    with pytest.raises(VidpruneError):
        fraction_of_peak(gflops, clips, peak(1e12))


@pytest.mark.parametrize("rate", [0.0, float("nan")])
def test_fraction_of_peak_rejects_an_unusable_peak(rate):
    with pytest.raises(VidpruneError, match="peak"):
        fraction_of_peak(1.0, 1.0, peak(rate))


@needs_cuda
def test_cuda_peak_is_above_a_gigamac():
    result = peak_matmul(torch.device("cuda"), torch.float16, size=1024, repeats=3, warmup=2)
    assert result.macs_per_s > 1e9 and result.device.startswith("cuda")
