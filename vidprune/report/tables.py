"""Compact summary tables of result rows, rendered for the terminal (rich), Markdown or LaTeX."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from rich.table import Table

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


def render_rich(df_summary: pd.DataFrame, title: str = "vidprune results") -> Table:
    """A rich Table of a summary_table() frame, for printing with rich.console.Console().print(...)."""
    table = Table(title=title, header_style="bold")
    for col in df_summary.columns:
        table.add_column(str(col), justify="left" if col in _TEXT_COLUMNS else "right", no_wrap=True)
    for row in _rows(df_summary):
        table.add_row(*row)
    return table


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
