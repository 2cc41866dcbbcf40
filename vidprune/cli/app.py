"""The Typer app every command module registers on, and what the commands share: the consoles, the
one-line error handling, progress displays and every option used by more than one command.

Every user mistake is a `VidpruneError`, printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import vidprune
from vidprune.errors import VidpruneError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Measure the efficiency/accuracy trade-off of video-transformer token pruning and merging.\n\n"
                       "GFLOPs are always 1 multiply-accumulate = 1 FLOP, per clip, per view.")
# Off a terminal (pipes, CI logs, tests) Rich would wrap tables at 80 columns and squeeze them unreadable.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def warn(text: str) -> None:
    """A warning line on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(text)}", soft_wrap=True)


def say(text: str) -> None:
    """An informational line on stdout, printed as given (no Rich markup)."""
    console.print(escape(text))


def progress_bar() -> Progress:
    """The progress display of long passes over data (eval, train, sweep --data), on stderr."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False)


@contextmanager
def progress_task(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar with one task, as the library's `progress(description, total)` callables expect:
    yields the function that advances it."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def user_errors(fn):
    """Turn a VidpruneError into one line on stderr and exit code 2, and anything unexpected into one line
    and exit code 1 (VIDPRUNE_DEBUG=1 shows the traceback), the same under the console script and CliRunner."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VidpruneError as exc:
            err_console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, click.exceptions.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("VIDPRUNE_DEBUG"):
                raise
            err_console.print(f"internal error: {type(exc).__name__}: {exc} (set VIDPRUNE_DEBUG=1 for the "
                              "traceback and please report it)", style="red", markup=False, highlight=False,
                              soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        import torch

        console.print(f"vidprune {vidprune.__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def single_options(items: List[str], method_cls, several: str) -> dict:
    """`--set name=value` items into {name: value} for a command that builds one model. `several` is the
    error for an option given several values, formatted with {name}, {values} and {first}."""
    from vidprune.spec import parse_set

    options = {}
    for name, values in parse_set(items, method_cls).items():
        if len(values) != 1:
            raise VidpruneError(several.format(name=name, values=",".join(values), first=values[0]))
        options[name] = values[0]
    return options


# ------------------------------------------------------------------------------------- shared options
# Each option below is used by more than one command, declared once so its name and help never drift.
# Where commands mean something different by a flag (--backbone's default, --batch), each keeps its own.
# The sweep settings' options (--autocast, --compile, ...) are declared on their SweepSpec fields and built
# by cli/settings.py.

# one model's settings, with plain defaults: profile, eval
DEVICE_OPTION = typer.Option("auto", "--device", help="cpu | cuda | cuda:N | mps | auto")
DTYPE_OPTION = typer.Option("fp32", "--dtype", help="fp32 | fp16 | bf16")
ATTENTION_OPTION = typer.Option("sdpa", "--attention", help="sdpa | math")
# profile, train
FRAMES_OPTION = typer.Option(None, "--frames")
SIZE_OPTION = typer.Option(None, "--size")
SET_ONE_OPTION = typer.Option(None, "--set", help="method option name=value (repeatable)")
# eval, train
SEED_OPTION = typer.Option(0, "--seed")
# geometry read from a checkpoint: eval, export
CHECKPOINT_FRAMES_OPTION = typer.Option(None, "--frames", help="frames per clip (default: checkpoint's, else backbone's)")
CHECKPOINT_SIZE_OPTION = typer.Option(None, "--size", help="crop size in pixels (default: checkpoint's, else backbone's)")

# the dataset: eval and sweep --data
DATA_OPTION = typer.Option(None, "--data", help="list file: 'relative/path.mp4 label' per line")
ROOT_OPTION = typer.Option(None, "--root", help="video folder (list paths are relative to it; alone: one sub-folder per class)")
CHECKPOINT_OPTION = typer.Option(None, "--checkpoint", help="VideoMAE .pth, Hugging Face file/folder, hub model "
                                 "hf:ORG/NAME[@REVISION], CLIP or vidprune checkpoint (omitted: random weights)")
SAMPLING_OPTION = typer.Option("uniform", "--sampling", help="uniform (TSN segments) | dense (frames --stride apart)")
STRIDE_OPTION = typer.Option(4, "--stride", help="frame stride of dense sampling (VideoMAE Kinetics: 4)")
CLIPS_OPTION = typer.Option(1, "--clips", help="temporal views per video")
CROPS_OPTION = typer.Option(1, "--crops", help="spatial views per clip (1 centre, 3 along the long side)")
SHORT_SIDE_OPTION = typer.Option(None, "--short-side", help="resize the short side to this before cropping (default: --size)")
NORM_OPTION = typer.Option("auto", "--norm", help="auto (the backbone family's) | imagenet | clip | kinetics")
WORKERS_OPTION = typer.Option(2, "--workers", help="DataLoader worker processes decoding videos")
LIMIT_OPTION = typer.Option(None, "--limit", help="evaluate only the first N videos")
# sweep, eval, export
TRUST_OPTION = typer.Option(False, "--trust-checkpoint", help="unpickle arbitrary objects in the checkpoint (only for "
                            "files you trust)")

# result tables: sweep and eval write them, plot and table read them
OUT_OPTION = typer.Option(Path("results"), "--out", "-o", help="folder for the result table")
TABLE_FORMAT_OPTION = typer.Option("csv", "--format", help="csv | parquet")
RESULT_FILES_ARGUMENT = typer.Argument(..., help="result tables (CSV or Parquet); globs allowed")


def check_table_format(fmt: str) -> None:
    if fmt not in ("csv", "parquet"):
        raise VidpruneError(f"--format must be csv or parquet, got '{fmt}'.")
