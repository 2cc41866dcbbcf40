"""`vidprune plot` and `vidprune table`: result tables read back, drawn and printed."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidprune.cli.app import RESULT_FILES_ARGUMENT, app, console, user_errors
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
    from vidprune.report.plot import plot_tradeoff
    from vidprune.results import read_tables

    df = read_tables(files)
    for path in plot_tradeoff(df, x=x, y=y, out_dir=out, name=name):
        console.print(f"wrote {path}")


@app.command()
@user_errors
def table(
    files: List[str] = RESULT_FILES_ARGUMENT,
    fmt: str = typer.Option("rich", "--format", help="rich | markdown | latex | csv"),
) -> None:
    """Render result tables the way the papers print them."""
    from vidprune.report.tables import render_rich, summary_table, to_latex, to_markdown
    from vidprune.results import read_tables

    summary = summary_table(read_tables(files))
    if fmt == "rich":
        console.print(render_rich(summary))
    elif fmt == "markdown":
        print(to_markdown(summary))
    elif fmt == "latex":
        print(to_latex(summary))
    elif fmt == "csv":
        print(summary.to_csv(index=False), end="")
    else:
        raise VidpruneError(f"--format must be rich, markdown, latex or csv, got '{fmt}'.")
