import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidprune.report.groups import GROUP_COLUMNS, group_label, group_rows, group_slug, normalise
from vidprune.results import to_frame

BASE = dict(backbone="vit-b", frames=16, size=224, batch=1, device="cpu", device_name="Test CPU", dtype="fp32",
            autocast=False, attention="sdpa", compile=False, status="ok", knob="rho")


def row(**changes) -> dict:
    return dict(BASE, **changes)


def test_rows_split_by_every_setting_and_csv_spellings_agree():
    df = to_frame([
        row(method="none", keep=1.0, gflops=180.0),
        row(method="evad", keep=0.7, gflops=130.0, batch=1.0),           # 1.0 after a CSV round trip
        row(method="evad", keep=0.7, gflops=130.0, batch="1", autocast="False"),
        row(method="evad", keep=0.7, gflops=130.0, batch=8),
        row(method="evad", keep=0.7, gflops=130.0, device_name="Other CPU"),
        row(method="evad", keep=0.7, gflops=130.0, dtype="bf16"),
        row(method="evad", keep=0.7, gflops=130.0, frames=8),
        row(method="evad", keep=0.7, gflops=130.0, compile=True),
    ])
    grouping = group_rows(df)
    sizes = {g.label: len(g.rows) for g in grouping.groups}
    assert len(grouping.groups) == 6
    assert sizes["vit-b · 16x224 · batch 1 · cpu (Test CPU) · fp32 · torch"] == 3
    assert sum(sizes.values()) == len(df)
    # geometry sorts as numbers: 8 frames before 16
    assert grouping.groups[0].config["frames"] == 8


def test_missing_runtime_is_torch_and_another_runtime_is_its_own_group():
    df = to_frame([row(method="none", keep=1.0), row(method="none", keep=1.0)])
    df["runtime"] = [np.nan, "onnxruntime"]
    labels = [g.label for g in group_rows(df).groups]
    assert sorted(label.rsplit(" · ", 1)[1] for label in labels) == ["onnxruntime", "torch"]
    without = to_frame([row(method="none", keep=1.0)])  # no runtime column at all
    assert group_rows(without).groups[0].config["runtime"] == "torch"


def test_label_and_slug_are_stable():
    config = {c: normalise(c, BASE.get(c)) for c in GROUP_COLUMNS}
    assert group_label(config) == "vit-b · 16x224 · batch 1 · cpu (Test CPU) · fp32 · torch"
    assert group_slug(config) == group_slug(dict(config))
    assert group_slug(config).startswith("g-") and group_slug(config) != group_slug(dict(config, batch=8))
    special = dict(config, autocast=True, compile=True, attention="eager", runtime="tensorrt")
    assert group_label(special) == ("vit-b · 16x224 · batch 1 · cpu (Test CPU) · fp32 · autocast · attention eager"
                                    " · torch.compile · tensorrt")
    # the same configuration keeps its label and slug whatever else is in the tables, in any order
    alone = group_rows(to_frame([row(method="none", keep=1.0)])).groups[0]
    mixed = group_rows(to_frame([row(method="none", keep=1.0, batch=8), row(method="evad", keep=0.5),
                                 row(method="none", keep=1.0)]).iloc[::-1])
    same = [g for g in mixed.groups if g.config["batch"] == 1][0]
    assert (same.label, same.slug) == (alone.label, alone.slug)


def test_paper_references_join_matching_groups_and_the_rest_are_left_out():
    df = to_frame([
        row(method="none", keep=1.0, gflops=180.0),
        row(method="none", keep=1.0, gflops=180.0, batch=8),
        row(method="none", keep=1.0, gflops=95.0, frames=8),
        dict(method="evad", backbone="vit-b", keep=0.5, gflops=98.0, status="reference", device="paper",
             source="paper: EVAD Table 2a"),
        dict(method="evad", backbone="vit-b", frames=8, size=224, keep=0.5, gflops=50.0, status="reference",
             device="paper", source="paper: EVAD Table 3"),
        dict(method="evad", backbone="vit-l", keep=0.5, gflops=300.0, status="reference", device="paper",
             source="paper: EVAD Table 2a"),
    ])
    grouping = group_rows(df)
    refs = {(g.config["frames"], g.config["batch"]): sorted(g.references.index) for g in grouping.groups}
    assert refs == {(8, 1): [3, 4], (16, 1): [3], (16, 8): [3]}
    unmatched = grouping.left_out[grouping.left_out["left_out_of"] == "report"]
    assert unmatched["row"].tolist() == [5]
    assert "backbone vit-l" in unmatched["reason"].iloc[0] and unmatched["group"].iloc[0] == ""


def test_failed_count_only_and_paper_rows_are_left_out_with_their_reason():
    df = to_frame([
        row(method="none", keep=1.0, gflops=180.0, latency_ms=400.0, agreement=1.0),
        row(method="evad", keep=0.7, gflops=130.0, latency_ms=300.0, agreement=0.9),
        row(method="evad", keep=0.5, gflops=100.0),                              # count-only: flops alone
        row(method="random", keep=0.1, status="oom", error="CUDA out of memory\ntraceback..."),
        dict(method="evad", backbone="vit-b", keep=0.5, gflops=98.0, status="reference", device="paper"),
    ])
    grouping = group_rows(df, axes=["gflops", "latency_ms", "peak_mem_mib", "agreement"])
    (group,) = grouping.groups
    assert len(group.rows) == 4 and len(group.ok) == 3 and len(group.failed) == 1 and len(group.references) == 1
    left = grouping.left_out.set_index(["row", "left_out_of"])["reason"]
    assert left[(3, "plots")] == "status 'oom': CUDA out of memory; it is in the table, not on the plots"
    assert left[(2, "latency_ms axis")].startswith("a count-only row")
    assert left[(2, "agreement axis")] == "no agreement value"
    assert left[(4, "latency_ms, agreement axes")] == "the paper reference gives no latency_ms, agreement"
    # peak_mem_mib was measured by no row here: not an axis of this group, so nothing is "left out" of it
    assert not grouping.left_out["left_out_of"].str.contains("peak_mem").any()
    assert set(grouping.left_out["group"]) == {group.label}
    assert set(grouping.left_out["group_id"]) == {group.slug}


def test_duplicate_index_is_handled():
    df = pd.concat([to_frame([row(method="none", keep=1.0)]), to_frame([row(method="evad", keep=0.5, batch=8)])])
    assert list(df.index) == [0, 0]
    grouping = group_rows(df)
    assert [list(g.rows.index) for g in grouping.groups] == [[0], [1]]


config_values = st.fixed_dictionaries({
    "backbone": st.sampled_from(["vit-b", "vit-s", None]),
    "frames": st.sampled_from([8, 16, 16.0, "16", None]),
    "batch": st.sampled_from([1, 1.0, 8]),
    "device_name": st.sampled_from(["A", "B"]),
    "dtype": st.sampled_from(["fp32", "fp16"]),
    "status": st.sampled_from(["ok", "ok", "failed", "reference"]),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(config_values, min_size=1, max_size=25))
def test_every_measured_row_is_in_exactly_one_group_of_equal_settings(rows):
    df = to_frame([dict(r, method="evad", keep=0.5, size=224, device="cpu") for r in rows])
    grouping = group_rows(df)
    measured = [i for i, r in enumerate(rows) if r["status"] != "reference"]
    members = [i for g in grouping.groups for i in g.rows.index]
    assert sorted(members) == measured
    for g in grouping.groups:
        for i in g.rows.index:
            assert normalise("frames", rows[i]["frames"]) == g.config["frames"]
            assert normalise("batch", rows[i]["batch"]) == g.config["batch"]
        assert g.rows.index.isin(g.references.index).sum() == 0
    assert len({g.slug for g in grouping.groups}) == len(grouping.groups)


@pytest.mark.parametrize("column, value, expected", [
    ("batch", "8", 8), ("batch", 8.0, 8), ("frames", None, None), ("autocast", "True", True),
    ("autocast", np.nan, False), ("runtime", "", "torch"), ("device_name", 3090.0, "3090"),
    ("dtype", " fp16 ", "fp16"),
])
def test_normalise(column, value, expected):
    assert normalise(column, value) == expected
