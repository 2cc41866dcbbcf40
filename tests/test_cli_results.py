"""`vidprune table` and `vidprune plot` as a user runs them: in a real 80-column terminal, piped, over a glob
of sweeps from several processes and configurations."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vidprune.cli.app import app, console, err_console
from vidprune.report.tables import summary_table, to_markdown
from vidprune.results import read_tables, write_table

REPO = Path(__file__).resolve().parents[1]
COMMON = dict(knob="rho", frames=16, size=224, batch=1, device="cpu", device_name="Test CPU", dtype="fp32",
              autocast=False, attention="sdpa", compile=False, params_m=86.54, status="ok", repeats=5, warmup=2,
              noisy=False, tokens_per_block="1568,940", agreement=0.25, cosine=0.994, peak_mem_mib=214.0)


def sweep_table(path: Path, method: str, none_ms: float, backbone: str = "vit-b") -> Path:
    """A sweep's table: the unpruned row and three keep rates, as `vidprune sweep` writes it."""
    options = '{"layers": "4,7,10", "w_kf": 4.0}'
    rows = [dict(COMMON, method="none", backbone=backbone, keep=1.0, options="{}", gflops=180.34, latency_ms=none_ms,
                 latency_iqr_ms=20.4, throughput=1000 / none_ms, timestamp="2026-11-22T09:20:44Z")]
    for keep, gflops, ms in [(0.8, 130.87, 1350.3), (0.7, 112.79, 973.1), (0.6, 98.16, 839.5)]:
        rows.append(dict(COMMON, method=method, backbone=backbone, keep=keep, options=options, gflops=gflops,
                         latency_ms=ms, latency_iqr_ms=77.5, throughput=1000 / ms, timestamp="2026-11-22T09:21:04Z"))
    return write_table(rows, path)


@pytest.fixture
def two_runs(tmp_path) -> list[str]:
    return [str(sweep_table(tmp_path / "evad_vit-b_1.csv", "evad", 1514.7)),
            str(sweep_table(tmp_path / "random_vit-b_2.csv", "random", 1828.2))]


def run_in_terminal(args: list[str], columns: int) -> str:
    """Run `python -m vidprune ARGS` with stdout on a pseudo-terminal of `columns` columns; its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = dict(os.environ, COLUMNS=str(columns), NO_COLOR="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "vidprune", *args], stdin=slave, stdout=slave, stderr=slave,
                               env=env, cwd=REPO, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert process.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_table_in_an_80_column_terminal(two_runs):
    text = run_in_terminal(["table", *two_runs], 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text
    cells = [line.replace("│", " ").replace("┃", " ").split() for line in lines]
    header = next(i for i, words in enumerate(cells) if words[:2] == ["method", "backbone"])
    assert cells[header][:6] == ["method", "backbone", "keep", "gflops", "gflops_change", "latency_ms"]
    assert "status" in cells[header]
    summary = summary_table(read_tables(two_runs))
    body = [i for i in range(header + 1, len(lines)) if cells[i] and cells[i][0] in set(summary["method"])]
    body = body[:len(summary)]
    for (_, row), i in zip(summary.iterrows(), body):
        assert cells[i][:5] == [row["method"], row["backbone"], f"{row['keep']:g}", f"{row['gflops']:g}",
                                row["gflops_change"]]
        assert row["latency_ms"] in lines[i] and cells[i][-1] == "ok"
    assert body == list(range(body[0], body[0] + len(summary)))  # one line per row, none folded
    # the unpruned row measured 1515 and 1828 ms by two processes: marked, and said why
    assert sum("†" in lines[i] for i in body) == 2
    note = " ".join(text[text.index("† unpruned"):].split())
    assert note.startswith("† unpruned vit-b measured 1515–1828 ms in 2 runs (19% apart; the noise threshold is 10%)")


def test_piped_table_is_the_one_wide_table(two_runs):
    piped = subprocess.run([sys.executable, "-m", "vidprune", "table", *two_runs], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, check=True)
    assert piped.stdout.count("┏") == 1 and "continued" not in piped.stdout and "…" not in piped.stdout
    assert max(len(line) for line in piped.stdout.splitlines()) <= 160


def test_markdown_on_stdout_is_the_table_alone(two_runs):
    result = subprocess.run([sys.executable, "-m", "vidprune", "table", *two_runs, "--format", "markdown"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
                            check=True)
    assert result.stdout == to_markdown(summary_table(read_tables(two_runs))) + "\n"
    assert "†" not in result.stdout
    assert "note: unpruned vit-b measured 1515–1828 ms in 2 runs" in result.stderr


@pytest.fixture
def wide(monkeypatch):
    for stream in (console, err_console):
        monkeypatch.setattr(stream, "width", 200)


def test_plot_over_a_glob_of_mixed_sweeps(tmp_path, wide):
    sweep_table(tmp_path / "evad_vit-b_1.csv", "evad", 1514.7)
    sweep_table(tmp_path / "random_vit-b_2.csv", "random", 1828.2)
    small = sweep_table(tmp_path / "evad_vit-s_3.csv", "evad", 500.0, backbone="vit-s")
    df = pd.read_csv(small, dtype={"error": "string"})
    df.loc[3, "status"], df.loc[3, "error"] = "oom", "CUDA out of memory"
    df.to_csv(small, index=False)
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "*.csv"), "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    wrote = [line for line in result.output.splitlines() if line.startswith("wrote")]
    assert len(wrote) == 4  # two configurations, PNG and SVG each
    assert sum("(vit-b · 16x224 · batch 1 · cpu (Test CPU) · fp32 · torch)" in line for line in wrote) == 2
    assert sorted(p.name.split("_g-")[0] for p in (tmp_path / "plots").glob("*.png")) == \
        ["throughput_vs_gflops_vit-b_16x224", "throughput_vs_gflops_vit-s_16x224"]
    assert "left out of the plots in vit-s · 16x224 · batch 1 · cpu (Test CPU) · fp32 · torch: 1 row (evad keep 0.6): " \
        "status 'oom': CUDA out of memory" in result.output
    assert "note: unpruned vit-b measured 1515–1828 ms in 2 runs" in result.output
