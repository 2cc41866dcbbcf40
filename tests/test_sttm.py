"""STTM: token counts per stage, the class token, the merge math on hand-built examples (orthogonal
selection, filter, C, A, P, fusion), determinism, batches, parameters, FLOPs against an analytic count
and fvcore, the paper's baselines in its 3-view convention, options, recipes and the default sweep."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vidprune.backbones.base import BackboneInfo
from vidprune.errors import VidpruneError
from vidprune.measure.flops import count_flops, count_torch
from vidprune.methods.sttm import STTM, Merger, correspondence, default_layers, most_orthogonal
from vidprune.models import create_model
from vidprune.tokens import TokenState

SMALL_VIT = dict(frames=4, size=64)  # vit-s-cls at 4 frames x 4x4 patches: 65 tokens, 12 blocks
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


pytestmark = pytest.mark.usefixtures("one_thread")


def _clip(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.input_shape(batch), generator=g)


def _record_merges(model) -> dict:
    """Wrap after_block: {layer: (x, pos) before, snapshot of the state after} for every merge layer.

    Snapshots, because the block loop goes on updating the live state's attributes in place."""
    records: dict = {}
    method = model.method
    original = method.after_block

    def wrapped(layer, state):
        before = (state.x.clone(), state.pos.clone())
        out = original(layer, state)
        if layer + 1 in method.stages:
            records[layer + 1] = (before, replace(out, x=out.x.clone(), pos=out.pos.clone(), extras=dict(out.extras)))
        return out

    method.after_block = wrapped
    return records


def count_on_meta(backbone: str, method: str = "none", keep=None, **kwargs):
    """The primary counter on shape-only (meta) tensors: counts depend on shapes alone (the tiny tests
    pin the CPU path to the same analytic count), so the paper-size models cost no arithmetic."""
    with torch.device("meta"):
        model = create_model(backbone, method, keep, **kwargs)
    return model, count_torch(model, (torch.empty(model.input_shape(1), device="meta"),))


# ---------------------------------------------------------------- token counts per stage

def _paper_trace(frames: int, per_frame: int, ratio: float, layers=(6, 9), depth: int = 12) -> list[int]:
    """1 + tokens entering each block: per-frame merge at the first layer, global at the next."""
    trace, tokens = [], frames * per_frame
    for block in range(1, depth + 1):
        trace.append(1 + tokens)
        if block == layers[0]:
            tokens = frames * math.floor(per_frame * (1 - ratio) + 1e-9)
        elif block in layers:
            tokens = math.floor(tokens * (1 - ratio) + 1e-9)
    return trace


@pytest.mark.parametrize("ratio", [0.8, 0.6, 0.5, 0.4, 0.2])
def test_token_counts_per_stage_at_the_papers_ratios(ratio):
    model = create_model("vit-s-cls", "sttm", ratio, **SMALL_VIT)
    with torch.no_grad():
        model(_clip(model))
    assert model.last_trace == _paper_trace(4, 16, ratio)


def test_spatial_merge_stays_inside_each_frame():
    model = create_model("vit-s-cls", "sttm", **SMALL_VIT)
    records = _record_merges(model)
    with torch.no_grad():
        model(_clip(model, batch=2))
    assert model.last_trace == [65] * 6 + [33] * 3 + [17] * 3
    for sample in range(2):
        # every merged token is anchored at a meta token of its own frame: 8 per frame, frame by frame
        frames = torch.div(records[6][1].pos[sample, 1:], 16, rounding_mode="floor")
        assert frames.tolist() == sorted(frames.tolist())
        assert torch.bincount(frames, minlength=4).tolist() == [8] * 4
        # the spatio-temporal merge may take its meta tokens from any frame
        assert len(set(torch.div(records[9][1].pos[sample, 1:], 16, rounding_mode="floor").tolist())) > 1


@pytest.mark.parametrize("merge, trace", [
    ("two-stage", [65] * 6 + [33] * 3 + [17] * 3),
    ("spatial", [65] * 6 + [33] * 3 + [17] * 3),
    ("global", [65] * 6 + [33] * 3 + [17] * 3),
])
def test_merge_modes_keep_the_same_counts_but_differ_in_grouping(merge, trace):
    model = create_model("vit-s-cls", "sttm", 0.5, options={"merge": merge}, **SMALL_VIT)
    records = _record_merges(model)
    with torch.no_grad():
        model(_clip(model))
    assert model.last_trace == trace
    frames = torch.div(records[9][1].pos[0, 1:], 16, rounding_mode="floor")
    per_frame = torch.bincount(frames, minlength=4).tolist()
    if merge == "spatial":  # per frame again: 4 per frame
        assert per_frame == [4, 4, 4, 4]
    assert sum(per_frame) == 16


def test_single_layer_and_other_layers():
    model = create_model("vit-s-cls", "sttm", 0.5, options={"layers": "3"}, **SMALL_VIT)
    with torch.no_grad():
        model(_clip(model))
    assert model.last_trace == [65] * 3 + [33] * 9
    assert model.method.stages == {3: "spatial"}
    assert default_layers(12) == (6, 9) and default_layers(4) == (2, 3) and default_layers(24) == (12, 18)


def test_class_token_is_never_merged():
    model = create_model("vit-s-cls", "sttm", 0.8, **SMALL_VIT)
    records = _record_merges(model)
    with torch.no_grad():
        model(_clip(model, batch=2))
    for layer in (6, 9):
        (x_before, pos_before), after = records[layer]
        assert after.pos[:, 0].tolist() == [-1, -1]
        assert torch.equal(after.x[:, 0], x_before[:, 0])
        assert (after.pos[:, 1:] >= 0).all()
        assert after.n_protected == 1
        # merged tokens are anchored at the meta tokens, each at most once
        for row in after.pos[:, 1:].tolist():
            assert len(set(row)) == len(row)


def test_no_class_token_backbone_uses_the_documented_substitute():
    # VideoMAE ViT-B layout (tubelet 2, no CLS): the filter ranks by the attention each token receives
    for filt in ("attention", "similarity"):
        model = create_model("vit-tiny", "sttm", options={"filter": filt})
        with torch.no_grad():
            logits = model(_clip(model, batch=2))
        assert model.last_trace == [64, 64, 32, 16]
        assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- the merge math on hand-built examples

def test_most_orthogonal_selection_on_a_hand_built_set():
    x = torch.tensor([[[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.7, 0.7, 0.0]]])
    # from token 0: tokens 2 and 3 are orthogonal to it (tie: lower index), then 3 (orthogonal to 0 and 2),
    # then 1 (largest |cos| to the picks: 0.994) vs 4 (0.707): 4
    assert most_orthogonal(x, 4, torch.tensor([0])).tolist() == [[0, 2, 3, 4]]
    # batched over groups: each group on its own
    batched = most_orthogonal(torch.cat([x, x.flip(1)]), 3, torch.tensor([0, 1]))
    assert batched[0].tolist() == [0, 2, 3]
    # flipped, starting from (0, 0, 1): everything is orthogonal to it (tie: index 0 = (.7, .7, 0)), then
    # (0, 2, 0) at |cos| 0.707 beats (0.9, 0.1, 0) at 0.78
    assert batched[1].tolist() == [1, 0, 2]


def test_correspondence_normalises_columns_then_rows():
    logits = torch.tensor([[[0.5, -0.2], [0.1, 0.9], [-1.0, 0.3]]])
    c = correspondence(logits)
    e = [[math.exp(v) for v in row] for row in logits[0].tolist()]
    col = [sum(e[i][j] for i in range(3)) for j in range(2)]
    step = [[e[i][j] / col[j] for j in range(2)] for i in range(3)]
    expected = [[v / sum(row) for v in row] for row in step]
    assert torch.allclose(c[0], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(c.sum(dim=-1), torch.ones(1, 3))


def test_merger_appearance_motion_and_fusion_by_hand():
    merger = Merger(2, phi="linear", motion=True)
    with torch.no_grad():
        merger.phi.weight.copy_(torch.eye(2))
        merger.phi.bias.zero_()
        # fusion keeps A's first channel and P's second: Y = [A_0, P_1]
        merger.fusion.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
        merger.fusion.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]])
    e = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]])
    meta = torch.tensor([[0, 1]])
    y, p, c = merger(x, e, meta)
    # phi = identity, l2-normalised: similarities are cosines to tokens 0 and 1
    s = 0.5 ** 0.5
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [s, s]]])
    assert torch.allclose(c, correspondence(logits), atol=1e-6)
    assert torch.allclose(c.sum(dim=-1), torch.ones(1, 3))
    a = c[0].T @ x[0]
    assert torch.allclose(p[0], c[0].T @ e[0], atol=1e-5)
    assert torch.allclose(y[0], torch.stack([a[:, 0], p[0][:, 1]], dim=1), atol=1e-5)
    assert y.shape == p.shape == (1, 2, 2)
    # appearance only (Table 1): Y = A = C^T X, and no fusion layer exists
    plain = Merger(2, phi="linear", motion=False)
    plain.phi.load_state_dict(merger.phi.state_dict())
    y_only, p_none, _ = plain(x, None, meta)
    assert p_none is None and plain.fusion is None
    assert torch.allclose(y_only[0], a, atol=1e-6)


def _toy_method(**options) -> STTM:
    # 2 frames of 2x2 tokens, D = 4, class token first
    info = BackboneInfo("vit", depth=3, dim=4, heads=1, frames=2, size=32, grid=(2, 2, 2), n_prefix=1, tubelet=1)
    return STTM(info, 0.5, seed=0, **options)


def _toy_state() -> TokenState:
    eye = torch.eye(4)
    # every frame holds 4 mutually orthogonal tokens: after the first pick, ties resolve to the lowest index
    x = torch.cat([torch.full((1, 4), 0.5), eye, 2 * eye]).unsqueeze(0)
    pos = torch.arange(-1, 8).unsqueeze(0)
    return TokenState(x=x, pos=pos, grid=(2, 2, 2), n_protected=1)


def test_filter_keeps_the_candidates_the_class_token_attends_to_most():
    method = _toy_method()
    method.begin_forward(_toy_state())
    first = torch.randint(4, (2,), generator=torch.Generator().manual_seed(0)).tolist()
    # class-token attention per token: token 3 of each frame gets the most, but it is a candidate only
    # when it is the first pick (ties after the first pick go to the lowest index)
    cls_row = torch.tensor([[0.0, 0.1, 0.3, 0.2, 0.9, 0.15, 0.05, 0.25, 0.8]])
    method._filter_rows = cls_row
    out = method.merge(_toy_state(), "spatial", method.mergers[0])
    assert out.num_tokens == 1 + 2 * 2
    expected = []
    for frame in range(2):
        f = first[frame]
        candidates = [f] + [i for i in range(4) if i != f][:2]  # alpha * L' = 3 of 4
        scores = cls_row[0, 1 + 4 * frame: 5 + 4 * frame]
        kept = sorted(sorted(candidates, key=lambda i: -scores[i].item())[:2])
        expected += [4 * frame + i for i in kept]
    assert out.pos[0, 1:].tolist() == expected
    assert out.size[0, 1:].sum().item() == pytest.approx(8.0)  # soft sizes still cover all 8 tokens


def test_without_filter_the_first_picks_are_the_meta_tokens():
    method = _toy_method(filter="none")
    method.begin_forward(_toy_state())
    first = torch.randint(4, (2,), generator=torch.Generator().manual_seed(0)).tolist()
    out = method.merge(_toy_state(), "spatial", method.mergers[0])
    expected = []
    for frame in range(2):
        f = first[frame]
        expected += [4 * frame + i for i in sorted([f] + [i for i in range(4) if i != f][:1])]
    assert out.pos[0, 1:].tolist() == expected


def test_motion_features_aggregate_the_position_embeddings_and_feed_the_next_merge():
    model = create_model("vit-s-cls", "sttm", **SMALL_VIT)
    records = _record_merges(model)
    with torch.no_grad():
        model(_clip(model))
        merger = model.method.mergers[0]
        # spatial merge: per frame, P = C^T E with E the backbone's position table rows of that frame
        (x6, _), after6 = records[6]
        tokens = x6[0, 1:].reshape(4, 16, 384)
        meta = (after6.pos[0, 1:] % 16).reshape(4, 8)
        c6 = merger.correspondence(tokens, meta)
        p6 = c6.transpose(1, 2) @ model.pos_embed[0].reshape(4, 16, 384)
        assert torch.allclose(after6.extras["sttm_motion"][0], p6.reshape(32, 384), atol=1e-4)
        # spatio-temporal merge: P of the first merge is its E
        (x9, pos9), after9 = records[9]
        current = pos9[0, 1:].tolist()
        meta9 = torch.tensor([[current.index(p) for p in after9.pos[0, 1:].tolist()]])
        c9 = merger.correspondence(x9[:, 1:], meta9)
        p9 = c9.transpose(1, 2) @ after6.extras["sttm_motion"]
        assert torch.allclose(after9.extras["sttm_motion"], p9, atol=1e-4)
        assert p9.shape == (1, 16, 384)


# ---------------------------------------------------------------- determinism and batches

def test_deterministic_under_a_seed_and_seed_changes_the_first_pick():
    model = create_model("vit-s-cls", "sttm", seed=3, **SMALL_VIT)
    records = _record_merges(model)
    video = _clip(model)
    with torch.no_grad():
        a = model(video)
        pos_a = records[6][1].pos.clone()
        b = model(video)
        pos_b = records[6][1].pos.clone()
    assert torch.equal(a, b) and torch.equal(pos_a, pos_b)
    # a different seed draws different first picks (frame by frame), hence other meta tokens
    firsts = {s: torch.randint(16, (4,), generator=torch.Generator().manual_seed(s)).tolist() for s in (3, 4)}
    assert firsts[3] != firsts[4]
    model.method.seed = 4
    with torch.no_grad():
        c = model(video)
    assert not torch.equal(records[6][1].pos, pos_a)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("backbone, kwargs", [("vit-s-cls", SMALL_VIT), ("timesformer-tiny", {})])
def test_batched_forward_equals_per_sample_forwards(backbone, kwargs):
    model = create_model(backbone, "sttm", **kwargs)
    records = _record_merges(model)
    video = _clip(model, batch=3)
    video[1] = torch.randn(video[1].shape, generator=torch.Generator().manual_seed(9)) * 2
    with torch.no_grad():
        logits = model(video)
        trace = list(model.last_trace)
        pos = records[max(records)][1].pos.clone()
        single = torch.cat([model(video[i:i + 1]) for i in range(3)])
    # batched and single-clip GEMMs block differently, so float32 sums may differ in the last bits
    assert torch.allclose(logits, single, atol=1e-4)
    assert model.last_trace == trace
    assert pos.shape[0] == 3
    assert pos[0].tolist() != pos[1].tolist()  # samples pick their own meta tokens


# ---------------------------------------------------------------- parameters

@pytest.mark.parametrize("options, extra", [
    ({}, lambda d: (2 * d * d + 2 * d + 2 * d * d + d) + (2 * d * d + d)),  # phi D-2D-D + fusion 2D-D = 6D^2 + 4D
    ({"share": False}, lambda d: 2 * (6 * d * d + 4 * d)),
    ({"motion": False}, lambda d: 4 * d * d + 3 * d),
    ({"phi": "linear"}, lambda d: d * d + d + 2 * d * d + d),
])
def test_sttm_parameters_count(options, extra):
    base = sum(p.numel() for p in create_model("vit-s-cls", **SMALL_VIT).parameters())
    model = create_model("vit-s-cls", "sttm", options=options, **SMALL_VIT)
    assert sum(p.numel() for p in model.parameters()) - base == extra(384)
    assert all(p.requires_grad for p in model.method.parameters())


def test_paper_parameter_deltas_at_base_size():
    # Table 6: ViT-B 86.1M -> 89.6M (+3.5M); TimeSformer 121.6M -> 107.4M (6 blocks lose temporal attention)
    with torch.device("meta"):
        vit = create_model("vit-b-cls", "sttm")
        tsf = create_model("timesformer-b", "sttm")
        tsf_none = create_model("timesformer-b")
    method_params = sum(p.numel() for p in vit.method.parameters())
    assert method_params / 1e6 == pytest.approx(3.5, abs=0.05)
    d = 768
    total = sum(p.numel() for p in tsf.parameters())
    assert total == sum(p.numel() for p in tsf_none.parameters()) - 6 * (5 * d * d + 7 * d) + method_params
    assert total / 1e6 == pytest.approx(107.4, abs=0.05)


# ---------------------------------------------------------------- FLOPs

def sttm_macs(length: int, out: int, candidates: int, d: int, phi: str = "mlp", motion: bool = True,
              filt: str = "attention") -> int:
    """One group of one STTM, from the algorithm: phi on the L tokens, the greedy orthogonal selection's
    L x L x D Gram matrix (none for a single pick), similarities L x L' x D, A = C^T X, and with motion
    P = C^T E plus the 2D -> D fusion."""
    gram = length * length * d if candidates > 1 else 0
    macs = (4 if phi == "mlp" else 1) * length * d * d + gram + 2 * length * out * d
    if motion:
        macs += length * out * d + 2 * out * d * d
    if filt == "similarity":
        macs += candidates * d
    return macs


def vit_cls_sttm_macs(d: int, frames: int, per_frame: int, ratio: float, classes: int = 400, merge=True, **kw) -> int:
    out_frame = math.floor(per_frame * (1 - ratio) + 1e-9)
    cand_frame = min(per_frame, math.floor(1.5 * out_frame + 1e-9)) if kw.get("filt", "attention") != "none" else out_frame
    total = frames * per_frame * 768 * d + d * classes
    tokens = frames * per_frame
    for block in range(1, 13):
        n = tokens + 1
        total += 12 * n * d * d + 2 * n * n * d
        if merge and block == 6:
            total += frames * sttm_macs(per_frame, out_frame, cand_frame, d, **kw)
            tokens = frames * out_frame
        elif merge and block == 9:
            out = math.floor(tokens * (1 - ratio) + 1e-9)
            cand = min(tokens, math.floor(1.5 * out + 1e-9)) if kw.get("filt", "attention") != "none" else out
            total += sttm_macs(tokens, out, cand, d, **kw)
            tokens = out
    return total


@pytest.mark.parametrize("options, kw", [
    ({}, {}),
    ({"filter": "similarity"}, {"filt": "similarity"}),
    ({"filter": "none", "motion": False, "phi": "linear"}, {"filt": "none", "motion": False, "phi": "linear"}),
])
def test_small_flops_match_analytic_and_fvcore(options, kw):
    model = create_model("vit-s-cls", "sttm", 0.5, options=options, **SMALL_VIT)
    report = count_flops(model, counters=("torch", "fvcore"))
    assert report.gflops * 1e9 == pytest.approx(vit_cls_sttm_macs(384, 4, 16, 0.5, **kw), rel=1e-9)
    assert report.gflops_fvcore == pytest.approx(report.gflops, rel=0.01)
    assert report.counters_agree


def timesformer_sttm_macs(d: int, frames: int, per_frame: int, ratio: float, depth: int = 12,
                         layers=(6, 9), classes: int = 400) -> int:
    """Divided blocks up to the first merge, joint blocks after it (their temporal parts are gone)."""
    t, n = frames, per_frame
    divided = (5 * t * n * d * d + 2 * n * t * t * d + 4 * t * (n + 1) * d * d + 2 * t * (n + 1) ** 2 * d
               + 8 * (t * n + 1) * d * d)
    total = t * n * 768 * d + d * classes + layers[0] * divided
    out_frame = math.floor(n * (1 - ratio) + 1e-9)
    total += t * sttm_macs(n, out_frame, min(n, math.floor(1.5 * out_frame + 1e-9)), d)
    tokens = t * out_frame
    for block in range(layers[0] + 1, depth + 1):
        total += 12 * (tokens + 1) * d * d + 2 * (tokens + 1) ** 2 * d
        if block in layers:
            out = math.floor(tokens * (1 - ratio) + 1e-9)
            total += sttm_macs(tokens, out, min(tokens, math.floor(1.5 * out + 1e-9)), d)
            tokens = out
    return total


def test_timesformer_tiny_sttm_flops_match_analytic_and_fvcore():
    model = create_model("timesformer-tiny", "sttm")
    report = count_flops(model, counters=("torch", "fvcore"))
    assert report.gflops * 1e9 == pytest.approx(timesformer_sttm_macs(192, 4, 16, 0.5, depth=4, layers=(2, 3)), rel=1e-9)
    assert report.gflops_fvcore == pytest.approx(report.gflops, rel=0.01)
    assert report.counters_agree


@pytest.mark.parametrize("backbone, d, paper", [("vit-s-cls", 384, 170), ("vit-b-cls", 768, 540)])
def test_vit_baselines_in_the_papers_three_view_convention(backbone, d, paper):
    model, gmacs = count_on_meta(backbone)
    assert gmacs * 1e9 == pytest.approx(vit_cls_sttm_macs(d, 8, 196, 0.5, merge=False), rel=1e-9)
    assert model.last_trace == [1569] * 12
    assert 3 * gmacs == pytest.approx(paper, rel=0.01)


@pytest.mark.parametrize("backbone", ["vit-b-cls", "timesformer-b"])
def test_paper_geometry_token_counts_and_flops(backbone):
    model, gmacs = count_on_meta(backbone, "sttm")
    assert model.last_trace == _paper_trace(8, 196, 0.5) == [1569] * 6 + [785] * 3 + [393] * 3
    expected = (vit_cls_sttm_macs(768, 8, 196, 0.5) if backbone == "vit-b-cls"
                else timesformer_sttm_macs(768, 8, 196, 0.5))
    assert gmacs * 1e9 == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- options, recipes, sweep

@pytest.mark.parametrize("keep, options, match", [
    (1.0, {}, "merge_ratio"),
    (0.0, {}, "merge_ratio"),
    (0.5, {"layers": "12"}, "below"),
    (0.5, {"layers": "x"}, "layers"),
    (0.5, {"filter": "cls"}, "filter"),
    (0.5, {"alpha": 0.5}, "alpha"),
    (0.5, {"merge": "temporal"}, "merge"),
])
def test_bad_settings_are_user_errors(keep, options, match):
    with pytest.raises(VidpruneError, match=match):
        create_model("vit-s-cls", "sttm", keep, options=options, **SMALL_VIT)


def test_default_backbone_and_recipes():
    from vidprune.recipes import load_recipe
    from vidprune.spec import SweepSpec
    from vidprune.sweep import expand_points

    spec = SweepSpec(method="sttm")
    assert spec.backbone == "vit-b-cls"
    assert [(p.method, p.keep) for p in expand_points(spec)] == [("none", None), ("sttm", 0.5)]
    recipes = sorted(RECIPES.glob("sttm-*.yaml"))
    assert recipes
    for path in recipes:
        data = load_recipe(path)
        sweep = dict(data["sweep"])
        options = {k: (v if isinstance(v, list) else [v]) for k, v in (sweep.pop("options", None) or {}).items()}
        keeps = sweep.pop("keep", [])
        spec = SweepSpec(method=sweep["method"], backbone=sweep["backbone"], frames=sweep.get("frames"),
                         keeps=keeps if isinstance(keeps, list) else [keeps], options=options)
        assert len(expand_points(spec)) >= 2, path.name
        assert data["convention"]["paper_gflops_factor"] == 3, path.name
        assert all("source" in ref and "gflops" in ref for ref in data["references"]), path.name


def test_cli_sweep_on_timesformer_measures_reference_and_sttm(tmp_path):
    from typer.testing import CliRunner

    from vidprune.cli.app import app

    result = CliRunner().invoke(app, ["sweep", "--method", "sttm", "--backbone", "timesformer-tiny", "--device", "cpu",
                                      "--metrics", "flops,params", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(next(tmp_path.glob("*.csv")))
    assert table["status"].tolist() == ["ok", "ok"]
    assert table["method"].tolist() == ["none", "sttm"]
    assert table["tokens_per_block"].tolist() == ["65,65,65,65", "65,65,33,17"]
    d = 192  # blocks 3-4 lose their temporal parts; STTM adds 6D^2 + 4D
    delta = -2 * (5 * d * d + 7 * d) + 6 * d * d + 4 * d
    assert table.loc[1, "params_m"] - table.loc[0, "params_m"] == pytest.approx(delta / 1e6, abs=1e-6)
