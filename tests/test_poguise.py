"""PO-GUISE: token layout, the pose-guided score, Algorithm 1's merge (bugs fixed), token counts per stage,
protected tokens, batching, determinism, option validation, the two-knob grid through the CLI, FLOP
counters, and the paper-convention GFLOPs of ViT-B 16x224 (three counts only, in one module fixture)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vidprune.backbones.base import BackboneInfo
from vidprune.cli.app import app
from vidprune.errors import VidpruneError
from vidprune.measure.flops import count_flops, relative_gap
from vidprune.methods.poguise import POGUISE, SemanticAttention, merge_count, merge_discarded
from vidprune.recipes import load_recipe
from vidprune.registry import parse_options
from vidprune.models import create_model
from vidprune.spec import SweepSpec
from vidprune.sweep import expand_points
from vidprune.tokens import TokenState, keep_count

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _clip(model, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.input_shape(batch), generator=g)


def _method(info: BackboneInfo, keep: float, **options) -> POGUISE:
    return POGUISE(info, keep, **parse_options(POGUISE, options))


def _record_states(model) -> dict:
    """Wrap the method's after_attention so every call records the positions and sizes it lets through."""
    records: dict = {}
    method = model.method
    original = method.after_attention

    def wrapped(layer, state, attn):
        out = original(layer, state, attn)
        if layer + 1 in method.layers:
            records[layer] = (out.pos.clone(), None if out.size is None else out.size.clone(), out.n_protected)
        return out

    method.after_attention = wrapped
    return records


def _chain(n_vis: int, rho: float, lam: float, stages: int, merge: bool = True) -> list[int]:
    """Visual tokens per stage from first principles: floor(rho N) kept + floor(lambda (N - kept)) merged."""
    counts = [n_vis]
    for _ in range(stages):
        n = counts[-1]
        kept = max(math.floor(n * rho + 1e-9), 1)
        counts.append(kept + (math.floor((n - kept) * lam + 1e-9) if merge else 0))
    return counts


# ---------------------------------------------------------------- ViT-B 16x224 in the paper's convention

@pytest.fixture(scope="module")
def vitb_counts():
    """Primary-counter GMACs and token traces of baseline, +HM(P) (rho 1) and PO-GUISE defaults: the only
    three 16x224 ViT-B passes of this file."""
    out = {}
    for label, method, keep in [("baseline", "none", None), ("hm", "poguise", 1.0), ("default", "poguise", None)]:
        model = create_model("vit-b", method, keep)
        report = count_flops(model, counters=("torch",))
        out[label] = (report.gflops, list(model.last_trace),
                      list(getattr(model.method, "last_visual_tokens", [])), model.method)
    return out


def _paper_gflops(method: str, keep: float) -> float:
    for ref in load_recipe(RECIPES / "poguise-vitb-224.yaml")["references"]:
        if ref.get("method", "poguise") == method and float(ref["keep"]) == keep:
            return float(ref["gflops"]) / float(ref["paper_gflops_factor"])
    raise AssertionError(f"no reference for {method} keep={keep}")


def test_paper_convention_gflops_within_one_percent(vitb_counts):
    # The recipe's references hold the paper's figures and its factor 2 (FLOPs = 2 MACs).
    assert relative_gap(vitb_counts["baseline"][0], _paper_gflops("none", 1.0)) < 0.01
    assert relative_gap(vitb_counts["hm"][0], _paper_gflops("poguise", 1.0)) < 0.01
    assert relative_gap(vitb_counts["default"][0], _paper_gflops("poguise", 0.6)) < 0.01
    # +HM(P) costs the 65 extra tokens' share: more than the baseline, by less than 10%
    assert 1.0 < vitb_counts["hm"][0] / vitb_counts["baseline"][0] < 1.1


def test_token_counts_per_stage_at_defaults(vitb_counts):
    _, trace, visual, method = vitb_counts["default"]
    assert method.layers == (4, 7, 10) and method.keep == pytest.approx(0.6) and method.merge_ratio == pytest.approx(0.3)
    expected = _chain(1568, 0.6, 0.3, 3)
    assert visual == expected == method.visual_token_counts(1568)
    assert expected == [1568, 1128, 811, 583]
    p = 1 + 8 * 8
    # selection sits between attention and MLP: block 4 enters with all tokens, block 5 with the reduced set
    assert trace == [p + expected[0]] * 4 + [p + expected[1]] * 3 + [p + expected[2]] * 3 + [p + expected[3]] * 2
    _, hm_trace, hm_visual, _ = vitb_counts["hm"]
    assert hm_trace == [p + 1568] * 12 and hm_visual == [1568]
    assert vitb_counts["baseline"][1] == [1568] * 12


def test_stage_counts_of_the_table2_variants_from_geometry():
    info = create_model("vit-tiny", "poguise").info
    vitb = BackboneInfo("vit", 12, 768, 12, 16, 224, (8, 14, 14))
    prune_only = _method(vitb, 0.72, merge=False)
    assert prune_only.visual_token_counts(1568) == _chain(1568, 0.72, 0.0, 3, merge=False)
    # rho 0.72 without merging keeps the same tokens after stage 1 as rho 0.6 + lambda 0.3 (the budget match)
    assert prune_only.visual_token_counts(1568)[1] == _method(vitb, 0.6).visual_token_counts(1568)[1]
    assert _method(info, 1.0).visual_token_counts(64) == [64]


# ---------------------------------------------------------------- the score

def test_tap_score_is_kappa_cls_plus_pose_sum_on_head_mean_attention():
    torch.manual_seed(0)
    b, h, n, p, kappa = 2, 3, 12, 5, 0.25
    probs = torch.randn(b, h, n, n).softmax(dim=-1)
    weights = torch.zeros(b, n)
    weights[:, 0], weights[:, 1:p] = kappa, 1 - kappa
    tap = SemanticAttention(weights, keep_rows=True)
    tap(probs[:, :, :5], 0)  # in blocks of queries, as the backbone feeds it
    tap(probs[:, :, 5:], 5)
    mean = probs.mean(dim=1)
    expected = kappa * mean[:, :, 0] + (1 - kappa) * mean[:, :, 1:p].sum(dim=-1)
    torch.testing.assert_close(tap.scores, expected)
    torch.testing.assert_close(tap.rows, mean)


@pytest.mark.parametrize("score, kappa", [("cls", 1.0), ("pose", 0.0), ("cls+pose", 0.1)])
def test_score_variants_weight_the_semantic_keys(score, kappa):
    info = BackboneInfo("vit", 4, 8, 2, 2, 32, (1, 2, 2))
    method = _method(info, 0.5, score=score, hm_res=2)
    pos = torch.tensor([[-1, -2, -3, -4, -5, 0, 1, 2, 3]])
    state = TokenState(x=torch.zeros(1, 9, 8), pos=pos, grid=info.grid, n_protected=5)
    weights = method.key_weights(state)[0]
    assert method.kappa == pytest.approx(kappa)
    assert weights[0].item() == pytest.approx(kappa)
    assert weights[1:5].tolist() == pytest.approx([1 - kappa] * 4)
    assert weights[5:].abs().sum() == 0  # visual keys never count


# ---------------------------------------------------------------- Algorithm 1 (bugs fixed)

def test_merge_on_a_hand_built_example():
    # Similarity vectors in 2-D: a ~ b ~ c along the quarter circle, d opposite a.
    vectors = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]]])
    x = torch.arange(4 * 3, dtype=torch.float32).view(1, 4, 3)
    size = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    pos = torch.tensor([[10, 11, 12, 13]])
    # candidates: a->b (0.8), b->c (0.96), c->b (0.96), d->c (-0.6: all negative, yet never itself)
    merged, merged_size, merged_pos = merge_discarded(x, size, pos, vectors, 3)
    assert merged_pos.tolist() == [[10, 11, 12]]  # d, the weakest, is dropped
    torch.testing.assert_close(merged, torch.stack([(x[0, 0] + x[0, 1]) / 2, (x[0, 1] + x[0, 2]) / 2,
                                                   (x[0, 2] + x[0, 1]) / 2]).unsqueeze(0))
    assert merged_size.tolist() == [[3.0, 5.0, 5.0]]  # each pair stands for both its tokens
    merged, merged_size, merged_pos = merge_discarded(x, size, pos, vectors, 4)
    torch.testing.assert_close(merged[0, 3], (x[0, 3] + x[0, 2]) / 2)  # the -inf diagonal at work
    assert merged_size[0, 3].item() == 7.0


def test_merge_count_and_rounding():
    assert merge_count(628, 0.3) == 188 and merge_count(452, 0.3) == 135 and merge_count(325, 0.3) == 97
    assert merge_count(1, 1.0) == 0  # a single discarded token has nothing to merge with
    assert merge_count(10, 1.0) == 10


def test_select_keeps_prefix_top_visual_tokens_then_merged():
    info = BackboneInfo("vit", 4, 4, 1, 2, 64, (1, 2, 4))  # 8 visual tokens
    method = _method(info, 0.5, hm_res=1, **{"lambda": 0.5})  # prefix = class + 1 pose token
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 10, 4, generator=g)
    pos = torch.tensor([[-1, -2, 0, 1, 2, 3, 4, 5, 6, 7]])
    state = TokenState(x=x, pos=pos, grid=info.grid, n_protected=2)
    tap = SemanticAttention(torch.zeros(1, 10), keep_rows=True)
    # protected tokens score lowest: they must survive anyway
    tap.scores = torch.tensor([[-9.0, -9.0, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.0, 0.6]])
    rows = torch.eye(10).unsqueeze(0).clone()
    # attention rows among the discarded tokens (positions 0, 2, 4, 6): 0 and 6 attend alike
    rows[0, 2, [2, 8]] = torch.tensor([0.5, 0.5])
    rows[0, 8, [2, 8]] = torch.tensor([0.5, 0.5])
    tap.rows = rows
    out = method.select(state, tap)
    assert out.pos[0, :2].tolist() == [-1, -2]
    assert out.pos[0, 2:6].tolist() == [1, 3, 5, 7]  # the top half by score, in original order
    # lambda 0.5 of 4 discarded -> 2 merged: the mutual best pair (positions 0 and 6), both directions
    assert out.num_tokens == 2 + 4 + 2
    assert sorted(out.pos[0, 6:].tolist()) == [0, 6]
    pair_mean = (x[0, 2] + x[0, 8]) / 2
    torch.testing.assert_close(out.x[0, 6], pair_mean)
    torch.testing.assert_close(out.x[0, 7], pair_mean)
    assert out.size[0].tolist() == [1.0] * 6 + [2.0, 2.0]
    torch.testing.assert_close(out.x[0, :6], x[0, [0, 1, 3, 5, 7, 9]])


# ---------------------------------------------------------------- in the model

def test_protected_tokens_survive_aggressive_selection():
    model = create_model("vit-tiny", "poguise", 0.05)
    records = _record_states(model)
    with torch.no_grad():
        model(_clip(model, batch=2))
    p = 1 + 64
    assert sorted(records) == [0, 1, 2]
    visual = model.method.last_visual_tokens
    assert visual == _chain(64, 0.05, 0.3, 3)
    for layer, (pos, size, n_protected) in records.items():
        assert n_protected == p
        assert pos[:, :p].tolist() == [list(range(-1, -p - 1, -1))] * 2
        assert (pos[:, p:] >= 0).all()
        assert pos.shape[1] == p + visual[layer + 1]


def test_sizes_add_up_after_merging():
    model = create_model("vit-tiny", "poguise", 0.5, options={"lambda": 1.0})
    records = _record_states(model)
    with torch.no_grad():
        model(_clip(model))
    _, size, _ = records[0]
    p = model.method.num_semantic
    kept = keep_count(64, 0.5)
    assert (size[:, p:p + kept] == 1).all()
    assert (size[:, p + kept:] == 2).all()  # every merged token stands for a pair


def test_batch_equals_per_sample_and_heatmaps():
    model = create_model("vit-tiny", "poguise", 0.6, options={"decode_heatmaps": True})
    video = _clip(model, batch=3)
    with torch.no_grad():
        batched = model(video)
        heatmaps = model.method.last_heatmaps
        singles = []
        for i in range(3):
            singles.append(model(video[i:i + 1]))
            torch.testing.assert_close(model.method.last_heatmaps, heatmaps[i:i + 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, torch.cat(singles), rtol=1e-4, atol=1e-5)
    assert heatmaps.shape == (3, 25, 32, 32)  # L landmarks, 4 x hm_res


def test_determinism_under_seed():
    video = _clip(create_model("vit-tiny", "none"))
    a = create_model("vit-tiny", "poguise", seed=3)
    b = create_model("vit-tiny", "poguise", seed=3)
    c = create_model("vit-tiny", "poguise", seed=4)
    torch.testing.assert_close(a.method.pose_tokens, b.method.pose_tokens)
    assert not torch.equal(a.method.pose_tokens, c.method.pose_tokens)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        first, second, again = a(video), b(video), a(video)
    assert torch.equal(first, second) and torch.equal(first, again)


def test_without_heatmap_only_the_class_token_leads():
    model = create_model("vit-tiny", "poguise", 0.6, options={"heatmap": False, "merge": False})
    assert model.method.score == "cls" and model.method.pose_tokens is None and model.method.heatmap_head is None
    with torch.no_grad():
        model(_clip(model))
    assert model.last_trace[0] == 1 + 64
    assert model.method.last_visual_tokens == _chain(64, 0.6, 0.0, 3, merge=False)


def test_backbone_class_token_is_reused():
    model = create_model("vit-tiny", "poguise", 0.6)
    with_cls = create_model("vit-s-cls", "poguise", 0.6, frames=2, size=32, options={"hm_res": 2})
    assert model.method.cls_token is not None and with_cls.method.cls_token is None
    with torch.no_grad():
        with_cls(_clip(with_cls))
    assert with_cls.last_trace[0] == 1 + 4 + 2 * 2 * 2


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("options, needle", [
    ({"lambda": 0}, "lambda"), ({"lambda": 1.5}, "lambda"), ({"lambda": "x"}, "lambda"),
    ({"kappa": 2}, "kappa"), ({"score": "top"}, "score"), ({"merge": "maybe"}, "merge"),
    ({"hm_res": 0}, "hm_res"), ({"landmarks": 2.5}, "landmarks"), ({"similarity": "dot"}, "similarity"),
    ({"heatmap": False, "score": "pose"}, "heatmap"), ({"heatmap": False, "decode_heatmaps": True}, "heatmap"),
    ({"layers": "13"}, "layer"), ({"nope": 1}, "nope"),
])
def test_bad_options_are_user_errors(options, needle):
    with pytest.raises(VidpruneError, match=needle):
        create_model("vit-tiny", "poguise", options=options)


@pytest.mark.parametrize("keep", [0.0, 1.2, -0.1])
def test_bad_keep_is_a_user_error(keep):
    with pytest.raises(VidpruneError, match="rho"):
        create_model("vit-tiny", "poguise", keep)


# ---------------------------------------------------------------- counters, CLI

def test_primary_and_fvcore_agree_on_a_tiny_config():
    for options in ({}, {"similarity": "features", "score": "mf"}):
        report = count_flops(create_model("vit-tiny", "poguise", 0.6, options=options), counters=("torch", "fvcore"))
        assert report.gflops_fvcore is not None
        assert relative_gap(report.gflops, report.gflops_fvcore) < 0.01, (options, report)


def test_decoding_heatmaps_adds_the_head_flops():
    plain = count_flops(create_model("vit-tiny", "poguise"), counters=("torch",)).gflops
    decoded = count_flops(create_model("vit-tiny", "poguise", options={"decode_heatmaps": True}), counters=("torch",)).gflops
    # two 4x4 stride-2 deconvolutions (192->256 on 8x8, 256->256 on 16x16) and a 1x1 conv to 25 on 32x32
    head = (8 * 8 * 192 * 256 * 16 + 16 * 16 * 256 * 256 * 16 + 32 * 32 * 256 * 25) / 1e9
    assert decoded - plain == pytest.approx(head, rel=0.01)


def test_no_flag_sweep_defaults():
    spec = SweepSpec(method="poguise")
    assert spec.backbone == "vit-b"
    points = expand_points(spec)
    assert [(p.method, p.keep) for p in points] == [("none", None), ("poguise", 0.6)]


def test_two_knob_grid_through_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--method", "poguise", "--keep", "0.5,0.6", "--set", "lambda=0.1,0.3",
                                      "--backbone", "vit-tiny", "--metrics", "flops", "--device", "cpu",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [path] = list(tmp_path.glob("*.csv"))
    df = pd.read_csv(path)
    assert list(df["method"]) == ["none"] + ["poguise"] * 4
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    rows = df[df["method"] == "poguise"]
    grid = {(k, json.loads(o)["lambda"]): g for k, o, g in zip(rows["keep"], rows["options"], rows["gflops"])}
    assert set(grid) == {(0.5, 0.1), (0.5, 0.3), (0.6, 0.1), (0.6, 0.3)}
    for keep in (0.5, 0.6):
        assert grid[(keep, 0.3)] > grid[(keep, 0.1)]  # more merged survivors cost more
    for lam in (0.1, 0.3):
        assert grid[(0.6, lam)] > grid[(0.5, lam)]


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("poguise-*.yaml")), ids=lambda p: p.stem)
def test_recipes_expand(recipe):
    data = load_recipe(recipe)
    assert data["sweep"]["method"] == "poguise"
    assert data["convention"]["paper_gflops_factor"] == 2.0
    options = {k: (v if isinstance(v, list) else [v]) for k, v in (data["sweep"].get("options") or {}).items()}
    keeps = data["sweep"]["keep"]
    spec = SweepSpec(method="poguise", keeps=keeps, backbone="vit-tiny", frames=8, size=64, options=options)
    points = expand_points(spec)
    assert len(points) == 1 + len(keeps) * math.prod(len(v) for v in options.values())
    for point in points[1:]:
        create_model("vit-tiny", "poguise", point.keep, options=point.options)
    for ref in data["references"]:
        assert ref["source"].startswith("PO-GUISE") and ref["paper_gflops_factor"] == 2.0
