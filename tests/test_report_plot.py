import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from vidprune.errors import VidpruneError
from vidprune.report.plot import plot_tradeoff
from vidprune.results import to_frame

COMMON = dict(backbone="vit_b", knob="keep", frames=16, size=224, batch=1, device="cpu",
              device_name="Test CPU", dtype="float32", attention="sdpa", params_m=86.2,
              source="measured", status="ok")


def table(accuracy: bool = False) -> pd.DataFrame:
    rows = [dict(COMMON, method="none", keep=1.0, gflops=180.0, latency_ms=400.0, latency_iqr_ms=5.0,
                 noisy=False, throughput=2.5, peak_mem_mib=900.0)]
    for keep, g, lat, thr, noisy in [(0.7, 130.0, 300.0, 3.3, False), (0.5, 100.0, 240.0, 4.2, True),
                                     (0.3, 70.0, 170.0, 5.9, False)]:
        rows.append(dict(COMMON, method="evad", keep=keep, gflops=g, latency_ms=lat, latency_iqr_ms=30.0,
                         noisy=noisy, throughput=thr, peak_mem_mib=700.0))
        rows.append(dict(COMMON, method="random", keep=keep, gflops=g + 2, latency_ms=lat + 10,
                         latency_iqr_ms=4.0, noisy=False, throughput=thr - 0.2, peak_mem_mib=700.0))
    rows.append(dict(COMMON, method="evad", keep=0.5, gflops=98.0, source="paper: EVAD Table 2a",
                     status="reference", reference_note="K400 top-1"))
    rows.append(dict(COMMON, method="random", keep=0.1, status="oom", error="CUDA out of memory"))
    df = to_frame(rows)
    if accuracy:
        acc = {("none", 1.0): 81.0, ("evad", 0.7): 80.8, ("evad", 0.5): 80.1, ("evad", 0.3): 78.0,
               ("random", 0.7): 79.5, ("random", 0.5): 77.0, ("random", 0.3): 72.0}
        df["accuracy"] = [acc.get((m, k), np.nan) for m, k in zip(df["method"], df["keep"])]
        df.loc[df["status"] == "reference", "accuracy"] = 80.7
    return df


def test_writes_png_and_svg(tmp_path):
    paths = plot_tradeoff(table(), x="gflops", y="throughput", out_dir=tmp_path).paths
    assert [p.name for p in paths] == ["throughput_vs_gflops.png", "throughput_vs_gflops.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    img = mpimg.imread(paths[0])
    assert img.shape[:2] == (825, 1200)  # 8 x 5.5 inches at 150 dpi
    assert "<svg" in paths[1].read_text()[:500]


def test_y_defaults_to_accuracy_when_present(tmp_path):
    paths = plot_tradeoff(table(accuracy=True), out_dir=tmp_path, formats=("png",)).paths
    assert [p.name for p in paths] == ["accuracy_vs_gflops.png"]


def test_y_defaults_to_throughput(tmp_path):
    paths = plot_tradeoff(table(), out_dir=tmp_path, name="custom", formats=("png",)).paths
    assert [p.name for p in paths] == ["custom.png"]


def drawn_figures(monkeypatch) -> list:
    """Keep the figures plot_tradeoff closes, so tests can read what was drawn."""
    import vidprune.report.plot as plot_module

    figures = []
    monkeypatch.setattr(plot_module.plt, "close", figures.append)
    return figures


def method_lines(fig) -> dict:
    """(x, y) data of every method line on the axes, by colour: what a reader sees as the curves."""
    ax = fig.axes[0]
    return {tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color():
            (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines() if line.get_marker() not in (None, "None", "", "|", "_")
            and line.get_linestyle() not in ("None", "")}


def test_latency_axis_with_noisy_points(tmp_path, monkeypatch):
    """Noisy points get error bars of half the IQR either side on the latency axis; steady points none."""
    from matplotlib.container import ErrorbarContainer

    figures = drawn_figures(monkeypatch)
    plot_tradeoff(table(), x="latency_ms", y="throughput", out_dir=tmp_path, formats=("png",))
    ax = figures[0].axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1  # only evad has a noisy point
    (segments,) = [col for col in bars[0].lines[2]]
    spans = sorted((round(float(s[0][0]), 6), round(float(s[1][0]), 6), round(float(s[0][1]), 6))
                   for s in segments.get_segments())
    # the noisy evad point (keep 0.5: 240 ms, IQR 30) spans 225..255 at its throughput; the others span 0
    assert (225.0, 255.0, 4.2) in spans
    assert all(lo == hi for lo, hi, _ in spans if (lo, hi) != (225.0, 255.0))


def test_unknown_column_lists_usable_columns(tmp_path):
    with pytest.raises(VidpruneError) as err:
        plot_tradeoff(table(), x="glops", out_dir=tmp_path)
    msg = str(err.value)
    assert "'glops'" in msg and "gflops" in msg and "latency_ms" in msg and "throughput" in msg
    usable = msg.split("columns:")[1]
    assert "method" not in usable and "noisy" not in usable


def test_column_without_ok_values(tmp_path):
    df = table()
    df["accuracy"] = np.where(df["status"] == "reference", 80.7, np.nan)  # only the paper row has one
    with pytest.raises(VidpruneError, match="'accuracy'.*no numeric values"):
        plot_tradeoff(df, y="accuracy", out_dir=tmp_path)
    assert plot_tradeoff(df, out_dir=tmp_path, formats=("png",)).paths[0].name == "throughput_vs_gflops.png"


def test_no_ok_rows(tmp_path):
    df = table()
    df["status"] = "failed"
    with pytest.raises(VidpruneError, match="no measured rows with status 'ok'"):
        plot_tradeoff(df, out_dir=tmp_path)


def test_from_csv_roundtrip(tmp_path, monkeypatch):
    """Values read back from CSV (noisy as text, NaN-filled columns) draw exactly what the frame draws."""
    path = tmp_path / "t.csv"
    table().to_csv(path, index=False)
    figures = drawn_figures(monkeypatch)
    plot_tradeoff(table(), x="latency_ms", out_dir=tmp_path / "direct", formats=("svg",))
    plot_tradeoff(pd.read_csv(path), x="latency_ms", out_dir=tmp_path / "csv", formats=("svg",))
    direct, from_csv = (method_lines(fig) for fig in figures)
    assert direct == from_csv
    assert len(direct) == 2  # evad and random, three keep rates each
    assert all(len(xs) == 3 for xs, _ in direct.values())
    noisy_bars = [len(fig.axes[0].containers) for fig in figures]
    assert noisy_bars[0] == noisy_bars[1] == 1


# ------------------------------------------------------------------ configurations, runs, legend, labels


def by_gid(fig) -> dict:
    """Every drawn artist with a gid (method lines, stars, paper points, the front), by gid."""
    ax = fig.axes[0]
    out: dict = {}
    for artist in list(ax.get_lines()) + list(ax.collections):
        if artist.get_gid():
            out.setdefault(artist.get_gid(), []).append(artist)
    return out


def legend_entries(fig) -> dict:
    legend = fig.axes[0].get_legend()
    return {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles)}


LEGEND_LABEL = {"unpruned": "none (unpruned)", "front": "Pareto front"}


def assert_legend_is_what_is_drawn(fig) -> None:
    drawn = set(by_gid(fig))
    expected = set()
    for gid in drawn:
        kind, _, what = gid.partition(":")
        if kind == "method":
            expected.add(what)
        elif kind == "paper":
            expected.add(f"{what} (paper)")
        else:
            expected.add(LEGEND_LABEL[gid])
    entries = {label for label in legend_entries(fig) if not label.startswith("run ")}
    entries = {"Pareto front" if label.startswith("Pareto front") else label for label in entries}
    assert entries == expected


def xy(artist) -> list:
    if hasattr(artist, "get_xdata"):
        return sorted(zip(map(float, artist.get_xdata()), map(float, artist.get_ydata())))
    return sorted(tuple(map(float, p)) for p in artist.get_offsets())


def test_two_backbones_two_files_each_with_its_own_front(tmp_path, monkeypatch):
    other = table(accuracy=True)
    other["backbone"] = "vit_s"
    other["gflops"] = other["gflops"] / 4  # cheaper and better: on one front it would hide every vit_b point
    other["accuracy"] = other["accuracy"] + 1
    figures = drawn_figures(monkeypatch)
    plots = plot_tradeoff(pd.concat([table(accuracy=True), other], ignore_index=True), out_dir=tmp_path,
                          formats=("png",))
    names = [p.name for p in plots.paths]
    assert len(names) == 2 and len(set(names)) == 2
    assert [n.split("_g-")[0] for n in names] == ["accuracy_vs_gflops_vit-b_16x224", "accuracy_vs_gflops_vit-s_16x224"]
    assert [label for label, _ in plots.files] == [f.texts[0].get_text().split("\n")[1] for f in figures]
    for fig, frame in zip(figures, (table(accuracy=True), other)):
        ok = frame[frame["status"] == "ok"]
        ring, line = sorted(by_gid(fig)["front"], key=lambda a: hasattr(a, "get_xdata"))
        # this backbone's own front: its unpruned point and every EVAD point (random is a little worse)
        expected = sorted((float(g), float(a)) for g, a, m in zip(ok["gflops"], ok["accuracy"], ok["method"]) if m != "random")
        assert xy(ring) == expected and len(expected) == 4
        assert sorted(set(xy(line))) == expected
        assert_legend_is_what_is_drawn(fig)


def test_two_runs_of_a_method_are_two_lines(tmp_path, monkeypatch):
    first, second = table(), table()
    first["result_file"], second["result_file"] = "results/evad_vit_b_20260101.csv", "results/evad_vit_b_20260102.csv"
    second["throughput"] = second["throughput"] * 1.2
    figures = drawn_figures(monkeypatch)
    plots = plot_tradeoff(pd.concat([first, second], ignore_index=True), out_dir=tmp_path, formats=("png",))
    assert [p.name for p in plots.paths] == ["throughput_vs_gflops.png"]  # one configuration, one file
    lines = by_gid(figures[0])["method:evad"]
    assert len(lines) == 2 and all(len(line.get_xdata()) == 3 for line in lines)
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert xy(lines[0]) != xy(lines[1])
    stars = by_gid(figures[0])["unpruned"]
    assert sum(len(s.get_offsets()) for s in stars) == 2  # one per run
    entries = legend_entries(figures[0])
    assert [e for e in entries if e.startswith("run ")] == ["run 1: 20260101", "run 2: 20260102"]
    assert entries["run 2: 20260102"].get_linestyle() == lines[1].get_linestyle()
    assert_legend_is_what_is_drawn(figures[0])


def test_legend_lists_only_what_is_drawn(tmp_path, monkeypatch):
    df = table()
    df.loc[df["method"] == "random", "status"] = "oom"  # random: no point to draw
    count_only = table()
    count_only = count_only[count_only["method"] == "evad"].assign(method="sttm", throughput=np.nan, latency_ms=np.nan)
    figures = drawn_figures(monkeypatch)
    plots = plot_tradeoff(pd.concat([df, count_only], ignore_index=True), out_dir=tmp_path, formats=("png",))
    assert_legend_is_what_is_drawn(figures[0])
    labels = set(legend_entries(figures[0]))
    assert "random" not in labels and "sttm" not in labels and {"evad", "none (unpruned)"} <= labels
    assert "evad (paper)" not in labels  # the paper gives no throughput
    lines = plots.left_out_lines()
    assert "left out of the plots: 3 rows (random keep 0.7, random keep 0.5, random keep 0.3): status 'oom'; it is " \
        "in the table, not on the plots" in lines
    assert any(line.startswith("left out of the plots: 1 row (random keep 0.1): status 'oom': CUDA out of memory")
               for line in lines)
    assert any("sttm keep 0.7" in line and "count-only row" in line and "throughput" in line for line in lines)
    assert any("evad" in line and "the paper reference gives no throughput" in line for line in lines)
    assert len(plots.left_out) == 4 + 3 + 2  # the failed rows, sttm's count-only rows, the paper rows of both


def test_single_point_front_legend_matches(tmp_path, monkeypatch):
    df = table()
    df = df[df["method"] == "none"]
    figures = drawn_figures(monkeypatch)
    plot_tradeoff(df, out_dir=tmp_path, formats=("png",))
    front = by_gid(figures[0])["front"]
    assert len(front) == 1 and not hasattr(front[0], "get_xdata")  # the ring alone: no line through one point
    handle = legend_entries(figures[0])["Pareto front (one point)"]
    assert handle.get_linestyle() == "None" and handle.get_marker() == "o"
    assert_legend_is_what_is_drawn(figures[0])


def test_labels_never_cover_each_other(tmp_path, monkeypatch):
    """Five methods with nearly the same curve would write their keep labels on top of each other."""
    rows = [dict(COMMON, method="none", keep=1.0, gflops=180.0, throughput=2.5)]
    for i, method in enumerate(["a", "b", "c", "d", "e"]):
        for keep in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            rows.append(dict(COMMON, method=method, keep=keep, gflops=180.0 * keep + i * 0.3, throughput=2.5 / keep + i * 0.01))
    figures = drawn_figures(monkeypatch)
    plots = plot_tradeoff(to_frame(rows), out_dir=tmp_path, formats=("png",))
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts]
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    inside = fig.axes[0].get_window_extent(renderer)
    assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1 for b in boxes)
    assert plots.skipped_labels > 0 and len(texts) + plots.skipped_labels == 35  # crowded: some are left off
    assert len(texts) >= 10


def test_a_configuration_without_the_y_values_is_named_not_drawn(tmp_path):
    flops_only = table().assign(batch=8, throughput=np.nan, latency_ms=np.nan)
    plots = plot_tradeoff(pd.concat([table(), flops_only], ignore_index=True), out_dir=tmp_path, formats=("png",))
    assert len(plots.paths) == 1 and plots.several_groups
    (line,) = [line for line in plots.left_out_lines() if "batch 8" in line and "value of throughput" in line]
    assert "none, evad keep 0.7" in line and " and " in line
