"""Decoding and writing real video files with PyAV (which ships its own FFmpeg in the wheel).

Frames come back as uint8 arrays shaped (T, H, W, 3), RGB, the layout every transform here expects.
Any failure to open or decode a file is a `VideoDecodeError`, so a dataset can skip the file, count it
and go on instead of crashing an hour-long evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from vidprune.errors import VidpruneError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")


class VideoDecodeError(VidpruneError):
    """A video file is missing, unreadable or has no decodable video frames."""


def _av():
    try:
        import av
    except ImportError as exc:  # a dependency, but say how to fix a broken install in one line
        raise VidpruneError("decoding video needs PyAV: pip install av (it ships its own FFmpeg).") from exc
    return av


@dataclass(frozen=True)
class VideoMeta:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int


def _open(path: Path):
    av = _av()
    if not path.is_file():
        raise VideoDecodeError(f"video '{path}' does not exist.")
    try:
        container = av.open(str(path))
    except Exception as exc:  # FFmpeg raises many error types for unreadable input
        raise VideoDecodeError(f"cannot open video '{path}': {type(exc).__name__}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"'{path}' has no video stream.")
    return container


def _count_frames(container, stream) -> int:
    """The container's frame count when it states one; otherwise decode everything and count."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    count = sum(1 for _ in container.decode(stream))
    container.seek(0)
    return count


def probe(path: str | Path) -> VideoMeta:
    """Frame count, frame rate and size of a video file."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            num_frames = _count_frames(container, stream)
        except Exception as exc:
            raise VideoDecodeError(f"cannot decode '{path}': {type(exc).__name__}: {exc}") from None
        rate = stream.average_rate or stream.guessed_rate or 0
        return VideoMeta(str(path), num_frames, float(rate), stream.codec_context.width,
                         stream.codec_context.height)
    finally:
        container.close()


def read_frames(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode the frames at `indices` (0-based, any order, repeats allowed; None = all) as (T, H, W, 3) uint8.

    Decoding is sequential and stops after the last requested frame. Container frame counts can
    overstate the real count (a truncated download); a requested index past the last decodable frame
    is then served by the last frame, as VideoMAE's loader clamps, rather than failing the whole clip.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        wanted = None if indices is None else sorted(set(int(i) for i in indices))
        if wanted is not None and wanted and wanted[0] < 0:
            raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
        last = None if wanted is None else (wanted[-1] if wanted else -1)
        keep = None if wanted is None else set(wanted)
        decoded: dict[int, np.ndarray] = {}
        order: list[np.ndarray] = []
        try:
            for i, frame in enumerate(container.decode(stream)):
                if last is not None and i > last:
                    break
                if keep is None:
                    order.append(frame.to_ndarray(format="rgb24"))
                elif i in keep:
                    decoded[i] = frame.to_ndarray(format="rgb24")
        except Exception as exc:
            if not (order or decoded):
                raise VideoDecodeError(f"cannot decode '{path}': {type(exc).__name__}: {exc}") from None
            # A corrupt tail: keep what decoded, clamp the rest below.
    finally:
        container.close()
    if indices is None:
        if not order:
            raise VideoDecodeError(f"'{path}' has no decodable frames.")
        return np.stack(order)
    if not decoded:
        raise VideoDecodeError(f"'{path}' has no decodable frames at the requested positions.")
    available = np.array(sorted(decoded))
    out = []
    for i in indices:
        # the nearest decoded frame at or before i (a short file repeats its last frame)
        at = available[max(int(np.searchsorted(available, int(i), side="right")) - 1, 0)]
        out.append(decoded[int(at)])
    return np.stack(out)


def _encoder(av) -> str:
    # libx264 where the wheel's FFmpeg has it (it does on PyPI), MPEG-4 Part 2 otherwise: both are in mp4.
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, quality: int = 12) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames to an mp4 file (H and W must be even for yuv420p).

    `quality` is x264's CRF (lower = closer to the input; 12 is visually lossless on these tiny clips).
    """
    av = _av()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = _encoder(av)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        # One encoder thread: x264's threaded encoding (frame threads, lookahead threads) makes the bytes,
        # and so the decoded pixels, depend on thread timing; one thread makes a seed give one dataset.
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": str(quality), "preset": "medium", "threads": "1",
                              "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"}
        else:
            stream.options = {"qscale": "2", "threads": "1"}
        frames = np.ascontiguousarray(frames)
        for array in frames:
            # Recent PyAV wraps the array's memory without copying, and the encoder keeps frames for its
            # lookahead after encode() returns. Converting to yuv420p here gives every frame a buffer
            # of its own while `frames` is still alive.
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
