"""Sweeps: expand a spec into points, measure each point in isolation, and persist rows as they finish.

The unpruned backbone is always the first point, so every table carries its own reference row. A point
that fails becomes a row with `status` and `error` filled in; the sweep goes on and the table on disk
is rewritten atomically after every point, so nothing finished is ever lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch

import vidprune
from vidprune import registry
from vidprune import models
from vidprune.errors import VidpruneError
from vidprune.measure import device as devices
from vidprune.measure.flops import count_flops, example_input
from vidprune.measure.memory import measure_peak_memory
from vidprune.measure.throughput import is_out_of_memory, run_with_batch_backoff
from vidprune.measure.timing import measure_latency
from vidprune.results import FLOPS_CONVENTION

# `flops` is the primary count plus thop, both on shape-only (meta) tensors where the forward allows it:
# seconds even for ViT-L. `fvcore` adds fvcore's cross-check, which traces one real forward pass.
ALL_METRICS = ("flops", "fvcore", "params", "latency", "memory", "throughput", "fidelity")
# Metrics that need the model to run on real inputs on the device (the rest are counted or read).
FORWARD_METRICS = {"latency", "memory", "throughput", "fidelity"}
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
# A power window shorter than this averages too few NVML/tegrastats samples to mean anything.
MIN_POWER_WINDOW_S = 2.0


@dataclass
class SweepSpec:
    method: str
    keeps: list[float] = field(default_factory=list)
    backbone: Optional[str] = None  # None: the method's `default_backbone`
    frames: Optional[int] = None
    size: Optional[int] = None
    classes: int = 400
    batch: int = 1
    device: str = "auto"
    dtype: str = "fp32"
    attention: str = "sdpa"
    metrics: tuple[str, ...] = ALL_METRICS
    repeats: Optional[int] = None
    warmup: Optional[int] = None
    seed: int = 0
    autocast: bool = False  # keep fp32 weights and run the forward under torch.autocast(dtype)
    compile: bool = False  # torch.compile the model before timing (warm-up compiles each shape)
    power: bool = False  # sample board/GPU power during a timed window (NVML or tegrastats)
    peak: bool = False  # report achieved FLOP/s as a fraction of a GEMM microbenchmark's
    fidelity_clips: Optional[int] = None
    options: dict = field(default_factory=dict)  # option name -> list of raw values (a grid)
    references: list[dict] = field(default_factory=list)  # labelled paper points from a recipe
    recipe: Optional[str] = None

    def __post_init__(self):
        if self.backbone is None:
            self.backbone = getattr(registry.get_method(self.method), "default_backbone", "vit-b")


@dataclass
class Point:
    method: str
    keep: Optional[float]
    options: dict

    @property
    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.options.items())
        return f"{self.method}" + ("" if self.keep is None else f" keep={self.keep:g}") + extra


# Fields of a spec that travel to a worker process (`--isolate`, Ray, Slurm); references stay with the driver.
_SPEC_WIRE_FIELDS = ("method", "keeps", "backbone", "frames", "size", "classes", "batch", "device", "dtype",
                     "attention", "metrics", "repeats", "warmup", "seed", "options", "autocast", "compile", "power",
                     "peak", "fidelity_clips")


def spec_to_dict(spec: SweepSpec) -> dict:
    data = asdict(spec)
    return {k: (list(data[k]) if k == "metrics" else data[k]) for k in _SPEC_WIRE_FIELDS}


def spec_from_dict(data: dict) -> SweepSpec:
    data = dict(data)
    if "metrics" in data:
        data["metrics"] = tuple(data["metrics"])
    return SweepSpec(**data)


def config_payload(spec: SweepSpec, point: Point) -> dict:
    """Everything that defines a measured point, with device-independent defaults filled in, so that
    `--keep 0.7 --set w_kf=4` and `--keep 0.70 --set w_kf=4.0` are the same point.

    The device, repeats and warm-up enter as requested (`auto` stays `auto`): a driver that hands points
    to Ray or Slurm cannot know where they will land, and the row's `device` column says where they did.
    """
    try:
        method_cls = registry.get_method(point.method)
        options = registry.parse_options(method_cls, point.options)
    except VidpruneError:
        options = dict(point.options)
    try:
        defaults = registry.get_backbone(spec.backbone).defaults
    except VidpruneError:
        defaults = {}
    try:
        dtype = devices.dtype_name(devices.resolve_dtype(spec.dtype))
    except VidpruneError:
        dtype = str(spec.dtype)
    return {
        "method": point.method, "backbone": spec.backbone,
        "keep": None if point.keep is None else float(point.keep), "options": options,
        "frames": spec.frames if spec.frames is not None else defaults.get("frames"),
        "size": spec.size if spec.size is not None else defaults.get("size"),
        "classes": spec.classes, "batch": spec.batch, "device": str(spec.device).strip().lower(), "dtype": dtype,
        "attention": spec.attention, "metrics": sorted(set(spec.metrics)), "seed": spec.seed,
        "repeats": spec.repeats, "warmup": spec.warmup,
        # only when set, so the hashes of tables written before these options existed stay valid
        **{k: v for k, v in (("autocast", spec.autocast), ("compile", spec.compile), ("power", spec.power),
                             ("peak", spec.peak), ("fidelity_clips", spec.fidelity_clips)) if v},
    }


def stable_hash(payload) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_hash(spec: SweepSpec, point: Point) -> str:
    """The identity of a point across runs: `--resume` skips a point whose hash already has an `ok` row."""
    return stable_hash(config_payload(spec, point))


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
        if selector == "*" or (selector == "none" and point.method == "none"):
            return kind, argument
        if point.method != "none" and point.keep is not None:
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


def failure_row(spec: SweepSpec, point: Point, shared: dict, error: str, status: str = "failed") -> dict:
    """The row for a point whose measurement produced no row of its own (its process or task died)."""
    return dict(shared, method=point.method, keep=1.0 if point.keep is None else point.keep, timestamp=now(),
                status=status, error=error, notes="", config_hash=config_hash(spec, point))


def parse_keeps(text: str) -> list[float]:
    """'0.6,0.7,0.8' or a range 'start:stop:step' (stop included)."""
    values: list[float] = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        if ":" in part:
            pieces = part.split(":")
            if len(pieces) != 3:
                raise VidpruneError(f"--keep range '{part}' must be start:stop:step, e.g. 0.5:0.9:0.1.")
            try:
                start, stop, step = (float(p) for p in pieces)
            except ValueError:
                raise VidpruneError(f"--keep range '{part}' must contain numbers, e.g. 0.5:0.9:0.1.") from None
            if step <= 0 or stop < start:
                raise VidpruneError(f"--keep range '{part}' needs step > 0 and stop >= start, e.g. 0.5:0.9:0.1.")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values.extend(round(start + i * step, 10) for i in range(count))
        else:
            try:
                values.append(float(part))
            except ValueError:
                raise VidpruneError(f"--keep value '{part}' is not a number. Use e.g. --keep 0.6,0.7,0.8.") from None
    if not values:
        raise VidpruneError("--keep is empty. Use e.g. --keep 0.6,0.7,0.8 or --keep 0.5:0.9:0.1.")
    return list(dict.fromkeys(values))


def parse_set(items: list[str], method_cls: type) -> dict:
    """`--set name=a,b` items into {name: [values]}; non-grid options keep commas in one value."""
    grid_of = {o.name: o.grid for o in method_cls.options}
    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise VidpruneError(f"--set '{item}' must look like name=value, e.g. --set w_kf=2,4.")
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in grid_of:
            known = ", ".join(grid_of) or "none"
            raise VidpruneError(f"method '{method_cls.name}' has no option '{name}' (its options: {known}).")
        result[name] = [v.strip() for v in value.split(",")] if grid_of[name] else [value.strip()]
    return result


def expand_points(spec: SweepSpec) -> list[Point]:
    """The reference point first, then one point per (keep, option combination); all validated up front."""
    method_cls = registry.get_method(spec.method)
    points = [Point("none", None, {})]
    if spec.method == "none":
        return points
    names = list(spec.options)
    combos = list(itertools.product(*(spec.options[n] for n in names))) or [()]
    keeps = spec.keeps or ([method_cls.knob.default] if method_cls.knob else [None])
    for keep in keeps:
        if method_cls.knob is not None:
            keep = method_cls.knob.validate(keep)
        for combo in combos:
            options = dict(zip(names, combo))
            registry.parse_options(method_cls, options)
            points.append(Point(spec.method, keep, options))
    return points


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(vidprune.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        unknown = set(spec.metrics) - set(ALL_METRICS)
        if unknown:
            raise VidpruneError(
                f"unknown metric(s) {', '.join(sorted(unknown))}. Choose from {', '.join(ALL_METRICS)}."
            )
        if spec.autocast and self.dtype == torch.float32:
            raise VidpruneError("--autocast runs the forward in half precision: pass --dtype fp16 or bf16 with it.")
        timed = bool(set(spec.metrics) & {"latency", "throughput"})
        if (spec.power or spec.peak) and not timed:
            raise VidpruneError("--power and --peak measure during the timed runs: keep latency or throughput "
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
        if set(self.spec.metrics) & FORWARD_METRICS or injected_fault(point):
            return self.build(point)
        if self._counting_backbone is None:
            self._counting_backbone = self.build(Point("none", None, {}))
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
        """One row; never raises for a failure inside the measurement (it is recorded instead). The
        `fidelity` metric compares against the unpruned model on generated clips; a dataset pass
        (`sweep --data`, `eval`) drops that metric and adds its own columns to the row."""
        row = dict(self.shared, method=point.method, keep=1.0 if point.keep is None else point.keep,
                   timestamp=now(), status="ok", error="", notes="", config_hash=config_hash(self.spec, point))
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
            metrics = set(self.spec.metrics)
            if "params" in metrics:
                row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            if metrics & {"flops", "fvcore"}:
                counters = ("torch", "thop") + (("fvcore",) if "fvcore" in metrics else ())
                report = count_flops(model, counters=counters, seed=self.spec.seed)
                row.update(gflops=report.gflops, gflops_fvcore=report.gflops_fvcore,
                           gflops_thop=report.gflops_thop, gflops_counter=report.counter,
                           counters_agree=report.counters_agree)
                notes.extend(report.notes)
            if metrics & FORWARD_METRICS:
                model = model.to(device=self.device, dtype=torch.float32 if self.spec.autocast else self.dtype)
                self._check_finite(model)
            row["tokens_per_block"] = ",".join(map(str, model.last_trace))
            row["tokens_final"] = model.last_trace[-1] if model.last_trace else None
            # Input-dependent methods (frames kept per clip, ...) report their own statistics.
            row.update(getattr(model, "last_stats", None) or {})
            if "fidelity" in metrics:
                row.update(self._fidelity(model, point), fidelity_source="generated clips")
            if self.spec.compile:
                model = self._compile(model)
            if metrics & {"latency", "throughput"}:
                used, latency, backoff = run_with_batch_backoff(lambda b: self._time(model, b), self.spec.batch)
                notes.extend(backoff)
                row.update(throughput_batch=used, latency_ms=latency.median_ms, latency_iqr_ms=latency.iqr_ms,
                           latency_mean_ms=latency.mean_ms, noisy=latency.noisy, repeats=latency.repeats,
                           warmup=latency.warmup)
                if "throughput" in metrics or self.spec.peak:
                    row["throughput"] = latency.throughput
                if "latency" not in metrics:
                    for key in ("latency_ms", "latency_iqr_ms", "latency_mean_ms", "noisy"):
                        row.pop(key)
                if self.power_meter is not None:
                    row.update(self._power(model, used, latency.median_ms))
                if self.spec.peak and row.get("gflops") is not None:
                    from vidprune.measure.peak import fraction_of_peak

                    row["peak_fraction"] = fraction_of_peak(row["gflops"], latency.throughput, self.peak())
            if "memory" in metrics:
                video = self._input(model, row.get("throughput_batch") or self.spec.batch)
                with self.precision():
                    memory = measure_peak_memory(lambda: model(video), self.device)
                row.update(peak_mem_mib=memory.peak_mib, peak_mem_method=memory.method)
        except VidpruneError as exc:
            row.update(status="failed", error=str(exc))
        except FloatingPointError as exc:
            row.update(status="nonfinite", error=str(exc))
        except Exception as exc:  # any failure of one point is recorded, never fatal to the sweep
            row.update(status="oom" if is_out_of_memory(exc) else "failed",
                       error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        row["notes"] = " | ".join(notes)  # not "; ": a note may contain it (batch halving notes do)
        return row

    def peak(self):
        """The device's GEMM throughput in this dtype, measured once per runner."""
        if self._peak is None:
            from vidprune.measure.peak import peak_matmul

            self._peak = peak_matmul(self.device, self.dtype)
        return self._peak

    def _fidelity(self, model: torch.nn.Module, point: Point) -> dict:
        from vidprune.evaluate import fidelity_to_unpruned, generated_clips

        if point.method == "none":  # the reference itself: identical by definition, no forward needed
            return {"agreement": 1.0, "kl": 0.0, "cosine": 1.0, "fidelity_clips": self.fidelity_clips}
        clips = generated_clips(model, count=self.fidelity_clips, batch=min(4, self.fidelity_clips),
                                seed=self.spec.seed + 1)
        with self.precision():
            return fidelity_to_unpruned(model, clips, seed=self.spec.seed)

    def _compile(self, model: torch.nn.Module) -> torch.nn.Module:
        # dynamic=False: one graph per token-count shape, each compiled during the warm-up runs, so the
        # timed runs never include compilation.
        backend = os.environ.get(COMPILE_BACKEND_ENV, "inductor")
        # the compiled wrapper forwards attribute reads (info, make_input, ...) to the model
        return torch.compile(model, dynamic=False, backend=backend)

    def _power(self, model: torch.nn.Module, batch: int, latency_ms: float) -> dict:
        """Average power and energy per clip over a window of back-to-back forwards long enough to sample."""
        video = self._input(model, batch)
        runs = max(self.repeats, math.ceil(MIN_POWER_WINDOW_S * 1000.0 / max(latency_ms, 1e-3)))

        def window() -> None:
            with torch.inference_mode(), self.precision():
                for _ in range(runs):
                    model(video)
            devices.synchronize(self.device)

        reading = self.power_meter.measure(window)
        return {"power_w": reading.average_w, "energy_j_per_clip": reading.energy_j / (runs * batch),
                "power_source": reading.source}

    def _input(self, model: torch.nn.Module, batch: int) -> torch.Tensor:
        dtype = torch.float32 if self.spec.autocast else self.dtype
        return example_input(model, batch, device=self.device, dtype=dtype, seed=self.spec.seed)

    def _check_finite(self, model: torch.nn.Module) -> None:
        with torch.inference_mode(), self.precision():
            out = model(self._input(model, 1))
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"the model produced non-finite outputs in {devices.dtype_name(self.dtype)}")

    def _time(self, model: torch.nn.Module, batch: int):
        video = self._input(model, batch)

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


def reference_rows(spec: SweepSpec, shared: dict) -> list[dict]:
    """Paper figures from a recipe, as clearly labelled reference rows (status 'reference'), never as measured."""
    rows = []
    for ref in spec.references:
        ref = dict(ref)
        ref_key = dict(ref)
        factor = float(ref.pop("paper_gflops_factor", 1.0))
        source = ref.pop("source", "paper")
        note = ref.pop("note", "")
        row = {k: v for k, v in shared.items() if k in ("backbone", "flops_convention", "vidprune_version")}
        row.update(backbone=ref.pop("backbone", spec.backbone), method=ref.pop("method", spec.method), keep=float(ref.pop("keep", 1.0)), status="reference",
                   source=f"paper: {source}", device="paper", timestamp=now())
        if "gflops" in ref:
            paper = float(ref.pop("gflops"))
            row["gflops"] = paper / factor
            note = f"paper reports {paper:g} GFLOPs (÷{factor:g} to our convention). {note}".strip()
        row["reference_note"] = note
        row["config_hash"] = "ref-" + stable_hash({"recipe_method": spec.method, "reference": ref_key})
        for key, value in ref.items():
            row[f"paper_{key}" if key in ("throughput", "latency_ms", "peak_mem_mib") else key] = value
        rows.append(row)
    return rows


def run_sweep(spec: SweepSpec, on_row: Optional[Callable[[Point, dict], None]] = None, *,
              executor: str = "local", skip: Iterable[str] = (), executor_options: Optional[dict] = None
              ) -> Iterator[dict]:
    """Check the spec and build every point now, then return an iterator over one row per point (reference
    first; in completion order for Ray and Slurm) followed by the recipe's labelled reference rows.

    `executor`: local (in this process), subprocess (one process per point, `--isolate`), ray or slurm (see
    vidprune/executors.py). Points whose config_hash is in `skip` are not measured (`--resume`).

    Not a generator itself: a bad flag raises here, at the call, before the caller starts a progress display
    or measures anything, so it fails in seconds, not after an hour.
    """
    from vidprune.executors import check_executor, validation_runner

    check_executor(executor, spec, executor_options or {})
    points = expand_points(spec)
    runner = validation_runner(spec, executor)
    with torch.device("meta"):  # construction checks every point's settings; no weights are needed for that
        for point in points:
            runner.build(point)
    skip = set(skip)
    todo = [p for p in points if config_hash(spec, p) not in skip]
    return _measure_points(spec, runner, todo, on_row, executor, executor_options or {})


def _measure_points(spec: SweepSpec, runner: Runner, points: list[Point],
                    on_row: Optional[Callable[[Point, dict], None]], executor: str = "local",
                    executor_options: Optional[dict] = None) -> Iterator[dict]:
    from vidprune.executors import measure_points

    for point, row in measure_points(executor, spec, runner, points, executor_options or {}):
        if on_row:
            on_row(point, row)
        yield row
    yield from reference_rows(spec, runner.shared)
