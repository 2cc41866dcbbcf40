"""End-to-end tests of the `vidprune` command line, run in-process with Typer's CliRunner.

Everything runs on the CPU with the tiny backbone (192 dim, 4 blocks, 8 frames x 64 px), two timed
repeats and no warm-up, and flops-only where timing does not matter, so the file stays fast.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import vidprune
from vidprune import registry
from vidprune import runner as runner_mod
from vidprune.cli.app import app, console, err_console

FAST = ["--backbone", "vit-tiny", "--device", "cpu", "--repeats", "2", "--warmup", "0"]
TORCH_TAG = "pt" + re.sub(r"[^0-9a-zA-Z]+", "", torch.__version__.split("+")[0])  # pt2130 for torch 2.13.0


# ------------------------------------------------------------------------------------------- helpers


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def streams(result) -> tuple[str, str]:
    """(stdout, stderr); older click mixes stderr into stdout and refuses `.stderr`."""
    try:
        err = result.stderr or ""
    except ValueError:
        err = ""
    return result.stdout or "", err


def combined(result) -> str:
    out, err = streams(result)
    return out + err


def ok(result) -> str:
    text = combined(result)
    assert result.exit_code == 0, f"exit {result.exit_code}: {text}\n{result.exception!r}"
    return text


def assert_user_error(result, *needles: str) -> str:
    """Exit code 2, exactly one line of output, starting with 'error:', no traceback."""
    text = combined(result)
    assert result.exit_code == 2, f"exit {result.exit_code}: {text}\n{result.exception!r}"
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def only_table(folder, suffix: str = ".csv"):
    """The one result table in `folder`; also checks that no temp file was left behind."""
    files = sorted(folder.iterdir())
    assert len(files) == 1, files
    assert files[0].suffix == suffix
    return files[0]


def read(path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def options_of(df: pd.DataFrame) -> list[dict]:
    return [json.loads(o) for o in df["options"]]


def _widen(mp: pytest.MonkeyPatch) -> None:
    # Rich would otherwise size tables to the terminal when pytest runs with -s in a narrow one.
    for stream in (console, err_console):
        mp.setattr(stream, "width", 200)


@pytest.fixture(autouse=True)
def _wide_consoles(monkeypatch):
    _widen(monkeypatch)


@pytest.fixture(scope="module")
def evad_sweep(tmp_path_factory):
    """One full (all metrics) sweep, shared by the tests that only read its table."""
    out = tmp_path_factory.mktemp("evad_sweep")
    with pytest.MonkeyPatch.context() as mp:
        _widen(mp)
        result = invoke("sweep", "--method", "evad", "--keep", "0.6,0.7,0.8", *FAST, "--out", out)
    return result, out


# ------------------------------------------------------------------------------------- version, list


def test_version_prints_package_version():
    text = ok(invoke("--version"))
    assert vidprune.__version__ in text
    assert text.startswith("vidprune ")


def test_help_lists_every_command_in_order():
    text = ok(invoke("--help"))
    listed = [line.split()[0] for line in text.split("Commands:", 1)[1].splitlines() if line.strip()]
    assert listed == ["sweep", "profile", "plot", "table", "report", "list", "eval", "train", "export", "data"]


def test_cli_import_leaves_torch_unloaded():
    """`vidprune --help` and `--version` stay fast: the command modules import torch and the library only
    when a command runs."""
    code = "import sys, vidprune.cli; print(sorted(m for m in ('torch', 'pandas', 'vidprune.sweep') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(vidprune.__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_list_shows_every_backbone_and_method_with_knob_defaults():
    text = ok(invoke("list"))
    for name in registry.backbones():
        assert name in text
    for name, cls in registry.methods().items():
        assert name in text
        if cls.knob is not None:
            assert cls.knob.name in text
            assert f"{cls.knob.default:g}" in text
        for option in cls.options:
            assert f"{option.name}={option.default}" in text
    assert "rho" in text and "w_kf=4.0" in text


def test_list_json():
    out, _ = streams(invoke("list", "--json"))
    data = json.loads(out)
    assert set(data["backbones"]) == set(registry.backbones())
    assert set(data["methods"]) == set(registry.methods())
    assert data["backbones"]["vit-tiny"]["frames"] == 8 and data["backbones"]["vit-tiny"]["size"] == 64
    evad = data["methods"]["evad"]
    assert evad["knob"]["name"] == "rho"
    assert evad["knob"]["default"] == pytest.approx(0.7)
    assert evad["options"]["w_kf"]["default"] == pytest.approx(4)
    assert "layers" in evad["options"]
    assert data["methods"]["none"]["knob"] is None


# ------------------------------------------------------------------------------------------- sweep


def test_sweep_writes_one_named_table_with_reference_first(evad_sweep):
    result, out = evad_sweep
    text = ok(result)
    path = only_table(out)
    for part in ("evad", "vit-tiny", "8x64", "_cpu_", "fp32", TORCH_TAG):
        assert part in path.name, (part, path.name)
    assert str(path.name) in text  # "wrote <path>"
    assert "GFLOPs" in text

    df = read(path)
    assert len(df) == 4
    assert list(df["method"]) == ["none", "evad", "evad", "evad"]
    assert list(df["keep"]) == pytest.approx([1.0, 0.6, 0.7, 0.8])
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    assert df["knob"].iloc[1:].eq("rho").all()
    assert (df["backbone"] == "vit-tiny").all() and (df["device"] == "cpu").all() and (df["dtype"] == "fp32").all()

    # less kept -> fewer GFLOPs, strictly
    by_keep = df.sort_values("keep", ascending=False)
    gflops = by_keep["gflops"].tolist()
    assert all(a > b for a, b in zip(gflops, gflops[1:])), gflops
    # the second counter agrees with the primary one within 1%
    assert ((df["gflops_fvcore"] - df["gflops"]).abs() / df["gflops"] < 0.01).all(), df[["gflops", "gflops_fvcore"]]

    for col in ("gflops", "latency_ms", "throughput", "params_m"):
        values = pd.to_numeric(df[col], errors="coerce")
        assert values.notna().all() and (values > 0).all(), (col, values.tolist())
    mem = pd.to_numeric(df["peak_mem_mib"], errors="coerce")
    assert mem.notna().all() and (mem >= 0).all(), mem.tolist()
    exact = df["peak_mem_method"].isin(["linux_vmhwm_delta", "cuda_max_memory_allocated"])
    assert (mem[exact] > 0).all(), df[["peak_mem_mib", "peak_mem_method"]]  # polling fallbacks may miss a 3 ms peak

    for _, row in df.iterrows():
        tokens = [int(t) for t in str(row["tokens_per_block"]).split(",")]
        assert len(tokens) == 4  # one entry per block of vit-tiny
        assert tokens[0] == row["frames"] // 2 * (row["size"] // 16) ** 2 == 64
        assert all(a >= b for a, b in zip(tokens, tokens[1:]))
    assert df["tokens_per_block"].iloc[0] == "64,64,64,64"


def test_sweep_range_parquet_and_flops_only(tmp_path):
    ok(invoke("sweep", "--method", "evad", "--keep", "0.5:0.9:0.2", "--format", "parquet", "--metrics", "flops",
              *FAST, "--out", tmp_path))
    path = only_table(tmp_path, ".parquet")
    df = pd.read_parquet(path)
    assert list(df["keep"]) == pytest.approx([1.0, 0.5, 0.7, 0.9])
    assert (df["status"] == "ok").all()
    assert (pd.to_numeric(df["gflops"]) > 0).all()
    assert df["latency_ms"].isna().all()
    assert df["throughput"].isna().all()


def test_sweep_set_grid_and_non_grid_option(tmp_path):
    ok(invoke("sweep", "--method", "evad", "--keep", "0.7", "--set", "w_kf=1,4", "--set", "layers=2,3",
              *FAST, "--metrics", "flops", "--out", tmp_path))  # tokens_per_block comes from the count
    df = read(only_table(tmp_path))
    evad = df[df["method"] == "evad"]
    assert len(df) == 3 and len(evad) == 2  # w_kf is a grid of 2; layers=2,3 is one value
    opts = options_of(evad)
    assert sorted(o["w_kf"] for o in opts) == pytest.approx([1.0, 4.0])
    assert all(o["layers"] == "2,3" for o in opts)
    for tokens in evad["tokens_per_block"]:
        t = [int(v) for v in tokens.split(",")]
        assert t[0] == t[1] == 64 and t[2] < 64  # nothing pruned before layer 2


def _write_recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


RECIPE = """\
name: test
sweep:
  method: evad
  backbone: vit-tiny
  keep: [0.7]
  metrics: flops
  device: cpu
convention:
  paper_gflops_factor: 2.0
references:
  - keep: 0.7
    gflops: 10.0
    source: "Test Table 1"
"""


def test_sweep_recipe_with_paper_references(tmp_path):
    recipe = _write_recipe(tmp_path, RECIPE)
    ok(invoke("sweep", "--recipe", recipe, "--out", tmp_path / "out"))
    df = read(only_table(tmp_path / "out"))
    measured = df[df["status"] == "ok"]
    assert list(measured["method"]) == ["none", "evad"]
    assert list(measured["keep"]) == pytest.approx([1.0, 0.7])
    assert measured["latency_ms"].isna().all()  # metrics: flops from the recipe
    refs = df[df["status"] == "reference"]
    assert len(refs) == 1
    ref = refs.iloc[0]
    assert "Test Table 1" in ref["source"]
    assert ref["method"] == "evad"
    assert ref["keep"] == pytest.approx(0.7)
    assert ref["gflops"] == pytest.approx(5.0)  # 10 paper GFLOPs / factor 2


def test_sweep_flags_override_recipe(tmp_path):
    recipe = _write_recipe(tmp_path, RECIPE)
    ok(invoke("sweep", "--recipe", recipe, "--keep", "0.6", "--metrics", "params", "--out", tmp_path / "out"))
    df = read(only_table(tmp_path / "out"))
    measured = df[df["status"] == "ok"]
    assert list(measured["keep"]) == pytest.approx([1.0, 0.6])
    assert measured["gflops"].isna().all() and (measured["params_m"] > 0).all()  # --metrics beat the recipe's
    assert (df["status"] == "reference").sum() == 1


def test_recipe_with_unknown_key_is_a_user_error(tmp_path):
    recipe = _write_recipe(tmp_path, RECIPE.replace("  metrics: flops\n", "  metrics: flops\n  kepp: 0.5\n"))
    assert_user_error(invoke("sweep", "--recipe", recipe, "--out", tmp_path / "out"), "kepp")
    recipe = _write_recipe(tmp_path, "colour: blue\n" + RECIPE)
    assert_user_error(invoke("sweep", "--recipe", recipe, "--out", tmp_path / "out"), "colour")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ profile


def test_profile_prints_gflops():
    text = ok(invoke("profile", "--method", "evad", "--keep", "0.7", *FAST))
    assert "GFLOPs" in text
    assert "environment" in text


def test_profile_json():
    # layers is not a grid option: its commas stay in one value
    result = invoke("profile", "--method", "evad", "--keep", "0.7", "--set", "layers=2,3", *FAST, "--json")
    ok(result)
    data = json.loads(streams(result)[0])
    assert json.loads(data["result"]["options"])["layers"] == "2,3"
    assert set(data) >= {"environment", "result"}
    assert data["result"]["gflops"] > 0
    assert data["result"]["status"] == "ok"
    assert data["result"]["keep"] == pytest.approx(0.7)
    assert data["environment"]["device"] == "cpu"


# ------------------------------------------------------------------------------------- plot, table


def test_plot_writes_png_and_svg(evad_sweep, tmp_path):
    _, out = evad_sweep
    csv = only_table(out)
    ok(invoke("plot", csv, "--out", tmp_path / "plots"))
    files = {p.suffix: p for p in (tmp_path / "plots").iterdir()}
    assert set(files) == {".png", ".svg"}
    assert all(p.stat().st_size > 0 for p in files.values())

    ok(invoke("plot", csv, "--x", "latency_ms", "--y", "throughput", "--out", tmp_path / "lat", "--name", "lat"))
    assert (tmp_path / "lat" / "lat.png").stat().st_size > 0
    assert (tmp_path / "lat" / "lat.svg").stat().st_size > 0


def test_plot_unknown_column_is_a_user_error(evad_sweep, tmp_path):
    _, out = evad_sweep
    assert_user_error(invoke("plot", only_table(out), "--y", "nosuchcol", "--out", tmp_path), "nosuchcol")


def test_table_formats(evad_sweep):
    _, out = evad_sweep
    csv = only_table(out)
    markdown = ok(invoke("table", csv, "--format", "markdown"))
    assert "evad" in markdown and "|" in markdown
    assert "tabular" in ok(invoke("table", csv, "--format", "latex"))
    assert "evad" in ok(invoke("table", csv))
    assert_user_error(invoke("table", csv, "--format", "xml"), "xml")


# --------------------------------------------------------------------------------------- bad input


BAD_SWEEPS = [
    (["--method", "evda"], ["evda", "'evad'"]),
    (["--method", "evad", "--backbone", "vit-huge"], ["vit-huge"]),
    (["--method", "evad", "--keep", "0"], ["rho", "(0, 1]"]),
    (["--method", "evad", "--keep", "1.5"], ["rho", "(0, 1]"]),
    (["--method", "evad", "--keep", "-1"], ["rho", "(0, 1]"]),
    (["--method", "evad", "--keep", "abc"], ["abc"]),
    (["--method", "evad", "--frames", "7"], ["--frames 7"]),
    (["--method", "evad", "--size", "70"], ["--size 70"]),
    (["--method", "evad", "--device", "tpu"], ["tpu"]),
    (["--method", "evad", "--set", "foo=1"], ["foo"]),
    (["--method", "evad", "--metrics", "bogus"], ["bogus"]),
    (["--method", "evad", "--format", "xml"], ["xml"]),
    (["--method", "evad", "--set", "layers=9"], ["layer 9"]),
    (["--method", "evad", "--dtype", "fp8"], ["fp8"]),
]


@pytest.mark.parametrize("args, needles", BAD_SWEEPS, ids=[" ".join(args) for args, _ in BAD_SWEEPS])
def test_sweep_bad_input_is_one_error_line(tmp_path, args, needles):
    # the backbone comes first so that the case's own --backbone wins
    result = invoke("sweep", "--backbone", "vit-tiny", "--device", "cpu", "--metrics", "flops", *args,
                    "--out", tmp_path / "out")
    assert_user_error(result, *needles)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_sweep_cuda_without_cuda_is_a_user_error(tmp_path):
    result = invoke("sweep", "--method", "evad", "--backbone", "vit-tiny", "--device", "cuda", "--out", tmp_path)
    assert_user_error(result, "cuda")


@pytest.mark.parametrize("args", [
    ["--backbone", "vit-huge"],
    ["--backbone", "vit-tiny", "--frames", "7"],
    ["--backbone", "vit-tiny", "--method", "evda"],
    ["--backbone", "vit-tiny", "--method", "evad", "--keep", "1.5"],
    ["--backbone", "vit-tiny", "--device", "tpu"],
])
def test_profile_bad_input_is_one_error_line(args):
    assert_user_error(invoke("profile", *args, "--repeats", "2", "--warmup", "0"))


@pytest.mark.parametrize("args, needles", [
    (["--set", "w_kf=2,4"], ["--set w_kf takes one value", "'2,4'", "vidprune sweep"]),
    (["--keep", "0.6,0.7"], ["--keep takes one value", "'0.6,0.7'", "vidprune sweep"]),
])
def test_profile_measures_one_point_and_points_to_sweep_for_a_grid(args, needles):
    result = invoke("profile", "--backbone", "vit-tiny", "--method", "evad", *args, "--device", "cpu")
    assert_user_error(result, "profile measures one point", *needles)


def _bad_tables(tmp_path) -> dict[str, str]:
    garbage = tmp_path / "x.parquet"
    garbage.write_bytes(bytes(range(256)) * 8)
    no_columns = tmp_path / "other.csv"
    no_columns.write_text("a,b\n1,2\n")
    return {"garbage parquet": str(garbage), "csv without method/status": str(no_columns),
            "missing file": str(tmp_path / "does_not_exist.csv"), "empty glob": "nothing/*.csv"}


@pytest.mark.parametrize("command", ["plot", "table"])
@pytest.mark.parametrize("case", ["garbage parquet", "csv without method/status", "missing file", "empty glob"])
def test_unreadable_result_file_is_one_error_line(tmp_path, monkeypatch, command, case):
    monkeypatch.chdir(tmp_path)
    path = _bad_tables(tmp_path)[case]
    extra = ["--out", str(tmp_path / "plots")] if command == "plot" else []
    line = assert_user_error(invoke(command, path, *extra))
    if case == "csv without method/status":
        assert "method" in line and "status" in line
    elif case == "empty glob":
        assert "nothing/*.csv" in line
    else:
        assert path in line


# ------------------------------------------------------------------------------- failures in a sweep


def test_failing_point_keeps_the_others(tmp_path, monkeypatch):
    real_time = runner_mod.Runner.time_forward

    def flaky(self, model, batch):
        if model.method.keep is not None and math.isclose(model.method.keep, 0.7):
            raise RuntimeError("injected failure at keep 0.7")
        return real_time(self, model, batch)

    monkeypatch.setattr(runner_mod.Runner, "time_forward", flaky)
    result = invoke("sweep", "--method", "evad", "--keep", "0.6,0.7,0.8", "--metrics", "latency", *FAST,
                    "--out", tmp_path)
    text = combined(result)
    assert result.exit_code == 1, text
    assert "Traceback" not in text
    assert "did not measure cleanly" in text
    df = read(only_table(tmp_path))
    assert len(df) == 4
    assert list(df["keep"]) == pytest.approx([1.0, 0.6, 0.7, 0.8])
    failed = df[df["status"] != "ok"]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["status"] == "failed" and row["keep"] == pytest.approx(0.7)
    assert "injected failure at keep 0.7" in row["error"] and "RuntimeError" in row["error"]
    good = df[df["status"] == "ok"]
    assert len(good) == 3 and (pd.to_numeric(good["latency_ms"]) > 0).all()


def test_out_of_memory_halves_the_batch(tmp_path, monkeypatch):
    real_time = runner_mod.Runner.time_forward
    calls = []

    def small_device(self, model, batch):
        calls.append(batch)
        if batch > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1.00 GiB total capacity)")
        return real_time(self, model, batch)

    monkeypatch.setattr(runner_mod.Runner, "time_forward", small_device)
    result = invoke("sweep", "--method", "evad", "--keep", "0.7", "--batch", "4", "--metrics", "latency,throughput",
                    *FAST, "--out", tmp_path)
    text = ok(result)
    assert calls == [4, 2, 1, 4, 2, 1]  # reference, then evad
    df = read(only_table(tmp_path))
    assert len(df) == 2
    assert (df["status"] == "ok").all()
    assert (df["batch"] == 4).all()
    assert (df["throughput_batch"] == 1).all()
    assert (pd.to_numeric(df["throughput"]) > 0).all()
    for notes in df["notes"]:
        assert "batch 4 ran out of memory; retried at 2" in notes
        assert "batch 2 ran out of memory; retried at 1" in notes
    # each halving is printed as one whole note, in order
    assert "note: batch 4 ran out of memory; retried at 2" in text
    assert "note: batch 2 ran out of memory; retried at 1" in text
    assert text.index("batch 4 ran out of memory") < text.index("batch 2 ran out of memory")


def test_train_set_takes_one_value(tmp_path):
    result = invoke("train", "--root", tmp_path, "--method", "evad", "--set", "w_kf=1,2")
    assert_user_error(result, "train trains one model", "--set w_kf takes one value", "'1,2'")
