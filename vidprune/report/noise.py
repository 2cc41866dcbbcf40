"""Noise across processes: the same configuration measured in several runs, and how far its latencies differ.

A row's own `noisy` flag says whether its repeats agreed within one process. It cannot see that the
next process, on the same machine, lands 20% away (another core, another frequency, another neighbour).
When tables read together (several sweeps, a resumed sweep, a glob) hold more than one measurement of
the same configuration, those measurements say how much a latency moves between processes, and whether
two rows from different runs may be compared at all.

The rule is the one `vidprune.measure.timing` applies within a run: a spread above 10% of the median is
noise. Across runs the spread is the range (highest minus lowest latency) over the median of the run
latencies, not their IQR: there are two or three values, each already a median, and the IQR of two
values is half their range, which would call a 1515 vs 1828 ms pair (19% apart) steady.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vidprune.registry import REFERENCE_METHOD
from vidprune.report.groups import GROUP_COLUMNS, normalised_columns, group_label, is_missing, numeric, status_of

# measure_latency's noisy_threshold default; tests/test_report_noise.py checks they agree.
NOISY_THRESHOLD = 0.10
MARK = "†"


def _options_key(value) -> str:
    """Option sets compare as JSON objects: key order and 4 vs 4.0 do not make two configurations."""
    if is_missing(value):
        return "{}"
    text = str(value).strip()
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return text
    if isinstance(parsed, dict):
        parsed = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in parsed.items()}
    return json.dumps(parsed, sort_keys=True)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


@dataclass(frozen=True)
class CrossRunSpread:
    """One configuration measured in several runs: its latencies and how far apart they are."""

    method: str
    keep: float
    options: str
    config: dict  # the configuration group's settings (GROUP_COLUMNS)
    rows: tuple  # the measurements' index labels in the table
    latencies_ms: tuple
    files: tuple  # each measurement's result file ('' when the table does not say)
    threshold: float = NOISY_THRESHOLD

    @property
    def spread(self) -> float:
        """(highest - lowest) / median of the run latencies."""
        median = float(np.median(self.latencies_ms))
        return (max(self.latencies_ms) - min(self.latencies_ms)) / median if median > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return self.spread > self.threshold

    def what(self) -> str:
        backbone = self.config.get("backbone") or "?"
        if self.method == REFERENCE_METHOD:
            return f"unpruned {backbone}"
        keep = "" if np.isnan(self.keep) else f" keep {self.keep:g}"
        return f"{self.method}{keep} on {backbone}"

    def note(self) -> str:
        """One line for a reader: what was measured where, how far apart, and what to do about it."""
        return (f"{self.what()} measured {_ms(min(self.latencies_ms))}–{_ms(max(self.latencies_ms))} ms in "
                f"{len(self.latencies_ms)} runs ({self.spread:.0%} apart; the noise threshold is {self.threshold:.0%}) "
                f"on {group_label(self.config)}: compare latencies within one run, not across runs.")


def cross_run_spreads(df: pd.DataFrame, threshold: float = NOISY_THRESHOLD) -> list[CrossRunSpread]:
    """Every configuration with more than one latency in `df`, noisy or not, in table order.

    Two rows are the same configuration when they share the configuration group (backbone, geometry,
    batch, device and its name, dtype, precision and compile settings, runtime) and the method, keep and
    option set: what their config_hash says, minus the repeat counts and seed, which do not move a
    latency, and plus the machine's name, since two machines are two configurations, not noise. Only
    measured rows with status ok and a latency count.
    """
    if df.empty or "method" not in df.columns:
        return []
    latency = numeric(df, "latency_ms")
    usable = df[((status_of(df) == "ok") & latency.notna()).to_numpy()]
    if usable.empty:
        return []
    configs = normalised_columns(usable, GROUP_COLUMNS)
    methods = ["" if is_missing(m) else str(m).strip() for m in usable["method"]]
    keeps = numeric(usable, "keep").round(6)
    options = [_options_key(v) for v in usable["options"]] if "options" in usable.columns else ["{}"] * len(usable)
    files = ["" if is_missing(f) else str(f) for f in usable["result_file"]] if "result_file" in usable.columns \
        else [""] * len(usable)
    members: dict[tuple, list[int]] = {}
    for pos, key in enumerate(zip(configs, methods, keeps.fillna(-1.0), options)):
        members.setdefault(key, []).append(pos)
    spreads = []
    for (config, method, keep, option), positions in members.items():
        if len(positions) < 2:
            continue
        spreads.append(CrossRunSpread(
            method=method, keep=float("nan") if keep == -1.0 else float(keep), options=option,
            config=dict(zip(GROUP_COLUMNS, config)), rows=tuple(usable.index[positions]),
            latencies_ms=tuple(float(latency[usable.index[p]]) for p in positions),
            files=tuple(files[p] for p in positions), threshold=threshold))
    return spreads


def noisy_across_runs(df: pd.DataFrame, threshold: float = NOISY_THRESHOLD) -> list[CrossRunSpread]:
    """The configurations whose latencies in different runs differ by more than `threshold` of their median."""
    return [s for s in cross_run_spreads(df, threshold) if s.noisy]


def noisy_rows(spreads: list[CrossRunSpread]) -> set:
    """The index labels of every measurement in `spreads`."""
    return {row for spread in spreads for row in spread.rows}
