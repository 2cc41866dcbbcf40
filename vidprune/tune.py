"""The search behind `vidprune tune`: the least aggressive knob value whose measured cost fits every budget.

How costs are measured is not this module's business: the caller passes `probe(knob_value) -> Cost`
(in the CLI, a paired timing against the unpruned reference, see docs/tune.md). This module decides
which values to probe, when a measurement is too close to a budget to trust, and what the outcome is.

The search, for one method:

1. The knob's range becomes a grid ordered from the most to the least aggressive setting
   (`Knob.cost_increases` says which end is which). Continuous knobs are stepped by `resolution`
   (default: the range over `GRID_STEPS` = 20, i.e. 0.05 on the unit-interval knobs: rho, frame_keep,
   merge_ratio); integer knobs (SLLM's r) by 1, over `span` when the knob's range is unbounded.
2. The unpruned reference, when given, is judged first: if it fits, there is nothing to prune.
3. The most aggressive grid point is probed. If it does not fit, no setting fits; one more probe, one
   grid step less aggressive, tells a knob that has stopped reducing cost there (equal tokens kept, or,
   when the probe reports no tokens, equal cost within noise: EVAD's keyframe floor) from one whose cost
   still falls but cannot reach the budget.
4. Otherwise bisection on the grid index between the fitting point and the first point known not to fit
   (the unpruned reference, or the end of the grid). Cost is assumed monotone in the knob. On the default
   20-point grid that is 1 + 5 = 6 timed probes, leaving 2 of the default `MAX_PROBES` = 8 for re-probes;
   an integer knob over 1..16 needs 1 + 4 = 5.

Noise: a cost `v` with spread `s` (the caller's noise band, e.g. the latency IQR) fits a budget `B`
clearly when `v + s <= B`, is over it clearly when `v - s > B`, and is within noise otherwise. A point
within noise is measured again (at most `reprobes` more times, within the probe limit); its repeats are
pooled as the mean value with the mean spread divided by sqrt(repeats). A point still within noise
counts as not fitting (so the returned point fits clearly) and the result says `within_noise`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from vidprune.errors import VidpruneError

# cost keys a budget can name, with how they print
METRICS: dict[str, str] = {"ms": "latency (ms)", "mib": "peak memory (MiB)", "gflops": "GFLOPs", "j": "energy (J)"}
GRID_STEPS = 20
MAX_PROBES = 8
REPROBES = 2

FITS, OVER, NOISE = "fits", "over", "within noise"


@dataclass(frozen=True)
class Budget:
    """Upper limits per clip batch; any subset, at least one."""

    ms: Optional[float] = None
    mib: Optional[float] = None
    gflops: Optional[float] = None
    j: Optional[float] = None

    def limits(self) -> dict[str, float]:
        limits = {name: float(getattr(self, name)) for name in METRICS if getattr(self, name) is not None}
        if not limits:
            raise VidpruneError("a tune search needs at least one budget, e.g. --budget-ms 40.")
        for name, value in limits.items():
            if not (value > 0 and math.isfinite(value)):
                raise VidpruneError(f"the {METRICS[name]} budget must be a positive number, got {value:g}.")
        return limits


@dataclass(frozen=True)
class Cost:
    """One measurement of a setting.

    values: cost per metric name of `METRICS` (every budgeted metric must be there).
    spread: noise band per metric (absolute, same unit; e.g. the latency IQR); missing means exact.
    tokens: tokens kept (any consistent count), when known: equal counts at two knob values mean the knob
        stopped reducing work between them.
    record: anything the caller wants back with the probe (e.g. its result-table row).
    """

    values: Mapping[str, float]
    spread: Mapping[str, float] = field(default_factory=dict)
    tokens: Optional[float] = None
    record: Any = None


@dataclass(frozen=True)
class Probe:
    """A knob value with its measurements pooled and judged against the budget.

    `value` is None for the unpruned reference. `margins`: budget minus pooled cost per metric (positive is
    headroom)."""

    value: Optional[float]
    measurements: tuple[Cost, ...]
    cost: Cost
    verdict: str
    margins: dict[str, float]

    @property
    def fits(self) -> bool:
        return self.verdict == FITS


class Status(str, Enum):
    UNPRUNED_FITS = "unpruned fits"  # nothing to prune
    BOUNDARY = "boundary"  # best fits; next_over is the next less aggressive setting, which does not
    NO_FIT = "no setting fits"  # most_aggressive is the cheapest setting tried
    FLOOR = "knob floor"  # no setting fits and the knob stopped reducing cost before its end


@dataclass
class SearchResult:
    knob: str
    status: Status
    limits: dict[str, float]
    grid: tuple[float, ...]  # most aggressive first
    best: Optional[Probe] = None  # least aggressive setting that fits clearly
    next_over: Optional[Probe] = None  # the probe one grid step less aggressive (or the unpruned reference)
    most_aggressive: Optional[Probe] = None
    unpruned: Optional[Probe] = None
    probes: list[Probe] = field(default_factory=list)  # every setting measured, in the order first probed
    timed_probes: int = 0  # measurements taken, repeats included (the reference not counted)
    within_noise: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.best is not None

    @property
    def resolved(self) -> bool:
        """Whether best and next_over are adjacent grid points (or the grid's end and the reference)."""
        if self.status is not Status.BOUNDARY or self.best is None:
            return False
        i = self.grid.index(self.best.value)
        if self.next_over is None or self.next_over.value is None:
            return i == len(self.grid) - 1
        return self.grid.index(self.next_over.value) == i + 1


def judge(cost: Cost, limits: Mapping[str, float]) -> tuple[str, dict[str, float]]:
    """(verdict, margins) of one (pooled) cost against the limits: FITS, OVER or NOISE."""
    verdicts, margins = [], {}
    for name, limit in limits.items():
        if name not in cost.values:
            raise VidpruneError(f"the probe measured no {METRICS.get(name, name)}, which the budget limits.")
        value = float(cost.values[name])
        spread = abs(float(cost.spread.get(name, 0.0)))
        margins[name] = limit - value
        verdicts.append(FITS if value + spread <= limit else OVER if value - spread > limit else NOISE)
    if OVER in verdicts:
        return OVER, margins
    return (NOISE if NOISE in verdicts else FITS), margins


def pool(measurements: Sequence[Cost]) -> Cost:
    """Repeats of one setting as one cost: mean value, mean spread / sqrt(repeats)."""
    if len(measurements) == 1:
        return measurements[0]
    k = len(measurements)
    names = set().union(*(m.values for m in measurements))
    values = {n: sum(float(m.values[n]) for m in measurements if n in m.values) /
              sum(1 for m in measurements if n in m.values) for n in names}
    spread = {n: sum(abs(float(m.spread.get(n, 0.0))) for m in measurements) / k / math.sqrt(k) for n in names}
    return Cost(values, spread, measurements[0].tokens, measurements[-1].record)


def knob_grid(knob, resolution: Optional[float] = None, span: Optional[tuple[float, float]] = None) -> tuple[float, ...]:
    """The values a search may probe, most aggressive first.

    Continuous knobs: multiples of `resolution` from the low end (default: range / GRID_STEPS) that the
    knob accepts. Integer knobs: every whole number. `span` = (low, high), both ends included, narrows the
    range and is required when the knob's range is unbounded (SLLM's r: e.g. (1, frames))."""
    low, high = (knob.low, knob.high) if span is None else (float(span[0]), float(span[1]))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise VidpruneError(f"{knob.name} has the unbounded range {knob.describe_range()}: give the search a "
                            f"finite span, e.g. span=({knob.low:g}, 16).")
    if high <= low:
        raise VidpruneError(f"the search span of {knob.name} must have low < high, got ({low:g}, {high:g}).")
    if knob.integer:
        candidates = [float(v) for v in range(math.ceil(low), math.floor(high) + 1)]
    else:
        step = (high - low) / GRID_STEPS if resolution is None else float(resolution)
        if not step > 0:
            raise VidpruneError(f"the search resolution must be positive, got {resolution}.")
        count = math.floor((high - low) / step + 1e-9)
        candidates = [round(low + i * step, 10) for i in range(count + 1)]
    values = []
    for v in candidates:
        try:
            values.append(knob.validate(v))
        except VidpruneError:
            continue
    if not values:
        raise VidpruneError(f"no value of {knob.name} in {knob.describe_range()} lies on the search grid.")
    increasing = getattr(knob, "cost_increases", True)
    return tuple(sorted(values, reverse=not increasing))


def search(knob, budget: Budget, probe: Callable[[float], Cost], *, unpruned: Optional[Cost] = None,
           resolution: Optional[float] = None, span: Optional[tuple[float, float]] = None,
           max_probes: int = MAX_PROBES, reprobes: int = REPROBES,
           progress: Optional[Callable[[Probe], None]] = None) -> SearchResult:
    """The least aggressive value of `knob` whose cost fits `budget` (module docstring: the algorithm).

    probe(value) measures one setting; it is called at most `max_probes` times. `unpruned` is the
    reference's cost (measured once per backbone by the caller, not counted as a probe). `progress`, when
    given, gets each probe after every measurement of it."""
    limits = budget.limits()
    if max_probes < 1:
        raise VidpruneError(f"max_probes must be at least 1, got {max_probes}.")
    grid = knob_grid(knob, resolution, span)
    result = SearchResult(knob.name, Status.NO_FIT, limits, grid)
    measured: dict[float, list[Cost]] = {}
    judged: dict[float, Probe] = {}

    if unpruned is not None:
        verdict, margins = judge(unpruned, limits)
        result.unpruned = Probe(None, (unpruned,), unpruned, verdict, margins)
        if verdict == FITS:
            result.status = Status.UNPRUNED_FITS
            result.notes.append("the unpruned model already fits the budget: nothing to prune")
            return result
        if verdict == NOISE:
            result.notes.append("the unpruned model is within noise of the budget: searching for a setting "
                                "that fits clearly")

    def left() -> int:
        return max_probes - result.timed_probes

    def measure(index: int) -> Probe:
        """Measure grid[index], again while within noise and allowed; returns the pooled, judged probe."""
        value = grid[index]
        while True:
            costs = measured.setdefault(value, [])
            costs.append(probe(value))
            result.timed_probes += 1
            pooled = pool(costs)
            verdict, margins = judge(pooled, limits)
            judged[value] = Probe(value, tuple(costs), pooled, verdict, margins)
            if len(costs) == 1:
                result.probes.append(judged[value])
            else:
                result.probes[[p.value for p in result.probes].index(value)] = judged[value]
            if progress is not None:
                progress(judged[value])
            if verdict != NOISE or len(costs) > reprobes or left() < 1:
                break
        if verdict == NOISE:
            result.within_noise = True
            result.notes.append(f"{knob.name}={value:g} is within noise of the budget after {len(costs)} "
                                f"measurement(s) ({describe(pooled, limits)}): counted as not fitting")
        return judged[value]

    first = measure(0)
    result.most_aggressive = first
    fit = 0
    if not first.fits:
        fit = _no_fit(result, grid, measure, left, knob.name)
        if fit is None:
            return result

    over = len(grid)  # grid[fit] fits; grid[over] does not (len(grid): the reference, or unknown)
    while over - fit > 1:
        if left() < 1:
            result.notes.append(f"probe limit ({max_probes}) reached: the boundary lies between "
                                f"{knob.name}={grid[fit]:g} and {_name(knob.name, grid, over)}")
            break
        mid = (fit + over) // 2
        if measure(mid).fits:
            fit = mid
        else:
            over = mid
    result.status = Status.BOUNDARY
    result.best = judged[grid[fit]]
    result.next_over = judged[grid[over]] if over < len(grid) else result.unpruned
    if fit == len(grid) - 1 and unpruned is None:
        result.notes.append(f"the least aggressive setting {knob.name}={grid[-1]:g} fits; no unpruned "
                            "reference was measured to compare")
    return result


def _name(knob: str, grid: Sequence[float], index: int) -> str:
    return f"{knob}={grid[index]:g}" if index < len(grid) else "the unpruned model"


def _no_fit(result: SearchResult, grid, measure, left, knob: str) -> Optional[int]:
    """The most aggressive setting does not fit: is the knob at a floor, or is the budget out of reach?
    Returns the index of a fitting setting to bisect from, in the one case where the halfway probe fits
    (cost not monotone in the knob, or noise), else None with the result's status set."""
    result.status = Status.NO_FIT
    first = result.most_aggressive
    result.notes.append(f"no setting fits: the most aggressive, {knob}={first.value:g}, costs "
                        f"{describe(first.cost, result.limits)}")
    if len(grid) < 2 or left() < 1:
        return None
    # the neighbour one step less aggressive: at a floor (EVAD keeps at least the keyframe's tokens, below
    # rho = 1 / slices) it keeps the same tokens; where cost still falls it costs more
    other = measure(1)
    if other.fits:
        result.notes[-1] = (f"{knob}={first.value:g} costs more than the less aggressive {knob}={other.value:g}, "
                            f"which fits: cost is not monotone in {knob} here (or noise); searching above it")
        return 1
    same_tokens = first.cost.tokens is not None and other.cost.tokens == first.cost.tokens
    same_cost = all(_indistinct(first.cost, other.cost, name) for name in result.limits)
    if same_tokens or same_cost:
        result.status = Status.FLOOR
        why = (f"both keep {first.cost.tokens:g} tokens" if same_tokens else "their costs are equal within noise")
        result.notes.append(f"{knob} stops reducing cost: {knob}={other.value:g} and {knob}={first.value:g} "
                            f"differ in aggressiveness but {why}; going further cannot reach the budget")
    return None


def _indistinct(a: Cost, b: Cost, name: str) -> bool:
    band = abs(float(a.spread.get(name, 0.0))) + abs(float(b.spread.get(name, 0.0)))
    va, vb = float(a.values[name]), float(b.values[name])
    return abs(va - vb) <= max(band, 1e-9 * max(abs(va), abs(vb)))


def describe(cost: Cost, limits: Mapping[str, float]) -> str:
    """'41.2 ± 1.0 ms (budget 40), 60.1 GFLOPs (budget 70)' for the budgeted metrics."""
    parts = []
    for name, limit in limits.items():
        value, spread = float(cost.values[name]), float(cost.spread.get(name, 0.0))
        noise = f" ± {spread:.3g}" if spread else ""
        parts.append(f"{value:.4g}{noise} {name} (budget {limit:g})")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- ranking

@dataclass(frozen=True)
class Candidate:
    """One method's search result with the quality of its boundary point (accuracy or fidelity; higher is
    better; None when not measured)."""

    name: str
    result: SearchResult
    quality: Optional[float] = None


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Winner first: methods whose boundary point fits, by quality (highest first; unmeasured quality
    after measured), ties broken by the most headroom on the tightest budget (relative margin), then by
    name. Methods with no fitting setting follow, in the order given. A result whose unpruned model fits
    is ranked with the fitting ones (its point is the unpruned model)."""
    candidates = list(candidates)
    fitting = [c for c in candidates if c.result.fits or c.result.status is Status.UNPRUNED_FITS]
    rest = [c for c in candidates if c not in fitting]

    def headroom(c: Candidate) -> float:
        point = c.result.best or c.result.unpruned
        if point is None:
            return -math.inf
        return min(point.margins[n] / c.result.limits[n] for n in c.result.limits)

    def key(c: Candidate):
        measured = c.quality is not None and not math.isnan(c.quality)
        return (0 if measured else 1, -(c.quality if measured else 0.0), -headroom(c), c.name)

    return sorted(fitting, key=key) + rest


def winner(ranked: Sequence[Candidate]) -> Optional[Candidate]:
    """The first ranked candidate if it fits the budget, else None (no method fits)."""
    if ranked and (ranked[0].result.fits or ranked[0].result.status is Status.UNPRUNED_FITS):
        return ranked[0]
    return None


__all__ = ["METRICS", "GRID_STEPS", "MAX_PROBES", "REPROBES", "FITS", "OVER", "NOISE", "Budget", "Cost", "Probe",
           "Status", "SearchResult", "Candidate", "judge", "pool", "knob_grid", "search", "describe", "rank",
           "winner"]
