"""The `vidprune` command line: parse, validate, call the library, render with Rich.

`app.py` holds the Typer app, the consoles, error handling, progress and the options several commands
share; each command module registers its commands on that app when imported. The imports below run in
the order `vidprune --help` lists the commands.
"""

from vidprune.cli import app as app_module
from vidprune.cli import sweep  # noqa: F401
from vidprune.cli import profile  # noqa: F401
from vidprune.cli import results  # noqa: F401
from vidprune.cli import report  # noqa: F401
from vidprune.cli import catalog  # noqa: F401
from vidprune.cli import accuracy  # noqa: F401
from vidprune.cli import train  # noqa: F401
from vidprune.cli import export  # noqa: F401


def main() -> None:
    """The `vidprune` console script and `python -m vidprune`."""
    app_module.app()
