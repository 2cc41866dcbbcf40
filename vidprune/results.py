"""The result table: its columns, how files are named, written and read back."""

from __future__ import annotations

import glob
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from vidprune import metrics
from vidprune.errors import VidpruneError
from vidprune.registry import REFERENCE_METHOD

# One row per measured point. Order is the order of the CSV columns. The layout is a compatibility
# contract with tables already written, so it is spelled out; the measured columns are declared (with their
# labels and directions) in the metric table, vidprune/metrics.py, and a metric's column missing here (one
# added later) goes after the measured block, before `source`.
COLUMNS: list[str] = [
    "method", "backbone", "knob", "keep", "options", "frames", "size", "batch", "throughput_batch",
    "device", "device_name", "dtype", "autocast", "attention", "compile",
    "gflops", "gflops_fvcore", "gflops_thop", "gflops_counter", "flops_convention", "counters_agree",
    "params_m", "tokens_per_block", "tokens_final",
    "latency_ms", "latency_iqr_ms", "latency_mean_ms", "repeats", "warmup", "noisy",
    "peak_mem_mib", "peak_mem_method", "throughput",
    # Realized vs theoretical savings, each against the unpruned row of the same table and setting.
    "speedup_flops", "speedup_latency",
    # Label-free fidelity to the unpruned model (vidprune.evaluate), on dataset clips or generated ones.
    "agreement", "kl", "cosine", "fidelity_clips", "fidelity_source",
    "power_w", "energy_j_per_clip", "power_source", "peak_fraction",
    "source", "reference_note",
    "status", "error", "notes",
    "seed", "vidprune_version", "torch_version", "git_sha", "timestamp",
    # Stable hash of everything that defines the point (see spec.config_hash): what `--resume` matches on.
    "config_hash",
]
COLUMNS[COLUMNS.index("source"):COLUMNS.index("source")] = [c.name for c in metrics.columns() if c.name not in COLUMNS]

TEXT_COLUMNS = ("git_sha", "options", "error", "notes", "reference_note", "source", "config_hash",
                *(c.name for c in metrics.columns() if c.text))

# The columns `vidprune plot` may put on an axis, with the direction that is better: the metric table's,
# and the accuracy a dataset pass adds, and the speedups computed here.
COST_COLUMNS = metrics.axis_columns("min")
QUALITY_COLUMNS = {"accuracy": "max", "top1": "max", "top5": "max", "mean_class_accuracy": "max", "map": "max",
                   **metrics.axis_columns("max"), "speedup_flops": "max", "speedup_latency": "max"}

# A row's speedups are against the unpruned (REFERENCE_METHOD, `none`) row measured under the same
# conditions; the name is defined once, in registry (the bottom layer), so that methods can use it too.
SPEEDUP_GROUP = ("backbone", "frames", "size", "batch", "device", "dtype", "autocast", "attention", "compile")

FLOPS_CONVENTION = "1 MAC = 1 FLOP, per clip, per view"


def result_filename(method: str, backbone: str, frames: int, size: int, device: str, dtype: str,
                    torch_version: str, timestamp: str, fmt: str = "csv") -> str:
    """timm-style name recording what the numbers depend on, plus a timestamp so reruns never overwrite."""
    torch_tag = "pt" + re.sub(r"[^0-9a-zA-Z]+", "", torch_version.split("+")[0])
    device_tag = re.sub(r"[^0-9a-zA-Z]+", "", device)
    stamp = re.sub(r"[^0-9]", "", timestamp)[:14]
    # a backbone built from a hub config is named after its source ('vit(hf:ORG/NAME)'): no '/' in a file name
    backbone = re.sub(r"[^0-9A-Za-z.+-]+", "-", backbone).strip("-")
    return f"{method}_{backbone}_{frames}x{size}_{device_tag}_{dtype}_{torch_tag}_{stamp}.{fmt}"


def to_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with every schema column present (missing ones empty), extra columns kept."""
    df = pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra]


def _key_value(value):
    """One setting of a row, spelled one way whether it was measured now or read back from a CSV cell as
    text (ResultStore keeps rows already on disk as text): 8, 8.0 and "8" are the same batch, True and
    "True" the same autocast."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return text.lower()
        return number if math.isfinite(number) else text.lower()
    if isinstance(value, (int, float, np.number)):
        return float(value)
    return value


def _group_key(row: pd.Series, keys: Sequence[str]) -> tuple:
    return tuple(_key_value(row.get(key)) for key in keys)


def add_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Fill speedup_flops (reference GFLOPs / GFLOPs) and speedup_latency (reference latency / latency)
    for every row that has an unpruned row (method `none`, status ok, or status reference for paper rows)
    with the same SPEEDUP_GROUP settings. Rows without one stay empty: a speedup against a reference
    measured differently would be a wrong number."""
    df = df.copy()
    for col in ("speedup_flops", "speedup_latency"):
        if col not in df.columns:
            df[col] = pd.NA
    if df.empty or "method" not in df.columns:
        return df
    keys = [k for k in SPEEDUP_GROUP if k in df.columns]
    status = df["status"].astype(str).str.lower() if "status" in df.columns else pd.Series("ok", index=df.index)
    group = {i: (status[i], _group_key(df.loc[i], keys)) for i in df.index}
    is_reference = (df["method"].astype(str) == REFERENCE_METHOD) & status.isin(["ok", "reference"])
    reference_of: dict = {}
    for i in df.index[is_reference]:
        reference_of.setdefault(group[i], i)
    for metric, column in (("gflops", "speedup_flops"), ("latency_ms", "speedup_latency")):
        if metric not in df.columns:
            continue
        values = pd.to_numeric(df[metric], errors="coerce")
        speedups = []
        for i in df.index:
            ref = reference_of.get(group[i])
            usable = ref is not None and pd.notna(values[ref]) and pd.notna(values[i]) and values[i] > 0
            speedups.append(float(values[ref] / values[i]) if usable else float("nan"))
        df[column] = speedups
    return df


def write_table(rows: Sequence[dict], path: Path) -> Path:
    """Write atomically (temp file + rename) so a killed sweep never leaves a half-written table.
    Speedup columns are (re)computed from the rows on every write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = add_speedups(to_frame(rows))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp creates 0600; a results table in a shared folder should be readable like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        if path.suffix == ".parquet":
            try:
                df.to_parquet(tmp, index=False)
            except ImportError as exc:
                raise VidpruneError(
                    "writing Parquet needs pyarrow: pip install 'vidprune[parquet]' (or use --format csv)."
                ) from exc
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def expand_paths(patterns: Iterable[str]) -> list[Path]:
    """Expand globs (the shell may not have); an empty match is an error that says what was looked for."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not matches:
            raise VidpruneError(f"no result files match '{pattern}'. Run `vidprune sweep` first or check the path.")
        paths.extend(Path(m) for m in matches)
    return paths


def read_tables(patterns: Iterable[str]) -> pd.DataFrame:
    """Read one or more CSV/Parquet result tables into one DataFrame, with a clear error for a bad file."""
    frames = []
    for path in expand_paths(patterns):
        if not path.is_file():
            raise VidpruneError(f"result file '{path}' does not exist. Check the path or run `vidprune sweep`.")
        try:
            if path.suffix == ".parquet":
                df = pd.read_parquet(path)
            else:
                # Text columns that may look numeric (a short git sha of digits only, option JSON).
                df = pd.read_csv(path, dtype={c: "string" for c in TEXT_COLUMNS})
        except Exception as exc:  # pandas raises many types for unreadable input
            raise VidpruneError(
                f"cannot read result file '{path}' ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "Pass a CSV or Parquet table written by `vidprune sweep`."
            ) from exc
        missing = [c for c in ("method", "status") if c not in df.columns]
        if missing:
            raise VidpruneError(
                f"'{path}' is not a vidprune result table (missing columns: {', '.join(missing)})."
            )
        if "speedup_flops" not in df.columns or pd.to_numeric(df["speedup_flops"], errors="coerce").isna().all():
            df = add_speedups(df)  # tables written before the speedup columns existed
        df["result_file"] = str(path)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
