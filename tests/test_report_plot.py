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
    paths = plot_tradeoff(table(), x="gflops", y="throughput", out_dir=tmp_path)
    assert [p.name for p in paths] == ["throughput_vs_gflops.png", "throughput_vs_gflops.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    img = mpimg.imread(paths[0])
    assert img.shape[:2] == (825, 1200)  # 8 x 5.5 inches at 150 dpi
    assert "<svg" in paths[1].read_text()[:500]


def test_y_defaults_to_accuracy_when_present(tmp_path):
    paths = plot_tradeoff(table(accuracy=True), out_dir=tmp_path, formats=("png",))
    assert [p.name for p in paths] == ["accuracy_vs_gflops.png"]


def test_y_defaults_to_throughput(tmp_path):
    paths = plot_tradeoff(table(), out_dir=tmp_path, name="custom", formats=("png",))
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
    assert plot_tradeoff(df, out_dir=tmp_path, formats=("png",))[0].name == "throughput_vs_gflops.png"


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
