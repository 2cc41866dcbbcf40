"""Trade-off plots (quality or throughput vs cost) with the Pareto front highlighted, one per configuration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # non-interactive: plots are only ever written to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vidprune.errors import VidpruneError  # noqa: E402
from vidprune.metrics import axis_labels  # noqa: E402
from vidprune.report.groups import (  # noqa: E402
    LEFT_OUT_COLUMNS, ConfigGroup, axes_left_out, group_rows, is_missing, left_out_records, status_of,
)
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

# One line style and marker per run (result file) when a configuration holds several runs.
_RUN_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 3)), "P")]
# Where a point's label may go, tried in this order: a direction from the point (scaled by the marker's
# radius plus a gap, in points) and the alignment that puts the text on that side. A label that fits
# none of them without covering another label or a marker, or leaving the axes, is left off.
_LABEL_PLACES = [((1, 0.3), "left", "bottom"), ((1, -0.3), "left", "top"), ((-1, 0.3), "right", "bottom"),
                 ((-1, -0.3), "right", "top"), ((0, 1), "center", "bottom"), ((0, -1), "center", "top"),
                 ((1.8, 1.2), "left", "bottom"), ((-1.8, 1.2), "right", "bottom"), ((1.8, -1.2), "left", "top"),
                 ((-1.8, -1.2), "right", "top")]
_LABEL_GAP = 2.5  # points between a marker's edge and its label
# Marker radii in points (scatter sizes are areas in points squared), for labels to keep clear of them.
_STAR_S, _FRONT_S, _PAPER_S, _LINE_MARKERSIZE = 340, 150, 70, 6


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
    return [c for c in ok.columns if usable(c) and c != "result_file"]


def _check_column(ok: pd.DataFrame, col: str, axis: str) -> None:
    if col in ok.columns and _numeric(ok, col).notna().any():
        return
    problem = "is not a column of the table" if col not in ok.columns else "has no numeric values in rows with status 'ok'"
    usable = _usable_columns(ok)
    raise VidpruneError(
        f"cannot plot {axis}='{col}': it {problem}. "
        f"Pick one of the numeric columns: {', '.join(usable) if usable else '(none)'}."
    )


def _methods(rows: pd.DataFrame) -> pd.Series:
    if "method" not in rows.columns:
        return pd.Series("?", index=rows.index, dtype=object)
    return rows["method"].map(lambda v: "?" if is_missing(v) else str(v).strip())


def _prepare(rows: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """A copy with numeric _x/_y/_keep, method as a plain string, the run (result file) and option set."""
    rows = rows.copy()
    rows["_x"], rows["_y"], rows["_keep"] = _numeric(rows, x), _numeric(rows, y), _numeric(rows, "keep")
    rows["method"] = _methods(rows)
    rows["_run"] = rows["result_file"].map(lambda v: "" if is_missing(v) else str(v)) \
        if "result_file" in rows.columns else ""
    rows["_options"] = rows["options"].map(lambda v: "" if is_missing(v) else str(v)) \
        if "options" in rows.columns else ""
    return rows[rows["_x"].notna() & rows["_y"].notna()]


def _fmt_keep(v: float) -> str:
    return f"{v:g}"


def _file_part(group: ConfigGroup) -> str:
    """A file-name part that a person can read (backbone and geometry) and that no other group shares (slug)."""
    config = group.config
    words = [str(config.get("backbone") or "")]
    if config.get("frames") is not None or config.get("size") is not None:
        words.append(f"{config.get('frames')}x{config.get('size')}")
    readable = "_".join(re.sub(r"[^0-9A-Za-z.-]+", "-", w).strip("-") for w in words if w)
    return f"{readable}_{group.slug}" if readable else group.slug


@dataclass
class TradeoffPlots:
    """What plot_tradeoff wrote, per configuration group, and the rows no plot shows (and why)."""

    files: list[tuple[str, list[Path]]]  # (group label, the paths written for it), one per drawn group
    left_out: pd.DataFrame  # groups.LEFT_OUT_COLUMNS
    several_groups: bool = False  # the rows held more than one configuration
    skipped_labels: int = 0  # point labels left off because every place for them covered another label

    @property
    def paths(self) -> list[Path]:
        return [path for _, paths in self.files for path in paths]

    def left_out_lines(self, limit: int = 6) -> list[str]:
        """One line per reason (and configuration, when there are several): which rows, up to `limit`
        named, were left out of what, and why."""
        lines = []
        records = self.left_out.assign(left_out_of=self.left_out["left_out_of"].replace({"report": "plots"}))
        for (of, reason, group), rows in records.groupby(["left_out_of", "reason", "group"], sort=False):
            names: dict[str, int] = {}
            for method, keep in zip(rows["method"], rows["keep"]):
                point = (method or "?") + (f" keep {keep:g}" if not pd.isna(keep) and method != REFERENCE_METHOD else "")
                names[point] = names.get(point, 0) + 1
            listed = [f"{point} ×{n}" if n > 1 else point for point, n in names.items()]
            shown = ", ".join(listed[:limit]) + (f" and {len(listed) - limit} more" if len(listed) > limit else "")
            where = f" in {group}" if self.several_groups and group else ""
            count = f"{len(rows)} rows" if len(rows) > 1 else "1 row"
            lines.append(f"left out of the {of}{where}: {count} ({shown}): {reason}")
        return lines


def _method_colours(methods: Sequence[str]) -> dict:
    """The same colour for a method in every file of one call; the unpruned reference first."""
    cmap = plt.get_cmap("tab10")
    ordered = sorted(set(methods), key=lambda m: (m != REFERENCE_METHOD, m))
    return {m: cmap(i % 10) for i, m in enumerate(ordered)}


def plot_tradeoff(df: pd.DataFrame, x: str = "gflops", y: str | None = None,
                  out_dir: Path = Path("results/plots"), name: str | None = None,
                  formats: Sequence[str] = ("png", "svg")) -> TradeoffPlots:
    """Plot y against x with the Pareto front, one figure per configuration group, one file per format.

    Rows are split by configuration (vidprune.report.groups: backbone, geometry, batch, device, dtype,
    precision and compile settings, runtime): points measured under different conditions never share a
    figure, a front or a line. A table of one configuration is written as `<name>.<fmt>` (name defaults
    to `<y>_vs_<x>`); with several, each group's file is `<name>_<backbone>_<frames>x<size>_<slug>.<fmt>`.

    In a figure, measured rows (status ok) are lines through their keep rates, one per method, run
    (result file) and option set, so points of separate runs are never joined; when the group holds
    several runs, each run has its own line style and marker, named in the legend. Method 'none' is a
    star per run; paper reference rows (status 'reference') are hollow markers; the Pareto front over the
    group's measured points is a thick translucent step line. The legend lists only what is drawn. Rows
    that no figure shows (failed, without a value on an axis, a paper point with no matching
    configuration) are in the result's `left_out`. y=None means accuracy if it has values, else throughput.
    """
    status = status_of(df)
    ok = df[(status == "ok").to_numpy()]
    if ok.empty:
        raise VidpruneError(
            "no measured rows with status 'ok' to plot (all points failed, ran out of memory or are paper "
            "references). Check the table's status/error columns or rerun `vidprune sweep`."
        )
    if y is None:
        y = "accuracy" if _numeric(ok, "accuracy").notna().any() else "throughput"
    _check_column(ok, x, "x")
    _check_column(ok, y, "y")

    grouping = group_rows(df)
    left_out = [grouping.left_out]
    drawable = []
    for group in grouping.groups:
        missing = [axis for axis in dict.fromkeys((x, y)) if not group.has_values(axis)]
        if not missing:
            drawable.append(group)
            left_out.append(axes_left_out(group, [x, y]))
        elif not group.plotted.empty:  # the whole configuration: one reason, not one per row
            reason = f"no measured row of this configuration has a value of {' or '.join(missing)}"
            records = left_out_records(group.plotted, group, ["plots"] * len(group.plotted), [reason] * len(group.plotted))
            left_out.append(pd.DataFrame(records, columns=LEFT_OUT_COLUMNS))
    colours = _method_colours(_methods(df))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or f"{y}_vs_{x}"
    files, skipped = [], 0
    for group in drawable:
        group_stem = stem if len(grouping.groups) == 1 else f"{stem}_{_file_part(group)}"
        fig, skipped_here = _draw_group(group, x, y, colours)
        skipped += skipped_here
        paths = []
        try:
            for fmt in formats:
                path = out_dir / f"{group_stem}.{fmt.lstrip('.')}"
                fig.savefig(path, dpi=150)
                paths.append(path)
        finally:
            plt.close(fig)
        files.append((group.label, paths))
    records = pd.concat([f for f in left_out if not f.empty], ignore_index=True) if any(not f.empty for f in left_out) \
        else grouping.left_out
    return TradeoffPlots(files=files, left_out=records, several_groups=len(grouping.groups) > 1, skipped_labels=skipped)


def _draw_group(group: ConfigGroup, x: str, y: str, colours: dict) -> tuple[plt.Figure, int]:
    """One group's figure, and how many point labels were left off for lack of room."""
    x_sense = COST_COLUMNS.get(x, QUALITY_COLUMNS.get(x, "min"))
    y_sense = QUALITY_COLUMNS.get(y, COST_COLUMNS.get(y, "max"))
    ok = _prepare(group.ok, x, y)
    ref = _prepare(group.references, x, y)
    runs = list(dict.fromkeys(ok.sort_values("timestamp", kind="stable")["_run"] if "timestamp" in ok.columns
                              else ok["_run"]))
    several_runs = len(runs) > 1
    run_style = {run: _RUN_STYLES[i % len(_RUN_STYLES)] for i, run in enumerate(runs)}

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
    legend: dict[str, Line2D] = {}  # proxies that look like what was drawn, keyed like the drawn artists' gid
    labels: list[tuple[int, Annotation, float]] = []  # (priority, label, its marker's radius): low priority first
    markers: list[tuple[float, float, float]] = []  # (x, y, radius in points) of every drawn marker

    def label(text: str, point: tuple, colour, priority: int, radius: float, **style) -> None:
        # a faint white box keeps a label readable where a line passes under it
        style.setdefault("bbox", dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.7))
        annotation = ax.annotate(text, point, xytext=(0, 0), textcoords="offset points", fontsize=7, color=colour,
                                 zorder=7, **style)
        annotation.set_in_layout(False)
        labels.append((priority, annotation, radius))

    def drawn(xs, ys, s: float) -> None:
        markers.extend((px, py, np.sqrt(s) / 2) for px, py in zip(xs, ys))

    speedup_axes = x in SPEEDUP_COLUMNS and y in SPEEDUP_COLUMNS and x != y
    front = ok[pareto_mask(ok, "_x", "_y", x_sense, y_sense)].sort_values(["_x", "_y"])
    if speedup_axes:  # realized vs theoretical speedup is a calibration plot, not a trade-off: no front
        front = front.iloc[0:0]
    if len(front) > 1:
        ax.plot(front["_x"], front["_y"], drawstyle="steps-post" if x_sense == "min" else "steps-pre",
                color="0.5", linewidth=7, alpha=0.25, solid_capstyle="round", zorder=1, gid="front")
    if not front.empty:
        ax.scatter(front["_x"], front["_y"], s=_FRONT_S, facecolors="none", edgecolors="0.25", linewidths=1.3,
                   zorder=4, gid="front")
        drawn(front["_x"], front["_y"], _FRONT_S)
        one = len(front) == 1  # a single point draws no line: neither does its legend entry
        legend["front"] = Line2D([], [], color="0.5", linewidth=0 if one else 7, alpha=1.0 if one else 0.25,
                                 linestyle="none" if one else "-", marker="o", markersize=9, markerfacecolor="none",
                                 markeredgecolor="0.25", label="Pareto front (one point)" if one else "Pareto front")

    methods = sorted(set(ok["method"]) | set(ref["method"]), key=lambda m: (m != REFERENCE_METHOD, m))
    for (method, run, _), rows in ok.groupby(["method", "_run", "_options"], sort=True):
        colour = colours[method]
        xerr, yerr = error_bars(rows)
        if xerr is not None or yerr is not None:
            ax.errorbar(rows["_x"], rows["_y"], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour,
                        capsize=3, alpha=0.8, zorder=3)
        linestyle, marker = run_style[run]
        if method == REFERENCE_METHOD:
            ax.scatter(rows["_x"], rows["_y"], marker="*", s=_STAR_S, color=colour, edgecolors="black",
                       linewidths=0.8, zorder=6, gid="unpruned")
            drawn(rows["_x"], rows["_y"], _STAR_S)
            legend["unpruned"] = Line2D([], [], linestyle="none", marker="*", markersize=14, color=colour,
                                        markeredgecolor="black", label="none (unpruned)")
            if several_runs:
                for px, py in zip(rows["_x"], rows["_y"]):
                    label(f"run {runs.index(run) + 1}", (px, py), "0.15", 0, np.sqrt(_STAR_S) / 2)
            continue
        rows = rows.sort_values("_keep")
        ax.plot(rows["_x"], rows["_y"], linestyle=linestyle, marker=marker, markersize=_LINE_MARKERSIZE, color=colour,
                linewidth=1.6, zorder=3, gid=f"method:{method}")
        drawn(rows["_x"], rows["_y"], _LINE_MARKERSIZE ** 2)
        legend.setdefault(f"method:{method}", Line2D([], [], color=colour, linewidth=2.5, label=method))
        for px, py, keep in zip(rows["_x"], rows["_y"], rows["_keep"]):
            if not np.isnan(keep):
                label(_fmt_keep(keep), (px, py), colour, 1, _LINE_MARKERSIZE / 2)

    for method, rows in ref.groupby("method", sort=True):
        colour = colours.get(method, "0.3")
        ax.scatter(rows["_x"], rows["_y"], marker="o", s=_PAPER_S, facecolors="white", edgecolors=[colour],
                   linewidths=1.8, zorder=5, gid=f"paper:{method}")
        drawn(rows["_x"], rows["_y"], _PAPER_S)
        legend[f"paper:{method}"] = Line2D([], [], linestyle="none", marker="o", markersize=8,
                                           markerfacecolor="white", markeredgecolor=colour,
                                           markeredgewidth=1.8, label=f"{method} (paper)")
        for px, py, keep in zip(rows["_x"], rows["_y"], rows["_keep"]):
            if not np.isnan(keep):
                label(_fmt_keep(keep), (px, py), colour, 2, np.sqrt(_PAPER_S) / 2, fontstyle="italic")

    if speedup_axes:
        # realized against theoretical: points on the diagonal turn every FLOP saved into time saved
        lo = min(ok["_x"].min(), ok["_y"].min(), 1.0)
        hi = max(ok["_x"].max(), ok["_y"].max(), 1.0)
        ax.plot([lo, hi], [lo, hi], color="0.3", linestyle=":", linewidth=1.2, zorder=2, gid="ideal")
        legend["ideal"] = Line2D([], [], color="0.3", linestyle=":", linewidth=1.2, label="realized = theoretical")
    drawn_runs = set(ok.loc[ok["method"] != REFERENCE_METHOD, "_run"])
    if several_runs:
        names = _run_names(runs)
        for i, run in enumerate(runs):
            linestyle, marker = run_style[run]
            has_line = run in drawn_runs
            legend[f"run:{i + 1}"] = Line2D([], [], color="0.35", linestyle=linestyle if has_line else "none",
                                            marker=marker if has_line else None, markersize=6,
                                            label=f"run {i + 1}: {names[run]}")
    order = ["unpruned"] + [f"method:{m}" for m in methods] + [f"paper:{m}" for m in methods] + ["front", "ideal"] \
        + [f"run:{i + 1}" for i in range(len(runs))]
    handles = []
    for key in order:
        if key in legend:
            legend[key].set_gid(key)
            handles.append(legend[key])

    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    fig.suptitle(f"{y} vs {x}\n{group.label}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(0.08)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              borderaxespad=0.0, title="colour: method\nline style: run" if several_runs else None,
              title_fontsize=8, alignment="left")
    return fig, _place_labels(fig, ax, [(a, r) for _, a, r in sorted(labels, key=lambda item: item[0])], markers)


def _run_names(runs: Sequence[str]) -> dict[str, str]:
    """Short names for result files in a legend: the parts of their names that differ (for sweep tables, the
    method and the time: the backbone, geometry, device and dtype are the group's, in the title)."""
    stems = [Path(run).name.rsplit(".", 1)[0] if run else "" for run in runs]
    parts = [stem.split("_") for stem in stems]
    if all(stems) and len({len(p) for p in parts}) == 1 and len(set(stems)) == len(stems):
        differ = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
        short = ["_".join(p[i] for i in differ) for p in parts]
        if len(differ) < len(parts[0]):
            return dict(zip(runs, short))
    return {run: (Path(run).name if run else "no file") for run in runs}


def _place_labels(fig: plt.Figure, ax: plt.Axes, labels: list[tuple[Annotation, float]],
                  markers: list[tuple[float, float, float]]) -> int:
    """Put each label at the first of _LABEL_PLACES around its marker where it covers no label placed before
    it and no marker and stays inside the axes; remove it when there is none. Returns how many were removed."""
    if not labels:
        return 0
    fig.canvas.draw()  # fixes the layout, so the extents below are where the labels will be
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    pixels = fig.dpi / 72.0
    centres = ax.transData.transform([(mx, my) for mx, my, _ in markers]) if markers else np.zeros((0, 2))
    taken = [Bbox.from_bounds(cx - r * pixels, cy - r * pixels, 2 * r * pixels, 2 * r * pixels)
             for (cx, cy), (_, _, r) in zip(centres, markers)]
    removed = 0
    for annotation, radius in labels:
        reach = radius + _LABEL_GAP
        for (dx, dy), ha, va in _LABEL_PLACES:
            annotation.xyann = (dx * reach, dy * reach)
            annotation.set_horizontalalignment(ha)
            annotation.set_verticalalignment(va)
            box = annotation.get_window_extent(renderer)
            if box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1 \
                    and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
        else:
            annotation.remove()
            removed += 1
    return removed
