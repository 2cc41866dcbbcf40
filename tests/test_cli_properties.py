"""Validated input, as properties: every valid combination of sweep options and method knobs yields
well-formed rows; every invalid one exits 2 with one line and no traceback, and writes nothing. Also
the recipe schema: a wrong type or an out-of-range value names the file, the key and what is allowed.

Hypothesis runs few, derandomized examples (the same ones on every run, so CI does not flake) with
--metrics params,flops on the tiny backbone (a shape-only count, which also records the token trace), which
keeps each example to a fraction of a second.
"""

from __future__ import annotations

import glob
import string
import tempfile
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("hypothesis")  # in the `test` extra; skip rather than fail to collect without it

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from vidprune.cli.app import app, console, err_console  # noqa: E402
from vidprune.recipes import load_recipe  # noqa: E402
from vidprune.results import COLUMNS  # noqa: E402
from vidprune.spec import SweepSpec, config_hash  # noqa: E402
from vidprune.sweep import expand_points  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE = ["sweep", "--backbone", "vit-tiny", "--device", "cpu", "--metrics", "params,flops", "--repeats", "1", "--warmup", "0"]
PROPERTY = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _wide_consoles(monkeypatch):
    for stream in (console, err_console):
        monkeypatch.setattr(stream, "width", 200)


def invoke(args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    try:
        err = result.stderr or ""
    except ValueError:
        err = ""
    return result, (result.stdout or "") + err


def assert_one_error_line(result, text: str, *needles: str) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}: {text}\n{result.exception!r}"
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------ valid combinations

keeps = st.lists(st.floats(min_value=0.05, max_value=1.0), min_size=1, max_size=2, unique=True)
combos = st.fixed_dictionaries({
    "method": st.sampled_from(["evad", "random", "none"]),
    "keeps": keeps,
    "frames": st.sampled_from([2, 4, 8]),
    "size": st.sampled_from([16, 32, 48]),
    "batch": st.integers(1, 3),
    "classes": st.integers(1, 50),
    "dtype": st.sampled_from(["fp32", "float32", "bf16"]),
    "attention": st.sampled_from(["sdpa", "math"]),
    "seed": st.integers(0, 2**31 - 1),
    "w_kf": st.one_of(st.none(), st.floats(min_value=0.5, max_value=8.0)),
    "keyframe": st.one_of(st.none(), st.booleans()),
})


def combo_args(c: dict) -> tuple[list[str], SweepSpec]:
    args = ["--method", c["method"], "--frames", c["frames"], "--size", c["size"], "--batch", c["batch"],
            "--classes", c["classes"], "--dtype", c["dtype"], "--attention", c["attention"], "--seed", c["seed"]]
    options = {}
    if c["method"] != "none":
        args += ["--keep", ",".join(repr(k) for k in c["keeps"])]
    if c["method"] == "evad" and c["w_kf"] is not None:
        args += ["--set", f"w_kf={c['w_kf']!r}"]
        options["w_kf"] = [repr(c["w_kf"])]
    if c["method"] == "random" and c["keyframe"] is not None:
        args += ["--set", f"keyframe={str(c['keyframe']).lower()}"]
        options["keyframe"] = [str(c["keyframe"]).lower()]
    spec = SweepSpec(method=c["method"], keeps=list(c["keeps"]) if c["method"] != "none" else [], backbone="vit-tiny",
                     frames=c["frames"], size=c["size"], classes=c["classes"], batch=c["batch"], device="cpu",
                     dtype=c["dtype"], attention=c["attention"], metrics=("params", "flops"), repeats=1, warmup=0,
                     seed=c["seed"], options=options)
    return args, spec


@PROPERTY
@given(combos)
def test_every_valid_combination_yields_well_formed_rows(c):
    args, spec = combo_args(c)
    with tempfile.TemporaryDirectory() as tmp:
        result, text = invoke([*BASE, *args, "--out", tmp])
        assert result.exit_code == 0, text
        [path] = list(Path(tmp).iterdir())
        with open(path) as f:
            assert f.readline().rstrip("\n").split(",")[:len(COLUMNS)] == COLUMNS
        df = pd.read_csv(path, dtype={"config_hash": "string", "tokens_per_block": "string"})
    points = expand_points(spec)
    assert len(df) == len(points)
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    assert list(df["config_hash"]) == [config_hash(spec, p) for p in points]
    assert df["config_hash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert list(df["method"]) == [p.method for p in points]
    assert list(df["keep"]) == pytest.approx([1.0 if p.keep is None else p.keep for p in points])
    assert (df["frames"] == c["frames"]).all() and (df["size"] == c["size"]).all()
    assert (df["batch"] == c["batch"]).all() and (df["seed"] == c["seed"]).all()
    assert (df["dtype"] == ("bf16" if c["dtype"] == "bf16" else "fp32")).all()
    assert (df["attention"] == c["attention"]).all() and (df["params_m"] > 0).all()
    first = c["frames"] // 2 * (c["size"] // 16) ** 2
    for trace in df["tokens_per_block"]:
        tokens = [int(t) for t in trace.split(",")]
        assert len(tokens) == 4 and tokens[0] == first  # vit-tiny: 4 blocks, every token enters the first
        assert all(a >= b >= 1 for a, b in zip(tokens, tokens[1:]))


# ---------------------------------------------------------------------------------- invalid combinations

words = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8)
mistakes = st.one_of(
    st.floats(max_value=0.0).map(lambda k: (["--keep", repr(k)], "rho")),
    st.floats(min_value=1.0, exclude_min=True).map(lambda k: (["--keep", repr(k)], "rho")),
    words.map(lambda w: (["--keep", w], w)),
    st.integers(-9, 40).filter(lambda f: f <= 0 or f % 2).map(lambda f: (["--frames", f], f"--frames {f}")),
    st.integers(-40, 100).filter(lambda s: s <= 0 or s % 16).map(lambda s: (["--size", s], f"--size {s}")),
    st.integers(-3, 0).map(lambda b: (["--batch", b], "--batch")),
    st.integers(-3, 0).map(lambda n: (["--classes", n], "--classes")),
    st.integers(-3, 0).map(lambda n: (["--repeats", n], "--repeats")),
    st.integers(-3, -1).map(lambda n: (["--warmup", n], "--warmup")),
    words.filter(lambda w: w not in ("bf", "fp")).map(lambda w: (["--dtype", w], w)),
    words.filter(lambda w: w not in ("sdpa", "math")).map(lambda w: (["--attention", w], w)),
    words.filter(lambda w: w not in ("cpu", "cuda", "mps", "auto")).map(lambda w: (["--device", w], w)),
    words.filter(lambda w: w not in ("flops", "params", "latency", "memory", "throughput"))
         .map(lambda w: (["--metrics", w], w)),
    words.filter(lambda w: w not in ("layers",)).map(lambda w: (["--set", f"{w}=1"], w)),
    st.floats(max_value=0.0).map(lambda v: (["--set", f"w_kf={v!r}"], "w_kf")),
    words.filter(lambda w: w not in ("csv", "parquet")).map(lambda w: (["--format", w], w)),
    words.filter(lambda w: w not in ("local", "subprocess", "ray", "slurm")).map(lambda w: (["--executor", w], w)),
)


@settings(PROPERTY, max_examples=30)
@given(valid=combos, mistake=mistakes)
def test_every_invalid_combination_is_one_error_line_and_writes_nothing(valid, mistake):
    valid = dict(valid, method="evad")  # the knob and option mistakes are evad's
    args, _ = combo_args(valid)
    bad, needle = mistake
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        result, text = invoke([*BASE, *args, *bad, "--out", out])  # the mistake comes last, so it wins
        assert_one_error_line(result, text, str(needle))
        assert not out.exists()


# ------------------------------------------------------------------------------------------ recipes


def test_every_shipped_recipe_passes_the_schema():
    paths = sorted(glob.glob(str(REPO / "recipes" / "*.yaml")))
    assert paths
    for path in paths:
        assert load_recipe(path)["sweep"]["method"]


RECIPE = """name: t
sweep:
  method: evad
  backbone: vit-tiny
  keep: [0.7]
  metrics: params
convention:
  paper_gflops_factor: 1.0
references:
  - {keep: 0.7, gflops: 1.0, source: "Table 1"}
"""

BAD_RECIPES = [
    ("  keep: [0.7]", "  keep: [1.5]", "sweep.keep", "(0, 1]"),
    ("  keep: [0.7]", "  keep: [seventy]", "sweep.keep", "(0, 1]"),
    ("  backbone: vit-tiny", "  backbone: vit-tiny\n  frames: eight", "sweep.frames", "integer >= 1"),
    ("  backbone: vit-tiny", "  backbone: vit-tiny\n  batch: 0", "sweep.batch", "integer >= 1"),
    ("  backbone: vit-tiny", "  backbone: vit-tiny\n  warmup: -1", "sweep.warmup", "integer >= 0"),
    ("  backbone: vit-tiny", "  backbone: vit-tiny\n  dtype: fp8", "sweep.dtype", "bf16"),
    ("  backbone: vit-tiny", "  backbone: vit-tiny\n  attention: flash", "sweep.attention", "sdpa"),
    ("  backbone: vit-tiny", "  backbone: vit-tiny\n  device: tpu", "sweep.device", "cuda:N"),
    ("  backbone: vit-tiny", "  backbone: vit-huge", "sweep.backbone", "vit-tiny"),
    ("  method: evad", "  method: evda", "sweep.method", "evad"),
    ("  metrics: params", "  metrics: [params, speed]", "sweep.metrics", "throughput"),
    ("  metrics: params", "  metrics: params\n  options: {wkf: 4}", "sweep.options", "w_kf"),
    ("  metrics: params", "  metrics: params\n  options: {w_kf: {a: 1}}", "sweep.options.w_kf", "a number"),
    ("  paper_gflops_factor: 1.0", "  paper_gflops_factor: -2", "convention.paper_gflops_factor", "> 0"),
    ("gflops: 1.0", "gflops: lots", "references[0].gflops", "a number"),
    ("name: t", "name: [t]", "name", "a string"),
]


@pytest.mark.parametrize("old, new, key, allowed", BAD_RECIPES, ids=[case[2] + ": " + case[1].strip() for case in BAD_RECIPES])
def test_a_bad_recipe_value_names_file_key_and_allowed_values(tmp_path, old, new, key, allowed):
    assert old in RECIPE
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.replace(old, new))
    result, text = invoke(["sweep", "--recipe", recipe, "--device", "cpu", "--out", tmp_path / "out"])
    line = assert_one_error_line(result, text, str(recipe), key, "allowed:", allowed)
    assert not (tmp_path / "out").exists(), line


def test_the_good_recipe_of_these_tests_is_accepted(tmp_path):
    recipe = tmp_path / "good.yaml"
    recipe.write_text(RECIPE)
    result, text = invoke(["sweep", "--recipe", recipe, "--device", "cpu", "--repeats", "1", "--warmup", "0",
                           "--out", tmp_path / "out"])
    assert result.exit_code == 0, text
