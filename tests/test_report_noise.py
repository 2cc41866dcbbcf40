import inspect

import pandas as pd
import pytest

from vidprune.measure.timing import measure_latency
from vidprune.report.noise import NOISY_THRESHOLD, cross_run_spreads, noisy_across_runs, noisy_rows
from vidprune.results import to_frame

BASE = dict(backbone="vit-b", knob="rho", frames=16, size=224, batch=1, device="cpu", device_name="Test CPU",
            dtype="fp32", autocast=False, attention="sdpa", compile=False, status="ok")


def run(name: str, none_ms: float, evad_ms: float = 800.0, **changes) -> pd.DataFrame:
    """One sweep's table: the unpruned row and one EVAD row, as read_tables tags them with their file."""
    df = to_frame([dict(BASE, method="none", keep=1.0, options="{}", latency_ms=none_ms, **changes),
                   dict(BASE, method="evad", keep=0.7, options='{"w_kf": 4.0, "layers": "4,7,10"}',
                        latency_ms=evad_ms, **changes)])
    df["result_file"] = f"results/{name}.csv"
    return df


def test_threshold_is_the_one_a_run_uses():
    assert NOISY_THRESHOLD == inspect.signature(measure_latency).parameters["noisy_threshold"].default


def test_the_unpruned_row_of_three_processes_is_flagged():
    """The issue's figures: 2580, 3244 and 3377 ms of the same unpruned ViT-B, each `noisy = False`."""
    df = pd.concat([run("a", 2580.0), run("b", 3244.0), run("c", 3377.0)], ignore_index=True)
    spreads = cross_run_spreads(df)
    assert [(s.method, len(s.rows)) for s in spreads] == [("none", 3), ("evad", 3)]
    (noisy,) = noisy_across_runs(df)  # EVAD measured 800 ms every time
    assert noisy.method == "none" and noisy.rows == (0, 2, 4)
    assert noisy.spread == pytest.approx((3377 - 2580) / 3244)
    note = noisy.note()
    assert note == ("unpruned vit-b measured 2580–3377 ms in 3 runs (25% apart; the noise threshold is 10%) on "
                    "vit-b · 16x224 · batch 1 · cpu (Test CPU) · fp32 · torch: compare latencies within one run, "
                    "not across runs.")
    assert noisy.files == ("results/a.csv", "results/b.csv", "results/c.csv")
    assert noisy_rows(noisy_across_runs(df)) == {0, 2, 4}


def test_two_runs_19_percent_apart_are_noisy_though_their_iqr_is_not():
    """README's example tables: 1515 vs 1828 ms. The IQR of two values is half their range (9.4%)."""
    df = pd.concat([run("evad", 1514.7), run("random", 1828.2)], ignore_index=True)
    (spread,) = noisy_across_runs(df)
    assert spread.spread == pytest.approx(313.5 / 1671.45)
    assert "1515–1828 ms in 2 runs (19% apart;" in spread.note()


def test_within_the_threshold_is_not_noisy():
    df = pd.concat([run("a", 1000.0), run("b", 1099.0)], ignore_index=True)
    assert [s.noisy for s in cross_run_spreads(df)] == [False, False]
    assert noisy_across_runs(df) == []
    assert cross_run_spreads(df, threshold=0.05)[0].noisy


def test_only_the_same_configuration_is_compared():
    df = pd.concat([run("a", 1000.0), run("b", 2000.0, batch=8), run("c", 3000.0, device_name="Other CPU"),
                    run("d", 4000.0, dtype="bf16"), run("e", 5000.0, frames=8)], ignore_index=True)
    assert cross_run_spreads(df) == []
    other_options = run("f", 500.0, evad_ms=400.0)
    other_options["options"] = ["{}", '{"w_kf": 1.0, "layers": "4,7,10"}']
    spreads = cross_run_spreads(pd.concat([run("a", 1000.0), other_options], ignore_index=True))
    assert [s.method for s in spreads] == ["none"]


def test_spellings_of_a_csv_round_trip_are_one_configuration(tmp_path):
    second = run("b", 2000.0, evad_ms=1600.0)
    second["batch"] = "1.0"
    second["options"] = ['{}', '{"layers": "4,7,10", "w_kf": 4}']  # key order and 4 vs 4.0
    second.to_csv(tmp_path / "b.csv", index=False)
    df = pd.concat([run("a", 1000.0), pd.read_csv(tmp_path / "b.csv")], ignore_index=True)
    assert [(s.method, s.noisy) for s in cross_run_spreads(df)] == [("none", True), ("evad", True)]
    assert "evad keep 0.7 on vit-b measured 800–1600 ms" in noisy_across_runs(df)[1].note()


def test_failed_rows_reference_rows_and_count_only_rows_are_not_measurements():
    df = pd.concat([run("a", 1000.0), run("b", 2000.0)], ignore_index=True)
    df.loc[2, "status"] = "failed"
    df.loc[3, "latency_ms"] = float("nan")
    assert cross_run_spreads(df) == []
    paper = to_frame([dict(BASE, method="none", keep=1.0, latency_ms=1.0, status="reference")])
    assert cross_run_spreads(pd.concat([run("a", 1000.0), paper], ignore_index=True)) == []
    assert cross_run_spreads(to_frame([])) == []
