"""Measure one sweep point: build its model, walk the metric table, and return its row.

A failure inside a point's measurement (an exception, out-of-memory, a non-finite output) becomes the
row's `status` and `error`; `failure_row` is the row of a point whose process or task died without one.
Faults can be injected for the fault-tolerance tests (`VIDPRUNE_INJECT_FAULT`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

import vidprune
from vidprune import metrics as metric_table
from vidprune import models
from vidprune import notes as note_kinds
from vidprune.errors import VidpruneError
from vidprune.measure import device as devices
from vidprune.measure.flops import example_input
from vidprune.measure.throughput import is_out_of_memory
from vidprune.measure.timing import measure_latency
from vidprune.registry import REFERENCE_METHOD
from vidprune.results import FLOPS_CONVENTION
from vidprune.spec import Point, SweepSpec, config_hash

DEFAULT_REPEATS = {"cpu": 5, "cuda": 30}
DEFAULT_WARMUP = {"cpu": 2, "cuda": 10}
# Without --repeats/--warmup, fast forwards run more often: at least this long timed / warming up.
MIN_TIMED_S = 1.0
MIN_WARMUP_S = 0.3
MAX_AUTO_RUNS = 500
# Generated clips for label-free fidelity when no dataset is given: enough to see a method move the model,
# few enough that the default CPU sweep stays quick.
DEFAULT_FIDELITY_CLIPS = {"cpu": 4, "cuda": 32}
# torch.compile backend for --compile (inductor unless set; tests use "eager" to skip code generation).
COMPILE_BACKEND_ENV = "VIDPRUNE_COMPILE_BACKEND"


# Fault injection for the fault-tolerance tests, e.g. VIDPRUNE_INJECT_FAULT="sigkill@0.7;oom@none":
# kind[=argument]@selector, where the selector is a keep value, `none` (the reference point) or `*`.
FAULT_ENV = "VIDPRUNE_INJECT_FAULT"
FAULT_KINDS = ("raise", "oom", "nonfinite", "sigkill", "sleep")


def injected_fault(point: Point) -> Optional[tuple[str, str]]:
    for entry in [e.strip() for e in os.environ.get(FAULT_ENV, "").split(";") if e.strip()]:
        action, _, selector = entry.partition("@")
        kind, _, argument = action.partition("=")
        if kind not in FAULT_KINDS:
            raise VidpruneError(f"{FAULT_ENV}: unknown fault '{kind}' in '{entry}'; known: {', '.join(FAULT_KINDS)}.")
        selector = selector.strip() or "*"
        if selector == "*" or (selector == REFERENCE_METHOD and point.method == REFERENCE_METHOD):
            return kind, argument
        if point.method != REFERENCE_METHOD and point.keep is not None:
            try:
                if math.isclose(float(selector), float(point.keep)):
                    return kind, argument
            except ValueError:
                pass
    return None


def apply_injected_fault(point: Point, model: torch.nn.Module) -> None:
    fault = injected_fault(point)
    if fault is None:
        return
    kind, argument = fault
    if kind == "raise":
        raise RuntimeError(f"injected failure at {point.label}")
    if kind == "oom":
        raise RuntimeError(f"CUDA out of memory. Tried to allocate 1.00 GiB (injected at {point.label})")
    if kind == "sigkill":  # what a crash in native code looks like from outside: no exception, no cleanup
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "sleep":
        time.sleep(float(argument or 60))
    if kind == "nonfinite":  # a real NaN through the real forward, so the check itself is exercised
        with torch.no_grad():
            next(p for p in model.parameters() if p.is_floating_point()).fill_(float("nan"))


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(vidprune.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def point_row(spec: SweepSpec, point: Point, shared: dict, status: str = "ok", error: str = "") -> dict:
    """What every row of a point says before anything is measured: the shared columns, the point, its status."""
    return dict(shared, method=point.method, keep=1.0 if point.keep is None else point.keep, timestamp=now(),
                status=status, error=error, notes="", config_hash=config_hash(spec, point))


def failure_row(spec: SweepSpec, point: Point, shared: dict, error: str, status: str = "failed") -> dict:
    """The row for a point whose measurement produced no row of its own (its process or task died)."""
    return point_row(spec, point, shared, status=status, error=error)


class Runner:
    """Measures points of one spec on one device; holds what every row shares."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.device = devices.resolve_device(spec.device)
        self.dtype = devices.resolve_dtype(spec.dtype)
        kind = self.device.type if self.device.type in DEFAULT_REPEATS else "cuda"
        self.repeats = spec.repeats if spec.repeats is not None else DEFAULT_REPEATS[kind]
        self.warmup = spec.warmup if spec.warmup is not None else DEFAULT_WARMUP[kind]
        self.fidelity_clips = spec.fidelity_clips if spec.fidelity_clips is not None else DEFAULT_FIDELITY_CLIPS[kind]
        if self.repeats < 1 or self.warmup < 0:
            raise VidpruneError("--repeats must be >= 1 and --warmup >= 0.")
        if spec.batch < 1:
            raise VidpruneError(f"--batch must be >= 1, got {spec.batch}.")
        if self.fidelity_clips < 1:
            raise VidpruneError(f"--fidelity-clips must be >= 1, got {self.fidelity_clips}.")
        unknown = metric_table.unknown(spec.metrics)
        if unknown:
            raise VidpruneError(
                f"unknown metric(s) {', '.join(unknown)}. Choose from {', '.join(metric_table.selectable())}."
            )
        if spec.autocast and self.dtype == torch.float32:
            raise VidpruneError("--autocast runs the forward in half precision: pass --dtype fp16 or bf16 with it.")
        timed = metric_table.timed_metrics()
        if (spec.power or spec.peak) and not set(spec.metrics) & set(timed):
            raise VidpruneError(f"--power and --peak measure during the timed runs: keep {' or '.join(timed)} "
                                "in --metrics.")
        self.power_meter = None
        if spec.power:
            from vidprune.measure.power import open_power_meter

            self.power_meter = open_power_meter(self.device)  # no power source here: a clear error now
        self._peak = None
        self._counting_backbone = None
        self.environment = devices.environment(self.device)
        self.shared = {
            "backbone": spec.backbone, "batch": spec.batch, "device": str(self.device),
            "device_name": self.environment.get("device_name"), "dtype": devices.dtype_name(self.dtype),
            "autocast": bool(spec.autocast), "attention": spec.attention, "compile": bool(spec.compile),
            "flops_convention": FLOPS_CONVENTION, "seed": spec.seed,
            "vidprune_version": vidprune.__version__, "torch_version": torch.__version__,
            "git_sha": git_sha(), "source": "measured",
            # what else can move a number: driver, CUDA/cuDNN, clocks, threads, Jetson power mode, ...
            **{f"env_{k}": v for k, v in self.environment.items()
               if k not in ("device", "device_name", "torch_version") and isinstance(v, (str, int, float, bool))},
        }

    def build(self, point: Point) -> torch.nn.Module:
        return models.create_model(self.spec.backbone, point.method, point.keep, frames=self.spec.frames,
                                   size=self.spec.size, classes=self.spec.classes,
                                   attention=self.spec.attention, options=point.options, seed=self.spec.seed)

    def _model(self, point: Point) -> torch.nn.Module:
        """The point's model. A sweep that only counts (flops, params) never runs or changes the weights,
        so all its points share one backbone and swap methods: initialising ViT-B's weights would otherwise
        be most of a flops-only sweep's time."""
        if metric_table.needs_forward(self.spec) or injected_fault(point):
            return self.build(point)
        if self._counting_backbone is None:
            self._counting_backbone = self.build(Point(REFERENCE_METHOD, None, {}))
        method = models.make_method(self._counting_backbone.info, point.method, point.keep, point.options,
                                    seed=self.spec.seed)
        try:
            self._counting_backbone.set_method(method)
        except ValueError:  # a backbone an earlier method reshaped (TimeSformer's joint blocks): start afresh
            self._counting_backbone = self.build(point)
        return self._counting_backbone

    def precision(self):
        """The context every forward runs in: autocast when asked for, else nothing (weights are cast)."""
        if self.spec.autocast:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def measure(self, point: Point) -> dict:
        """One row; never raises for a failure inside the measurement (it is recorded instead). Walks the
        metric table (vidprune.metrics) stage by stage: the model as built, then on the device (checked
        finite once when a metric runs forwards), then compiled for the timed runs with --compile. The
        `fidelity` metric compares against the unpruned model on generated clips; a dataset pass
        (`sweep --data`, `eval`) drops that metric and adds its own columns to the row."""
        row = point_row(self.spec, point, self.shared)
        notes: list[str] = []
        try:
            model = self._model(point)
            apply_injected_fault(point, model)
            method = model.method
            info = model.info
            # What a method wants every row to say (e.g. that its learned parts are untrained).
            notes.extend(method.measurement_notes)
            row.update(knob=method.knob.name if method.knob else "", frames=info.frames, size=info.size,
                       options=json.dumps(method.describe(), sort_keys=True))
            context = metric_table.PointContext(self, point, model, row, notes)
            wanted = metric_table.wanted(self.spec)
            forwards = any(m.forward for m in wanted)
            stage = metric_table.Stage.BUILT
            for metric in wanted:
                if metric.stage > stage:
                    self._advance(context, stage, metric.stage, forwards)
                    stage = metric.stage
                if metric.measure is not None:
                    metric.measure(context)
        except VidpruneError as exc:
            row.update(status="failed", error=str(exc))
        except FloatingPointError as exc:
            row.update(status="nonfinite", error=str(exc))
        except Exception as exc:  # any failure of one point is recorded, never fatal to the sweep
            row.update(status="oom" if is_out_of_memory(exc) else "failed",
                       error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        row["notes"] = note_kinds.join(notes)
        return row

    def _advance(self, context: metric_table.PointContext, current, target, forwards: bool) -> None:
        """Move the point's model from stage `current` to `target`."""
        Stage = metric_table.Stage
        if current < Stage.ON_DEVICE <= target and forwards:
            context.model = context.model.to(device=self.device,
                                             dtype=torch.float32 if self.spec.autocast else self.dtype)
            self._check_finite(context.model)
        if current < Stage.TIMED <= target and self.spec.compile:
            context.model = self._compile(context.model)

    def peak(self):
        """The device's GEMM throughput in this dtype, measured once per runner."""
        if self._peak is None:
            from vidprune.measure.peak import peak_matmul

            self._peak = peak_matmul(self.device, self.dtype)
        return self._peak

    def _compile(self, model: torch.nn.Module) -> torch.nn.Module:
        # dynamic=False: one graph per token-count shape, each compiled during the warm-up runs, so the
        # timed runs never include compilation.
        backend = os.environ.get(COMPILE_BACKEND_ENV, "inductor")
        # the compiled wrapper forwards attribute reads (info, make_input, ...) to the model
        return torch.compile(model, dynamic=False, backend=backend)

    def input(self, model: torch.nn.Module, batch: int) -> torch.Tensor:
        """The point's deterministic input at `batch`, on the device, in the dtype the forward takes."""
        dtype = torch.float32 if self.spec.autocast else self.dtype
        return example_input(model, batch, device=self.device, dtype=dtype, seed=self.spec.seed)

    def _check_finite(self, model: torch.nn.Module) -> None:
        with torch.inference_mode(), self.precision():
            out = model(self.input(model, 1))
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"the model produced non-finite outputs in {devices.dtype_name(self.dtype)}")

    def time_forward(self, model: torch.nn.Module, batch: int):
        """Timed forwards at `batch` (LatencyResult), after a warm-up."""
        video = self.input(model, batch)

        def forward():
            with self.precision():
                return model(video)

        warmup, repeats = self.warmup, self.repeats
        if self.spec.repeats is None or self.spec.warmup is None:
            # Defaults adapt to the model: a 5 ms forward timed 5 times after 2 warm-ups is noise (and the
            # first point of a process still pays for thread-pool and allocator start-up), so fast models
            # get at least MIN_TIMED_S of timed runs after MIN_WARMUP_S of warm-up. Explicit flags win.
            with torch.inference_mode():
                start = time.perf_counter()
                forward()
                devices.synchronize(self.device)
                once = max(time.perf_counter() - start, 1e-6)
            if self.spec.warmup is None:
                warmup = max(warmup, min(MAX_AUTO_RUNS, math.ceil(MIN_WARMUP_S / once)))
            if self.spec.repeats is None:
                repeats = max(repeats, min(MAX_AUTO_RUNS, math.ceil(MIN_TIMED_S / once)))
        return measure_latency(forward, self.device, batch, warmup, repeats)
