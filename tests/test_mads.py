"""MADS frame pruning on the ViViT: the learnable threshold's loss and gradients, top-K per segment keeping
temporal spread, kept-frame statistics, the FLOP savings of frames pruned before the spatial encoder,
counter agreement, validation, and the sweep on its default backbone."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import pytest
import torch

from test_vivit import TINY, vivit_macs
from vidprune.backbones.vivit import ViViTInfo
from vidprune.errors import VidpruneError
from vidprune.measure.flops import count_flops, count_torch, example_input
from vidprune.methods.mads import MADS
from vidprune.models import create_model


def _info(frames: int = 8, modalities=("rgb",)) -> ViViTInfo:
    return ViViTInfo("vivit", depth=3, dim=16, heads=2, frames=frames, size=32, grid=(frames, 2, 2), n_prefix=1,
                     tubelet=1, patch=16, modalities=modalities, spatial_depth=2, temporal_depth=1)


def _with_scores(method: MADS, scores: torch.Tensor) -> MADS:
    """Make the method see `scores` (B, T) whatever the frame CLS tokens are."""
    method.frame_scores = lambda summary: scores[: summary.shape[0]]
    return method


def _select(method: MADS, scores: torch.Tensor):
    b, t = scores.shape
    return _with_scores(method, scores).select_frames(torch.zeros(b, len(method.info.modalities), t, 16))


# ---------------------------------------------------------------- scoring

def test_scores_are_summed_over_modalities():
    model = create_model("vivit-tiny", "mads", 0.5)
    method = model.method
    assert sorted(method.scorers) == ["depth", "rgb", "skeleton"]
    summary = torch.randn(2, 3, 8, 128)
    expected = sum(method.scorers[m](summary[:, i]) for i, m in enumerate(("rgb", "depth", "skeleton")))
    assert torch.allclose(method.frame_scores(summary), expected)
    assert method.frame_scores(summary).shape == (2, 8)


# ---------------------------------------------------------------- top-K segments

def test_soft_mask_is_a_sigmoid_around_the_mean_score():
    method = MADS(_info(), 0.5, slope=2.0)
    scores = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    theta = scores.mean()
    assert torch.allclose(method.soft_mask(scores), torch.sigmoid(2.0 * (scores - theta)))


def test_top_k_per_segment_keeps_every_segment_where_global_top_k_would_not():
    method = MADS(_info(16), 0.5, strategy="topk", segments=4).eval()
    scores = torch.arange(16.0).unsqueeze(0)  # the global top 8 are all in the second half
    chosen = _select(method, scores)
    assert chosen.index.tolist() == [[2, 3, 6, 7, 10, 11, 14, 15]]  # the top 2 of each segment of 4
    assert chosen.valid is None and chosen.key_bias is None


def test_remaining_frames_go_to_the_segments_with_the_best_spare_frame():
    # 8 frames, 4 segments of 2, keep 0.75 -> 6 frames: one per segment + 2 extras (best second frames)
    method = MADS(_info(8), 0.75, strategy="topk", segments=4).eval()
    scores = torch.tensor([[5.0, 4.0, 1.0, 0.0, 9.0, 3.5, 2.0, 1.5]])
    assert _select(method, scores).index.tolist() == [[0, 1, 2, 4, 5, 6]]
    # the global top 6 would drop segment 2 (frames 2, 3) entirely
    assert set(scores[0].topk(6).indices.tolist()).isdisjoint({2, 3})


@pytest.mark.parametrize("frames, segments, keep", [(16, 4, 0.5), (16, 4, 0.76), (10, 4, 0.7), (10, 3, 0.4),
                                                    (8, 8, 1.0), (8, 4, 0.99), (12, 5, 0.45)])
def test_top_k_segments_properties_on_random_scores(frames, segments, keep):
    method = MADS(_info(frames), keep, strategy="topk", segments=segments).eval()
    scores = torch.randn(6, frames, generator=torch.Generator().manual_seed(frames + segments))
    index = _select(method, scores).index
    total = math.floor(frames * keep + 1e-9)
    assert index.shape == (6, total)
    bounds = [(i * frames // segments, (i + 1) * frames // segments) for i in range(segments)]
    base, extra = divmod(total, segments)
    for clip in range(6):
        kept = index[clip].tolist()
        assert kept == sorted(set(kept))
        spares = []
        for start, stop in bounds:
            inside = [f for f in kept if start <= f < stop]
            assert base <= len(inside) <= base + 1  # every segment contributes, none more than one extra
            rest = [f for f in range(start, stop) if f not in inside]
            if rest:  # the kept frames of a segment are its best ones
                assert min(scores[clip, inside]) >= max(scores[clip, rest])
            ranked = sorted(range(start, stop), key=lambda f: -scores[clip, f].item())
            spares.append((scores[clip, ranked[base]].item() if stop - start > base else -math.inf, len(inside) > base))
        with_extra = [has for _, has in sorted(spares, key=lambda s: -s[0])]
        assert with_extra == [True] * extra + [False] * (segments - extra)


# ---------------------------------------------------------------- learnable threshold

@pytest.mark.parametrize("keep", [0.5, 0.8, 0.7])
def test_z_r_is_the_inverse_normal_cdf_of_the_pruning_rate(keep):
    method = MADS(_info(), keep, strategy="threshold")
    assert method.z_r == pytest.approx(NormalDist().inv_cdf(1 - keep))
    assert method.z_r == pytest.approx(torch.special.ndtri(torch.tensor(1 - keep, dtype=torch.float64)).item())


@pytest.mark.parametrize("tau, sign", [(5.0, 1.0), (-5.0, -1.0)])
def test_threshold_loss_value_and_gradient_to_tau(tau, sign):
    method = MADS(_info(4), 0.8, strategy="threshold", **{"lambda": 0.3}).train()
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 4.0, 6.0]])
    z = NormalDist().inv_cdf(0.2)
    targets = [sum(r) / 4 + z * math.sqrt(sum((v - sum(r) / 4) ** 2 for v in r) / 4) for r in scores.tolist()]
    with torch.no_grad():
        method.tau.fill_(tau)
    loss = method.threshold_loss(scores)
    assert loss.item() == pytest.approx(0.3 * sum(abs(tau - t) for t in targets) / 2, rel=1e-6)
    loss.backward()
    assert method.tau.grad.item() == pytest.approx(0.3 * sign)
    # the target is detached: L_th moves tau, not the scorer
    assert all(p.grad is None for p in method.scorers.parameters())
    assert bool(method.tau_trained)


def test_training_forward_sends_task_gradients_to_tau_and_the_scorers():
    model = create_model("vivit-tiny", "mads", 0.5, options={"strategy": "threshold"}).train()
    inputs = example_input(model, 2)
    logits = model(inputs)
    assert model.last_stats["frames_kept_mean"] == 8  # soft mask in training: every frame is encoded
    (logits.square().mean() + model.method.threshold_loss()).backward()
    assert model.method.tau.grad is not None and model.method.tau.grad.abs().item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.method.scorers.parameters())


def test_trained_tau_is_the_hard_threshold_at_inference():
    method = MADS(_info(8), 0.5, strategy="threshold").eval()
    scores = torch.tensor([[0.0, 3.0, 1.0, 5.0, 2.0, 4.0, 0.5, 6.0]])
    # untrained: the per-clip target mu + z_r sigma (z = 0 at r = 0.5: the mean, 2.6875)
    assert _select(method, scores).index.tolist() == [[1, 3, 5, 7]]
    assert "untrained" in method.forward_stats()["threshold"]
    method.tau_trained.fill_(True)
    with torch.no_grad():
        method.tau.fill_(1.5)
    assert _select(method, scores).index.tolist() == [[1, 3, 4, 5, 7]]
    method.tau.data.fill_(100.0)
    assert _select(method, scores).index.tolist() == [[7]]  # never empty: the best frame stays
    assert method.forward_stats()["threshold"] == "learned tau"


def test_kept_frame_counts_vary_per_clip_and_padding_is_masked():
    model = create_model("vivit-tiny", "mads", 0.5, options={"strategy": "threshold"})
    method = model.method
    method.tau_trained.fill_(True)  # tau = 0
    scores = torch.tensor([[1.0, -1, 1, 1, -1, 1, 1, -1], [-1.0, -1, 1, -1, -1, -1, 1, -1]])
    inputs = example_input(model, 2)
    with torch.no_grad():
        _with_scores(method, scores)
        both = model(inputs)
        stats, trace = dict(model.last_stats), list(model.last_trace)
        single = []
        for i in range(2):
            _with_scores(method, scores[i:i + 1])
            single.append(model({k: v[i:i + 1] for k, v in inputs.items()}))
    assert stats["frames_kept_min"] == 2 and stats["frames_kept_max"] == 5
    assert stats["frames_kept_mean"] == 3.5 and stats["frames_total"] == 8
    assert "accuracy_note" in stats and "trained checkpoint" in stats["accuracy_note"]
    per_frame = 36
    assert trace == [8 * per_frame, 5 * per_frame, 1 + 3 * 5]  # first clip: 5 kept after block 1
    # the second clip's 3 padding frames change nothing
    assert torch.allclose(both, torch.cat(single), atol=1e-5)


# ---------------------------------------------------------------- keep 1 and the model path

def test_keep_one_is_the_plain_backbone():
    base = create_model("vivit-tiny", "none")
    mads = create_model("vivit-tiny", "mads", 1.0)
    mads.load_state_dict(base.state_dict(), strict=False)
    inputs = example_input(base, 2)
    with torch.no_grad():
        assert torch.equal(base(inputs), mads(inputs))
    assert mads.method.select_after is None and mads.last_trace == base.last_trace


@pytest.mark.parametrize("strategy", ["topk", "threshold"])
def test_topk_stats_and_same_frames_in_every_modality(strategy):
    model = create_model("vivit-tiny", "mads", 0.5, options={"strategy": strategy})
    with torch.no_grad():
        model(example_input(model, 3))
    kept = model.last_stats["frames_kept_mean"]
    if strategy == "topk":
        assert model.last_stats["frames_kept_min"] == model.last_stats["frames_kept_max"] == kept == 4
    assert 1 <= model.last_stats["frames_kept_min"] <= kept <= model.last_stats["frames_kept_max"] <= 8
    # one index for all modalities: the temporal encoder sees 3 CLS tokens per kept frame of clip 0
    assert (model.last_trace[-1] - 1) % 3 == 0


# ---------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("keep, score_after, kept", [(0.5, 1, 4), (0.75, 0, 6), (0.25, 2, 2), (0.5, 0, 4)])
def test_topk_cost_matches_the_documented_formula(keep, score_after, kept):
    model = create_model("vivit-tiny", "mads", keep, options={"score_after": score_after, "segments": 2})
    gmacs = count_torch(model, (example_input(model),))
    assert model.last_stats["frames_kept_mean"] == kept
    assert gmacs * 1e9 == pytest.approx(vivit_macs(**TINY, kept=kept, score_after=score_after), rel=1e-9)
    spatial_tokens = 36
    assert model.last_trace == [8 * spatial_tokens] * score_after + [kept * spatial_tokens] * (2 - score_after) + [1 + 3 * kept]


def _spatial_cost(frames: int) -> int:
    n, d = 36, 128
    return TINY["spatial"] * frames * (12 * n * d * d + 2 * n * n * d)


def test_frames_pruned_before_the_spatial_encoder_save_at_least_their_share():
    full = count_torch(create_model("vivit-tiny", "none"), (example_input(create_model("vivit-tiny", "none")),))
    half = create_model("vivit-tiny", "mads", 0.5, options={"score_after": 0})
    saved = (full - count_torch(half, (example_input(half),))) * 1e9
    assert half.last_stats["frames_kept_mean"] == 4
    # 4 of 8 frames pruned before any spatial block: at least their half of the spatial cost is saved
    assert saved >= 0.5 * _spatial_cost(8)
    # the default placement (after spatial block 1 of 2) saves at least their share of the blocks after it
    default = create_model("vivit-tiny", "mads", 0.5)
    saved_default = (full - count_torch(default, (example_input(default),))) * 1e9
    assert default.method.score_after == 1
    assert saved_default >= 0.5 * _spatial_cost(8) * (2 - 1) / 2
    assert saved > saved_default > 0


@pytest.mark.parametrize("strategy", ["topk", "threshold"])
def test_primary_and_fvcore_agree_within_one_percent(strategy):
    model = create_model("vivit-tiny", "mads", 0.6, options={"strategy": strategy})
    report = count_flops(model, counters=("torch", "fvcore"))
    assert report.gflops_fvcore is not None, report.notes
    assert report.gflops_fvcore == pytest.approx(report.gflops, rel=0.01)
    assert report.counters_agree


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("keep", [0, 1.5, -0.2, float("nan"), "abc"])
def test_bad_keep_raises(keep):
    with pytest.raises(VidpruneError, match="frame_keep"):
        create_model("vivit-tiny", "mads", keep)


@pytest.mark.parametrize("options, match", [
    ({"strategy": "median"}, "strategy"),
    ({"segments": 0}, "segments"),
    ({"segments": 2.5}, "segments"),
    ({"segments": 9}, "segments=9 exceeds the 8 frames"),
    ({"slope": 0}, "slope"),
    ({"slope": "inf"}, "slope"),
    ({"lambda": -1}, "lambda"),
    ({"score_after": -1}, "score_after"),
    ({"score_after": 3}, "score_after=3 exceeds the 2 spatial blocks"),
    ({"nope": 1}, "nope"),
])
def test_bad_options_raise(options, match):
    with pytest.raises(VidpruneError, match=match):
        create_model("vivit-tiny", "mads", 0.5, options=options)


def test_too_few_frames_for_the_segments_raises():
    with pytest.raises(VidpruneError, match="fewer than the 4 segments"):
        create_model("vivit-tiny", "mads", 0.25, options={"segments": 4})  # 2 of 8 frames, 4 segments


def test_mads_needs_a_vivit():
    with pytest.raises(VidpruneError, match="vivit"):
        create_model("vit-tiny", "mads", 0.5)


def test_threshold_loss_misuse_raises():
    with pytest.raises(VidpruneError, match="forward"):
        MADS(_info(), 0.5, strategy="threshold").threshold_loss()
    with pytest.raises(VidpruneError, match="threshold"):
        MADS(_info(), 0.5).threshold_loss(torch.zeros(1, 8))


# ---------------------------------------------------------------- sweeps

def test_default_backbone_and_knob():
    from vidprune.spec import SweepSpec

    assert MADS.default_backbone == "vivit-b"
    assert SweepSpec(method="mads").backbone == "vivit-b"
    assert MADS.knob.default == 0.5 and "1 - pruning rate" in MADS.knob.help


def test_sweep_writes_rows_with_frame_stats(tmp_path):
    from typer.testing import CliRunner

    from vidprune.cli.app import app
    from vidprune.results import read_tables

    result = CliRunner().invoke(app, ["sweep", "--method", "mads", "--keep", "0.5,0.75", "--backbone", "vivit-tiny",
                                      "--set", "strategy=topk,threshold", "--metrics", "flops,params",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    df = read_tables([str(p) for p in tmp_path.glob("*.csv")])
    assert list(df["method"]) == ["none"] + ["mads"] * 4 and set(df["status"]) == {"ok"}
    mads = df[df["method"] == "mads"]
    assert (mads["gflops"] < df.loc[df["method"] == "none", "gflops"].iloc[0]).all()
    assert mads["accuracy_note"].str.contains("trained checkpoint").all()
    topk = mads[mads["options"].str.contains('"topk"')]
    assert sorted(topk["frames_kept_mean"]) == [4, 6]
    assert (df["frames_total"] == 8).all()


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_table1_recipes_load(size):
    from vidprune.recipes import load_recipe
    from vidprune.registry import get_backbone
    from vidprune.spec import SweepSpec
    from vidprune.sweep import expand_points

    data = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"mads-table1-{size}.yaml")
    sweep = dict(data["sweep"])
    get_backbone(sweep["backbone"])
    keeps = sweep.pop("keep")
    sweep.pop("metrics")
    options = {k: v for k, v in sweep.pop("options").items()}
    points = expand_points(SweepSpec(**sweep, keeps=keeps, options=options))
    assert len(points) == 1 + 2 * 2
    refs = data["references"]
    assert [r.get("method", "mads") for r in refs] == ["none", "mads", "mads"]
    assert all(r["paper_gflops_factor"] == 1.0 and "Table 1" in r["source"] for r in refs)
    assert {r.get("strategy") for r in refs[1:]} == {"threshold", "topk"}
