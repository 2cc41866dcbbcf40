"""Trade-off plots (quality or throughput vs cost) with the Pareto front highlighted."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # non-interactive: plots are only ever written to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vidprune.errors import VidpruneError  # noqa: E402
from vidprune.metrics import axis_labels  # noqa: E402
from vidprune.report.pareto import pareto_mask  # noqa: E402
from vidprune.results import COST_COLUMNS, QUALITY_COLUMNS, REFERENCE_METHOD  # noqa: E402

# The measured columns' labels come from the metric table (vidprune/metrics.py).
AXIS_LABELS = {
    **axis_labels(),
    "accuracy": "accuracy",
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "speedup_flops": "theoretical speedup (reference GFLOPs / GFLOPs)",
    "speedup_latency": "realized speedup (reference latency / latency)",
}
SPEEDUP_COLUMNS = ("speedup_flops", "speedup_latency")

_BACKBONE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]
_BACKBONE_STYLES = ["-", "--", "-.", ":"]
_LABEL_OFFSETS = [(6, 4), (6, -4), (-6, 4), (-6, -4)]  # points; the sign picks the corner


def _status(df: pd.DataFrame) -> pd.Series:
    return df["status"].astype(str).str.strip().str.lower() if "status" in df.columns else pd.Series("ok", index=df.index)


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _truthy(values: pd.Series) -> pd.Series:
    """noisy may come back from CSV as bool, 'True'/'False', 1/0 or empty."""
    return values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))


def _usable_columns(ok: pd.DataFrame) -> list[str]:
    def usable(col: str) -> bool:
        values = ok[col].dropna()
        if values.empty or values.map(lambda v: isinstance(v, (bool, np.bool_))).all():
            return False  # flags such as `noisy` are not axes
        return pd.to_numeric(values, errors="coerce").notna().any()
    return [c for c in ok.columns if usable(c)]


def _check_column(ok: pd.DataFrame, col: str, axis: str) -> None:
    if col in ok.columns and _numeric(ok, col).notna().any():
        return
    problem = "is not a column of the table" if col not in ok.columns else "has no numeric values in rows with status 'ok'"
    usable = _usable_columns(ok)
    raise VidpruneError(
        f"cannot plot {axis}='{col}': it {problem}. "
        f"Pick one of the numeric columns: {', '.join(usable) if usable else '(none)'}."
    )


def _unique(df: pd.DataFrame, col: str) -> list[str]:
    if col not in df.columns:
        return []
    out = []
    for v in df[col].dropna().tolist():
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        s = str(v).strip()
        if s and s.lower() not in ("nan", "<na>") and s not in out:
            out.append(s)
    return out


def _subtitle(ok: pd.DataFrame) -> str:
    parts = []
    devices = _unique(ok, "device_name") or _unique(ok, "device")
    if devices:
        parts.append(", ".join(devices))
    for col, label in (("batch", "batch "), ("dtype", "")):
        vals = _unique(ok, col)
        if vals:
            parts.append(label + ", ".join(vals))
    if "frames" in ok.columns and "size" in ok.columns:
        shapes = []
        for f, s in ok[["frames", "size"]].dropna().drop_duplicates().itertuples(index=False):
            shape = f"{int(float(f))}x{int(float(s))}"
            if shape not in shapes:
                shapes.append(shape)
        if shapes:
            parts.append(", ".join(shapes) + " (frames x size)")
    return " | ".join(parts)


def _prepare(rows: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """A copy with numeric _x/_y/_keep and method/backbone as plain strings."""
    rows = rows.copy()
    rows["_x"], rows["_y"], rows["_keep"] = _numeric(rows, x), _numeric(rows, y), _numeric(rows, "keep")
    for col in ("method", "backbone"):
        rows[col] = rows[col].fillna("?").astype(str) if col in rows.columns else "?"
    return rows


def _fmt_keep(v: float) -> str:
    return f"{v:g}"


def plot_tradeoff(df: pd.DataFrame, x: str = "gflops", y: str | None = None,
                  out_dir: Path = Path("results/plots"), name: str | None = None,
                  formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Plot y against x, one line per (method, backbone); write one file per format and return the paths.

    Measured rows (status ok) are lines through their keep rates; method 'none' is a star per backbone;
    paper reference rows (status 'reference') are hollow markers; the Pareto front over all measured
    points is drawn as a thick translucent step line. y=None means accuracy if it has values, else throughput.
    """
    status = _status(df)
    ok = df[status == "ok"].copy()
    if ok.empty:
        raise VidpruneError(
            "no measured rows with status 'ok' to plot (all points failed, ran out of memory or are paper "
            "references). Check the table's status/error columns or rerun `vidprune sweep`."
        )
    if y is None:
        y = "accuracy" if _numeric(ok, "accuracy").notna().any() else "throughput"
    _check_column(ok, x, "x")
    _check_column(ok, y, "y")
    x_sense = COST_COLUMNS.get(x, QUALITY_COLUMNS.get(x, "min"))
    y_sense = QUALITY_COLUMNS.get(y, COST_COLUMNS.get(y, "max"))

    ok = _prepare(ok, x, y)
    ref = _prepare(df[status == "reference"], x, y)
    ref = ref[ref["_x"].notna() & ref["_y"].notna()]

    methods = sorted(set(ok["method"]) | set(ref["method"]), key=lambda m: (m != REFERENCE_METHOD, m))
    cmap = plt.get_cmap("tab10")
    colours = {m: cmap(i % 10) for i, m in enumerate(methods)}
    backbones = sorted(set(ok["backbone"]) | set(ref["backbone"]))
    markers = {b: _BACKBONE_MARKERS[i % len(_BACKBONE_MARKERS)] for i, b in enumerate(backbones)}
    styles = {b: _BACKBONE_STYLES[i % len(_BACKBONE_STYLES)] for i, b in enumerate(backbones)}
    many_backbones = len(backbones) > 1

    def error_bars(rows: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Half the IQR either side of the median for noisy points, on whichever axis is latency."""
        if "latency_ms" not in (x, y) or "noisy" not in rows.columns:
            return None, None
        half = (_numeric(rows, "latency_iqr_ms") / 2).where(_truthy(rows["noisy"]), np.nan).to_numpy()
        if np.isnan(half).all():
            return None, None
        half = np.nan_to_num(half)
        return (half if x == "latency_ms" else None), (half if y == "latency_ms" else None)

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=150, layout="constrained")
    # The legend is built from proxies: colour = method, marker/line style = backbone.
    legend: dict[str, Line2D] = {}

    # The Pareto front first, so the method lines sit on top of it.
    valid = ok[ok["_x"].notna() & ok["_y"].notna()]
    speedup_axes = x in SPEEDUP_COLUMNS and y in SPEEDUP_COLUMNS and x != y
    front = valid[pareto_mask(valid, "_x", "_y", x_sense, y_sense)].sort_values(["_x", "_y"])
    if speedup_axes:  # realized vs theoretical speedup is a calibration plot, not a trade-off: no front
        front = front.iloc[0:0]
    if not front.empty:
        ax.plot(front["_x"], front["_y"], drawstyle="steps-post" if x_sense == "min" else "steps-pre",
                color="0.5", linewidth=7, alpha=0.25, solid_capstyle="round", zorder=1)
        ax.scatter(front["_x"], front["_y"], s=150, facecolors="none", edgecolors="0.25",
                   linewidths=1.3, zorder=4)

    for (method, backbone), rows in ok.groupby(["method", "backbone"], sort=True):
        rows = rows[rows["_x"].notna() & rows["_y"].notna()]
        if rows.empty:
            continue
        colour = colours[method]
        xerr, yerr = error_bars(rows)
        if xerr is not None or yerr is not None:
            ax.errorbar(rows["_x"], rows["_y"], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour,
                        capsize=3, alpha=0.8, zorder=3)
        if method == REFERENCE_METHOD:
            ax.scatter(rows["_x"], rows["_y"], marker="*", s=340, color=colour, edgecolors="black",
                       linewidths=0.8, zorder=6)
            legend["unpruned"] = Line2D([], [], linestyle="none", marker="*", markersize=14, color=colour,
                                        markeredgecolor="black", label="none (unpruned)")
            if many_backbones:
                lo, hi = valid["_x"].min(), valid["_x"].max()
                for px, py in zip(rows["_x"], rows["_y"]):
                    # keep the label inside the axes: align it away from the nearer edge
                    pos = (px - lo) / (hi - lo) if hi > lo else 0.5
                    ha = "right" if pos > 0.8 else "left" if pos < 0.2 else "center"
                    dx = {"right": 8, "left": -8, "center": 0}[ha]
                    ax.annotate(backbone, (px, py), xytext=(dx, 10), textcoords="offset points", ha=ha,
                                va="bottom", fontsize=7, color="0.15", zorder=2.5,  # under the data, over the front
                                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none",
                                          alpha=0.6))
            continue
        rows = rows.sort_values("_keep")
        ax.plot(rows["_x"], rows["_y"], linestyle=styles[backbone], marker=markers[backbone],
                markersize=6, color=colour, linewidth=1.6, zorder=3)
        legend.setdefault(f"m:{method}", Line2D([], [], color=colour, linewidth=2.5, label=method))
        # methods with near-identical curves would write their keep labels on top of each other:
        # give each method its own corner of the marker
        dx, dy = _LABEL_OFFSETS[methods.index(method) % len(_LABEL_OFFSETS)]
        for px, py, keep in zip(rows["_x"], rows["_y"], rows["_keep"]):
            if not np.isnan(keep):
                ax.annotate(_fmt_keep(keep), (px, py), xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                            fontsize=7, color=colour, zorder=7)

    for (method, backbone), rows in ref.groupby(["method", "backbone"], sort=True):
        colour = colours[method]
        ax.scatter(rows["_x"], rows["_y"], marker=markers[backbone], s=70, facecolors="white",
                   edgecolors=[colour], linewidths=1.8, zorder=5)
        legend.setdefault(f"p:{method}", Line2D([], [], linestyle="none", marker="o", markersize=8,
                                                markerfacecolor="white", markeredgecolor=colour,
                                                markeredgewidth=1.8, label=f"{method} (paper)"))
        for px, py, keep in zip(rows["_x"], rows["_y"], rows["_keep"]):
            if not np.isnan(keep):
                ax.annotate(_fmt_keep(keep), (px, py), xytext=(4, -10), textcoords="offset points",
                            fontsize=7, color=colour, fontstyle="italic", zorder=7)

    if not front.empty:
        legend["front"] = Line2D([], [], color="0.5", linewidth=7, alpha=0.25, label="Pareto front")
    if speedup_axes:
        # realized against theoretical: points on the diagonal turn every FLOP saved into time saved
        lo = min(valid["_x"].min(), valid["_y"].min(), 1.0)
        hi = max(valid["_x"].max(), valid["_y"].max(), 1.0)
        ax.plot([lo, hi], [lo, hi], color="0.3", linestyle=":", linewidth=1.2, zorder=2)
        legend["ideal"] = Line2D([], [], color="0.3", linestyle=":", linewidth=1.2, label="realized = theoretical")
    if many_backbones:
        for backbone in backbones:
            legend[f"b:{backbone}"] = Line2D([], [], color="0.35", linestyle=styles[backbone],
                                             marker=markers[backbone], markersize=6, label=backbone)
    order = ["unpruned"] + [f"m:{m}" for m in methods] + [f"p:{m}" for m in methods] + ["front", "ideal"] \
        + [f"b:{b}" for b in backbones]
    handles = [legend[k] for k in order if k in legend]

    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    subtitle = _subtitle(ok)
    ax.set_title(f"{y} vs {x}" + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.margins(0.08)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              borderaxespad=0.0, title="colour: method\nmarker: backbone" if many_backbones else None,
              title_fontsize=8, alignment="left")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or f"{y}_vs_{x}"
    paths = []
    try:
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt.lstrip('.')}"
            fig.savefig(path, dpi=150)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
