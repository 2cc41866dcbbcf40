import math
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from vidprune.errors import VidpruneError
from vidprune.measure import device as devices
from vidprune.measure import power
from vidprune.measure.power import (
    EnergyCounterMeter,
    PowerReading,
    SampledPowerMeter,
    TegrastatsPowerMeter,
    average_power_w,
    board_rails,
    joules_per_clip,
    open_power_meter,
    parse_tegrastats_line,
    rails_label,
)

DATA = Path(__file__).parent / "data" / "tegrastats"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def recorded(board: str) -> list[str]:
    return [line for line in (DATA / f"{board}.txt").read_text().splitlines() if line.strip()]


# --- the tegrastats parser on recorded lines ---------------------------------------------------

# Expected values are read off the recorded files by hand: (board, line index, rails on that line,
# chosen rails, board input power of that line in mW).
BOARDS = [
    ("nano", 0, {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}, ("POM_5V_IN",), 2104),
    ("tx2", 1, {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR"},
     ("VDD_IN",), 9391),
    ("xavier_nx", 0, {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, ("VDD_IN",), 4385),
    ("xavier_nx", 2, {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, ("VDD_IN",), 9243),
    ("agx_xavier", 1, {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"},
     ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"), 11342 + 1712 + 2796 + 0 + 1401 + 2944),
    ("agx_orin", 0, {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"},
     ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"), 2786 + 398 + 3826 + 302),
    ("orin_nano", 1, {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, ("VDD_IN",), 11872),
]


@pytest.mark.parametrize("board,index,rails,chosen,total_mw", BOARDS)
def test_parser_finds_every_rail_and_the_board_input(board, index, rails, chosen, total_mw):
    parsed = parse_tegrastats_line(recorded(board)[index])
    assert set(parsed) == rails  # and nothing else: no RAM/SWAP/IRAM/CPU/GR3D fields
    assert board_rails(parsed) == chosen
    assert sum(parsed[name][0] for name in chosen) == total_mw


def test_parser_reads_current_and_average_with_and_without_units():
    bare = parse_tegrastats_line(recorded("nano")[1])  # Nano: numbers without a unit
    assert bare["POM_5V_IN"] == (5838.0, 3971.0)
    assert bare["POM_5V_GPU"] == (2756.0, 1398.0)
    stamped = parse_tegrastats_line(recorded("orin_nano")[1])  # timestamp prefix, mW units
    assert stamped["VDD_IN"] == (11872.0, 8128.0)
    assert stamped["VDD_SOC"] == (2488.0, 1892.0)


def test_parser_ignores_lines_without_rails():
    assert parse_tegrastats_line("RAM 2448/7772MB (lfb 1x4MB) SWAP 0/3886MB (cached 0MB) GR3D_FREQ 0%") == {}
    assert parse_tegrastats_line("") == {}


def test_rails_label_names_a_sum():
    assert rails_label(("VDD_IN",)) == "VDD_IN"
    assert rails_label(("GPU", "CPU", "SOC")) == "sum(GPU+CPU+SOC)"


# --- integration maths ---------------------------------------------------------------------


def test_trapezoid_average_of_constructed_samples():
    # 1 W -> 3 W -> 1 W over 2 s: the triangle adds 2 J to the 2 J base, so 4 J / 2 s = 2 W.
    assert average_power_w([(0.0, 1000.0), (1.0, 3000.0), (2.0, 1000.0)]) == pytest.approx(2.0)
    # Irregular spacing is weighted by time: 0.5 s at 1 W, then 2.5 s ramping 1 -> 5 W (avg 3 W):
    # (0.5 + 7.5) J / 3 s. A plain mean of the three values would say 2.33 W.
    assert average_power_w([(0.0, 1000.0), (0.5, 1000.0), (3.0, 5000.0)]) == pytest.approx(8.0 / 3.0)


def test_average_needs_two_distinct_times():
    with pytest.raises(VidpruneError):
        average_power_w([(0.0, 1000.0)])
    with pytest.raises(VidpruneError):
        average_power_w([(1.0, 1000.0), (1.0, 2000.0)])


def test_sampled_meter_constant_power():
    meter = SampledPowerMeter(lambda: 50_000.0, interval_s=0.01, source="fake")
    reading = meter.measure(lambda: time.sleep(0.15))
    assert reading.average_w == pytest.approx(50.0)
    assert reading.seconds >= 0.15
    assert reading.energy_j == pytest.approx(50.0 * reading.seconds)
    assert reading.samples >= 5
    assert reading.source == "fake"


def test_sampled_meter_integrates_a_ramp():
    # Power rising linearly in time: the time-weighted average is the power at the window's middle.
    start = time.perf_counter()
    meter = SampledPowerMeter(lambda: 1000.0 + 20_000.0 * (time.perf_counter() - start), interval_s=0.005)
    reading = meter.measure(lambda: time.sleep(0.2))
    middle_w = (1000.0 + 20_000.0 * (reading.seconds / 2)) / 1000.0
    assert reading.average_w == pytest.approx(middle_w, abs=0.3)
    assert reading.average_w > 2.0  # clearly above the 1 W the ramp started at


def test_sampled_meter_rejects_a_window_too_short_to_sample():
    meter = SampledPowerMeter(lambda: 50_000.0, interval_s=5.0)
    with pytest.raises(VidpruneError, match="too short") as info:
        meter.measure(lambda: None)
    assert "--repeats" in str(info.value)


def test_sampled_meter_failing_source_does_not_run_the_workload():
    calls = []

    def broken():
        raise RuntimeError("sensor gone")

    with pytest.raises(VidpruneError, match="sensor gone"):
        SampledPowerMeter(broken, interval_s=0.01).measure(lambda: calls.append(1))
    assert calls == []


def fake_clock(*times):
    values = iter(times)
    return lambda: next(values)


def test_energy_counter_difference():
    counter = iter([1_000.0, 6_000.0])  # mJ before and after
    meter = EnergyCounterMeter(lambda: next(counter), clock=fake_clock(10.0, 12.5))
    reading = meter.measure(lambda: None)
    assert reading.energy_j == pytest.approx(5.0)
    assert reading.seconds == pytest.approx(2.5)
    assert reading.average_w == pytest.approx(2.0)
    assert reading.source == "nvml-energy"


def test_energy_counter_that_did_not_advance_is_an_error_not_zero_watts():
    meter = EnergyCounterMeter(lambda: 42_000.0, clock=fake_clock(0.0, 0.001))
    with pytest.raises(VidpruneError, match="too short"):
        meter.measure(lambda: None)


def test_joules_per_clip():
    reading = PowerReading(average_w=5.0, energy_j=10.0, seconds=2.0, samples=40, source="fake")
    assert joules_per_clip(reading, 4) == pytest.approx(2.5)
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(VidpruneError, match="clips"):
            joules_per_clip(reading, bad)


# --- tegrastats meter with a fake process ---------------------------------------------------


class FakeTegrastats:
    """Prints ``lines`` in a loop, one every ``period_s``, until terminated, like tegrastats."""

    def __init__(self, lines, period_s=0.01, exit_after=None):
        self.lines = lines
        self.period_s = period_s
        self.exit_after = exit_after
        self.command = None
        self._stopped = threading.Event()
        self.stdout = self._produce()

    def __call__(self, command):
        self.command = command
        return self

    def _produce(self):
        i = 0
        while not self._stopped.is_set():
            if self.exit_after is not None and i >= self.exit_after:
                self._stopped.set()
                return
            yield self.lines[i % len(self.lines)] + "\n"
            i += 1
            self._stopped.wait(self.period_s)

    def poll(self):
        return 0 if self._stopped.is_set() else None

    def terminate(self):
        self._stopped.set()

    kill = terminate

    def wait(self, timeout=None):
        return 0


def test_tegrastats_meter_uses_the_board_input_rail():
    fake = FakeTegrastats(recorded("orin_nano")[:1])
    meter = TegrastatsPowerMeter(interval_ms=10, executable="/usr/bin/tegrastats", launch=fake)
    reading = meter.measure(lambda: time.sleep(0.2))
    assert fake.command == ["/usr/bin/tegrastats", "--interval", "10"]
    assert reading.source == "tegrastats:VDD_IN"
    assert reading.average_w == pytest.approx(4.385)
    assert reading.samples >= 5
    assert reading.energy_j == pytest.approx(4.385 * reading.seconds)
    assert fake.poll() is not None  # the process was stopped


def test_tegrastats_meter_averages_alternating_readings():
    # Alternating a, b, a, b... at even spacing: every trapezoid segment is (a + b) / 2.
    fake = FakeTegrastats(recorded("orin_nano"))
    reading = TegrastatsPowerMeter(interval_ms=10, launch=fake).measure(lambda: time.sleep(0.25))
    assert reading.average_w == pytest.approx((4385 + 11872) / 2 / 1000, rel=0.02)


def test_tegrastats_meter_sums_rails_without_a_total():
    fake = FakeTegrastats(recorded("agx_xavier")[1:])
    reading = TegrastatsPowerMeter(interval_ms=10, launch=fake).measure(lambda: time.sleep(0.1))
    assert reading.source == "tegrastats:sum(GPU+CPU+SOC+CV+VDDRQ+SYS5V)"
    assert reading.average_w == pytest.approx((11342 + 1712 + 2796 + 1401 + 2944) / 1000)


def test_tegrastats_without_rails_says_so():
    fake = FakeTegrastats(["RAM 1200/1972MB (lfb 50x4MB) CPU [3%@1479,1%@1479] GR3D_FREQ 0%@76"], exit_after=1)
    calls = []
    with pytest.raises(VidpruneError, match="no power rails") as info:
        TegrastatsPowerMeter(interval_ms=10, launch=fake, start_timeout_s=1.0).measure(lambda: calls.append(1))
    assert "RAM 1200/1972MB" in str(info.value)  # what it printed instead
    assert calls == []


def test_tegrastats_window_too_short():
    fake = FakeTegrastats(recorded("nano"), period_s=1.0)
    with pytest.raises(VidpruneError, match="too short"):
        TegrastatsPowerMeter(interval_ms=1000, launch=fake).measure(lambda: None)


def test_tegrastats_output_in_bursts_is_refused():
    # Lines arriving much faster than the interval were buffered: their arrival times are wrong.
    fake = FakeTegrastats(recorded("orin_nano"), period_s=0.001)
    with pytest.raises(VidpruneError, match="bursts"):
        TegrastatsPowerMeter(interval_ms=50, launch=fake).measure(lambda: time.sleep(0.1))


def test_tegrastats_that_cannot_start():
    def missing(command):
        raise FileNotFoundError(2, "No such file or directory", command[0])

    with pytest.raises(VidpruneError, match="could not start"):
        TegrastatsPowerMeter(launch=missing).measure(lambda: None)


# --- choosing a source and its error messages -----------------------------------------------


@pytest.fixture
def not_jetson(monkeypatch):
    monkeypatch.setattr(devices, "is_jetson", lambda *a, **k: False)


@pytest.mark.parametrize("spec", ["cpu", "mps"])
def test_no_power_source_for_cpu_or_mps(not_jetson, spec):
    with pytest.raises(VidpruneError) as info:
        open_power_meter(torch.device(spec))
    message = str(info.value)
    assert f"--device {spec}" in message and "--power" in message


def test_cuda_without_cuda(not_jetson, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VidpruneError, match="no CUDA"):
        open_power_meter(torch.device("cuda"))


def test_cuda_without_nvml_bindings_names_the_install(not_jetson, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(VidpruneError) as info:
        open_power_meter(torch.device("cuda"))
    message = str(info.value)
    assert "pip install nvidia-ml-py" in message and "vidprune[nvml]" in message


def test_jetson_without_tegrastats(monkeypatch):
    monkeypatch.setattr(devices, "is_jetson", lambda *a, **k: True)
    monkeypatch.setattr(power.shutil, "which", lambda name: None)
    with pytest.raises(VidpruneError, match="tegrastats is not on PATH"):
        open_power_meter(torch.device("cuda"))


@pytest.mark.parametrize("spec", ["cuda", "cpu"])
def test_jetson_uses_tegrastats_for_gpu_and_cpu(monkeypatch, spec):
    monkeypatch.setattr(devices, "is_jetson", lambda *a, **k: True)
    monkeypatch.setattr(power.shutil, "which", lambda name: f"/usr/bin/{name}")
    meter = open_power_meter(torch.device(spec))
    assert isinstance(meter, TegrastatsPowerMeter)
    assert meter._command == ["/usr/bin/tegrastats", "--interval", str(power.DEFAULT_TEGRASTATS_INTERVAL_MS)]


class NVMLError(Exception):
    pass


def fake_pynvml(*, init_ok=True, energy=True, power=True):
    def unsupported(*args):
        raise NVMLError("Not Supported")

    def init():
        if not init_ok:
            raise NVMLError("Driver Not Loaded")

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlDeviceGetTotalEnergyConsumption=(lambda h: 123_456) if energy else unsupported,
        nvmlDeviceGetPowerUsage=(lambda h: 250_000) if power else unsupported,
    )


@pytest.fixture
def fake_handle(monkeypatch):
    monkeypatch.setattr(devices, "nvml_handle", lambda pynvml, device: "handle")
    monkeypatch.setattr(devices, "device_name", lambda device: "Fake GPU")


def test_nvml_prefers_the_energy_counter(fake_handle):
    meter = power._open_nvml(torch.device("cuda"), fake_pynvml(), 15)
    assert isinstance(meter, EnergyCounterMeter) and meter.source == "nvml-energy"


def test_nvml_falls_back_to_power_samples(fake_handle):
    meter = power._open_nvml(torch.device("cuda"), fake_pynvml(energy=False), 20)
    assert isinstance(meter, SampledPowerMeter) and meter.source == "nvml-power"
    assert meter.interval_s == pytest.approx(0.02)
    reading = meter.measure(lambda: time.sleep(0.1))
    assert reading.average_w == pytest.approx(250.0)


def test_nvml_without_any_reading(fake_handle):
    with pytest.raises(VidpruneError, match="neither an energy counter nor power"):
        power._open_nvml(torch.device("cuda"), fake_pynvml(energy=False, power=False), 15)


def test_nvml_that_cannot_start(fake_handle):
    with pytest.raises(VidpruneError, match="nvidia-smi"):
        power._open_nvml(torch.device("cuda"), fake_pynvml(init_ok=False), 15)


@needs_cuda
def test_real_gpu_power_during_matmuls():
    if devices.is_jetson():
        pytest.skip("Jetson: covered by the tegrastats path")
    pytest.importorskip("pynvml")
    device = torch.device("cuda")
    meter = open_power_meter(device)
    a = torch.randn(2048, 2048, device=device)

    def work():
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            a @ a
        torch.cuda.synchronize(device)

    reading = meter.measure(work)
    assert reading.source.startswith("nvml-")
    assert math.isfinite(reading.average_w) and reading.average_w > 0
    assert reading.energy_j == pytest.approx(reading.average_w * reading.seconds, rel=1e-6)
