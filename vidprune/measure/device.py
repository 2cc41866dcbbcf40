"""Device and dtype selection, synchronisation, and a record of the machine a number came from.

Why this module exists: a latency or memory figure means nothing without the device, software
versions and thread count that produced it, and asking for a device the machine lacks should fail
at the start with a message naming the fix, not halfway through a sweep with a torch traceback.
"""

from __future__ import annotations

import os
import platform
import re

import torch

from vidprune.errors import VidpruneError

_DEVICE_SPECS = "cpu, cuda, cuda:N, mps, auto"

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
}


def _mps_available() -> bool:
    # Older or non-Apple builds may lack torch.backends.mps entirely.
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _torch_build() -> str:
    return f"torch {torch.__version__}"


def resolve_device(spec: str) -> torch.device:
    """Turn a ``--device`` value into a device that this machine can actually run on.

    We check availability here, up front, because torch only complains when the first tensor is
    moved, which in a sweep can be minutes in and buried under unrelated output.
    """
    s = str(spec).strip().lower()
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not _mps_available():
            raise VidpruneError(
                f"--device mps was asked for but MPS is not available here ({_torch_build()}, "
                f"{platform.system()} {platform.machine()}); it needs Apple silicon and a torch "
                "build with MPS. Use --device cpu or auto."
            )
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if m:
        if not torch.cuda.is_available():
            raise VidpruneError(
                f"--device {s} was asked for but this torch build/machine has no CUDA "
                f"({_torch_build()}, CUDA build: {torch.version.cuda or 'none'}). "
                "Use --device cpu or auto, or install a CUDA build of torch."
            )
        if m.group(1) is None:
            return torch.device("cuda")
        index = int(m.group(1))
        count = torch.cuda.device_count()
        if index >= count:
            raise VidpruneError(
                f"--device {s} was asked for but this machine has {count} CUDA device(s) "
                f"(valid: {', '.join(f'cuda:{i}' for i in range(count))}). "
                "Pick one of those, or use --device cuda."
            )
        return torch.device("cuda", index)
    raise VidpruneError(f"unknown device '{spec}'. Use one of: {_DEVICE_SPECS}.")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work to finish.

    GPU kernels run asynchronously, so a host-side clock read without this measures only how long
    it took to *queue* the work. On the CPU there is nothing to wait for.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    _, _, value = line.partition(":")
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str) -> str:
    """A human-readable hardware name, so results from different machines are not mixed up."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return _cpu_model()


def environment(device: torch.device | str) -> dict:
    """Everything about the software and hardware that can move a timing, as plain JSON values.

    Stored next to every result so a surprising number can be traced to, e.g., a different
    thread count or cuDNN version rather than to the method being measured.
    """
    device = torch.device(device)
    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    env: dict = {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda,
        "cudnn_version": int(cudnn) if cudnn is not None else None,
        "threads": int(torch.get_num_threads()),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_total_mib"] = round(props.total_memory / 2**20, 1)
        env["capability"] = f"{props.major}.{props.minor}"
    return env


def resolve_dtype(name: str) -> torch.dtype:
    """Turn a ``--dtype`` value into a torch dtype, rejecting anything we do not benchmark."""
    key = str(name).strip().lower()
    if key not in _DTYPES:
        raise VidpruneError(
            f"unknown dtype '{name}'. Use one of: fp32, fp16, bf16 "
            "(or float32, float16, bfloat16)."
        )
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name we write into results, so the same dtype is always spelled the same way."""
    if dtype not in _DTYPE_NAMES:
        raise VidpruneError(f"unsupported dtype {dtype}. Use one of: fp32, fp16, bf16.")
    return _DTYPE_NAMES[dtype]


__all__ = [
    "resolve_device",
    "synchronize",
    "device_name",
    "environment",
    "resolve_dtype",
    "dtype_name",
]
