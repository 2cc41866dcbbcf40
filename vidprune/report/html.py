"""One self-contained, interactive HTML page over result tables (`vidprune report`).

Per configuration group (vidprune.report.groups): a Pareto plot of quality against cost with selectors
for both axes, one trace per method through its knob values, the unpruned reference, paper reference
points and the front; the realized-vs-theoretical speedup plot; the summary table with sortable columns;
the rows left out and why. Then the environment and provenance of every source table.

The plots are plotly.js, inlined from the plotly Python package (so the page opens offline and when
e-mailed, and a Content-Security-Policy forbids every request to a host). The data is embedded once as
JSON and the traces are built in the browser for the axes chosen, so switching an axis needs no
pre-rendered copy of every combination; plotly.js compiles while the page is built, and groups are drawn
as they come into view (then the rest in the background), so the first screen of a 10,000-row report
comes almost as soon as a small one's (docs/report.md has the measurements).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

import vidprune
from vidprune.errors import VidpruneError
from vidprune.report.groups import ConfigGroup, Grouping, group_rows, is_missing, numeric, status_of
from vidprune.report.pareto import pareto_mask
from vidprune.report.plot import AXIS_LABELS
from vidprune.report.tables import cell_text, summary_table
from vidprune.results import COST_COLUMNS, QUALITY_COLUMNS, REFERENCE_METHOD, add_speedups, read_tables

# The axes a reader can pick, in the order the selectors list them; only those a group measured are offered.
COST_AXES = ("gflops", "latency_ms", "peak_mem_mib", "energy_j_per_clip")
# top1 is offered only where accuracy is absent (a table with both repeats one in the other).
QUALITY_AXES = ("accuracy", "top1", "agreement", "cosine", "throughput")
SPEEDUP_AXES = ("speedup_flops", "speedup_latency")
# What each source table says about where its numbers came from (plus every env_* column it has).
PROVENANCE_COLUMNS = ("device", "device_name", "dtype", "runtime", "torch_version", "vidprune_version", "git_sha")

PLOTLY_INSTALL_HINT = "pip install plotly (or: pip install 'vidprune[report]')"
# Plotly's default qualitative colours (D3 category10), one per method, the same in every group.
METHOD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")
# Text shown when hovering a point (with its method, knob value, status, options and latency).
HOVER_TEXT_COLUMNS = ("knob", "tokens_per_block", "source", "reference_note", "notes")
# A series with more points than this gets no keep labels on its markers (they would cover the plot).
MAX_LABELLED_POINTS = 12
# No request to any host: scripts and styles are inline, images (plotly's PNG export) are data:/blob:.
# (blob: is the page's own plotly.js text, handed to the browser as a script: see assets/load_plotly.js.)
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline' blob:; style-src 'unsafe-inline'; "
                           "img-src data: blob:; font-src data:")


def plotly_js() -> tuple[str, str]:
    """The plotly.js bundle shipped inside the plotly Python package, and its version."""
    try:
        from plotly.offline import get_plotlyjs, get_plotlyjs_version
    except ImportError as exc:
        raise VidpruneError(f"`vidprune report` needs plotly, which is not installed ({exc}). "
                            f"{PLOTLY_INSTALL_HINT}.") from exc
    return get_plotlyjs(), get_plotlyjs_version()


def _asset(name: str) -> str:
    return (resources.files("vidprune.report") / "assets" / name).read_text(encoding="utf-8")


def _text(value) -> str:
    return "" if is_missing(value) else str(value).strip()


def _truthy(value) -> bool:
    return _text(value).lower() in ("true", "1", "1.0", "yes")


def _rounded(values: pd.Series) -> list[float | None]:
    """Numbers for the page: 6 significant digits (the hover shows 4), None where missing."""
    return [None if not math.isfinite(v) else float(f"{v:.6g}") for v in values.to_numpy(dtype=float)]


class _Strings:
    """Every distinct text of the page's hover fields once: points refer to them by position (10,000 rows
    repeat a handful of options, notes and file names)."""

    def __init__(self) -> None:
        self.values: list[str] = [""]
        self._ids: dict[str, int] = {"": 0}

    def ids(self, texts: Iterable[str]) -> list[int]:
        out = []
        for text in texts:
            index = self._ids.get(text)
            if index is None:
                index = self._ids[text] = len(self.values)
                self.values.append(text)
            out.append(index)
        return out


def _texts(df: pd.DataFrame, column: str) -> list[str]:
    return [_text(v) for v in df[column]] if column in df.columns else [""] * len(df)


def _file_names(df: pd.DataFrame) -> list[str]:
    return [Path(p).name if p else "" for p in _texts(df, "result_file")]


def _axes(group: ConfigGroup) -> tuple[list[str], list[str]]:
    costs = [c for c in COST_AXES if group.has_values(c)]
    qualities = [c for c in QUALITY_AXES if group.has_values(c)]
    if "accuracy" in qualities and "top1" in qualities:
        qualities.remove("top1")
    return costs, qualities


def _series(methods: list[str], options: list[str], sources: list[str], keep: pd.Series,
            kinds: list[str]) -> list[dict]:
    """The traces of a Pareto plot: the unpruned rows; one line per measured method, and per option set
    when a method was run with several (`variant` numbers them, for their line style); one hollow set per
    paper method and source, named after the source. Points in a line go by knob value."""
    option_sets: dict[str, list] = {}
    for method, option, kind in zip(methods, options, kinds):
        if kind == "measured" and option not in option_sets.setdefault(method, []):
            option_sets[method].append(option)
    for sets in option_sets.values():
        sets.sort()
    order = np.lexsort((np.arange(len(methods)), keep.fillna(np.inf).to_numpy()))
    by_key: dict[tuple, dict] = {}
    for pos in order:
        method, kind, variant = methods[pos], kinds[pos], 0
        if kind == "unpruned":
            key, name = ("unpruned",), f"{REFERENCE_METHOD} (unpruned)"
        elif kind == "paper":
            key, name = ("paper", method, sources[pos]), f"{method} ({sources[pos] or 'paper'})"
        else:
            several = len(option_sets[method]) > 1
            variant = option_sets[method].index(options[pos])
            key, name = ("measured", method, options[pos]), method + (f" {options[pos]}" if several else "")
        series = by_key.setdefault(key, {"name": name, "method": method, "kind": kind, "variant": variant,
                                         "points": []})
        series["points"].append(int(pos))
    rank = {"unpruned": 0, "measured": 1, "paper": 2}
    return sorted(by_key.values(), key=lambda s: (rank[s["kind"]], s["method"], s["name"]))


def _fronts(values: dict, costs: list[str], qualities: list[str], measured: np.ndarray) -> dict:
    """The Pareto front over measured points (as `vidprune plot` draws it, paper points aside) for every
    pair of axes, as point positions ordered by cost."""
    fronts = {}
    for cost in costs:
        for quality in qualities:
            frame = pd.DataFrame({"x": values[cost], "y": values[quality]}, dtype=float)
            frame[~measured] = np.nan
            mask = pareto_mask(frame, "x", "y", COST_COLUMNS.get(cost, "min"), QUALITY_COLUMNS.get(quality, "max"))
            on_front = np.flatnonzero(mask.to_numpy())
            x, y = frame["x"].to_numpy()[on_front], frame["y"].to_numpy()[on_front]
            fronts[f"{cost}|{quality}"] = [int(i) for i in on_front[np.lexsort((y, x))]]
    return fronts


def _table(group: ConfigGroup) -> dict:
    """The group's `vidprune table` rows (its measured rows, failed ones included, and its paper rows),
    with each row's marks: failed, noisy, paper."""
    rows = pd.concat([group.rows, group.references]).reset_index(drop=True)
    summary = summary_table(rows, keep_positions=True)
    status = status_of(rows).to_numpy()[summary.index]
    noisy = np.array([_truthy(v) for v in rows["noisy"]])[summary.index] if "noisy" in rows.columns \
        else np.zeros(len(summary), dtype=bool)
    unpruned = np.array(_texts(rows, "method"))[summary.index] == REFERENCE_METHOD
    errors = np.array(_texts(rows, "error"), dtype=object)[summary.index]
    marks, classes = [], []
    for s, is_noisy, is_unpruned in zip(status, noisy, unpruned):
        mark = (["failed"] if s not in ("ok", "reference") else []) + (["noisy"] if is_noisy else []) \
            + (["paper"] if s == "reference" else [])
        marks.append(" ".join(mark))
        classes.append(" ".join(mark + (["unpruned"] if is_unpruned else [])))
    summary = summary.assign(marks=marks, file=np.array(_file_names(rows), dtype=object)[summary.index])
    return {"columns": [str(c) for c in summary.columns],
            "rows": [[cell_text(v) for v in row] for row in summary.itertuples(index=False)],
            "classes": classes, "titles": [e.splitlines()[0] if e else "" for e in errors]}


def _left_out_records(left_out: pd.DataFrame) -> list[dict]:
    return [{"method": r.method, "knob": r.knob, "keep": "" if pd.isna(r.keep) else f"{r.keep:g}",
             "status": r.status, "left_out_of": r.left_out_of, "reason": r.reason,
             "file": Path(r.result_file).name if r.result_file else ""}
            for r in left_out.itertuples(index=False)]


def _notes(group: ConfigGroup, costs: list[str], qualities: list[str], speedup: bool) -> list[str]:
    if group.ok.empty:
        return ["no measured row with status ok in this configuration: nothing to plot (see the table)"]
    notes = []
    if not costs or not qualities:
        missing = f"cost ({', '.join(COST_AXES)})" if not costs else f"quality ({', '.join(QUALITY_AXES)})"
        notes.append(f"no {missing} column was measured here, so no trade-off plot (a count-only sweep has "
                     "GFLOPs but no quality: add a timed or fidelity metric)")
    if not speedup:
        notes.append("no realized-vs-theoretical speedup plot: it needs latency and an unpruned row of this "
                     "configuration")
    unmeasured = [c for c in COST_AXES + QUALITY_AXES if c not in costs + qualities and c != "top1"]
    if unmeasured:
        notes.append("not measured in this configuration: " + ", ".join(unmeasured))
    return notes


def _group_payload(group: ConfigGroup, left_out: pd.DataFrame, strings: _Strings) -> dict:
    costs, qualities = _axes(group)
    points = group.plotted
    status = status_of(points).tolist()
    methods = _texts(points, "method")
    kinds = ["paper" if s == "reference" else "unpruned" if m == REFERENCE_METHOD else "measured"
             for s, m in zip(status, methods)]
    values = {c: _rounded(numeric(points, c)) for c in dict.fromkeys(costs + qualities + list(SPEEDUP_AXES))}
    speedup = any(k != "paper" and x is not None and y is not None
                  for k, x, y in zip(kinds, values["speedup_flops"], values["speedup_latency"]))
    keep = numeric(points, "keep")
    options = _texts(points, "options")
    # hover fields: text as positions in the page's string table, numbers as they are
    fields = {column: strings.ids(_texts(points, column)) for column in HOVER_TEXT_COLUMNS}
    fields["status"] = strings.ids(status)
    fields["options"] = strings.ids("" if o == "{}" else o for o in options)
    fields["file"] = strings.ids(_file_names(points))
    return {
        "id": group.slug, "label": group.label,
        "config": {k: ("" if v is None else v) for k, v in group.config.items()},
        "counts": {"rows": len(group.rows), "ok": len(group.ok), "failed": len(group.failed),
                   "references": len(group.references)},
        "axes": {"cost": costs, "quality": qualities, "default_cost": costs[0] if costs else None,
                 "default_quality": qualities[0] if qualities else None},
        "points": {"method": methods, "kind": kinds, "keep": _rounded(keep), "values": values,
                   "latency_ms": _rounded(numeric(points, "latency_ms")),
                   "latency_iqr_ms": _rounded(numeric(points, "latency_iqr_ms")),
                   "noisy": [int(_truthy(v)) for v in points["noisy"]] if "noisy" in points.columns else [0] * len(points),
                   "fields": fields},
        "series": _series(methods, options, _texts(points, "source"), keep, kinds),
        "front": _fronts(values, costs, qualities, np.array([k != "paper" for k in kinds], dtype=bool)),
        "speedup": speedup,
        "table": _table(group),
        "left_out": _left_out_records(left_out[left_out["group_id"] == group.slug]),
        "notes": _notes(group, costs, qualities, speedup),
    }


def _provenance(df: pd.DataFrame) -> list[dict]:
    files = df["result_file"].map(_text) if "result_file" in df.columns else pd.Series("", index=df.index)
    out = []
    for path, rows in df.groupby(files.to_numpy(), sort=True):
        status = status_of(rows).replace("", "missing")
        fields = []
        for column in PROVENANCE_COLUMNS + tuple(sorted(c for c in rows.columns if str(c).startswith("env_"))):
            if column in rows.columns:
                values = [v for v in dict.fromkeys(_text(x) for x in rows[column].dropna().unique()) if v]
                if values:
                    fields.append([column, ", ".join(values)])
        stamps = sorted({_text(v) for v in rows.get("timestamp", pd.Series(dtype=object)).dropna().unique()} - {""})
        if stamps:
            fields.append(["timestamps", stamps[0] if stamps[0] == stamps[-1] else f"{stamps[0]} to {stamps[-1]}"])
        out.append({"file": Path(path).name if path else "(table passed in memory)", "path": path,
                    "rows": len(rows),
                    "statuses": ", ".join(f"{s} {n}" for s, n in status.value_counts().sort_index().items()),
                    "fields": fields})
    return out


def report_payload(df: pd.DataFrame, title: str = "vidprune report") -> dict:
    """Everything the page shows, as JSON-ready values (NaN is None). Raises VidpruneError when there is
    nothing to report, as `vidprune plot` does."""
    if df.empty:
        raise VidpruneError("the result tables have no rows. Run `vidprune sweep` first or check the files.")
    if "method" not in df.columns:
        raise VidpruneError("not a vidprune result table (missing column: method). "
                            "Pass tables written by `vidprune sweep`.")
    df = df.reset_index(drop=True)
    if all(numeric(df, c).isna().all() for c in SPEEDUP_AXES):
        df = add_speedups(df)  # a frame built by hand, or from tables older than the speedup columns
    if not (status_of(df) == "ok").any():
        raise VidpruneError(
            "no measured rows with status 'ok' to report (all points failed, ran out of memory or are paper "
            "references). Check the table's status/error columns or rerun `vidprune sweep`.")
    grouping: Grouping = group_rows(df, axes=COST_AXES + QUALITY_AXES)
    strings = _Strings()
    methods = sorted({_text(m) for m in df["method"]} - {""}, key=lambda m: (m != REFERENCE_METHOD, m))
    report_left_out = grouping.left_out[grouping.left_out["group_id"] == ""]
    return {
        "title": title,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "vidprune_version": vidprune.__version__,
        "rows": len(df), "tables": int(df["result_file"].nunique()) if "result_file" in df.columns else 1,
        "colours": {m: METHOD_COLOURS[i % len(METHOD_COLOURS)] for i, m in enumerate(methods)},
        "axis_labels": {c: AXIS_LABELS.get(c, c) for c in COST_AXES + QUALITY_AXES + SPEEDUP_AXES},
        "max_labelled_points": MAX_LABELLED_POINTS,
        "groups": [_group_payload(g, grouping.left_out, strings) for g in grouping.groups],
        "strings": strings.values,
        "left_out": _left_out_records(report_left_out),
        "provenance": _provenance(df),
    }


def _json_for_script(payload: dict) -> str:
    # '<' escaped as \u003c, so no string in the data can close the <script> element it sits in
    return json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_report(df: pd.DataFrame, title: str = "vidprune report") -> str:
    """The report page for a frame of result rows, as one HTML string with everything inlined."""
    bundle, plotly_version = plotly_js()
    payload = report_payload(df, title)
    payload["plotly_version"] = plotly_version
    if "</script" in bundle.lower() or "<!--" in bundle:  # would end (or confuse) the element holding it
        raise VidpruneError(f"this plotly.js ({plotly_version}) cannot be inlined as it is; "
                            "install another plotly version (pip install -U plotly).")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_SECURITY_POLICY}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"vidprune {html.escape(vidprune.__version__)}, plotly.js {plotly_version}\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_asset('report.css')}</style>\n</head>\n<body>\n"
        "<noscript>This report draws its plots and tables with JavaScript; open it in a browser with scripts "
        "enabled.</noscript>\n<div id=\"report\"></div>\n"
        # plotly.js first, so that it compiles (off the main thread) while the page is built
        f"<script type=\"text/plain\" id=\"plotly-js\">{bundle}</script>\n"
        f"<script>\n{_asset('load_plotly.js')}</script>\n"
        f"<script type=\"application/json\" id=\"vidprune-data\">{_json_for_script(payload)}</script>\n"
        f"<script>\n{_asset('report.js')}</script>\n</body>\n</html>\n"
    )


def write_report(patterns_or_frame: Iterable[str] | pd.DataFrame, out: Path | str,
                 title: str = "vidprune report") -> Path:
    """Read result tables (glob patterns or paths, as `vidprune plot`/`table` take them) or use a frame of
    rows, and write the report to `out`. Bad input raises VidpruneError with one line saying the fix."""
    out = Path(out)
    if out.is_dir():
        raise VidpruneError(f"'{out}' is a folder; pass the report's file name, e.g. {out / 'report.html'}.")
    if isinstance(patterns_or_frame, pd.DataFrame):
        df = patterns_or_frame
    elif isinstance(patterns_or_frame, (str, Path)):
        df = read_tables([str(patterns_or_frame)])
    else:
        patterns = [str(p) for p in patterns_or_frame]
        if not patterns:
            raise VidpruneError("no result tables given. Pass CSV or Parquet files written by `vidprune sweep`.")
        df = read_tables(patterns)
    page = render_report(df, title)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise VidpruneError(f"cannot write the report to '{out}': {exc.strerror or exc}. Choose another --out.") from None
    return out
