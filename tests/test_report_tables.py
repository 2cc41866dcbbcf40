import re

import pandas as pd
import pytest
from rich.console import Console
from rich.table import Table

from vidprune.report.noise import MARK as NOISY_MARK
from vidprune.report.noise import noisy_across_runs, noisy_rows
from vidprune.report.tables import cell_text, render_rich, summary_table, to_latex, to_markdown
from vidprune.results import add_speedups, to_frame

COMMON = dict(backbone="vit_b", knob="keep", frames=16, size=224, batch=1, device="cpu", dtype="float32",
              params_m=86.2, source="measured", status="ok")


def table() -> pd.DataFrame:
    rows = [dict(COMMON, method="none", keep=1.0, gflops=180.0, latency_ms=400.0, latency_iqr_ms=5.0,
                 throughput=2.5, peak_mem_mib=900.0)]
    for keep, g in [(0.7, 130.0), (0.5, 107.82), (0.3, 70.0)]:
        rows.append(dict(COMMON, method="evad", keep=keep, gflops=g, latency_ms=g * 2.2, latency_iqr_ms=6.04,
                         throughput=3.0, peak_mem_mib=700.0))
        rows.append(dict(COMMON, method="random", keep=keep, gflops=g + 2, latency_ms=g * 2.3,
                         throughput=2.9, peak_mem_mib=700.0))
    rows.append(dict(COMMON, method="evad", keep=0.5, gflops=99.0, source="paper: EVAD Table 2a",
                     status="reference"))
    rows.append(dict(COMMON, method="random", keep=0.1, status="failed", error="boom"))
    # the same method on another input size has its own reference: no change computed without one
    rows.append(dict(COMMON, method="evad", keep=0.5, size=160, gflops=50.0))
    return to_frame(rows)


def test_paper_points_compare_with_the_papers_own_reference():
    df = table()
    paper_base = dict(COMMON, method="none", keep=1.0, gflops=220.0, source="paper: EVAD Table 2a",
                      status="reference")
    s = summary_table(pd.concat([df, to_frame([paper_base])], ignore_index=True))
    assert row(s, "evad", 0.5, status="reference")["gflops_change"] == "-55.0%"  # 99 / 220 - 1
    assert row(s, "none", 1.0, status="reference")["gflops_change"] == "ref"
    assert row(s, "none", 1.0)["gflops_change"] == "ref"


def row(summary, method, keep, status="ok", size_gflops=None):
    sel = summary[(summary["method"] == method) & (summary["keep"] == keep) & (summary["status"] == status)]
    if size_gflops is not None:
        sel = sel[sel["gflops"] == size_gflops]
    assert len(sel) == 1
    return sel.iloc[0]


def test_gflops_change_vs_unpruned_reference():
    s = summary_table(table())
    assert row(s, "evad", 0.5, size_gflops=107.82)["gflops_change"] == "-40.1%"  # 107.82/180 - 1 = -0.401
    assert row(s, "random", 0.7)["gflops_change"] == "-26.7%"  # 132/180
    assert row(s, "none", 1.0)["gflops_change"] == "ref"
    # a paper point is never compared with our measurement, only with the same paper's unpruned point
    assert row(s, "evad", 0.5, status="reference")["gflops_change"] == ""
    assert row(s, "evad", 0.5, size_gflops=50.0)["gflops_change"] == ""  # no 16x160 unpruned row
    assert row(s, "random", 0.1, status="failed")["gflops_change"] == ""


def test_columns_latency_and_order():
    s = summary_table(table()[lambda d: d["size"] == 224])
    assert list(s.columns) == ["method", "backbone", "keep", "gflops", "gflops_change", "params_m",
                               "latency_ms", "throughput", "peak_mem_mib", "status"]
    assert row(s, "none", 1.0)["latency_ms"] == "400.0 ± 5.0"
    assert row(s, "evad", 0.3)["latency_ms"] == "154.0 ± 6.0"
    assert row(s, "random", 0.3)["latency_ms"] == "161.0"  # no IQR recorded
    assert s.iloc[0]["method"] == "none"  # the unpruned row leads, failed rows come last
    assert s.iloc[-1]["status"] == "failed"
    both = summary_table(table())  # two input shapes: an input column says which is which
    assert both.columns[2] == "input" and both.iloc[0]["input"] == "16x160"


def test_quality_columns_are_kept():
    df = table()
    df["accuracy"] = 80.0
    assert "accuracy" in summary_table(df).columns


def test_markdown_has_header_separator():
    md = to_markdown(summary_table(table()))
    lines = md.strip().splitlines()
    assert lines[0].startswith("| method | backbone |")
    assert set(lines[1]) <= set("|:-") and lines[1].count("|") == lines[0].count("|")
    assert len(lines) == 2 + len(table())
    assert "-40.1%" in md and "400.0 ± 5.0" in md


def test_latex():
    tex = to_latex(summary_table(table()))
    assert tex.startswith("\\begin{tabular}{lllrrrrrrrl}")
    assert "-40.1\\%" in tex and "$\\pm$" in tex and "gflops\\_change" in tex
    assert tex.rstrip().endswith("\\end{tabular}")


def rendered(renderable, width: int) -> str:
    console = Console(width=width, record=True)
    console.print(renderable)
    return console.export_text()


ESSENTIAL = ["method", "backbone", "input", "keep", "gflops", "gflops_change", "latency_ms", "status"]


def assert_rows_in_full(text: str, summary: pd.DataFrame, width: int, hoisted: tuple = ()) -> None:
    """Every identity and headline value of every row, whole, on that row's line, rows in order; no line
    wider than the terminal, no cut cell or header."""
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    header = next(i for i, line in enumerate(lines) if line.split("│")[0].strip("┃ ").startswith("method"))
    for col in ESSENTIAL:
        if col in summary.columns and col not in hoisted:
            assert re.search(rf"(^|[\s┃]){col}([\s┃]|$)", lines[header]), col
    at = header
    for _, row in summary.iterrows():
        values = [cell_text(row[c]) for c in ESSENTIAL if c in summary.columns and c not in hoisted]
        pattern = r"[\s│]+(?:.*[\s│]+)?".join(re.escape(v) for v in values if v)
        at = next(i for i in range(at + 1, len(lines)) if re.search(pattern, lines[i]))
    for col in hoisted:  # a value every row shares, stated once in the title
        assert f"{col} {summary[col].iloc[0]}" in "\n".join(lines[:header])


def examples_table() -> pd.DataFrame:
    """The README's example sweeps: two processes of vit-b with agreement/cosine, as `vidprune table` reads them."""
    rows = []
    for method, none_ms in (("evad", 1514.7), ("random", 1828.2)):
        rows.append(dict(COMMON, method="none", keep=1.0, gflops=180.34, latency_ms=none_ms, latency_iqr_ms=242.4,
                         throughput=0.662, peak_mem_mib=125.0, agreement=1.0, cosine=1.0))
        for keep, g in [(0.8, 130.87), (0.7, 112.79), (0.6, 98.16)]:
            rows.append(dict(COMMON, method=method, keep=keep, gflops=g, latency_ms=1350.3, latency_iqr_ms=77.5,
                             throughput=0.696, peak_mem_mib=226.0, agreement=0.25, cosine=0.994))
    return add_speedups(to_frame(rows))


@pytest.mark.parametrize("width", [80, 120, 200])
def test_render_rich_every_row_in_full_at_any_width(width):
    summary = summary_table(examples_table())
    text = rendered(render_rich(summary, "results"), width)
    assert_rows_in_full(text, summary, width)
    shown = set(re.findall(r"[a-z_0-9]+", text))
    hidden = [c for c in summary.columns if c not in shown]
    if hidden:  # what is in no table is named, so a reader knows where to look
        assert f"not shown at {width} columns: {', '.join(hidden)}" in " ".join(text.split())
    if width == 200:  # a wide terminal shows the one table it always did
        assert not hidden and "continued" not in text and text.count("┏") == 1


def test_render_rich_narrow_terminal_puts_the_rest_in_a_second_table():
    summary = summary_table(examples_table())
    text = rendered(render_rich(summary, "results"), 80)
    assert "results (continued)" in text
    first, second = text.split("results (continued)")
    for col in ("throughput", "speedup_latency"):  # not room for both tables' columns in one
        assert (col in first) != (col in second)
    assert all(c in second for c in ("method", "backbone", "keep"))  # the second table names its rows too


def test_render_rich_long_values_move_a_shared_backbone_to_the_title():
    rows = [dict(COMMON, method="none", keep=1.0, backbone="timesformer-b", gflops=1190.12, latency_ms=12345.6,
                 latency_iqr_ms=1234.5, status="ok"),
            dict(COMMON, method="poguise", keep=0.55, backbone="timesformer-b", gflops=600.12, latency_ms=7345.6,
                 latency_iqr_ms=234.5, status="ok", frames=8),
            dict(COMMON, method="poguise", keep=0.3, backbone="timesformer-b", gflops=300.0, status="reference",
                 source="paper: PoGuiSe Table 3")]
    summary = summary_table(to_frame(rows))
    assert "input" in summary.columns
    text = rendered(render_rich(summary, "results"), 80)
    assert_rows_in_full(text, summary, 80, hoisted=("backbone",))
    assert "results (backbone timesformer-b)" in text


def test_render_rich_never_cuts_a_cell_even_when_nothing_fits():
    summary = summary_table(examples_table())
    text = rendered(render_rich(summary, "results"), 50)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 50
    assert "1514.7" in text and "1828.2" in text


def test_render_rich_marks_noisy_rows():
    df = examples_table()
    summary = summary_table(df, keep_positions=True)
    spreads = noisy_across_runs(df)
    text = rendered(render_rich(summary, "results", noisy_rows=noisy_rows(spreads)), 200)
    marked = [line for line in text.splitlines() if NOISY_MARK in line]
    assert len(marked) == 2 and all("│ none " in line for line in marked)


def test_render_rich_as_wide_as_it_was_when_it_fits():
    summary = summary_table(table())
    old = Table(title="results", header_style="bold")
    for col in summary.columns:
        old.add_column(str(col), justify="left" if col in ("method", "backbone", "input", "status") else "right",
                       no_wrap=True)
    for values in summary.itertuples(index=False):
        old.add_row(*[cell_text(v) for v in values])
    t = render_rich(summary, "results")
    assert t.row_count == len(table())
    assert rendered(t, 200) == rendered(old, 200)
    assert "-40.1%" in rendered(t, 200)


def test_keep_positions_maps_summary_rows_back_to_their_source_rows():
    df = table().sample(frac=1.0, random_state=0)
    df.index = [f"row{i}" for i in range(len(df))]  # labels, not positions
    kept = summary_table(df, keep_positions=True)
    plain = summary_table(df)
    assert kept.reset_index(drop=True).equals(plain)
    assert sorted(kept.index) == list(range(len(df)))
    for pos, summary_row in kept.iterrows():
        source = df.iloc[pos]
        assert (summary_row["method"], summary_row["status"]) == (source["method"], source["status"])
        assert summary_row["keep"] == round(source["keep"], 3)
