"""`vidprune plot` and `vidprune table`: result tables read back, drawn and printed."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidprune.cli.app import RESULT_FILES_ARGUMENT, app, console, err_console, user_errors
from vidprune.errors import VidpruneError


@app.command()
@user_errors
def plot(
    files: List[str] = RESULT_FILES_ARGUMENT,
    x: str = typer.Option("gflops", "--x", help="cost column for the x axis"),
    y: Optional[str] = typer.Option(None, "--y", help="quality column (default accuracy if present, else throughput)"),
    out: Path = typer.Option(Path("results/plots"), "--out", "-o", help="folder for PNG and SVG"),
    name: Optional[str] = typer.Option(None, "--name", help="file name without extension"),
) -> None:
    """Pareto plots of any cost column against any quality column, one line per method."""
    from vidprune.report.noise import noisy_across_runs
    from vidprune.report.plot import plot_tradeoff
    from vidprune.results import read_tables

    df = read_tables(files)
    plots = plot_tradeoff(df, x=x, y=y, out_dir=out, name=name)
    for label, paths in plots.files:
        for path in paths:
            console.print(f"wrote {path}" + (f" ({label})" if plots.several_groups else ""), markup=False, highlight=False)
    for line in plots.left_out_lines() + [f"note: {spread.note()}" for spread in noisy_across_runs(df)]:
        console.print(line, markup=False, highlight=False)


@app.command()
@user_errors
def table(
    files: List[str] = RESULT_FILES_ARGUMENT,
    fmt: str = typer.Option("rich", "--format", help="rich | markdown | latex | csv"),
) -> None:
    """Render result tables the way the papers print them."""
    from vidprune.report.noise import MARK, noisy_across_runs, noisy_rows
    from vidprune.report.tables import render_rich, summary_table, to_latex, to_markdown
    from vidprune.results import read_tables

    df = read_tables(files)
    summary = summary_table(df, keep_positions=True)
    spreads = noisy_across_runs(df)
    if fmt == "rich":
        console.print(render_rich(summary, noisy_rows=noisy_rows(spreads)))
        for spread in spreads:
            console.print(f"{MARK} {spread.note()}", markup=False, highlight=False)
        return
    if fmt == "markdown":
        print(to_markdown(summary))
    elif fmt == "latex":
        print(to_latex(summary))
    elif fmt == "csv":
        print(summary.to_csv(index=False), end="")
    else:
        raise VidpruneError(f"--format must be rich, markdown, latex or csv, got '{fmt}'.")
    for spread in spreads:  # on stderr: what a pipe reads stays the table alone
        err_console.print(f"note: {spread.note()}", markup=False, highlight=False, soft_wrap=True)
