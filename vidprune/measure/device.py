"""Device and dtype selection, synchronisation, and a record of the machine a number came from.

Why this module exists: a latency or memory figure means nothing without the device, software
versions and thread count that produced it, and asking for a device the machine lacks should fail
at the start with a message naming the fix, not halfway through a sweep with a torch traceback.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import subprocess
from types import ModuleType

import torch

from vidprune.errors import VidpruneError

DEVICE_CHOICES = "cpu, cuda, cuda:N, mps, auto"
# What --device accepts, checked without touching the hardware: a recipe is checked wherever it is read,
# and a driver that hands points to Ray or Slurm need not have the device it asks for.
DEVICE_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

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


def is_device_name(text) -> bool:
    """Whether `text` is a --device value (any machine's), e.g. `cuda:1`; says nothing about this machine."""
    return isinstance(text, str) and DEVICE_SYNTAX.fullmatch(text.strip().lower()) is not None


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
    raise VidpruneError(f"unknown device '{spec}'. Use one of: {DEVICE_CHOICES}.")


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
    thread count or cuDNN version rather than to the method being measured. Every probe beyond the
    torch basics is best effort: a value that cannot be read is None (numbers, NVML) or "unknown"
    (Jetson settings), never an exception, because a missing clock reading must not stop a sweep.
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
        env.update(_nvml_environment(device))
    # On a Jetson the power mode and clock pinning move CPU timings as much as GPU ones (they share
    # one power budget), so these are recorded whatever the device.
    if is_jetson():
        env.update(jetson_environment())
    return env


# --- NVML (discrete NVIDIA GPUs) -------------------------------------------------------------

NVML_INSTALL_HINT = "pip install nvidia-ml-py (or: pip install 'vidprune[nvml]')"

_NVML_KEYS = (
    "driver_version", "cuda_driver_version", "sm_clock_mhz", "sm_clock_max_mhz",
    "mem_clock_mhz", "mem_clock_max_mhz", "power_limit_w",
)


def import_pynvml() -> ModuleType:
    """The ``pynvml`` module of nvidia-ml-py, imported only when asked for (it is optional)."""
    try:
        import pynvml
    except ImportError as exc:
        raise VidpruneError(
            f"NVML's Python bindings are not installed ({exc}). {NVML_INSTALL_HINT}."
        ) from exc
    return pynvml


def nvml_handle(pynvml: ModuleType, device: torch.device):
    """The NVML handle of the GPU that torch calls ``device``. NVML must already be initialised.

    torch numbers GPUs after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, NVML always numbers all
    GPUs in PCI order, so the two indices can name different GPUs. The UUID and the PCI bus id are
    the same in both, so we match on those and use the index only when torch reports neither.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        if not text.startswith(("GPU-", "MIG-")):
            text = f"GPU-{text}"
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(text)
        except pynvml.NVMLError:
            pass
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        domain = int(getattr(props, "pci_domain_id", 0) or 0)
        slot = int(getattr(props, "pci_device_id", 0) or 0)
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{int(bus):02x}:{slot:02x}.0")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _text(value) -> str:
    # Older nvidia-ml-py versions return bytes for strings, newer ones str.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def nvml_gpu_info(pynvml: ModuleType, handle) -> dict:
    """Driver and clock facts for one GPU; each value None when NVML cannot give it."""

    def probe(read):
        try:
            return read()
        except Exception:  # NVMLError_NotSupported and friends: the key stays None
            return None

    info: dict = dict.fromkeys(_NVML_KEYS)
    info["driver_version"] = probe(lambda: _text(pynvml.nvmlSystemGetDriverVersion()))
    # The newest CUDA version the driver supports, encoded as 1000 * major + 10 * minor.
    cuda = probe(pynvml.nvmlSystemGetCudaDriverVersion)
    if isinstance(cuda, int) and cuda > 0:
        info["cuda_driver_version"] = f"{cuda // 1000}.{(cuda % 1000) // 10}"
    for key, read, kind in (
        ("sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM),
        ("sm_clock_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_SM),
        ("mem_clock_mhz", pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_MEM),
        ("mem_clock_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_MEM),
    ):
        value = probe(lambda read=read, kind=kind: read(handle, kind))
        info[key] = int(value) if value is not None else None
    limit_mw = probe(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    info["power_limit_w"] = round(limit_mw / 1000.0, 1) if limit_mw is not None else None
    return info


def _nvml_environment(device: torch.device) -> dict:
    try:
        pynvml = import_pynvml()
        pynvml.nvmlInit()
    except Exception:
        return dict.fromkeys(_NVML_KEYS)
    try:
        return nvml_gpu_info(pynvml, nvml_handle(pynvml, device))
    except Exception:
        return dict.fromkeys(_NVML_KEYS)
    finally:
        try:
            pynvml.nvmlShutdown()  # reference counted: balances our nvmlInit only
        except Exception:
            pass


# --- Jetson ----------------------------------------------------------------------------------

TEGRA_RELEASE_PATH = "/etc/nv_tegra_release"
DEVICE_TREE_MODEL_PATH = "/proc/device-tree/model"
SYS_ROOT = "/sys"
_PROBE_TIMEOUT_S = 3.0


def read_device_tree_model(path: str | None = None) -> str | None:
    """The board name from the device tree, without the trailing NUL the kernel stores."""
    try:
        with open(path or DEVICE_TREE_MODEL_PATH, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    text = raw.replace(b"\x00", b" ").decode("utf-8", errors="replace").strip()
    return text or None


def is_jetson(release_path: str | None = None, model_path: str | None = None) -> bool:
    """True on an NVIDIA Jetson (CUDA on Tegra), where NVML has no power or clock readings.

    nv_tegra_release is written by every L4T/JetPack install, also on third-party carrier boards
    whose device-tree model does not say "Jetson"; the model check covers images without it.
    """
    if os.path.exists(release_path or TEGRA_RELEASE_PATH):
        return True
    model = read_device_tree_model(model_path)
    return bool(model and "nvidia jetson" in model.lower())


def parse_l4t_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``"36.4.3"``."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return None
    return f"{m.group(1)}.{m.group(2).rstrip('.')}"


def parse_nvpmodel(text: str) -> tuple[str | None, int | None]:
    """Mode name and id from ``nvpmodel -q`` (``NV Power Mode: MAXN`` then a line ``0``)."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        m = re.search(r"NV Power Mode:\s*(.+)$", line)
        if not m:
            continue
        name = m.group(1).strip() or None
        mode_id = None
        for later in lines[i + 1:]:
            if re.fullmatch(r"\d+", later):
                mode_id = int(later)
                break
            if later and not later.startswith("NVPM"):
                break
        return name, mode_id
    return None, None


def parse_jetson_clocks(text: str) -> str:
    """``"on"`` when ``jetson_clocks --show`` reports every CPU and the GPU pinned (min == max).

    That is what jetson_clocks does: it raises each minimum frequency to the maximum, so DVFS can
    no longer lower the clocks between (or during) timed runs.
    """
    pairs = [
        (int(lo), int(hi))
        for lo, hi in re.findall(r"^\s*(?:cpu\d+|GPU)\b.*?MinFreq=(\d+).*?MaxFreq=(\d+)", text, re.M)
    ]
    if not pairs:
        return "unknown"
    return "on" if all(lo == hi for lo, hi in pairs) else "off"


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


_GPU_DEVFREQ = re.compile(r"gpu|gv11b|ga10b|gp10b|gm20b|gb10b")


def jetson_clocks_from_sysfs(sys_root: str | None = None) -> str:
    """The same min == max test as :func:`parse_jetson_clocks`, on world-readable sysfs files.

    ``jetson_clocks --show`` needs root; cpufreq and devfreq limits do not.
    """
    sys_root = sys_root or SYS_ROOT
    pairs: list[tuple[int | None, int | None]] = []
    for cpufreq in sorted(glob.glob(os.path.join(sys_root, "devices/system/cpu/cpu[0-9]*/cpufreq"))):
        pairs.append((_read_int(f"{cpufreq}/scaling_min_freq"), _read_int(f"{cpufreq}/scaling_max_freq")))
    for devfreq in sorted(glob.glob(os.path.join(sys_root, "class/devfreq/*"))):
        if _GPU_DEVFREQ.search(os.path.basename(devfreq)):
            pairs.append((_read_int(f"{devfreq}/min_freq"), _read_int(f"{devfreq}/max_freq")))
    readable = [(lo, hi) for lo, hi in pairs if lo is not None and hi is not None]
    if not readable or len(readable) < len(pairs):
        return "unknown"
    return "on" if all(lo == hi for lo, hi in readable) else "off"


def _run_probe(*cmd: str) -> str | None:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def jetson_environment() -> dict:
    """Board, L4T release, nvpmodel power mode and jetson_clocks state; never raises."""
    env: dict = {
        "jetson_model": read_device_tree_model() or "unknown",
        "l4t_release": "unknown",
        "nvpmodel_mode": "unknown",
        "nvpmodel_id": None,
        "jetson_clocks": "unknown",
    }
    try:
        with open(TEGRA_RELEASE_PATH, encoding="utf-8", errors="replace") as f:
            env["l4t_release"] = parse_l4t_release(f.read()) or "unknown"
    except OSError:
        pass
    out = _run_probe("nvpmodel", "-q")
    if out:
        name, mode_id = parse_nvpmodel(out)
        env["nvpmodel_mode"] = name or "unknown"
        env["nvpmodel_id"] = mode_id
    state = "unknown"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        out = _run_probe("jetson_clocks", "--show")
        if out:
            state = parse_jetson_clocks(out)
    if state == "unknown":
        try:
            state = jetson_clocks_from_sysfs()
        except Exception:
            state = "unknown"
    env["jetson_clocks"] = state
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
    "import_pynvml",
    "nvml_handle",
    "nvml_gpu_info",
    "is_jetson",
    "read_device_tree_model",
    "parse_l4t_release",
    "parse_nvpmodel",
    "parse_jetson_clocks",
    "jetson_clocks_from_sysfs",
    "jetson_environment",
    "resolve_dtype",
    "dtype_name",
]
