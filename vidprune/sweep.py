"""Sweeps: expand a spec into points, measure each point in isolation, and persist rows as they finish.

The unpruned backbone is always the first point, so every table carries its own reference row. A point
that fails becomes a row with `status` and `error` filled in; the sweep goes on and the table on disk
is rewritten atomically after every point, so nothing finished is ever lost.

The layers below: `spec` (settings, points, config_hash), `metrics` (the metric table), `runner`
(measures one point), `executors` (where points run) and `point` (a worker process's entry point).
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator, Optional

import torch

from vidprune import registry
from vidprune.executors import check_executor, measure_points, validation_runner
from vidprune.registry import REFERENCE_METHOD
from vidprune.runner import Runner, now
from vidprune.spec import Point, SweepSpec, config_hash, stable_hash


def expand_points(spec: SweepSpec) -> list[Point]:
    """The reference point first, then one point per (keep, option combination); all validated up front."""
    method_cls = registry.get_method(spec.method)
    points = [Point(REFERENCE_METHOD, None, {})]
    if spec.method == REFERENCE_METHOD:
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
        row.update(backbone=ref.pop("backbone", spec.backbone), method=ref.pop("method", spec.method),
                   keep=float(ref.pop("keep", 1.0)), status="reference", source=f"paper: {source}", device="paper",
                   timestamp=now())
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
    for point, row in measure_points(executor, spec, runner, points, executor_options or {}):
        if on_row:
            on_row(point, row)
        yield row
    yield from reference_rows(spec, runner.shared)
