"""One source per concept: a sweep setting is one SweepSpec field, a metric one entry of the metric table,
a note one declared kind; what the wire, config_hash, recipes, the command line, `profile`, the result
columns and plots know about them follows from there. Also: config_hash is what it was before the split,
and no module of vidprune imports in a cycle (at module level or inside a function)."""

from __future__ import annotations

import ast
import dataclasses
import json
import string
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import vidprune
from vidprune import metrics, notes, recipes, results, spec
from vidprune.cli.app import app
from vidprune.cli.settings import SettingsGroup, with_settings
from vidprune.errors import VidpruneError
from vidprune.report.plot import AXIS_LABELS
from vidprune.runner import Runner
from vidprune.spec import Point, SweepSpec, config_hash, spec_from_dict, spec_to_dict

TINY = dict(backbone="vit-tiny", frames=4, size=32, classes=5, device="cpu", seed=0)


# ------------------------------------------------------------------------------------ hash stability


def test_config_hash_equals_the_value_computed_before_the_split():
    """Literals computed with the pre-split sweep.py: a changed hash would orphan every table on disk
    (`--resume` matches on it), so this is the one place a hard-coded value is the point."""
    fixed = SweepSpec(method="evad", keeps=[0.7], backbone="vit-s", frames=8, size=112, classes=10, batch=2,
                      device="cpu", dtype="fp32", attention="sdpa", metrics=("flops", "params"), repeats=3,
                      warmup=1, seed=1)
    assert config_hash(fixed, Point("evad", 0.7, {"w_kf": "2"})) == "96c6bd9e0b16bac5"
    assert config_hash(fixed, Point("none", None, {})) == "84a5bf986fecd43b"
    # every WHEN_SET setting set, defaults elsewhere (all metrics, the backbone's geometry)
    everything = SweepSpec(method="evad", backbone="vit-tiny", device="auto", dtype="bf16", autocast=True,
                           compile=True, power=True, peak=True, fidelity_clips=3)
    assert config_hash(everything, Point("evad", 0.5, {})) == "4f70fa4d2cdc8842"
    assert config_hash(SweepSpec(method="sttm"), Point("sttm", 0.5, {})) == "9c92bc4cee31ade2"


# ------------------------------------------------------------------------------------------ settings


def test_every_spec_field_declares_how_it_travels_hashes_and_is_set():
    hashed = {}
    for f in dataclasses.fields(SweepSpec):
        assert "setting" in f.metadata, f"SweepSpec.{f.name} is not declared with spec.setting(...)"
        meta = f.metadata["setting"]
        assert meta.hashed in (spec.ALWAYS, spec.WHEN_SET, spec.POINT, spec.NOT), f.name
        hashed.setdefault(meta.hashed, []).append(f.name)
        if meta.recipe is not None:
            assert meta.recipe.kind in recipes._CHECKS, f"no recipe check for kind {meta.recipe.kind!r} ({f.name})"
        if meta.flag is not None:
            assert meta.flag.group in ("model", "run") and meta.flag.names[0].startswith("--"), f.name
    # what the hand-written lists said before the settings declared it themselves
    assert set(spec_to_dict(SweepSpec(method="evad"))) == {
        "method", "keeps", "backbone", "frames", "size", "classes", "batch", "device", "dtype", "attention",
        "metrics", "repeats", "warmup", "seed", "options", "autocast", "compile", "power", "peak", "fidelity_clips"}
    assert recipes.SWEEP_KEYS == {"method", "backbone", "keep", "frames", "size", "classes", "batch", "device",
                                  "dtype", "attention", "metrics", "repeats", "warmup", "seed", "options"}
    assert set(hashed[spec.WHEN_SET]) == {"autocast", "compile", "power", "peak", "fidelity_clips"}
    assert set(hashed[spec.POINT]) == {"method", "keeps", "options"}
    assert set(hashed[spec.NOT]) == {"references", "recipe"}


def test_a_spec_survives_the_wire():
    sent = SweepSpec(method="evad", keeps=[0.5, 0.7], options={"w_kf": ["2", "4"]}, metrics=("flops", "latency"),
                     compile=True, fidelity_clips=2, references=[{"keep": 0.5}], recipe="r.yaml", **TINY)
    wire = json.loads(json.dumps(spec_to_dict(sent)))
    received = spec_from_dict(wire)
    assert received == dataclasses.replace(sent, references=[], recipe=None)
    assert isinstance(received.metrics, tuple)


def test_a_new_setting_declared_once_reaches_the_wire_the_hash_the_recipe_and_the_command_line(monkeypatch, tmp_path):
    """A throwaway setting on a SweepSpec subclass: nothing but its field declaration is written."""
    point = Point("evad", 0.7, {})
    before = config_hash(SweepSpec(method="evad", **TINY), point)
    extended = dataclasses.make_dataclass("ExtendedSpec", [(
        "runtime", Optional[str], spec.setting(None, hashed=spec.WHEN_SET,
                                               recipe=spec.RecipeKey("choice", choices=("torch", "onnxruntime")),
                                               flag=spec.Flag(("--runtime",), "where latency is timed", group="run")),
    )], bases=(SweepSpec,))
    monkeypatch.setattr(spec, "SweepSpec", extended)
    import vidprune.cli.settings as cli_settings

    monkeypatch.setattr(cli_settings, "SweepSpec", extended)

    plain, set_ = extended(method="evad", **TINY), extended(method="evad", runtime="onnxruntime", **TINY)
    # unset, it leaves the hashes of tables written before it existed alone; set, it is part of the identity
    assert config_hash(plain, point) == before
    assert config_hash(set_, point) != config_hash(plain, point)
    assert spec_to_dict(set_)["runtime"] == "onnxruntime"
    # a recipe may set it, checked against its choices with the usual message
    assert "runtime" in recipes.recipe_keys()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sweep:\n  method: evad\n  runtime: tensorrt\n")
    data = {"sweep": {"method": "evad", "runtime": "tensorrt"}}
    with pytest.raises(VidpruneError, match=r"sweep.runtime = 'tensorrt' is not allowed; allowed: torch, onnxruntime"):
        recipes.validate_recipe(recipe, data)
    assert recipes.recipe_settings({"sweep": {"method": "evad", "runtime": "torch"}})["runtime"] == "torch"
    # a command with a settings group gets the option, its help, and the value under the field's name
    seen = {}

    @with_settings
    def command(out: str = typer.Option("x", "--out"), run_settings: dict = SettingsGroup("run")) -> None:
        seen.update(cli_settings.given(run_settings))

    probe = typer.Typer()
    probe.command()(command)
    probe.command("other")(lambda: None)
    runner = CliRunner()
    assert "--runtime" in runner.invoke(probe, ["command", "--help"]).output
    assert "where latency is timed" in runner.invoke(probe, ["command", "--help"]).output
    result = runner.invoke(probe, ["command", "--runtime", "onnxruntime", "--compile"])
    assert result.exit_code == 0, result.output
    assert seen == {"runtime": "onnxruntime", "compile": True}


def test_sweep_options_come_from_the_spec_fields():
    text = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"}).output
    for f, meta in spec.settings():
        if meta.flag is not None:
            assert meta.flag.names[0] in text, f.name
            assert meta.flag.help.split()[0] in text
    # the command passes what was given under the fields' names, flags and parsed lists included
    from vidprune.cli.settings import given

    assert given({"frames": 8, "seed": 0, "compile": True, "power": False, "metrics": "flops, params",
                  "batch": None}) == {"frames": 8, "seed": 0, "compile": True, "metrics": ("flops", "params")}


def test_the_device_syntax_is_one_definition():
    from vidprune.measure.device import is_device_name

    assert all(is_device_name(d) for d in ("cpu", "CUDA:1", " auto ", "mps", "cuda"))
    assert not any(is_device_name(d) for d in ("tpu", "cuda:", "cuda:x", 3, None))
    for path in ("executors.py", "recipes.py"):
        assert "re.compile" not in (Path(vidprune.__file__).parent / path).read_text(), path


# ------------------------------------------------------------------------------------------- metrics


def _probe(ctx):
    ctx.row["probe_tokens"] = len(ctx.row["tokens_per_block"].split(","))


PROBE = metrics.Metric("probe", metrics.Stage.ON_DEVICE,
                       (metrics.Column("probe_tokens", "blocks traced (probe)", "{:d}", "min", "blocks traced"),),
                       _probe, "a throwaway metric for this test")


def test_a_metric_added_to_the_table_is_selectable_measured_shown_and_plotted(monkeypatch, one_thread):
    monkeypatch.setattr(metrics, "METRICS", [*metrics.METRICS, PROBE])
    assert "probe" in metrics.selectable() and "probe" in SweepSpec(method="evad").metrics
    with pytest.raises(VidpruneError, match="Choose from .*probe"):
        Runner(SweepSpec(method="evad", metrics=("probe", "speed"), **TINY))
    row = Runner(SweepSpec(method="evad", metrics=("probe", "params"), **TINY)).measure(Point("evad", 0.5, {}))
    assert row["status"] == "ok", row["error"]
    assert row["probe_tokens"] == len(row["tokens_per_block"].split(",")) > 0
    assert "params_m" in row and "gflops" not in row
    # a recipe may name it
    recipes._check_metrics(Path("r.yaml"), "metrics", ["probe"], None, None)
    # a plot may put it on an axis, with its direction and label
    assert metrics.axis_columns("min")["probe_tokens"] == "min"
    assert metrics.axis_labels()["probe_tokens"] == "blocks traced"
    # `profile` shows it under its label
    result = CliRunner().invoke(app, ["profile", "--method", "evad", "--keep", "0.5", "--backbone", "vit-tiny",
                                      "--frames", "4", "--size", "32", "--device", "cpu", "--repeats", "1",
                                      "--warmup", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "blocks traced (probe)" in result.output


def test_the_derived_lists_match_the_table():
    assert metrics.ALL_METRICS == ("flops", "fvcore", "params", "latency", "memory", "throughput", "fidelity")
    assert metrics.FORWARD_METRICS == {"latency", "memory", "throughput", "fidelity"}
    assert metrics.dataset_metrics() == ("flops", "fvcore", "params", "latency", "memory", "throughput")
    written = {c.name for c in metrics.columns()}
    assert written <= set(results.COLUMNS)
    assert {c for c, d in results.COST_COLUMNS.items()} >= {c.name for c in metrics.columns() if c.better == "min"}
    for column in metrics.columns():
        if column.better is not None:
            assert AXIS_LABELS[column.name] == column.axis_label
            target = results.COST_COLUMNS if column.better == "min" else results.QUALITY_COLUMNS
            assert target[column.name] == column.better


def test_the_walk_keeps_the_order_dependencies():
    """Timed runs before what reads them (power, peak_fraction), memory at the batch they settled on, the
    token trace of the checked forward before fidelity runs other inputs, fidelity before compilation."""
    every = SweepSpec(method="evad", power=True, peak=True, **TINY)
    order = [m.name for m in metrics.wanted(every)]
    assert order.index("latency") < order.index("power") and order.index("latency") < order.index("peak")
    assert order.index("throughput") < order.index("memory") and order.index("latency") < order.index("memory")
    assert order.index("tokens") < order.index("fidelity")
    stage = {m.name: m.stage for m in metrics.METRICS}
    assert stage["fidelity"] < metrics.Stage.TIMED <= stage["latency"]


def test_profile_rows_follow_the_table_order():
    labels = [c.label for c in metrics.labelled_columns()]
    assert labels[:3] == ["GFLOPs (1 MAC = 1 FLOP, per clip)", "GFLOPs, fvcore", "GFLOPs, thop"]
    assert labels.index("batch") == labels.index("throughput (clips/s)") + 1
    assert labels[-1] == "achieved / peak GEMM FLOP/s"


# --------------------------------------------------------------------------------------------- notes


def test_notes_keep_their_code_in_memory_and_through_a_table():
    thop = notes.THOP_LOW(thop=1.234, primary=2.5)
    assert thop.code == "flops.thop-low" and thop.startswith("thop reads 1.234 vs 2.500")
    halved = notes.BATCH_HALVED(failed=8, retried=4)
    assert halved == "batch 8 ran out of memory; retried at 4"
    cell = notes.join(["a method's own remark", thop, halved])  # what the notes column stores: text only
    read_back = notes.split_cell(cell)
    assert [notes.code_of(n) for n in read_back] == [None, "flops.thop-low", "timing.batch-halved"]
    assert all(type(n) is str for n in read_back)
    for kind in notes.kinds().values():  # every kind's own text is recognised as that kind
        fields = {name: 1 for _, name, _, _ in string.Formatter().parse(kind.template) if name}
        assert notes.code_of(str(kind(**fields))) == kind.code


def test_the_sweep_prints_a_summarised_kind_once_by_its_code(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--method", "evad", "--keep", "0.5,0.7", "--metrics", "flops",
                                      "--backbone", "vit-tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(next(tmp_path.glob("*.csv")))
    cells = [n for cell in df["notes"].dropna() for n in notes.split_cell(cell)]
    assert sum(notes.code_of(n) == "flops.thop-low" for n in cells) == 3  # every row says it ...
    assert result.output.count(notes.THOP_LOW.summary) == 1  # ... the command once
    assert "thop reads 0" not in result.output


def test_speedups_match_rows_read_back_as_text_with_rows_just_measured():
    """ResultStore keeps rows already on disk as text; the row it adds is typed. They are one group."""
    on_disk = dict(method="none", backbone="b", frames="8", size="64", batch="1", device="cpu", dtype="fp32",
                   autocast="False", attention="sdpa", compile="False", status="ok", gflops="100.0")
    measured = dict(method="evad", backbone="b", frames=8, size=64, batch=1, device="cpu", dtype="fp32",
                    autocast=False, attention="sdpa", compile=False, status="ok", gflops=40.0)
    df = results.add_speedups(pd.DataFrame([on_disk, measured]))
    assert df.loc[1, "speedup_flops"] == pytest.approx(2.5)


# ---------------------------------------------------------------------------------------- no cycles


def _imports(root: Path) -> dict[str, set[str]]:
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):  # every import, inside functions too
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_no_module_imports_in_a_cycle():
    graph = _imports(Path(vidprune.__file__).parent)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert "vidprune.runner" in graph["vidprune.executors"]  # the scan sees the imports it should
