"""Compact summary tables of result rows, rendered for the terminal (rich, fitted to its width), Markdown or LaTeX."""

from __future__ import annotations

import math
from typing import Collection, Sequence

import numpy as np
import pandas as pd
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from vidprune.report.noise import MARK as NOISY_MARK
from vidprune.results import REFERENCE_METHOD

_STATUS_ORDER = {"ok": 0, "reference": 1}
_ROUND = {"keep": 3, "gflops": 2, "params_m": 2, "throughput": 3, "peak_mem_mib": 0, "accuracy": 4, "top5": 4,
          "agreement": 3, "cosine": 3, "speedup_latency": 2, "power_w": 1, "energy_j_per_clip": 3}
# Quality columns worth a terminal column when they have values (top1 repeats accuracy; speedup_flops is
# what gflops_change already says; kl/cosine stay in the file).
_SUMMARY_QUALITY = ("accuracy", "top5", "map", "agreement", "cosine", "speedup_latency", "power_w",
                    "energy_j_per_clip")
# Shown even when empty, so a table always reads the same way; other cost columns only when measured.
_ALWAYS = {"method", "backbone", "keep", "gflops", "gflops_change", "status"}
# Rendered left-aligned; everything else right-aligned.
_TEXT_COLUMNS = {"method", "backbone", "input", "status", "source"}


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _latency(median: float, iqr: float) -> str:
    if math.isnan(median):
        return ""
    return f"{median:.1f}" if math.isnan(iqr) else f"{median:.1f} ± {iqr:.1f}"


def summary_table(df: pd.DataFrame, keep_positions: bool = False) -> pd.DataFrame:
    """One row per result row: method, backbone, [input (frames x size, only when several)], keep, gflops,
    gflops_change, then params_m, latency_ms, throughput, peak_mem_mib, accuracy, top5, agreement,
    speedup_latency, power when they have values, and status.

    gflops_change is relative to the unpruned row (method 'none') of the same backbone/frames/size and
    the same origin (measured rows against the measured reference, paper rows against the same paper
    table's unpruned row), as text like "-40.1%" ("ref" on that row itself, "" when there is none).
    latency_ms is text, "median ± IQR". Rows are ordered by backbone, then measured before reference
    before failed, the unpruned row first, then by keep rate, highest first.
    keep_positions: index the result by each row's position in `df` (to find a summary row's source row).
    """
    df = df.reset_index(drop=True)
    text = lambda col: df[col].astype("string").fillna("") if col in df.columns else pd.Series("", index=df.index)  # noqa: E731
    status = text("status").str.strip().str.lower()
    method, backbone = text("method"), text("backbone")
    frames, size = _num(df, "frames"), _num(df, "size")
    gflops = _num(df, "gflops")

    # gflops of the unpruned reference per (backbone, frames, size); a paper's reference points are
    # compared with that paper's own unpruned point (same source), never with our measurement.
    source = text("source")
    origin = source.where(status == "reference", "measured")
    key = pd.Series(list(zip(backbone, frames.fillna(-1), size.fillna(-1), origin)), index=df.index)
    is_base = (method == REFERENCE_METHOD) & status.isin(["ok", "reference"]) & gflops.notna()
    base = {k: g for k, g in zip(key[is_base], gflops[is_base])}
    change = []
    for i in df.index:
        ref = base.get(key[i])
        if is_base[i]:
            change.append("ref")
        elif ref and not math.isnan(gflops[i]):
            change.append(f"{(gflops[i] / ref - 1.0) * 100.0:+.1f}%")
        else:
            change.append("")

    out = pd.DataFrame({
        "method": method, "backbone": backbone,
        "keep": _num(df, "keep"), "gflops": gflops, "gflops_change": change,
        "params_m": _num(df, "params_m"),
        "latency_ms": [_latency(m, q) for m, q in zip(_num(df, "latency_ms"), _num(df, "latency_iqr_ms"))],
        "throughput": _num(df, "throughput"), "peak_mem_mib": _num(df, "peak_mem_mib"),
    })
    shapes = [f"{f:g}x{z:g}" if not (math.isnan(f) or math.isnan(z)) else "" for f, z in zip(frames, size)]
    if len(set(shapes)) > 1:  # several input shapes: say which row is which
        out.insert(2, "input", shapes)
    for col in _SUMMARY_QUALITY:
        if _num(df, col).notna().any():
            out[col] = _num(df, col)
    out["status"] = status
    for col, digits in _ROUND.items():
        if col in out.columns:
            out[col] = out[col].round(digits)
    empty = [c for c in out.columns if c not in _ALWAYS
             and out[c].map(lambda v: v is None or v is pd.NA or v == "" or (isinstance(v, float) and math.isnan(v))).all()]
    out = out.drop(columns=empty)

    order = pd.DataFrame({
        "backbone": backbone, "frames": frames, "size": size,
        "status": status.map(lambda s: _STATUS_ORDER.get(s, 2)),
        "unpruned": (method != REFERENCE_METHOD).astype(int),
        "keep": -_num(df, "keep").fillna(-1.0), "method": method,
    }).sort_values(["backbone", "frames", "size", "status", "unpruned", "keep", "method"], kind="stable")
    out = out.loc[order.index]
    return out if keep_positions else out.reset_index(drop=True)


def cell_text(value) -> str:
    """A summary cell as text: empty for missing, integers above 100 without decimals, else %g."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 100 else f"{value:g}"
    return str(value)


def _rows(df_summary: pd.DataFrame) -> list[list[str]]:
    return [[cell_text(v) for v in row] for row in df_summary.itertuples(index=False)]


# What a reader needs on every row, in any terminal: which point it is and what it cost. The other columns
# follow in this order of preference while there is room, then in a second table, then only in the file.
IDENTITY_COLUMNS = ("method", "backbone", "input", "keep")
HEADLINE_COLUMNS = ("gflops", "gflops_change", "latency_ms", "status")
SECONDARY_PRIORITY = ("accuracy", "top5", "map", "agreement", "cosine", "speedup_latency", "throughput",
                      "peak_mem_mib", "params_m", "power_w", "energy_j_per_clip")
# Identity columns that may move into the title when they hold one value and the terminal is narrow.
_HOISTABLE = ("backbone",)
# From the widest to the most compact: Rich's default box (how the table always looked), then no outer
# edge with two spaces between columns, then one space.
_STYLES = (
    {},
    {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False, "collapse_padding": True},
    {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False, "padding": (0, 0)},
)


class SummaryTables:
    """A summary_table() frame laid out for the width it is printed at (a Rich renderable).

    When every column fits, this is the one table it always was. When it does not, the identity columns
    (method, backbone, input, keep) and the headline figures (GFLOPs, change, latency, status) come first,
    in a more compact style if needed (and a backbone shared by every row in the title); the other
    columns follow by priority while they fit, then in a second table under the same identity columns,
    and what still does not fit is named on a line (it is in the result file). No cell is ever cut.
    """

    def __init__(self, df_summary: pd.DataFrame, title: str = "vidprune results", noisy_rows: Collection = ()):
        self.title = title
        self.columns = [str(c) for c in df_summary.columns]
        self.cells = _rows(df_summary)
        if noisy_rows and "latency_ms" in self.columns:
            at = self.columns.index("latency_ms")
            for row, label in zip(self.cells, df_summary.index):
                if label in noisy_rows and row[at]:
                    row[at] = f"{row[at]} {NOISY_MARK}"
        self.widths = {c: max([cell_len(c)] + [cell_len(row[i]) for row in self.cells])
                       for i, c in enumerate(self.columns)}

    @property
    def row_count(self) -> int:
        return len(self.cells)

    def _table(self, columns: Sequence[str], style: int, title: str, wrap: Collection[str] = ()) -> Table:
        """A table of `columns`; those in `wrap` may break their cells over lines (folding long words)."""
        table = Table(title=title, header_style="bold", **_STYLES[style])
        for col in columns:
            table.add_column(col, justify="left" if col in _TEXT_COLUMNS else "right", no_wrap=col not in wrap,
                             overflow="fold" if col in wrap else "ellipsis")
        at = [self.columns.index(c) for c in columns]
        for row in self.cells:
            table.add_row(*[row[i] for i in at])
        return table

    def _width(self, console: Console, columns: Sequence[str], style: int) -> int:
        """The width a table of `columns` takes unwrapped, measured on one row of the widest cells."""
        probe = Table(**_STYLES[style])
        for col in columns:
            probe.add_column(col, no_wrap=True)
        probe.add_row(*["x" * self.widths[c] for c in columns])
        return Measurement.get(console, console.options.update(width=10_000), probe).maximum

    def _ordered(self, columns: Collection[str]) -> list[str]:
        return [c for c in self.columns if c in columns]

    def layout(self, console: Console, width: int) -> list:
        """The renderables (tables, then a line) that show this summary in `width` columns."""
        if self._width(console, self.columns, 0) <= width:
            return [self._table(self.columns, 0, self.title)]
        essential = [c for c in IDENTITY_COLUMNS + HEADLINE_COLUMNS if c in self.columns]
        rest = [c for c in SECONDARY_PRIORITY if c in self.columns]
        rest += [c for c in self.columns if c not in essential and c not in rest]
        constant = [c for c in _HOISTABLE if c in self.columns and len({row[self.columns.index(c)] for row in self.cells}) == 1]
        for style, hoisted in [(0, []), (1, []), (2, []), (2, constant)]:
            shown = [c for c in essential if c not in hoisted]
            if self._width(console, shown, style) <= width:
                break
        else:  # not even the essentials fit on one line each: latency on two lines (median, ± IQR), then
            # any long cell folded; never a cut one
            shown, title = self._ordered(shown), self._title(hoisted)
            table = self._table(shown, style, title, wrap=("latency_ms",))
            if Measurement.get(console, console.options.update(width=10_000), table).minimum > width:
                table = self._table(shown, style, title, wrap=shown)
            return [table, *self._left_out_line(rest, width)]
        title = self._title(hoisted)
        first = self._fill(console, shown, rest, style, width)
        out = [self._table(self._ordered(first), style, title)]
        remaining = [c for c in rest if c not in first]
        key = [c for c in IDENTITY_COLUMNS if c in shown]
        second = self._fill(console, key, remaining, style, width)
        if len(second) > len(key):
            out.append(self._table(self._ordered(second), style, f"{title} (continued)"))
            remaining = [c for c in remaining if c not in second]
        return out + self._left_out_line(remaining, width)

    def _fill(self, console: Console, shown: list[str], candidates: list[str], style: int, width: int) -> list[str]:
        shown = list(shown)
        for col in candidates:
            if self._width(console, self._ordered(shown + [col]), style) <= width:
                shown.append(col)
        return shown

    def _title(self, hoisted: Sequence[str]) -> str:
        if not hoisted:
            return self.title
        values = ", ".join(f"{c} {self.cells[0][self.columns.index(c)]}" for c in hoisted if self.cells)
        return f"{self.title} ({values})" if values else self.title

    @staticmethod
    def _left_out_line(columns: Sequence[str], width: int) -> list:
        if not columns:
            return []
        return [Text(f"not shown at {width} columns: {', '.join(columns)} (they are in the result table; "
                     "a wider terminal shows them)", style="dim")]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.layout(console, options.max_width)


def render_rich(df_summary: pd.DataFrame, title: str = "vidprune results", noisy_rows: Collection = ()) -> SummaryTables:
    """A summary_table() frame as a Rich renderable that fits the console it is printed on (see SummaryTables).

    noisy_rows: index labels of `df_summary` whose latency differs between runs by more than the noise
    threshold (vidprune.report.noise); their latency is marked with NOISY_MARK.
    """
    return SummaryTables(df_summary, title, noisy_rows)


def to_markdown(df_summary: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate needed)."""
    cols = [str(c) for c in df_summary.columns]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |",
             "|" + "|".join(":---" if c in _TEXT_COLUMNS else "---:" for c in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in _rows(df_summary)]
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in s)


def to_latex(df_summary: pd.DataFrame) -> str:
    """A plain LaTeX tabular (no jinja2 needed; uses \\hline only, so no extra packages)."""
    cols = [str(c) for c in df_summary.columns]
    spec = "".join("l" if c in _TEXT_COLUMNS else "r" for c in cols)
    lines = [f"\\begin{{tabular}}{{{spec}}}", r"\hline",
             " & ".join(_latex_escape(c) for c in cols) + r" \\", r"\hline"]
    lines += [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in _rows(df_summary)]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
