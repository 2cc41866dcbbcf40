"""The result table's schema, file names, atomic writes and reading back."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
from typer.testing import CliRunner

from vidprune.cli.app import app
from vidprune.errors import VidpruneError
from vidprune.results import COLUMNS, read_tables, result_filename, to_frame, write_table

REQUIRED = [
    "method", "backbone", "knob", "keep", "frames", "size", "batch", "device", "device_name", "dtype", "attention",
    "gflops", "gflops_fvcore", "gflops_thop", "params_m", "tokens_per_block", "latency_ms", "latency_iqr_ms",
    "noisy", "peak_mem_mib", "throughput", "status", "error", "vidprune_version", "torch_version", "git_sha",
    "timestamp",
]


@pytest.fixture(scope="module")
def flops_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("flops_sweep")
    result = CliRunner().invoke(app, ["sweep", "--method", "evad", "--keep", "0.7", "--backbone", "vit-tiny",
                                      "--device", "cpu", "--metrics", "flops", "--out", str(out)])
    assert result.exit_code == 0, (result.stdout, result.exception)
    files = list(out.iterdir())
    assert len(files) == 1, files
    return files[0]


def test_columns_are_unique_and_include_the_required_ones():
    assert len(COLUMNS) == len(set(COLUMNS))
    missing = [c for c in REQUIRED if c not in COLUMNS]
    assert not missing, missing


def test_flops_only_sweep_writes_the_schema_columns_in_order(flops_table):
    with open(flops_table, newline="") as f:
        header = next(csv.reader(f))
    assert header[:len(COLUMNS)] == COLUMNS
    assert len(header) == len(set(header))
    for col in REQUIRED:
        assert col in header

    df = read_tables([str(flops_table)])  # reads git_sha as text even when the short sha is all digits
    assert list(df["method"]) == ["none", "evad"]
    assert (df["status"] == "ok").all()
    assert (df["gflops"] > 0).all()
    assert df["latency_ms"].isna().all() and df["throughput"].isna().all() and df["peak_mem_mib"].isna().all()
    row = df.iloc[1]
    assert row["knob"] == "rho" and row["keep"] == pytest.approx(0.7)
    assert row["frames"] == 8 and row["size"] == 64 and row["batch"] == 1
    assert row["device"] == "cpu" and row["dtype"] == "fp32" and row["attention"] == "sdpa"
    assert isinstance(row["device_name"], str) and row["device_name"]
    import torch
    import vidprune

    assert row["torch_version"] == torch.__version__
    assert str(row["vidprune_version"]) == vidprune.__version__
    assert isinstance(row["git_sha"], str) and row["git_sha"]
    assert pd.Timestamp(row["timestamp"]).year >= 2024


def test_result_filename_cuda_bf16():
    name = result_filename("evad", "vit-b", 16, 224, "cuda:1", "bf16", "2.13.0+cu121", "2025-01-02T03:04:05Z")
    assert name == "evad_vit-b_16x224_cuda1_bf16_pt2130_20250102030405.csv"
    parquet = result_filename("evad", "vit-b", 16, 224, "cuda:1", "bf16", "2.13.0+cu121", "20250102030405",
                              fmt="parquet")
    assert parquet == "evad_vit-b_16x224_cuda1_bf16_pt2130_20250102030405.parquet"
    # no characters that need quoting in a shell or are illegal on Windows
    assert all(ch not in name for ch in ' :/\\+*?"<>|')


ROWS = [
    {"method": "none", "backbone": "vit-tiny", "keep": 1.0, "gflops": 0.138, "status": "ok",
     "tokens_per_block": "64,64,64,64", "extra_col": "x"},
    {"method": "evad", "backbone": "vit-tiny", "keep": 0.7, "gflops": 0.079, "status": "failed",
     "error": "RuntimeError: boom", "tokens_per_block": "64,44,30,21", "extra_col": "y"},
]


def test_to_frame_orders_schema_columns_first_and_keeps_extras():
    df = to_frame(ROWS)
    assert list(df.columns) == COLUMNS + ["extra_col"]
    assert df["latency_ms"].isna().all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_table_round_trips_and_leaves_no_temp_files(tmp_path, suffix):
    path = tmp_path / "sub" / f"table{suffix}"
    assert write_table(ROWS, path) == path
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    # rewriting (as a sweep does after every point) replaces the file, still nothing left over
    write_table(ROWS[:1], path)
    write_table(ROWS, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    df = read_tables([str(path)])
    assert list(df.columns[:len(COLUMNS)]) == COLUMNS
    assert list(df["method"]) == ["none", "evad"]
    assert list(df["keep"]) == pytest.approx([1.0, 0.7])
    assert list(df["gflops"]) == pytest.approx([0.138, 0.079])
    assert list(df["status"]) == ["ok", "failed"]
    assert df["error"].iloc[1] == "RuntimeError: boom"
    assert list(df["tokens_per_block"]) == ["64,64,64,64", "64,44,30,21"]
    assert list(df["extra_col"]) == ["x", "y"]
    assert (df["result_file"] == str(path)).all()


def test_write_table_failure_keeps_the_previous_table(tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    write_table(ROWS[:1], path)
    before = path.read_bytes()

    def half_write(self, target, *args, **kwargs):
        with open(target, "w") as f:
            f.write("method,backb")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_table(ROWS, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_read_tables_glob_concatenates_and_records_the_file(tmp_path):
    a = write_table(ROWS, tmp_path / "a.csv")
    b = write_table(ROWS[:1], tmp_path / "b.csv")
    df = read_tables([str(tmp_path / "*.csv")])
    assert len(df) == 3
    assert list(df["result_file"]) == [str(a), str(a), str(b)]
    # explicit paths (and a mix of formats) work too
    c = write_table(ROWS[1:], tmp_path / "c.parquet")
    df = read_tables([str(b), str(c)])
    assert list(df["method"]) == ["none", "evad"]
    assert list(df["result_file"]) == [str(b), str(c)]


def test_read_tables_errors(tmp_path):
    with pytest.raises(VidpruneError, match="no result files match"):
        read_tables([str(tmp_path / "nothing" / "*.csv")])
    with pytest.raises(VidpruneError, match="does not exist"):
        read_tables([str(tmp_path / "missing.csv")])
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"\x00\xff garbage \x01" * 50)
    with pytest.raises(VidpruneError, match="cannot read result file"):
        read_tables([str(bad)])
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(VidpruneError, match="missing columns: method, status"):
        read_tables([str(other)])
