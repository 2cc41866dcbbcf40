"""`vidprune report`: result tables as one self-contained, interactive HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from vidprune.cli.app import RESULT_FILES_ARGUMENT, app, console, user_errors


@app.command()
@user_errors
def report(
    files: List[str] = RESULT_FILES_ARGUMENT,
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="the HTML file to write"),
    title: str = typer.Option("vidprune report", "--title", help="the page's title"),
) -> None:
    """One self-contained HTML page (works offline, e-mailable) with interactive Pareto plots per
    configuration, the realized-vs-theoretical speedup plot, sortable tables and every table's provenance."""
    from vidprune.paths import output_file
    from vidprune.report.html import write_report

    output_file(out, example="report.html")
    console.print(f"wrote {write_report(files, out, title)}")
