"""Scale-out executors give the same rows as the local one: a sweep on a local Ray instance (CPU only)
and on submitit's local executor (what `--executor slurm` uses off a cluster), compared column by
column apart from timings and provenance. Skipped cleanly when the optional package is missing.

--metrics params keeps each remote task to a Python start-up: the first FLOP count in a fresh process
costs seconds of torch imports. The seeded forward pass that every point runs (its token trace) is
compared all the same, and GFLOPs follow from the token counts.
"""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from vidprune.cli.app import app, console, err_console
from vidprune.runner import FAULT_ENV

SWEEP = ["sweep", "--method", "evad", "--keep", "0.7", "--backbone", "vit-tiny", "--device", "cpu",
         "--metrics", "params"]
# Everything that must not depend on where a point ran (timings, timestamps and machine names may).
SAME = ["method", "backbone", "knob", "keep", "options", "frames", "size", "batch", "device", "dtype", "attention",
        "params_m", "tokens_per_block",
        "tokens_final", "status", "error", "seed", "config_hash"]


@pytest.fixture(autouse=True)
def _wide_consoles(monkeypatch):
    for stream in (console, err_console):
        monkeypatch.setattr(stream, "width", 200)
    monkeypatch.delenv(FAULT_ENV, raising=False)


def run_sweep(out, *extra) -> pd.DataFrame:
    result = CliRunner().invoke(app, [*SWEEP, "--out", str(out), *extra])
    try:
        err = result.stderr or ""
    except ValueError:
        err = ""
    assert result.exit_code == 0, (result.stdout or "") + err
    [path] = [p for p in out.iterdir() if p.suffix == ".csv"]
    df = pd.read_csv(path, dtype={"config_hash": "string", "error": "string"})
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    return df[SAME]


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
    return run_sweep(tmp_path_factory.mktemp("local"))


def test_ray_executor_gives_the_local_rows(tmp_path, local_rows):
    pytest.importorskip("ray")
    rows = run_sweep(tmp_path, "--executor", "ray")
    pd.testing.assert_frame_equal(rows, local_rows)


def test_submitit_local_executor_gives_the_local_rows(tmp_path, local_rows):
    pytest.importorskip("submitit")
    rows = run_sweep(tmp_path, "--executor", "slurm", "--slurm-option", "cluster=local",
                     "--slurm-option", "poll_s=0.2", "--slurm-option", f"folder={tmp_path / 'jobs'}")
    pd.testing.assert_frame_equal(rows, local_rows)
    assert list((tmp_path / "jobs").glob("*_result.pkl"))  # it really went through submitit's jobs
