"""Sweeps that survive: a failing point, an out-of-memory, a NaN, a SIGKILL of the sweep or of one point,
and concurrent writers, without losing or duplicating a finished row.

Faults are injected through VIDPRUNE_INJECT_FAULT (kind@keep, see runner.injected_fault), which also
reaches child processes. Everything runs on the CPU with the tiny backbone and --metrics params, and
only the tests that need a separate process start one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vidprune.cli.app import app, console, err_console
from vidprune.results import COLUMNS
from vidprune.store import ResultStore, merge_rows
from vidprune.runner import FAULT_ENV
from vidprune.spec import Point, SweepSpec, config_hash
from vidprune.sweep import expand_points

FAST = ["--backbone", "vit-tiny", "--device", "cpu", "--metrics", "params", "--repeats", "1", "--warmup", "0"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _wide_consoles(monkeypatch):
    for stream in (console, err_console):
        monkeypatch.setattr(stream, "width", 200)
    monkeypatch.delenv(FAULT_ENV, raising=False)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def text_of(result) -> str:
    try:
        err = result.stderr or ""
    except ValueError:
        err = ""
    return (result.stdout or "") + err


def tables(folder: Path) -> list[Path]:
    """Result tables in `folder` (hidden files are a crashed writer's temp files: there must be none)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert not [p for p in files if p.name.startswith(".")], files
    return files


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"config_hash": "string", "error": "string", "options": "string"})


def spec(**kw) -> SweepSpec:
    base = dict(method="evad", keeps=[0.6, 0.7, 0.8], backbone="vit-tiny", device="cpu", metrics=("params",),
                repeats=1, warmup=0)
    base.update(kw)
    return SweepSpec(**base)


def hashes(s: SweepSpec) -> list[str]:
    return [config_hash(s, p) for p in expand_points(s)]


def sweep_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------- config hash


def test_config_hash_is_stable_across_spellings_and_changes_with_every_field():
    base = spec()
    point = Point("evad", 0.7, {"w_kf": "4"})
    h = config_hash(base, point)
    assert len(h) == 16 and int(h, 16) >= 0
    # the same configuration written differently is the same point
    assert config_hash(spec(dtype="float32", frames=8, size=64), Point("evad", 0.70, {"w_kf": 4.0})) == h
    assert config_hash(spec(metrics=("params", "params")), Point("evad", 0.7, {})) == h  # w_kf default is 4
    # anything that changes what is measured changes the hash
    changed = [dict(backbone="vit-s"), dict(frames=4), dict(size=32), dict(classes=10), dict(batch=2),
               dict(device="auto"), dict(dtype="bf16"), dict(attention="math"), dict(metrics=("flops",)),
               dict(seed=1), dict(repeats=2), dict(warmup=1)]
    seen = {h}
    for change in changed:
        other = config_hash(spec(**change), point)
        assert other not in seen, change
        seen.add(other)
    for other_point in (Point("evad", 0.6, {}), Point("evad", 0.7, {"w_kf": 2}), Point("random", 0.7, {})):
        assert config_hash(base, other_point) not in seen, other_point
    # the unpruned reference is the same point whichever method the sweep is about
    assert config_hash(spec(method="random"), Point("none", None, {})) == config_hash(base, Point("none", None, {}))


# ------------------------------------------------------------------------- one bad point, sweep goes on


def test_bad_points_become_rows_and_the_sweep_goes_on(tmp_path, monkeypatch):
    # point k=2 raises, k=3 runs out of memory, k=4 computes NaNs; k=5 after them must still be measured
    monkeypatch.setenv(FAULT_ENV, "raise@0.6;oom@0.7;nonfinite@0.8")
    # NaN weights only show in a forward pass: count-only metrics never run one, so time one point here
    result = invoke("sweep", "--method", "evad", "--keep", "0.6,0.7,0.8,0.9", *FAST, "--metrics", "params,latency",
                    "--out", tmp_path)
    text = text_of(result)
    assert result.exit_code == 1, text  # the exit code says a point failed
    assert "Traceback" not in text and "3 point(s) did not measure cleanly" in text
    [path] = tables(tmp_path)
    df = read(path)
    assert list(df["keep"]) == pytest.approx([1.0, 0.6, 0.7, 0.8, 0.9])
    assert list(df["status"]) == ["ok", "failed", "oom", "nonfinite", "ok"]
    errors = list(df["error"].fillna(""))
    assert errors[0] == errors[4] == ""
    assert "RuntimeError: injected failure at evad keep=0.6" in errors[1]
    assert "out of memory" in errors[2]
    assert "non-finite" in errors[3]
    assert (df.loc[df["status"] == "ok", "params_m"] > 0).all()
    # one row per point, in point order, each with its hash
    assert list(df["config_hash"]) == hashes(spec(keeps=[0.6, 0.7, 0.8, 0.9], metrics=("params", "latency")))


def test_resume_remeasures_only_the_points_without_an_ok_row(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "raise@0.7")
    assert invoke("sweep", "--method", "evad", "--keep", "0.6,0.7", *FAST, "--out", tmp_path).exit_code == 1
    [path] = tables(tmp_path)
    before = read(path)
    monkeypatch.delenv(FAULT_ENV)
    # the resumed sweep also asks for a new point (0.8): measured and added to the same table
    result = invoke("sweep", "--method", "evad", "--keep", "0.6,0.7,0.8", *FAST, "--out", tmp_path, "--resume")
    assert result.exit_code == 0, text_of(result)
    assert "2 of 4 point(s) already ok" in text_of(result)
    assert tables(tmp_path) == [path]
    after = read(path)
    assert list(after["config_hash"]) == hashes(spec())
    assert (after["status"] == "ok").all()
    kept = after.set_index("config_hash").loc[before["config_hash"][before["status"] == "ok"], "timestamp"]
    assert list(kept) == list(before.loc[before["status"] == "ok", "timestamp"])  # ok rows were not re-measured


# -------------------------------------------------------------------------------------- result store


def test_reserved_names_never_collide_even_within_one_second(tmp_path):
    name = "evad_vit-tiny_8x64_cpu_fp32_pt2130_20250101000000.csv"
    paths = [ResultStore.reserve(tmp_path, name).path for _ in range(3)]
    assert [p.name for p in paths] == [name, name.replace(".csv", "-2.csv"), name.replace(".csv", "-3.csv")]
    for path in paths:
        assert list(pd.read_csv(path).columns) == COLUMNS  # a complete (header-only) table from the start
    assert ResultStore.candidates(tmp_path, name.replace("20250101000000", "20990101000000")) == paths[::-1]
    parquet = ResultStore.reserve(tmp_path, name.replace(".csv", ".parquet"))
    assert list(pd.read_parquet(parquet.path).columns) == COLUMNS


def test_merge_keeps_one_row_per_point_and_never_replaces_ok_by_a_failure():
    rows = merge_rows([], [{"config_hash": "a", "status": "failed"}, {"config_hash": "b", "status": "ok"}])
    rows = merge_rows(rows, [{"config_hash": "a", "status": "ok"}, {"config_hash": "b", "status": "oom"},
                             {"config_hash": "c", "status": "ok"}])
    assert [(r["config_hash"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok"), ("c", "ok")]


def test_concurrent_writers_of_one_table_lose_nothing(tmp_path):
    store = ResultStore.reserve(tmp_path, "m_b_8x64_cpu_fp32_pt1_20250101000000.csv")
    barrier = threading.Barrier(6)

    def writer(w: int):
        other = ResultStore(store.path)  # its own descriptor and lock, as another process would have
        barrier.wait()
        for i in range(6):
            other.add([{"method": f"w{w}", "keep": i, "status": "ok", "config_hash": f"{w}-{i}"}])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    df = read(store.path)
    assert sorted(df["config_hash"]) == sorted(f"{w}-{i}" for w in range(6) for i in range(6))
    tables(tmp_path)  # and no temp file left behind


def test_sigkill_at_a_random_moment_leaves_a_complete_table(tmp_path):
    path = ResultStore.reserve(tmp_path, "m_b_8x64_cpu_fp32_pt1_20250101000000.csv").path
    writer = textwrap.dedent(f"""
        from vidprune.store import ResultStore
        store = ResultStore({str(path)!r})
        for i in range(100000):
            store.add([{{"method": "m", "keep": i, "status": "ok", "config_hash": "h%d" % i, "notes": "x" * 2000}}])
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], env=sweep_env())
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(pd.read_csv(path)) < 3:
            time.sleep(0.05)
        time.sleep(random.uniform(0, 0.3))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    df = pd.read_csv(path)
    assert len(df) >= 3
    assert list(df["config_hash"]) == [f"h{i}" for i in range(len(df))]  # every finished row, nothing torn
    assert (df["notes"].str.len() == 2000).all()


# -------------------------------------------------------------------------- whole processes killed


def test_sigkill_of_the_sweep_then_resume_gives_every_point_exactly_once(tmp_path):
    args = ["--method", "evad", "--keep", "0.6,0.7,0.8", *FAST, "--out", str(tmp_path)]
    # The sweep process kills itself at keep 0.7: no exception, no cleanup, exactly like `kill -9`.
    proc = subprocess.run([sys.executable, "-m", "vidprune", "sweep", *args], env=sweep_env(**{FAULT_ENV: "sigkill@0.7"}),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    [path] = tables(tmp_path)
    first = read(path)
    assert list(first["keep"]) == pytest.approx([1.0, 0.6]) and (first["status"] == "ok").all()

    result = invoke("sweep", *args, "--resume")
    assert result.exit_code == 0, text_of(result)
    assert tables(tmp_path) == [path]
    done = read(path)
    assert list(done["config_hash"]) == hashes(spec())  # every point exactly once, in order
    assert (done["status"] == "ok").all()
    assert list(done["timestamp"][:2]) == list(first["timestamp"])

    again = invoke("sweep", *args, "--resume")  # nothing left to do: nothing measured, nothing duplicated
    assert again.exit_code == 0 and "4 of 4 point(s) already ok" in text_of(again)
    pd.testing.assert_frame_equal(read(path), done)


def test_two_concurrent_sweeps_into_one_folder(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "vidprune", "sweep", "--method", "evad", "--keep", keep, *FAST,
                               "--out", str(tmp_path)], env=sweep_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for keep in ("0.6", "0.8")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    paths = tables(tmp_path)
    assert len(paths) == 2, paths  # one table each, neither overwritten
    keeps = sorted(tuple(read(p)["keep"]) for p in paths)
    assert keeps == [(1.0, 0.6), (1.0, 0.8)]
    for path in paths:
        df = read(path)
        assert (df["status"] == "ok").all() and df["config_hash"].is_unique


def test_isolate_survives_a_point_killed_in_native_code(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sigkill@none")  # reaches the point's process only: this one runs no point
    result = invoke("sweep", "--method", "evad", "--keep", "0.7", *FAST, "--out", tmp_path, "--isolate")
    text = text_of(result)
    assert result.exit_code == 1, text
    assert "SIGKILL" in text
    [path] = tables(tmp_path)
    df = read(path)
    s = spec(keeps=[0.7])
    assert list(df["config_hash"]) == hashes(s)  # the child computed the same hash as the parent
    killed, measured = df.iloc[0], df.iloc[1]
    assert killed["method"] == "none" and killed["status"] == "failed"
    assert "killed by SIGKILL" in killed["error"]
    assert measured["method"] == "evad" and measured["status"] == "ok" and measured["params_m"] > 0
    assert json.loads(measured["options"])  # a complete row from the child process


# ----------------------------------------------------------------------------------- bad executor flags


@pytest.mark.parametrize("args, needle", [
    (["--executor", "gpu"], "--executor"),
    (["--isolate", "--executor", "ray"], "--isolate"),
    (["--ray-address", "auto"], "--executor ray"),
    (["--slurm-option", "slurm_partition=gpu"], "--executor slurm"),
    (["--executor", "slurm", "--slurm-option", "partition"], "key=value"),
    (["--executor", "ray", "--ray-resources", "jetson=-1"], "jetson=-1"),
    (["--executor", "ray", "--device", "cuda:1"], "--device cuda"),
])
def test_bad_executor_flags_are_one_error_line(tmp_path, args, needle):
    result = invoke("sweep", "--method", "evad", *FAST, *args, "--out", tmp_path / "out")
    text = text_of(result)
    assert result.exit_code == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert not (tmp_path / "out").exists()
