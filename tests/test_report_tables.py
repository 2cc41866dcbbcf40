import pandas as pd
from rich.console import Console
from rich.table import Table

from vidprune.report.tables import render_rich, summary_table, to_latex, to_markdown
from vidprune.results import to_frame

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


def test_render_rich():
    t = render_rich(summary_table(table()), "results")
    assert isinstance(t, Table) and t.row_count == len(table())
    console = Console(record=True, width=200)
    console.print(t)
    assert "-40.1%" in console.export_text()


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
