"""The data pipeline: decoding real video files end to end, the two samplers' frame indices, transforms,
list-file parsing with bad lines, class folders, skipping corrupt or missing videos, and the synthetic
motion dataset (deterministic, classes that differ only in motion)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vidprune.data import synthetic
from vidprune.data.datasets import (VideoDataset, collate, make_loader, open_video_list, read_class_folders,
                                    read_list_file)
from vidprune.data.samplers import DenseSampler, UniformSampler, make_sampler
from vidprune.data.transforms import (NORMALIZATIONS, ClipTransform, crop_positions, normalization_for,
                                      resize_short_side, resolve_normalization)
from vidprune.data.video import VideoDecodeError, probe, read_frames, write_video
from vidprune.errors import VidpruneError


def _gradient_video(frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame t is a flat grey of level 20 * t: decodable frames can be told apart after lossy coding."""
    levels = (np.arange(frames) * 20).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthetic.synthesize(out, train_per_class=2, val_per_class=1, frames=8, size=32, seed=3, num_classes=3)
    return out


# ------------------------------------------------------------------------------------------ decoding


def test_write_then_decode_end_to_end(tmp_path):
    video = _gradient_video()
    path = write_video(tmp_path / "clip.mp4", video, fps=10)
    meta = probe(path)
    assert (meta.num_frames, meta.width, meta.height) == (12, 64, 48)
    assert meta.fps == pytest.approx(10.0)
    frames = read_frames(path)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
    # lossy coding moves a flat grey by a level or two, never by the 20 between frames
    assert np.abs(frames.astype(int).mean(axis=(1, 2, 3)) - video.mean(axis=(1, 2, 3))).max() < 4


def test_read_selected_frames_in_requested_order_with_repeats(tmp_path):
    path = write_video(tmp_path / "clip.mp4", _gradient_video())
    picked = read_frames(path, [7, 2, 2, 11])
    assert picked.shape[0] == 4
    levels = picked.astype(float).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(levels, [140, 40, 40, 220], atol=4)


def test_index_past_the_end_repeats_the_last_frame(tmp_path):
    path = write_video(tmp_path / "clip.mp4", _gradient_video(frames=6))
    frames = read_frames(path, [4, 5, 9])
    np.testing.assert_array_equal(frames[2], frames[1])


def test_missing_and_corrupt_files_raise_decode_errors(tmp_path):
    with pytest.raises(VideoDecodeError, match="does not exist"):
        read_frames(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoDecodeError):
        probe(junk)
    assert issubclass(VideoDecodeError, VidpruneError)


# ------------------------------------------------------------------------------------------ samplers


def test_uniform_sampler_takes_segment_centres():
    s = UniformSampler(4)
    assert s.indices(16) == [2, 6, 10, 14]  # segments of 4, centre offset 2
    assert s.indices(8) == [1, 3, 5, 7]
    # two views sit at 1/4 and 3/4 of each segment
    assert s.indices(16, clip=0, num_clips=2) == [1, 5, 9, 13]
    assert s.indices(16, clip=1, num_clips=2) == [3, 7, 11, 15]


def test_uniform_sampler_short_video_repeats_frames():
    assert UniformSampler(8).indices(3) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_uniform_sampler_training_draws_one_frame_per_segment():
    s = UniformSampler(4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = s.indices(20, rng=rng)
        assert [i // 5 for i in idx] == [0, 1, 2, 3]


def test_dense_sampler_is_videomae_16x4():
    s = DenseSampler(16, stride=4)
    assert s.span == 61
    idx = s.indices(100)
    assert idx[0] == (100 - 61) // 2 and np.all(np.diff(idx) == 4) and len(idx) == 16


def test_dense_sampler_views_span_the_video():
    s = DenseSampler(4, stride=2)  # span 7
    assert s.indices(20, 0, 3) == [0, 2, 4, 6]
    assert s.indices(20, 1, 3) == [6, 8, 10, 12]  # start round(13 / 2) = 6 (banker's rounding of 6.5)
    assert s.indices(20, 2, 3) == [13, 15, 17, 19]


def test_dense_sampler_clamps_short_videos_and_randomises_in_training():
    s = DenseSampler(4, stride=4)
    assert s.indices(5) == [0, 4, 4, 4]
    rng = np.random.default_rng(1)
    starts = {s.indices(40, rng=rng)[0] for _ in range(50)}
    assert len(starts) > 5 and max(starts) <= 40 - s.span


def test_sampler_rejects_bad_arguments():
    with pytest.raises(VidpruneError, match="--sampling"):
        make_sampler("sparse", 8)
    with pytest.raises(VidpruneError, match="--stride"):
        make_sampler("dense", 8, stride=0)
    with pytest.raises(ValueError):
        UniformSampler(4).indices(10, clip=2, num_clips=2)


# ------------------------------------------------------------------------------------------ transforms


def test_resize_short_side_keeps_aspect_ratio():
    video = torch.rand(2, 3, 48, 96)
    assert resize_short_side(video, 24).shape == (2, 3, 24, 48)
    assert resize_short_side(torch.rand(2, 3, 90, 60), 30).shape == (2, 3, 45, 30)


def test_three_crops_run_along_the_long_side():
    assert crop_positions(32, 64, 32, 3) == [(0, 0), (0, 16), (0, 32)]
    assert crop_positions(64, 32, 32, 3) == [(0, 0), (16, 0), (32, 0)]
    assert crop_positions(40, 40, 32, 1) == [(4, 4)]


def test_clip_transform_normalises_with_the_family_statistics():
    frames = np.full((4, 40, 60, 3), 255, dtype=np.uint8)
    views = ClipTransform(32, normalization="clip", num_crops=3)(frames)
    assert views.shape == (3, 3, 4, 32, 32)
    mean, std = NORMALIZATIONS["clip"]
    expected = torch.tensor([(1 - m) / s for m, s in zip(mean, std)])
    torch.testing.assert_close(views[0, :, 0, 0, 0], expected, rtol=1e-5, atol=1e-5)
    assert normalization_for("vit") == "imagenet" and normalization_for("clip") == "clip"
    assert resolve_normalization("auto", "clip") == "clip"
    with pytest.raises(VidpruneError, match="--norm"):
        resolve_normalization("imagenet21k", "vit")


def test_clip_transform_crop_content_matches_position():
    # a horizontal ramp: the left crop is darker than the right one
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, None, :, None], (2, 32, 1, 3))
    views = ClipTransform(32, num_crops=3, normalization="imagenet")(ramp)
    means = views.mean(dim=(1, 2, 3, 4))
    assert means[0] < means[1] < means[2]


def test_training_transform_gives_one_random_view():
    frames = np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)
    t = ClipTransform(32, train=True)
    a = t(frames, np.random.default_rng(0))
    b = t(frames, np.random.default_rng(0))
    assert a.shape == (1, 3, 4, 32, 32)
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ list files


def test_list_file_with_bad_lines_reports_file_and_line(tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_text("# comment\n"
                       "a/one.mp4 0\n"
                       "\n"
                       "justapath.mp4\n"
                       "b/two.mp4 -1\n"
                       "c/with space.mp4 2\n"
                       "d/word.mp4 cat\n"
                       "e/three.mp4,1\n")
    parsed = read_list_file(listing, root=tmp_path / "videos")
    assert [(s.path.name, s.label) for s in parsed.samples] == [("one.mp4", 0), ("with space.mp4", 2),
                                                                ("three.mp4", 1)]
    assert parsed.samples[0].path == tmp_path / "videos" / "a" / "one.mp4"
    assert parsed.num_classes == 3
    bad = "\n".join(parsed.bad_lines)
    assert len(parsed.bad_lines) == 3
    assert f"{listing}:4:" in bad and f"{listing}:5:" in bad and f"{listing}:7:" in bad
    assert "negative" in bad and "not an integer" in bad


def test_list_file_with_class_names_uses_classes_txt(tmp_path):
    (tmp_path / "classes.txt").write_text("walk\nrun\njump\n")
    listing = tmp_path / "train.txt"
    listing.write_text("x.mp4 run\ny.mp4 jump\nz.mp4 swim\n")
    parsed = read_list_file(listing)
    assert [s.label for s in parsed.samples] == [1, 2]
    assert parsed.class_names == ["walk", "run", "jump"]
    assert any("swim" in b and ":3:" in b for b in parsed.bad_lines)


def test_list_file_errors_name_the_fix(tmp_path):
    with pytest.raises(VidpruneError, match="does not exist"):
        read_list_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("only-a-path.mp4\n")
    with pytest.raises(VidpruneError, match="no usable"):
        read_list_file(empty)
    with pytest.raises(VidpruneError, match="no dataset"):
        open_video_list(None, None)


def test_class_folders(tmp_path):
    for name in ("walk", "run"):
        (tmp_path / name).mkdir()
        write_video(tmp_path / name / "a.mp4", _gradient_video(frames=2, height=16, width=16))
    (tmp_path / "run" / "notes.txt").write_text("not a video")
    parsed = read_class_folders(tmp_path)
    assert parsed.class_names == ["run", "walk"]
    assert [(s.path.parent.name, s.label) for s in parsed.samples] == [("run", 0), ("walk", 1)]


# ------------------------------------------------------------------------------------------ datasets


def test_dataset_views_and_skipping_missing_and_corrupt_videos(synth_dir, tmp_path):
    parsed = read_list_file(synth_dir / "val.txt")
    good = parsed.samples[0]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 300)
    samples = [good, type(good)(tmp_path / "gone.mp4", 0), type(good)(junk, 1), good]
    ds = VideoDataset(samples, make_sampler("uniform", 4), ClipTransform(32, num_crops=3), num_clips=2)
    assert ds.views_per_video == 6
    loader = make_loader(ds, batch_size=4)
    batch = next(iter(loader))
    assert batch.videos.shape == (2, 6, 3, 4, 32, 32)
    assert batch.labels.tolist() == [good.label, good.label]
    assert [p for p, _ in batch.failures] == [str(tmp_path / "gone.mp4"), str(junk)]
    assert "does not exist" in batch.failures[0][1]


def test_collate_of_only_failures_has_no_videos():
    batch = collate([{"error": "bad", "index": 0, "path": "x.mp4"}])
    assert batch.videos is None and batch.labels.numel() == 0 and len(batch.failures) == 1


# ------------------------------------------------------------------------------------------ synthetic


def test_synth_writes_real_videos_and_list_files(synth_dir):
    meta = json.loads((synth_dir / "meta.json").read_text())
    assert meta["classes"] == ["right", "left", "down"] and meta["seed"] == 3
    train = read_list_file(synth_dir / "train.txt")
    val = read_list_file(synth_dir / "val.txt")
    assert len(train.samples) == 6 and len(val.samples) == 3
    assert train.class_names == ["right", "left", "down"]
    assert sorted(s.label for s in val.samples) == [0, 1, 2]
    frames = read_frames(val.samples[0].path)
    assert frames.shape == (8, 32, 32, 3)


def test_synth_is_deterministic_under_a_seed(tmp_path):
    a = synthetic.render_clip(6, np.random.default_rng([5, 0, 6, 0]), frames=6, size=32)
    b = synthetic.render_clip(6, np.random.default_rng([5, 0, 6, 0]), frames=6, size=32)
    c = synthetic.render_clip(6, np.random.default_rng([6, 0, 6, 0]), frames=6, size=32)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for name in ("one", "two"):
        synthetic.synthesize(tmp_path / name, train_per_class=1, val_per_class=0, frames=4, size=32, seed=9,
                             num_classes=2)
    for rel in ("videos/train/right/right_0000.mp4", "videos/train/left/left_0000.mp4"):
        np.testing.assert_array_equal(read_frames(tmp_path / "one" / rel), read_frames(tmp_path / "two" / rel))


def test_synth_classes_differ_in_motion_not_in_single_frames():
    """Same random draws, different class: the first frame is identical (appearance carries no class
    information) while later frames differ (the motion does)."""
    size, frames = 32, 6
    clips = [synthetic.render_clip(k, np.random.default_rng(11), frames=frames, size=size)
             for k in range(len(synthetic.MOTIONS))]
    for clip in clips[1:]:
        np.testing.assert_array_equal(clip[0], clips[0][0])
    for i in range(len(clips)):
        for j in range(i + 1, len(clips)):
            assert not np.array_equal(clips[i][-1], clips[j][-1]), (i, j)


def _circular_mean(coords: np.ndarray, size: int) -> float:
    angle = np.angle(np.exp(2j * np.pi * coords / size).mean())
    return float(angle * size / (2 * np.pi))


def test_synth_objects_move_at_the_class_velocity():
    """Locate the moving object by differencing against the same scene without it (same background draws),
    and measure its per-frame displacement on the torus."""
    size = 64
    for k, motion in enumerate(synthetic.MOTIONS[:6]):
        kwargs = dict(frames=4, size=size, distractors=0, noise=0.0)
        moving = synthetic.render_clip(k, np.random.default_rng(2), moving=1, **kwargs).astype(int)
        still = synthetic.render_clip(k, np.random.default_rng(2), moving=0, **kwargs).astype(int)
        centres = []
        for t in range(4):
            ys, xs = np.nonzero(np.abs(moving[t] - still[t]).sum(axis=-1))
            centres.append((_circular_mean(xs + 0.5, size), _circular_mean(ys + 0.5, size)))
        steps = np.diff(np.array(centres), axis=0)
        steps = (steps + size / 2) % size - size / 2  # unwrap across the edge
        np.testing.assert_allclose(steps[:, 0], motion.dx, atol=0.75, err_msg=motion.name)
        np.testing.assert_allclose(steps[:, 1], motion.dy, atol=0.75, err_msg=motion.name)


def test_synth_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(VidpruneError, match="--force"):
        synthetic.synthesize(tmp_path, train_per_class=1, val_per_class=0, frames=4, size=32)
    with pytest.raises(VidpruneError, match="--classes"):
        synthetic.synthesize(tmp_path / "new", num_classes=99)
