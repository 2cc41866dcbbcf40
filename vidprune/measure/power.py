"""Power and energy over a timed window: NVML on discrete NVIDIA GPUs, tegrastats on Jetson.

Why it is built this way:

* The caller owns the window. ``PowerMeter.measure(fn)`` runs ``fn`` (the timed runs, which
  already synchronise the device) while a source is read, so the energy belongs to exactly the
  work that the latency and throughput columns describe.
* On Volta and newer GPUs NVML keeps a total-energy counter (mJ). The difference of two readings is
  the energy of the window with no sampling error, so we prefer it. Older GPUs only report power
  (mW); we then read it every ~15 ms on a background thread and integrate (trapezoid).
* On a Jetson NVML reports nothing, and tegrastats is the supported way to read the INA3221 rail
  monitors. We run it as a subprocess only for the window and parse its lines ourselves (the
  formats differ per board generation; see :func:`parse_tegrastats_line`).
* A window too short to be sampled raises VidpruneError instead of returning 0 W: a missing number
  is visible, a wrong one ends up in a table. The fix is always a longer window (more repeats).

Average power from samples is time-weighted (trapezoid over the sample times divided by their
span), and the energy is that average times the window length, so a window whose first and last
samples fall a little inside its ends is not under-counted.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch

from vidprune.errors import VidpruneError
from vidprune.measure import device as devices

# NVML power readings are refreshed by the driver every few to few tens of ms; reading faster
# only repeats values, reading much slower misses short bursts.
DEFAULT_NVML_INTERVAL_MS = 15
# tegrastats spends CPU time per line (it reads many sysfs files), which on a small Jetson would
# perturb the workload being measured; 50 ms keeps that small and still gives 20 samples a second.
DEFAULT_TEGRASTATS_INTERVAL_MS = 50
# How long to wait for tegrastats' first line before deciding that it does not work.
TEGRASTATS_START_TIMEOUT_S = 5.0

# Rails that measure the whole module's input, most specific first. VDD_IN: Xavier NX, Orin NX and
# Orin Nano, TX2, TX1. POM_5V_IN: Nano. VIN: Thor. Boards without one (AGX Xavier, AGX Orin) only
# report their module rails, which we then sum.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")


@dataclass(frozen=True)
class PowerReading:
    """Power over one measured window.

    ``samples`` is the number of power readings inside the window (for an energy counter: the two
    counter readings that bracket it). ``source`` says where the numbers came from, e.g.
    ``nvml-energy``, ``nvml-power``, ``tegrastats:VDD_IN`` or ``tegrastats:sum(GPU+CPU+SOC)``;
    NVML numbers are the GPU board only, tegrastats numbers the whole Jetson module, so rows from
    different sources must not be compared as if they were the same quantity.
    """

    average_w: float
    energy_j: float
    seconds: float
    samples: int
    source: str


class PowerMeter(Protocol):
    source: str

    def measure(self, fn: Callable[[], None]) -> PowerReading: ...


def joules_per_clip(reading: PowerReading, clips: int) -> float:
    """Energy per clip of a window in which ``clips`` clips were processed."""
    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 1:
        raise VidpruneError(
            f"clips must be a whole number >= 1 (the clips processed in the power window), got "
            f"{clips!r}. Pass batch * repeats of the timed runs."
        )
    return reading.energy_j / clips


def _too_short(seconds: float, samples: int, interval_s: float, source: str) -> VidpruneError:
    return VidpruneError(
        f"the power window was too short to measure: {seconds * 1000:.1f} ms gave {samples} "
        f"{source} sample(s) at one per {interval_s * 1000:.0f} ms, and at least 2 are needed. "
        "Measure a longer window (e.g. more --repeats, or a larger --batch)."
    )


def average_power_w(samples: Sequence[tuple[float, float]]) -> float:
    """Time-weighted mean power in W of ``(seconds, milliwatts)`` samples (trapezoid rule).

    Weighting by time rather than averaging the values keeps an irregular gap (a sampler thread
    that was delayed) from counting as one ordinary sample.
    """
    if len(samples) < 2:
        raise VidpruneError(f"need at least 2 power samples to integrate, got {len(samples)}.")
    points = sorted(samples)
    span = points[-1][0] - points[0][0]
    if span <= 0:
        raise VidpruneError("power samples all share one timestamp; the clock cannot time this window.")
    area_mw_s = sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(points, points[1:]))
    return area_mw_s / span / 1000.0


def _reading(samples: Sequence[tuple[float, float]], seconds: float, source: str) -> PowerReading:
    watts = average_power_w(samples)
    if not math.isfinite(watts) or watts < 0:
        raise VidpruneError(f"{source} gave an impossible average power of {watts} W.")
    return PowerReading(
        average_w=watts, energy_j=watts * seconds, seconds=seconds, samples=len(samples), source=source
    )


class EnergyCounterMeter:
    """Energy from a monotonic millijoule counter read before and after the window."""

    def __init__(
        self,
        read_energy_mj: Callable[[], float],
        source: str = "nvml-energy",
        clock: Callable[[], float] = time.perf_counter,
    ):
        self._read = read_energy_mj
        self.source = source
        self._clock = clock

    def measure(self, fn: Callable[[], None]) -> PowerReading:
        start_mj = float(self._read())
        t0 = self._clock()
        fn()
        t1 = self._clock()
        end_mj = float(self._read())
        seconds = t1 - t0
        energy_j = (end_mj - start_mj) / 1000.0
        # The counter advances in steps; a window inside one step reads 0 J, which must not be
        # reported as a GPU that drew no power.
        if energy_j <= 0 or seconds <= 0:
            raise VidpruneError(
                f"the power window was too short to measure: the {self.source} counter did not advance "
                f"over {seconds * 1000:.1f} ms. Measure a longer window (e.g. more --repeats)."
            )
        return PowerReading(
            average_w=energy_j / seconds, energy_j=energy_j, seconds=seconds, samples=2, source=self.source
        )


class SampledPowerMeter:
    """Reads a power source (mW) every ``interval_s`` on a background thread during the window."""

    def __init__(
        self,
        read_mw: Callable[[], float],
        interval_s: float = DEFAULT_NVML_INTERVAL_MS / 1000.0,
        source: str = "nvml-power",
        clock: Callable[[], float] = time.perf_counter,
    ):
        if not interval_s > 0:
            raise VidpruneError(f"the power sampling interval must be > 0 s, got {interval_s}.")
        self._read = read_mw
        self.interval_s = interval_s
        self.source = source
        self._clock = clock

    def measure(self, fn: Callable[[], None]) -> PowerReading:
        samples: list[tuple[float, float]] = []
        failure: list[BaseException] = []
        first = threading.Event()
        stop = threading.Event()

        def sample_until_stopped() -> None:
            try:
                while True:
                    samples.append((self._clock(), float(self._read())))
                    first.set()
                    if stop.wait(self.interval_s):
                        return
            except BaseException as exc:  # reported on the caller's thread below
                failure.append(exc)
            finally:
                first.set()

        thread = threading.Thread(target=sample_until_stopped, name="vidprune-power", daemon=True)
        thread.start()
        first.wait()
        if failure:  # the source cannot be read at all: say so before running the workload
            stop.set()
            thread.join()
            raise VidpruneError(f"reading {self.source} failed: {failure[0]}") from failure[0]
        # The first reading (taken just before) stands for the window's start; the window itself is
        # timed from here so the wake-up delay of this thread is not billed as energy.
        t0 = self._clock()
        try:
            fn()
        finally:
            t1 = self._clock()
            stop.set()
            thread.join()
        if failure:
            raise VidpruneError(f"reading {self.source} failed: {failure[0]}") from failure[0]
        inside = [(t, mw) for t, mw in samples if t <= t1]
        seconds = t1 - t0
        if len(inside) < 2:
            raise _too_short(seconds, len(inside), self.interval_s, self.source)
        return _reading(inside, seconds, self.source)


# --- tegrastats ------------------------------------------------------------------------------

# A rail is a NAME followed by "current/average", in mW with the unit (L4T 32.5+ on Xavier NX,
# all Orin) or as bare numbers (Nano, TX2, AGX Xavier on older L4T). The lookahead rejects the
# "RAM 2448/7772MB" and "SWAP 0/3886MB" memory fields, which share the shape but not the unit.
_RAIL = re.compile(
    r"(?<!\S)([A-Z][A-Z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?(?=\s|$)"
)


def parse_tegrastats_line(line: str) -> dict[str, tuple[float, float]]:
    """Every power rail of one tegrastats line as ``{rail: (current_mW, average_mW)}``.

    tegrastats' average is over all its samples since it started; the window average is computed
    from the current values instead, since tegrastats runs a little longer than the window.
    """
    return {name: (float(now), float(avg)) for name, now, avg in _RAIL.findall(line)}


def board_rails(rails: dict[str, tuple[float, float]]) -> tuple[str, ...]:
    """The rails whose sum is the board's input power: a total rail, else every rail."""
    for name in TOTAL_RAILS:
        if name in rails:
            return (name,)
    return tuple(rails)


def rails_label(names: Iterable[str]) -> str:
    names = tuple(names)
    return names[0] if len(names) == 1 else f"sum({'+'.join(names)})"


class TegrastatsPowerMeter:
    """Runs ``tegrastats --interval <ms>`` for the window and integrates the board input rail.

    ``launch`` starts the process from an argument list and returns an object with ``stdout``
    (an iterable of text lines), ``terminate``, ``kill``, ``wait(timeout)`` and ``poll``, i.e. a
    ``subprocess.Popen``; tests pass a fake.
    """

    def __init__(
        self,
        interval_ms: int = DEFAULT_TEGRASTATS_INTERVAL_MS,
        executable: str = "tegrastats",
        launch: Callable[[list[str]], object] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        start_timeout_s: float = TEGRASTATS_START_TIMEOUT_S,
    ):
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms < 1:
            raise VidpruneError(f"the tegrastats interval must be a whole number of ms >= 1, got {interval_ms!r}.")
        self.interval_ms = interval_ms
        self._command = [executable, "--interval", str(interval_ms)]
        self._launch = launch or _launch_process
        self._clock = clock
        self._start_timeout_s = start_timeout_s
        self.source = "tegrastats"

    def measure(self, fn: Callable[[], None]) -> PowerReading:
        lines: list[tuple[float, dict[str, tuple[float, float]]]] = []
        other_output: list[str] = []
        first = threading.Event()
        try:
            proc = self._launch(list(self._command))
        except OSError as exc:
            raise VidpruneError(f"could not start {' '.join(self._command)}: {exc}.") from exc

        def read_lines() -> None:
            try:
                for raw in proc.stdout:
                    arrived = self._clock()
                    rails = parse_tegrastats_line(raw)
                    if rails:
                        lines.append((arrived, rails))
                        first.set()
                    elif raw.strip() and len(other_output) < 5:
                        other_output.append(raw.strip())
            except (OSError, ValueError):
                pass  # the pipe closes when we stop the process
            finally:
                first.set()

        reader = threading.Thread(target=read_lines, name="vidprune-tegrastats", daemon=True)
        reader.start()
        try:
            # Waiting for the first line keeps tegrastats' start-up (which can take longer than the
            # window) out of the window; it is also where a board without rail monitors shows.
            first.wait(self._start_timeout_s)
            if not lines:
                said = f" It printed: {' | '.join(other_output)}" if other_output else ""
                raise VidpruneError(
                    f"{' '.join(self._command)} printed no power rails within {self._start_timeout_s:.0f} s, "
                    "so board power cannot be measured here (boards without INA3221 rail monitors, "
                    f"e.g. the Jetson Nano 2GB, have none).{said} Run without --power."
                )
            names = board_rails(lines[0][1])
            t0 = self._clock()
            fn()
            t1 = self._clock()
        finally:
            _stop_process(proc)
            reader.join(timeout=2.0)
        source = f"tegrastats:{rails_label(names)}"
        _check_not_buffered([t for t, _ in lines], self.interval_ms / 1000.0)
        inside = [
            (t, sum(rails[name][0] for name in names))
            for t, rails in list(lines)
            if t0 <= t <= t1 and all(name in rails for name in names)
        ]
        seconds = t1 - t0
        if len(inside) < 2:
            raise _too_short(seconds, len(inside), self.interval_ms / 1000.0, source)
        return _reading(inside, seconds, source)


def _check_not_buffered(arrivals: Sequence[float], interval_s: float) -> None:
    # Samples are timed by when their line arrives. Lines that arrive in bursts (stdout buffered
    # somewhere) carry the wrong times, and integrating them would give a plausible wrong number.
    gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
    if len(gaps) >= 2 and gaps[len(gaps) // 2] < interval_s / 4:
        raise VidpruneError(
            f"tegrastats lines arrived in bursts (median gap {gaps[len(gaps) // 2] * 1000:.1f} ms for a "
            f"{interval_s * 1000:.0f} ms interval), so their times are not the sampling times and power "
            "cannot be integrated. Its output is being buffered; run without --power."
        )


def _launch_process(command: list[str]) -> subprocess.Popen:
    # Line-buffered text on our side; stderr joins stdout so a tegrastats error message reaches
    # the VidpruneError above instead of the terminal.
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )


def _stop_process(proc) -> None:
    try:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=2.0)
    except OSError:
        pass


# --- choosing a source -----------------------------------------------------------------------


def open_power_meter(device: torch.device, *, interval_ms: int | None = None) -> PowerMeter:
    """The power source for ``device``, or a VidpruneError that names why there is none.

    Jetson (any device, CUDA or CPU): tegrastats, the module's input power. Other CUDA GPUs: NVML's
    energy counter where the GPU has one, else NVML power samples; both are the GPU board only.
    ``interval_ms`` overrides the sampling interval (NVML power samples and tegrastats).
    """
    device = torch.device(device)
    if devices.is_jetson() and device.type in ("cuda", "cpu"):
        return _open_tegrastats(interval_ms or DEFAULT_TEGRASTATS_INTERVAL_MS)
    if device.type != "cuda":
        raise VidpruneError(
            f"no power source for --device {device}: vidprune reads power through NVML on NVIDIA "
            "GPUs and tegrastats on Jetson boards, and has no reader for CPU or Apple MPS power. "
            "Run without --power, or measure on --device cuda."
        )
    if not torch.cuda.is_available():
        raise VidpruneError(
            f"--device {device} was asked for with --power but this torch build/machine has no CUDA. "
            "Use a CUDA machine, or run without --power."
        )
    return _open_nvml(device, devices.import_pynvml(), interval_ms or DEFAULT_NVML_INTERVAL_MS)


def _open_tegrastats(interval_ms: int) -> TegrastatsPowerMeter:
    executable = shutil.which("tegrastats")
    if executable is None:
        raise VidpruneError(
            "this is a Jetson, where power is read with tegrastats, but tegrastats is not on PATH. "
            "It ships with JetPack (package nvidia-l4t-tools, usually /usr/bin/tegrastats); install "
            "it or add its folder to PATH, or run without --power."
        )
    return TegrastatsPowerMeter(interval_ms=interval_ms, executable=executable)


def _open_nvml(device: torch.device, pynvml, interval_ms: int) -> PowerMeter:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise VidpruneError(
            f"NVML could not start ({exc}), so GPU power cannot be read. NVML comes with the NVIDIA "
            "driver (libnvidia-ml); check that nvidia-smi works, or run without --power."
        ) from exc
    try:
        handle = devices.nvml_handle(pynvml, device)
    except pynvml.NVMLError as exc:
        raise VidpruneError(
            f"NVML has no handle for {device} ({exc}); power cannot be read for it. Run without --power."
        ) from exc
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return EnergyCounterMeter(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except pynvml.NVMLError:
        pass  # pre-Volta, or a virtualised GPU: fall back to sampling power
    try:
        pynvml.nvmlDeviceGetPowerUsage(handle)
    except pynvml.NVMLError as exc:
        raise VidpruneError(
            f"{devices.device_name(device)} reports neither an energy counter nor power draw through "
            f"NVML ({exc}); this happens on some virtualised and MIG GPUs. Run without --power."
        ) from exc
    return SampledPowerMeter(
        lambda: pynvml.nvmlDeviceGetPowerUsage(handle), interval_s=interval_ms / 1000.0, source="nvml-power"
    )


__all__ = [
    "PowerReading",
    "PowerMeter",
    "EnergyCounterMeter",
    "SampledPowerMeter",
    "TegrastatsPowerMeter",
    "average_power_w",
    "parse_tegrastats_line",
    "board_rails",
    "rails_label",
    "open_power_meter",
    "joules_per_clip",
]
