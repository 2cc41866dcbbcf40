"""Configuration groups: which result rows may share one plot, and which rows a plot leaves out, and why.

Two rows are comparable on one trade-off plot only when they were measured under the same conditions:
the same backbone, input geometry (frames x size), batch, device (and the machine's own name for it, so
two different GPUs that both call themselves `cuda` stay apart), dtype, precision and compile settings
and runtime. Paper reference rows (status 'reference') carry no device or batch: they join every group of
their backbone, and of their geometry when they state one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np
import pandas as pd

# The settings a configuration is made of, in the order its label reads. `runtime` (torch, onnxruntime,
# TensorRT, ...) is not written by every sweep yet: a table without it ran in torch.
GROUP_COLUMNS = ("backbone", "frames", "size", "batch", "device", "device_name", "dtype",
                 "autocast", "attention", "compile", "runtime")
DEFAULT_RUNTIME = "torch"
DEFAULT_ATTENTION = "sdpa"
_BOOLEAN_COLUMNS = ("autocast", "compile")
_NUMBER_COLUMNS = ("frames", "size", "batch")
# A paper reference states at most these; the rest of a configuration is ours.
REFERENCE_MATCH_COLUMNS = ("backbone", "frames", "size")

PLOTTED_STATUSES = ("ok", "reference")
# Columns only a timed forward pass fills: a count-only row (flops metrics alone) has none of them.
FORWARD_COLUMNS = ("latency_ms", "latency_iqr_ms", "throughput", "peak_mem_mib", "energy_j_per_clip",
                   "power_w", "speedup_latency")

LEFT_OUT_COLUMNS = ["row", "group", "group_id", "method", "knob", "keep", "status", "result_file", "left_out_of", "reason"]


def is_missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("", "nan", "<na>")
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def normalise(column: str, value):
    """One spelling per setting, whatever a CSV round trip did to it: 8, 8.0 and '8' are batch 8;
    True, 'True' and 'true' are the same autocast; missing is None, except for the settings with a
    default (runtime torch, autocast and compile off)."""
    if is_missing(value):  # a table from before the column existed ran with the default
        return {"runtime": DEFAULT_RUNTIME, "autocast": False, "compile": False}.get(column)
    if column in _BOOLEAN_COLUMNS:
        text = str(value).strip().lower()
        if text in ("true", "1", "1.0", "yes"):
            return True
        if text in ("false", "0", "0.0", "no"):
            return False
        return text
    if column in _NUMBER_COLUMNS:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value).strip()
        return int(number) if number.is_integer() else number
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # a name that happens to be a number, read back as a float
    return str(value).strip()


def _sort_key(key: tuple) -> tuple:
    # numbers before text before missing, so 8x224 sorts before 16x224 and a missing value last
    out = []
    for value in key:
        if value is None:
            out.append((2, 0, ""))
        elif isinstance(value, (bool, int, float)):
            out.append((0, float(value), ""))
        else:
            out.append((1, 0, str(value)))
    return tuple(out)


def group_label(config: dict) -> str:
    """A short human name for a configuration; the same configuration always gets the same label."""
    parts = []
    if config.get("backbone") is not None:
        parts.append(str(config["backbone"]))
    frames, size = config.get("frames"), config.get("size")
    if frames is not None or size is not None:
        parts.append(f"{frames if frames is not None else '?'}x{size if size is not None else '?'}")
    if config.get("batch") is not None:
        parts.append(f"batch {config['batch']}")
    device, name = config.get("device"), config.get("device_name")
    if device is not None or name is not None:
        parts.append(" ".join(str(v) for v in (device, f"({name})" if name is not None else None) if v is not None))
    if config.get("dtype") is not None:
        parts.append(str(config["dtype"]))
    if config.get("autocast") is True:
        parts.append("autocast")
    if config.get("attention") not in (None, DEFAULT_ATTENTION):
        parts.append(f"attention {config['attention']}")
    if config.get("compile") is True:
        parts.append("torch.compile")
    parts.append(str(config.get("runtime") or DEFAULT_RUNTIME))
    return " · ".join(parts)


def group_slug(config: dict) -> str:
    """A stable identifier safe in an HTML id or a file name."""
    text = json.dumps([config.get(c) for c in GROUP_COLUMNS], default=str)
    return "g-" + hashlib.sha1(text.encode()).hexdigest()[:10]


def status_of(df: pd.DataFrame) -> pd.Series:
    """Each row's status, stripped and lower-case ('' when missing)."""
    if "status" not in df.columns:
        return pd.Series("", index=df.index, dtype=object)
    return df["status"].map(lambda v: "" if is_missing(v) else str(v).strip().lower())


def numeric(df: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats (NaN where missing or not a number; all NaN when the column is absent)."""
    if column not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[column], errors="coerce").astype(float)


@dataclass(frozen=True)
class ConfigGroup:
    """The rows measured under one configuration, and the paper rows that compare with them."""

    config: dict
    label: str
    slug: str
    rows: pd.DataFrame  # measured rows of this configuration, every status, with their input index
    references: pd.DataFrame = field(repr=False)  # paper rows (status 'reference') matching it

    @cached_property
    def ok(self) -> pd.DataFrame:
        return self.rows[(status_of(self.rows) == "ok").to_numpy()]

    @cached_property
    def failed(self) -> pd.DataFrame:
        return self.rows[(status_of(self.rows) != "ok").to_numpy()]

    @cached_property
    def plotted(self) -> pd.DataFrame:
        """The rows a plot may show: measured rows with status ok, then the paper's."""
        return pd.concat([self.ok, self.references])

    def has_values(self, column: str) -> bool:
        """Whether some measured row with status ok has a number in `column` (what makes it an axis here)."""
        return bool(numeric(self.ok, column).notna().any())


@dataclass(frozen=True)
class Grouping:
    groups: list[ConfigGroup]
    left_out: pd.DataFrame  # LEFT_OUT_COLUMNS: a row, what it is missing from and why


def _text_column(df: pd.DataFrame, column: str) -> list[str]:
    if column not in df.columns:
        return [""] * len(df)
    return ["" if is_missing(v) else str(v).strip() for v in df[column]]


def left_out_records(df: pd.DataFrame, group: ConfigGroup | None, left_out_of: Sequence[str],
                     reasons: Sequence[str]) -> list[dict]:
    """One record per row of `df`, with what it is left out of and why."""
    keep = numeric(df, "keep")
    label, slug = (group.label, group.slug) if group is not None else ("", "")
    return [{"row": i, "group": label, "group_id": slug, "method": m, "knob": kn, "keep": k, "status": st.lower(),
             "result_file": f, "left_out_of": of, "reason": why}
            for i, m, kn, k, st, f, of, why in zip(df.index, _text_column(df, "method"), _text_column(df, "knob"),
                                                   keep, _text_column(df, "status"), _text_column(df, "result_file"),
                                                   left_out_of, reasons)]


def _failure_reasons(failed: pd.DataFrame) -> list[str]:
    reasons = []
    for status, error in zip(_text_column(failed, "status"), _text_column(failed, "error")):
        detail = ": " + error.splitlines()[0] if error else ""
        reasons.append(f"status '{status.lower() or 'missing'}'{detail}; it is in the table, not on the plots")
    return reasons


def _join(columns: Sequence[str]) -> str:
    return ", ".join(columns)


def axes_left_out(group: ConfigGroup, axes: Sequence[str]) -> pd.DataFrame:
    """The group's plotted rows (ok and paper) that cannot appear on some of `axes`, one record per row and
    reason: a paper reference that gives no such number, a count-only row (GFLOPs, but its sweep timed no
    forward pass, so no latency, throughput, memory or energy) or simply no value."""
    plotted = group.plotted
    is_reference = (status_of(plotted) == "reference").to_numpy()
    count_only = (numeric(plotted, "gflops").notna() & numeric(plotted, "latency_ms").isna()).to_numpy()
    missing = {column: numeric(plotted, column).isna().to_numpy() for column in dict.fromkeys(axes)}
    positions, left_out_of, reasons = [], [], []
    for pos in range(len(plotted)):
        lacking = [c for c, flags in missing.items() if flags[pos]]
        if not lacking:
            continue
        if is_reference[pos]:
            split = [(lacking, f"the paper reference gives no {_join(lacking)}")]
        elif count_only[pos]:
            forward = [c for c in lacking if c in FORWARD_COLUMNS]
            other = [c for c in lacking if c not in FORWARD_COLUMNS]
            split = [(forward, f"a count-only row (its sweep timed no forward pass): no {_join(forward)}"),
                     (other, f"no {_join(other)} value")]
        else:
            split = [(lacking, f"no {_join(lacking)} value")]
        for columns, reason in split:
            if columns:
                positions.append(pos)
                left_out_of.append(f"{_join(columns)} {'axes' if len(columns) > 1 else 'axis'}")
                reasons.append(reason)
    return pd.DataFrame(left_out_records(plotted.iloc[positions], group, left_out_of, reasons),
                        columns=LEFT_OUT_COLUMNS)


def normalised_columns(df: pd.DataFrame, columns: Sequence[str]) -> list[tuple]:
    """Each row's values of `columns`, normalised (one spelling per setting), as one tuple per row."""
    values = []
    for column in columns:
        if column not in df.columns:
            values.append([normalise(column, None)] * len(df))
            continue
        cache: dict = {}
        out = []
        for value in df[column]:
            try:
                out.append(cache[value] if value in cache else cache.setdefault(value, normalise(column, value)))
            except TypeError:  # an unhashable cell
                out.append(normalise(column, value))
        values.append(out)
    return list(zip(*values)) if values else [()] * len(df)


def group_rows(df: pd.DataFrame, axes: Sequence[str] = ()) -> Grouping:
    """Split result rows into configuration groups, ordered by their settings.

    Every measured row (any status but 'reference') is in exactly one group; a paper reference joins every
    group of its backbone (and geometry, when it gives one). `left_out` records each row that a plot cannot
    show and why: failed rows (status other than ok/reference; they stay in the group's table), paper
    references with no measured configuration to compare with, and, for the columns of `axes` that some
    ok row of a group has, the group's plotted rows without a value there. `row` is the row's index in
    `df` (its position, when that index has duplicates).
    """
    if not df.index.is_unique:
        df = df.reset_index(drop=True)
    status = status_of(df).to_numpy()
    measured = df[status != "reference"]
    references = df[status == "reference"]

    members: dict[tuple, list] = {}
    for i, key in zip(measured.index, normalised_columns(measured, GROUP_COLUMNS)):
        members.setdefault(key, []).append(i)
    ref_keys = list(zip(references.index, normalised_columns(references, REFERENCE_MATCH_COLUMNS)))

    matched: set = set()
    groups, left_out = [], []
    for key in sorted(members, key=_sort_key):
        config = dict(zip(GROUP_COLUMNS, key))
        wanted = tuple(config[c] for c in REFERENCE_MATCH_COLUMNS)
        refs = [i for i, ref in ref_keys if all(r is None or r == w for r, w in zip(ref, wanted))]
        matched.update(refs)
        group = ConfigGroup(config=config, label=group_label(config), slug=group_slug(config),
                            rows=df.loc[members[key]], references=df.loc[refs])
        groups.append(group)
        failed = group.failed
        left_out += left_out_records(failed, group, ["plots"] * len(failed), _failure_reasons(failed))
        present = [c for c in axes if group.has_values(c)]
        if present:
            left_out += axes_left_out(group, present).to_dict("records")

    unmatched = references.loc[[i for i, _ in ref_keys if i not in matched]]
    reasons = []
    for key in normalised_columns(unmatched, REFERENCE_MATCH_COLUMNS):
        what = " ".join(f"{c} {v}" for c, v in zip(REFERENCE_MATCH_COLUMNS, key) if v is not None)
        reasons.append(f"a paper reference ({what or 'no backbone'}) with no measured configuration to compare with")
    left_out += left_out_records(unmatched, None, ["report"] * len(unmatched), reasons)
    return Grouping(groups=groups, left_out=pd.DataFrame(left_out, columns=LEFT_OUT_COLUMNS))
