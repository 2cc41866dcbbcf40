"""Which frames of a video make a clip.

Two samplers, the two conventions the video-transformer papers use:
* `UniformSampler` (TSN segments, SSv2-style): split the video into `frames` equal segments and take one
  frame from each. Testing takes the same relative position in every segment; view c of C takes the
  position (c + 0.5) / C, so one view is the centre of each segment. Training takes a random position
  in each segment.
* `DenseSampler` (Kinetics-style, VideoMAE's 16x4): `frames` consecutive frames `stride` apart. Testing
  with one view centres the clip in the video; with C views the starts are spread evenly from the first
  to the last possible start (VideoMAE's test loader). Training draws the start at random.

A video shorter than a clip repeats its last frame (indices are clamped), as VideoMAE's loader does.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from vidprune.errors import VidpruneError


class ClipSampler:
    kind = ""

    def __init__(self, frames: int):
        if int(frames) < 1:
            raise VidpruneError(f"a clip needs at least 1 frame, got {frames}.")
        self.frames = int(frames)

    def indices(self, num_frames: int, clip: int = 0, num_clips: int = 1,
                rng: Optional[np.random.Generator] = None) -> list[int]:
        """Frame indices of view `clip` of `num_clips` (test), or a random clip when `rng` is given (train)."""
        if num_frames < 1:
            raise ValueError(f"the video has no frames (num_frames={num_frames})")
        if num_clips < 1 or not 0 <= clip < num_clips:
            raise ValueError(f"clip {clip} of {num_clips} is not a valid view")
        raw = self._indices(num_frames, clip, num_clips, rng)
        return [min(max(int(i), 0), num_frames - 1) for i in raw]

    def _indices(self, n: int, clip: int, num_clips: int, rng) -> list[int]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class UniformSampler(ClipSampler):
    kind = "uniform"

    def _indices(self, n, clip, num_clips, rng):
        segment = n / self.frames
        if rng is not None:
            offsets = rng.uniform(0.0, segment, size=self.frames)
        else:
            offsets = np.full(self.frames, segment * (clip + 0.5) / num_clips)
        # the epsilon keeps 2.9999999 (float error of an exact 3) from flooring to 2
        return [math.floor(segment * i + offsets[i] + 1e-9) for i in range(self.frames)]

    def describe(self) -> str:
        return f"uniform {self.frames} segments"


class DenseSampler(ClipSampler):
    kind = "dense"

    def __init__(self, frames: int, stride: int = 4):
        super().__init__(frames)
        if int(stride) < 1:
            raise VidpruneError(f"--stride must be at least 1, got {stride}.")
        self.stride = int(stride)

    @property
    def span(self) -> int:
        """Frames from the first sampled frame to the last, inclusive."""
        return (self.frames - 1) * self.stride + 1

    def _indices(self, n, clip, num_clips, rng):
        last_start = max(n - self.span, 0)
        if rng is not None:
            start = int(rng.integers(0, last_start + 1))
        elif num_clips == 1:
            start = last_start // 2
        else:
            start = round(clip * last_start / (num_clips - 1))
        return [start + i * self.stride for i in range(self.frames)]

    def describe(self) -> str:
        return f"dense {self.frames}x{self.stride}"


SAMPLERS = ("uniform", "dense")


def make_sampler(kind: str, frames: int, stride: int = 4) -> ClipSampler:
    """`uniform` (TSN segments) or `dense` (consecutive frames `stride` apart)."""
    if kind == "uniform":
        return UniformSampler(frames)
    if kind == "dense":
        return DenseSampler(frames, stride)
    raise VidpruneError(f"--sampling must be one of {', '.join(SAMPLERS)}, got '{kind}'.")
