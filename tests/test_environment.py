import json
import types

import pytest
import torch

from vidprune.measure import device as dev
from vidprune.measure.device import (
    environment,
    is_jetson,
    jetson_clocks_from_sysfs,
    jetson_environment,
    nvml_gpu_info,
    nvml_handle,
    parse_jetson_clocks,
    parse_l4t_release,
    parse_nvpmodel,
    read_device_tree_model,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

BASE_KEYS = ("device", "device_name", "torch_version", "cuda_version", "cudnn_version",
             "threads", "python_version", "platform", "cpu_count")
JETSON_KEYS = ("jetson_model", "l4t_release", "nvpmodel_mode", "nvpmodel_id", "jetson_clocks")
NVML_KEYS = ("driver_version", "cuda_driver_version", "sm_clock_mhz", "sm_clock_max_mhz",
             "mem_clock_mhz", "mem_clock_max_mhz", "power_limit_w")

# Recorded outputs (nvpmodel -q on an AGX Orin / an Orin Nano, verbose form, Xavier NX).
NVPMODEL_MAXN = "NV Power Mode: MAXN\n0\n"
NVPMODEL_25W = "NV Power Mode: 25W\n1\n"
NVPMODEL_VERBOSE = (
    "NVPM VERB: Config file: /etc/nvpmodel.conf\n"
    "NVPM VERB: parsing done for /etc/nvpmodel.conf\n"
    "NVPM VERB: Current mode: NV Power Mode: 15W\n"
    "0\n"
    "NVPM VERB: PARAM CPU_ONLINE: ARG CORE_0: PATH /sys/devices/system/cpu/cpu0/online: REAL_VAL: 1 CONF_VAL: 1\n"
)
NVPMODEL_XAVIER_NX = "NV Fan Mode:quiet\nNV Power Mode: MODE_15W_6CORE\n2\n"

JETSON_CLOCKS_ON = """SOC family:tegra210  Machine:jetson_tx1
Online CPUs: 0-3
CPU Cluster Switching: Disabled
cpu0: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
cpu1: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
cpu2: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
cpu3: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
GPU MinFreq=998400000 MaxFreq=998400000 CurrentFreq=998400000
EMC MinFreq=12750000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1
Fan: speed=255
"""
JETSON_CLOCKS_OFF = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1036800 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0
NV Power Mode: MAXN
"""


@pytest.mark.parametrize(
    "text,expected",
    [
        (NVPMODEL_MAXN, ("MAXN", 0)),
        (NVPMODEL_25W, ("25W", 1)),
        (NVPMODEL_VERBOSE, ("15W", 0)),
        (NVPMODEL_XAVIER_NX, ("MODE_15W_6CORE", 2)),
        ("nvpmodel: command not found\n", (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_nvpmodel(text, expected):
    assert parse_nvpmodel(text) == expected


def test_parse_l4t_release():
    assert parse_l4t_release(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
        "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    ) == "36.4.3"
    assert parse_l4t_release(
        "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
        "DATE: Sat Feb 19 17:05:08 UTC 2022\n"
    ) == "32.7.1"
    assert parse_l4t_release("Ubuntu 22.04") is None


def test_parse_jetson_clocks():
    assert parse_jetson_clocks(JETSON_CLOCKS_ON) == "on"
    assert parse_jetson_clocks(JETSON_CLOCKS_OFF) == "off"
    assert parse_jetson_clocks("") == "unknown"


def test_device_tree_model_drops_the_trailing_nul(tmp_path):
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert read_device_tree_model(str(model)) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert read_device_tree_model(str(tmp_path / "missing")) is None


def test_is_jetson(tmp_path):
    release, model = tmp_path / "nv_tegra_release", tmp_path / "model"
    assert not is_jetson(str(release), str(model))
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert not is_jetson(str(release), str(model))
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    assert is_jetson(str(release), str(model))
    model.write_bytes(b"reComputer J4012\x00")  # third-party carrier: only the L4T file says it
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    assert is_jetson(str(release), str(model))


def make_sysfs(root, cpu_pairs, gpu_pair, gpu_name="17000000.ga10b"):
    for i, (lo, hi) in enumerate(cpu_pairs):
        d = root / "devices" / "system" / "cpu" / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_min_freq").write_text(f"{lo}\n")
        (d / "scaling_max_freq").write_text(f"{hi}\n")
    g = root / "class" / "devfreq" / gpu_name
    g.mkdir(parents=True)
    (g / "min_freq").write_text(f"{gpu_pair[0]}\n")
    (g / "max_freq").write_text(f"{gpu_pair[1]}\n")
    other = root / "class" / "devfreq" / "15340000.vic"  # not the GPU: must not matter
    other.mkdir(parents=True)
    (other / "min_freq").write_text("115200000\n")
    (other / "max_freq").write_text("729600000\n")


def test_jetson_clocks_from_sysfs(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    make_sysfs(on, [(2201600, 2201600)] * 2, (1300500000, 1300500000))
    make_sysfs(off, [(2201600, 2201600), (729600, 2201600)], (1300500000, 1300500000))
    assert jetson_clocks_from_sysfs(str(on)) == "on"
    assert jetson_clocks_from_sysfs(str(off)) == "off"
    assert jetson_clocks_from_sysfs(str(tmp_path / "empty")) == "unknown"


def test_jetson_environment_from_recorded_files(tmp_path, monkeypatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    make_sysfs(tmp_path / "sys", [(729600, 1728000)], (306000000, 1020000000), gpu_name="17000000.gpu")
    monkeypatch.setattr(dev, "TEGRA_RELEASE_PATH", str(release))
    monkeypatch.setattr(dev, "DEVICE_TREE_MODEL_PATH", str(model))
    monkeypatch.setattr(dev, "SYS_ROOT", str(tmp_path / "sys"))
    monkeypatch.setattr(dev.os, "geteuid", lambda: 1000)  # not root: jetson_clocks is not run
    monkeypatch.setattr(dev, "_run_probe", lambda *cmd: NVPMODEL_MAXN if cmd[0] == "nvpmodel" else None)
    env = jetson_environment()
    assert env == {
        "jetson_model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
        "l4t_release": "36.4.3",
        "nvpmodel_mode": "MAXN",
        "nvpmodel_id": 0,
        "jetson_clocks": "off",
    }
    full = environment(torch.device("cpu"))  # a Jetson adds its keys even for CPU runs
    assert all(full[k] == env[k] for k in JETSON_KEYS)


def test_jetson_environment_never_raises_when_nothing_can_be_read(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "TEGRA_RELEASE_PATH", str(tmp_path / "missing"))
    monkeypatch.setattr(dev, "DEVICE_TREE_MODEL_PATH", str(tmp_path / "missing"))
    monkeypatch.setattr(dev, "SYS_ROOT", str(tmp_path / "missing"))
    monkeypatch.setattr(dev, "_run_probe", lambda *cmd: None)
    env = jetson_environment()
    assert env == {"jetson_model": "unknown", "l4t_release": "unknown", "nvpmodel_mode": "unknown",
                   "nvpmodel_id": None, "jetson_clocks": "unknown"}


def test_run_probe_survives_a_missing_command():
    assert dev._run_probe("vidprune-no-such-command-xyz", "-q") is None


def test_cpu_environment_keeps_its_keys_and_adds_no_gpu_ones(monkeypatch):
    monkeypatch.setattr(dev, "is_jetson", lambda *a, **k: False)
    env = environment(torch.device("cpu"))
    for key in BASE_KEYS:
        assert key in env
    for key in NVML_KEYS + JETSON_KEYS + ("gpu_memory_total_mib",):
        assert key not in env
    assert json.loads(json.dumps(env)) == env
    assert all(not isinstance(v, (dict, list, tuple)) for v in env.values())  # flat: table columns


class NVMLError(Exception):
    pass


def fake_pynvml(supported=True):
    def maybe(value):
        def read(*args):
            if not supported:
                raise NVMLError("Not Supported")
            return value(*args) if callable(value) else value
        return read

    clocks = {("cur", "sm"): 1755, ("max", "sm"): 1980, ("cur", "mem"): 2619, ("max", "mem"): 2619}
    return types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_CLOCK_SM="sm",
        NVML_CLOCK_MEM="mem",
        nvmlSystemGetDriverVersion=maybe(b"550.54.15"),
        nvmlSystemGetCudaDriverVersion=maybe(12040),
        nvmlDeviceGetClockInfo=maybe(lambda h, kind: clocks[("cur", kind)]),
        nvmlDeviceGetMaxClockInfo=maybe(lambda h, kind: clocks[("max", kind)]),
        nvmlDeviceGetEnforcedPowerLimit=maybe(700000),
    )


def test_nvml_gpu_info_maps_and_converts():
    info = nvml_gpu_info(fake_pynvml(), "handle")
    assert info == {
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "sm_clock_mhz": 1755,
        "sm_clock_max_mhz": 1980,
        "mem_clock_mhz": 2619,
        "mem_clock_max_mhz": 2619,
        "power_limit_w": 700.0,
    }


def test_nvml_gpu_info_unsupported_is_none():
    assert nvml_gpu_info(fake_pynvml(supported=False), "handle") == dict.fromkeys(NVML_KEYS)


def test_nvml_handle_matches_torch_gpu_by_uuid_then_pci(monkeypatch):
    props = types.SimpleNamespace(uuid="5f4ed2a1-0000-1111-2222-333344445555", pci_bus_id=0x41,
                                  pci_device_id=0, pci_domain_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    calls = []

    def by_uuid(text):
        calls.append(("uuid", text))
        if text != "GPU-5f4ed2a1-0000-1111-2222-333344445555":
            raise NVMLError("Not Found")
        return "by-uuid"

    def by_pci(text):
        calls.append(("pci", text))
        return "by-pci"

    fake = types.SimpleNamespace(NVMLError=NVMLError, nvmlDeviceGetHandleByUUID=by_uuid,
                                 nvmlDeviceGetHandleByPciBusId=by_pci,
                                 nvmlDeviceGetHandleByIndex=lambda i: f"index-{i}")
    assert nvml_handle(fake, torch.device("cuda", 1)) == "by-uuid"
    props.uuid = "not-known-to-nvml"
    assert nvml_handle(fake, torch.device("cuda", 1)) == "by-pci"
    assert calls[-1] == ("pci", "00000000:41:00.0")
    props.uuid, props.pci_bus_id = None, None
    assert nvml_handle(fake, torch.device("cuda", 1)) == "index-1"


@needs_cuda
def test_cuda_environment_has_nvml_keys():
    env = environment(torch.device("cuda"))
    for key in NVML_KEYS:
        assert key in env
    json.dumps(env)
    if env["sm_clock_max_mhz"] is not None:
        assert env["sm_clock_max_mhz"] >= 100
