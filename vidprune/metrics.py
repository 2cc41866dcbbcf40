"""The metric table: every measurement a sweep point can get, one entry each.

An entry names the metric (what `--metrics` accepts, for a selectable one), says whether it needs forward
passes on the device, lists the columns it writes (with `vidprune profile`'s label and number format and,
for a column a plot may put on an axis, the better direction and the axis label) and holds the function
that measures it. `runner.Runner.measure` walks the table; `--metrics` (its help and its validation),
`profile`'s rows, the result table's cost/quality and text columns and the plot axis labels follow from it.

The walk runs entries by stage (what state of the model they need), in table order within a stage; the
table order is also the order `profile` shows columns in. Order dependencies live in the stages: the
timed runs (latency, throughput) come before power and peak_fraction, which read them, and memory runs
after them at the batch they settled on.

Importing this module does not import torch (the command line builds its help from the table): the
measurement functions import what they use.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# A power window shorter than this averages too few NVML/tegrastats samples to mean anything.
MIN_POWER_WINDOW_S = 2.0


class Stage(enum.IntEnum):
    """When in a point's measurement a metric runs; the runner moves the model between stages."""

    BUILT = 0  # the model as built (on CPU or shape-only): counted or read, nothing runs on the device
    ON_DEVICE = 1  # moved to the device and dtype, eager; one forward checked finite if any metric runs forwards
    TIMED = 2  # the timed runs and what reads them; the model is compiled here with --compile
    AFTER_TIMING = 3  # uses what the timed runs settled (the batch that fit in memory)


@dataclass(frozen=True)
class Column:
    """A column a metric writes into a row."""

    name: str
    label: Optional[str] = None  # `vidprune profile` shows the column under this label; None: it does not
    fmt: str = "{}"  # how `profile` formats the value
    better: Optional[str] = None  # "min" or "max": a plot may put it on an axis, and which way is better
    axis: Optional[str] = None  # the plot's axis label, where it differs from `label`
    text: bool = False  # read back from CSV as text (a cell that may look like a number)

    @property
    def axis_label(self) -> str:
        return self.axis or self.label or self.name


@dataclass
class PointContext:
    """What a metric's function works with: the runner (device, dtype, precision, inputs, timing; typed
    loosely because the runner imports this table), the point, its model in the current stage, the row being
    filled and the row's notes."""

    runner: Any
    point: Any
    model: Any
    row: dict
    notes: list
    _timing: Optional[tuple] = field(default=None, repr=False)

    @property
    def spec(self):
        return self.runner.spec

    def selected(self, name: str) -> bool:
        return name in self.spec.metrics

    def timing(self) -> tuple:
        """(batch that ran, LatencyResult): the point's timed runs, taken once however many metrics read
        them, halving the batch on out-of-memory (each halving becomes a note)."""
        if self._timing is None:
            from vidprune.measure.throughput import run_with_batch_backoff

            used, latency, backoff = run_with_batch_backoff(lambda b: self.runner.time_forward(self.model, b),
                                                            self.spec.batch)
            self.notes.extend(backoff)
            self._timing = (used, latency)
        return self._timing


@dataclass(frozen=True)
class Metric:
    """One entry of the table."""

    name: str
    stage: Stage
    columns: tuple[Column, ...]
    # Writes the metric's columns into ctx.row. None for a name another entry's pass serves (fvcore).
    measure: Optional[Callable[[PointContext], None]]
    help: str
    forward: bool = False  # runs the model on real inputs on the device (the rest are counted or read)
    selectable: bool = True  # a `--metrics` name; otherwise `wanted` alone switches it on
    # Whether a sweep's points get it; default: named in --metrics.
    wanted: Optional[Callable[[Any], bool]] = None
    on_dataset: bool = True  # False: a dataset pass (`sweep --data`, `eval`) measures it on real clips instead

    def is_wanted(self, spec) -> bool:
        return self.wanted(spec) if self.wanted is not None else self.name in spec.metrics


# ------------------------------------------------------------------------------------------ measuring


def _flops(ctx: PointContext) -> None:
    from vidprune.measure.flops import count_flops

    counters = ("torch", "thop") + (("fvcore",) if ctx.selected("fvcore") else ())
    report = count_flops(ctx.model, counters=counters, seed=ctx.spec.seed)
    ctx.row.update(gflops=report.gflops, gflops_fvcore=report.gflops_fvcore, gflops_thop=report.gflops_thop,
                   gflops_counter=report.counter, counters_agree=report.counters_agree)
    ctx.notes.extend(report.notes)


def _params(ctx: PointContext) -> None:
    ctx.row["params_m"] = sum(p.numel() for p in ctx.model.parameters()) / 1e6


def _tokens(ctx: PointContext) -> None:
    """What the last forward kept: the checked forward on the device, or the count's forward without one."""
    trace = ctx.model.last_trace
    ctx.row["tokens_per_block"] = ",".join(map(str, trace))
    ctx.row["tokens_final"] = trace[-1] if trace else None
    # Input-dependent methods (frames kept per clip, ...) report their own statistics.
    ctx.row.update(getattr(ctx.model, "last_stats", None) or {})


def _fidelity(ctx: PointContext) -> None:
    from vidprune.evaluate import fidelity_to_unpruned, generated_clips
    from vidprune.registry import REFERENCE_METHOD

    count = ctx.runner.fidelity_clips
    if ctx.point.method == REFERENCE_METHOD:  # the reference itself: identical by definition, no forward needed
        values = {"agreement": 1.0, "kl": 0.0, "cosine": 1.0, "fidelity_clips": count}
    else:
        clips = generated_clips(ctx.model, count=count, batch=min(4, count), seed=ctx.spec.seed + 1)
        with ctx.runner.precision():
            values = fidelity_to_unpruned(ctx.model, clips, seed=ctx.spec.seed)
    ctx.row.update(values, fidelity_source="generated clips")


def _latency(ctx: PointContext) -> None:
    used, latency = ctx.timing()
    ctx.row.update(throughput_batch=used, latency_ms=latency.median_ms, latency_iqr_ms=latency.iqr_ms,
                   latency_mean_ms=latency.mean_ms, noisy=latency.noisy, repeats=latency.repeats,
                   warmup=latency.warmup)


def _throughput(ctx: PointContext) -> None:
    used, latency = ctx.timing()
    ctx.row.update(throughput_batch=used, repeats=latency.repeats, warmup=latency.warmup,
                   throughput=latency.throughput)


def _power(ctx: PointContext) -> None:
    """Average power and energy per clip over a window of back-to-back forwards long enough to sample."""
    import torch

    from vidprune.measure.device import synchronize

    batch, latency = ctx.timing()
    runner, model = ctx.runner, ctx.model
    video = runner.input(model, batch)
    runs = max(runner.repeats, math.ceil(MIN_POWER_WINDOW_S * 1000.0 / max(latency.median_ms, 1e-3)))

    def window() -> None:
        with torch.inference_mode(), runner.precision():
            for _ in range(runs):
                model(video)
        synchronize(runner.device)

    reading = runner.power_meter.measure(window)
    ctx.row.update(power_w=reading.average_w, energy_j_per_clip=reading.energy_j / (runs * batch),
                   power_source=reading.source)


def _peak(ctx: PointContext) -> None:
    if ctx.row.get("gflops") is None:  # without a FLOP count there is nothing to divide
        return
    from vidprune.measure.peak import fraction_of_peak

    _, latency = ctx.timing()
    ctx.row["peak_fraction"] = fraction_of_peak(ctx.row["gflops"], latency.throughput, ctx.runner.peak())


def _memory(ctx: PointContext) -> None:
    from vidprune.measure.memory import measure_peak_memory

    runner, model = ctx.runner, ctx.model
    video = runner.input(model, ctx.row.get("throughput_batch") or ctx.spec.batch)
    with runner.precision():
        memory = measure_peak_memory(lambda: model(video), runner.device)
    ctx.row.update(peak_mem_mib=memory.peak_mib, peak_mem_method=memory.method)


# ------------------------------------------------------------------------------------------ the table

# Written by both timed metrics; shown once by `profile`, with throughput.
_REPEATS, _WARMUP = Column("repeats"), Column("warmup")

METRICS: list[Metric] = [
    Metric("flops", Stage.BUILT, (
        Column("gflops", "GFLOPs (1 MAC = 1 FLOP, per clip)", "{:.2f}", "min"),
        # written by this pass; counted only when fvcore is selected
        Column("gflops_fvcore", "GFLOPs, fvcore", "{:.2f}", "min", "GFLOPs, fvcore (1 MAC = 1 FLOP, per clip)"),
        Column("gflops_thop", "GFLOPs, thop", "{:.2f}", "min", "GFLOPs, thop (1 MAC = 1 FLOP, per clip)"),
        Column("gflops_counter"), Column("counters_agree"),
    ), _flops, "the primary FLOP count plus thop's, on shape-only tensors where the forward allows: seconds",
        wanted=lambda spec: bool({"flops", "fvcore"} & set(spec.metrics))),
    Metric("fvcore", Stage.BUILT, (), None, "fvcore's cross-check (traces one real forward), counted in the "
           "flops pass into gflops_fvcore"),
    Metric("params", Stage.BUILT, (Column("params_m", "parameters (M)", "{:.2f}", "min"),), _params,
           "parameters, in millions"),
    Metric("latency", Stage.TIMED, (
        Column("latency_ms", "latency median (ms)", "{:.2f}", "min", "latency (ms, median)"),
        Column("latency_iqr_ms", "latency IQR (ms)", "{:.2f}"), Column("latency_mean_ms"), Column("noisy"),
        _REPEATS, _WARMUP,
    ), _latency, "median, IQR and mean of timed forwards at --batch", forward=True),
    Metric("memory", Stage.AFTER_TIMING, (
        Column("peak_mem_mib", "peak memory added (MiB)", "{:.1f}", "min", "peak memory (MiB)"),
        Column("peak_mem_method"),
    ), _memory, "peak memory one forward adds, at the batch the timed runs used", forward=True),
    Metric("throughput", Stage.TIMED, (
        Column("throughput", "throughput (clips/s)", "{:.2f}", "max"),
        Column("throughput_batch", "batch", "{}"),
    ), _throughput, "clips per second of the timed forwards", forward=True,
        # peak_fraction is computed from it
        wanted=lambda spec: "throughput" in spec.metrics or spec.peak),
    Metric("tokens", Stage.ON_DEVICE, (
        Column("tokens_per_block", "tokens per block", "{}", text=True),
        Column("tokens_final", better="min", axis="tokens after the last block"),
    ), _tokens, "tokens each block saw (always recorded)", selectable=False, wanted=lambda spec: True),
    Metric("fidelity", Stage.ON_DEVICE, (
        Column("agreement", "agreement with unpruned (generated clips, random weights: fragile)", "{:.3f}", "max",
               "agreement with the unpruned model"),
        Column("kl", "KL to unpruned (nats)", "{:.4f}", "min", "KL(unpruned || pruned), nats"),
        Column("cosine", "feature cosine to unpruned", "{:.4f}", "max",
               "cosine similarity of pooled features to the unpruned model"),
        Column("fidelity_clips"), Column("fidelity_source", text=True),
    ), _fidelity, "agreement, KL and feature cosine to the unpruned model on generated clips", forward=True,
        on_dataset=False),
    Metric("power", Stage.TIMED, (
        Column("power_w", "average power (W)", "{:.1f}", "min"),
        Column("energy_j_per_clip", "energy per clip (J)", "{:.3f}", "min"),
        Column("power_source", "power source", "{}", text=True),
    ), _power, "average power and energy per clip over a timed window (--power)", forward=True, selectable=False,
        wanted=lambda spec: spec.power),
    Metric("peak", Stage.TIMED, (Column("peak_fraction", "achieved / peak GEMM FLOP/s", "{:.1%}"),), _peak,
           "achieved FLOP/s over the device's GEMM peak (--peak)", forward=True, selectable=False,
           wanted=lambda spec: spec.peak),
]


def selectable() -> tuple[str, ...]:
    """What `--metrics` accepts, in table order."""
    return tuple(m.name for m in METRICS if m.selectable)


ALL_METRICS = selectable()
# Metrics that need the model to run on real inputs on the device (the rest are counted or read).
FORWARD_METRICS = frozenset(m.name for m in METRICS if m.selectable and m.forward)


def timed_metrics() -> tuple[str, ...]:
    """The selectable metrics that take the timed runs (what --power and --peak read)."""
    return tuple(m.name for m in METRICS if m.selectable and m.stage == Stage.TIMED)


def dataset_metrics() -> tuple[str, ...]:
    """What a dataset pass (`eval`, `sweep --data`) still takes from the table: it measures the rest itself."""
    return tuple(m.name for m in METRICS if m.selectable and m.on_dataset)


def without_dataset_measured(names) -> tuple[str, ...]:
    """`names` less what a dataset pass measures itself, on real clips (fidelity)."""
    replaced = {m.name for m in METRICS if not m.on_dataset}
    return tuple(n for n in names if n not in replaced)


def unknown(names) -> list[str]:
    known = set(selectable())
    return sorted(set(names) - known)


def wanted(spec) -> list[Metric]:
    """The entries a spec's points get, in the order they are measured."""
    return sorted((m for m in METRICS if m.is_wanted(spec)), key=lambda m: m.stage)


def needs_forward(spec) -> bool:
    return any(m.forward for m in wanted(spec))


def columns() -> list[Column]:
    """Every column the table writes, once each, in table order."""
    seen: dict[str, Column] = {}
    for metric in METRICS:
        for column in metric.columns:
            seen.setdefault(column.name, column)
    return list(seen.values())


def labelled_columns() -> list[Column]:
    """What `vidprune profile` shows, in its order."""
    return [c for c in columns() if c.label is not None]


def axis_columns(better: str) -> dict[str, str]:
    """{column: better direction} for the columns a plot may put on an axis whose better end is `better`."""
    return {c.name: c.better for c in columns() if c.better == better}


def axis_labels() -> dict[str, str]:
    return {c.name: c.axis_label for c in columns() if c.better is not None}
