import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure.throughput import is_out_of_memory, run_with_batch_backoff


def fake(limit, exc_factory=lambda: RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")):
    tried = []

    def measure_at(batch):
        tried.append(batch)
        if batch > limit:
            raise exc_factory()
        return f"ok@{batch}"

    return measure_at, tried


def test_backs_off_to_fitting_batch():
    measure_at, tried = fake(2)
    batch, result, notes = run_with_batch_backoff(measure_at, 8)
    assert (batch, result) == (2, "ok@2")
    assert tried == [8, 4, 2]
    assert notes == [
        "batch 8 ran out of memory; retried at 4",
        "batch 4 ran out of memory; retried at 2",
    ]


def test_no_backoff_needed():
    measure_at, tried = fake(100)
    assert run_with_batch_backoff(measure_at, 16) == (16, "ok@16", [])
    assert tried == [16]


def test_odd_batch_and_min_batch_floor():
    measure_at, tried = fake(3)
    batch, _, _ = run_with_batch_backoff(measure_at, 7, min_batch=3)
    assert batch == 3 and tried == [7, 3]


def test_non_oom_propagates_immediately():
    measure_at, tried = fake(0, lambda: ValueError("bad shape"))
    with pytest.raises(ValueError, match="bad shape"):
        run_with_batch_backoff(measure_at, 8)
    assert tried == [8]


def test_oom_at_min_batch_reraises():
    measure_at, tried = fake(0)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_with_batch_backoff(measure_at, 4, min_batch=1)
    assert tried == [4, 2, 1]


def test_cpu_allocator_message_backs_off():
    measure_at, _ = fake(
        1, lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                "not enough memory: you tried to allocate 123 bytes.")
    )
    assert run_with_batch_backoff(measure_at, 4)[0] == 1


def test_bad_batch():
    with pytest.raises(VidpruneError):
        run_with_batch_backoff(lambda b: b, 0)


@pytest.mark.parametrize(
    "exc,expected",
    [
        (RuntimeError("CUDA out of memory. Tried to allocate"), True),
        (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried"), True),
        (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate"), True),
        (MemoryError(), True),
        (torch.cuda.OutOfMemoryError("x"), True),
        (RuntimeError("shape mismatch"), False),
        (ValueError("out of memory"), False),
        (KeyError("x"), False),
    ],
)
def test_is_out_of_memory(exc, expected):
    assert is_out_of_memory(exc) is expected


def test_real_cpu_oom_is_recognised():
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except Exception as exc:  # what torch raises varies by version; it must count as OOM
        assert is_out_of_memory(exc), repr(exc)
    else:
        pytest.skip("allocation unexpectedly succeeded")
