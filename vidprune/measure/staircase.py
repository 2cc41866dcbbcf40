"""Latency staircases: a transformer block's latency against its token count, its steps, and "free" tokens.

GPU kernels tile their work (a tile of 64 or 128 rows, a wave of thread blocks), so latency over token
count is a staircase: a few more tokens on the same tread cost nothing, and pruning one more token can save
nothing ("Pruning One More Token is Enough", WACV 2025). CPUs show smaller steps, often on a slope.

Three parts, each usable alone:

* `time_token_counts`: one block (attention + MLP; pass `model.blocks[0]` or a
  `vidprune.backbones.vit.Block(dim, heads, 4.0, "sdpa")`) timed at each token count with
  `vidprune.measure.timing.measure_latency` (warm-up, device synchronisation, median and IQR of repeats).
  Counts are timed in a shuffled order so that drift (clocks, heat, other load) shows as noise spread over
  all counts instead of as a step at one of them.
* `detect_steps`: change points of the latency curve with **ruptures** (Truong, Oudre, Vayatis, "Selective
  review of offline change point detection methods", Signal Processing 2020; pip package `ruptures`,
  imported only here: `pip install 'vidprune[staircase]'`). The model is piecewise *linear*
  (`Pelt(model="linear")`, exact segmentation by pruned dynamic programming), so a curve that rises
  smoothly is one segment, not a staircase of tiny steps; a change point counts as a step only where the
  two fitted segments are discontinuous by at least `min_jump_sigma` (6) noise levels and `min_jump_rel`
  (1%) of the median latency. The noise level sigma of one point is the larger of two robust estimates:
  each point's deviation from the line through its neighbours, and the residuals of the candidate
  segmentation. The Pelt penalty is BIC-like, 3 sigma^2 log(n). On synthetic curves of 64 counts with
  Gaussian noise (100 draws each) steps of 15 sigma are found at the right counts every time,
  steps below about 8 sigma mostly not, and a linear ramp gives a false step in about 1 of 300 noise draws.
  A flat line or a ramp gives no steps: a valid, stated result.
* `Staircase.snap(count)`: a requested kept-token count rounded up to the largest measured count on the
  same flat tread (more tokens, same latency); a segment is flat when its fitted rise is at most
  `FLAT_SIGMA` (3) noise levels or 1% of the latency. On a sloped segment more tokens cost more, and the
  count is left as it is. `Staircase.free_counts()` lists the last count of each flat tread.

`profile_staircase` does all three and refines: around each step found it times the counts between the
last count below and the first count above (all of them when few), then detects again on the union.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from vidprune.errors import VidpruneError
from vidprune.measure.timing import measure_latency

INSTALL = "pip install 'vidprune[staircase]'  (or: pip install ruptures)"
MIN_POINTS = 6  # fewer counts cannot tell a step from noise
PENALTY_BETA = 3.0  # BIC-like: (slope, intercept, change point) per segment
REFINE_POINTS = 8  # extra counts timed inside each step's gap
FLAT_SIGMA = 3.0  # a segment whose fitted rise is within this many noise levels costs the same at every count


def _ruptures():
    try:
        import ruptures
    except ImportError:
        raise VidpruneError(f"staircase step detection needs the change-point library ruptures: {INSTALL}") from None
    return ruptures


def parse_token_range(text: str) -> range:
    """'MIN:MAX:STEP' (MAX included when on the grid) as a range of token counts."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) != 3 or parts[0] < 1 or parts[1] <= parts[0] or parts[2] < 1:
        raise VidpruneError(f"--tokens must be MIN:MAX:STEP with 1 <= MIN < MAX and STEP >= 1, got '{text}'. "
                            "Use e.g. --tokens 64:1568:16.")
    low, high, step = parts
    return range(low, high + 1, step)


# ---------------------------------------------------------------------------------------------- timing

@dataclass(frozen=True)
class TokenTimings:
    """Latency (ms per call of the block on `batch` x count x dim inputs) per token count, counts ascending."""

    tokens: tuple[int, ...]
    median_ms: tuple[float, ...]
    iqr_ms: tuple[float, ...]
    batch: int
    device: str

    def merged(self, other: "TokenTimings") -> "TokenTimings":
        """Both sets of counts; where a count is in both, `other`'s timing."""
        table = {n: (m, q) for n, m, q in zip(self.tokens, self.median_ms, self.iqr_ms)}
        table.update({n: (m, q) for n, m, q in zip(other.tokens, other.median_ms, other.iqr_ms)})
        counts = sorted(table)
        return TokenTimings(tuple(counts), tuple(table[n][0] for n in counts), tuple(table[n][1] for n in counts),
                            self.batch, self.device)


def block_forward(block: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The block as x -> x': its own forward when it has one (CLIP's blocks), else the pre-norm residual
    form of a ViT block (`norm1`, `attn`, `norm2`, `mlp`; `attn` may return (out, probs)), whose forward
    the backbone's block loop spells out with the method's hooks in between."""
    if type(block).forward is not nn.Module.forward:
        return block
    if not all(hasattr(block, name) for name in ("norm1", "attn", "norm2", "mlp")):
        raise VidpruneError(f"{type(block).__name__} is not a transformer block (no forward, no norm1/attn/norm2/mlp).")

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = block.attn(block.norm1(x))
        x = x + (out[0] if isinstance(out, tuple) else out)
        return x + block.mlp(block.norm2(x))

    return forward


def time_token_counts(block: nn.Module, dim: int, counts: Sequence[int], device: torch.device | str = "cpu",
                      batch: int = 1, warmup: int = 3, repeats: int = 10, dtype: torch.dtype = torch.float32,
                      seed: int = 0, progress: Optional[Callable[[int, float], None]] = None) -> TokenTimings:
    """Median latency of `block` on (batch, count, dim) inputs for each count, timed in a shuffled order.
    `progress(count, median_ms)` is called after each count."""
    counts = sorted({int(n) for n in counts})
    if not counts or counts[0] < 1:
        raise VidpruneError("token counts must be positive integers.")
    device = torch.device(device)
    block = block.to(device=device, dtype=dtype).eval()
    forward = block_forward(block)
    order = list(counts)
    random.Random(seed).shuffle(order)
    generator = torch.Generator().manual_seed(seed)
    results: dict[int, tuple[float, float]] = {}
    for count in order:
        x = torch.randn(batch, count, dim, generator=generator).to(device=device, dtype=dtype)
        timing = measure_latency(lambda: forward(x), device, batch, warmup, repeats)
        results[count] = (timing.median_ms, timing.iqr_ms)
        if progress is not None:
            progress(count, timing.median_ms)
    return TokenTimings(tuple(counts), tuple(results[n][0] for n in counts), tuple(results[n][1] for n in counts),
                        batch, str(device))


# ---------------------------------------------------------------------------------------------- detection

@dataclass(frozen=True)
class Step:
    """A jump in latency between two measured counts: `below` is the last count on the lower segment,
    `above` the first on the higher one (the edge lies in between)."""

    below: int
    above: int
    jump_ms: float


@dataclass(frozen=True)
class Segment:
    """Measured counts first..last between two steps, with their least-squares line."""

    first: int
    last: int
    level_ms: float  # mean latency on the segment
    rise_ms: float  # fitted slope x (last - first)
    flat: bool  # rise within FLAT_SIGMA noise levels (or min_jump_rel of the latency): every count costs the same


@dataclass
class Staircase:
    tokens: tuple[int, ...]
    latency_ms: tuple[float, ...]
    segments: tuple[Segment, ...]
    steps: tuple[Step, ...]
    noise_ms: float  # estimated noise level (sigma) of one point
    threshold_ms: float  # smallest discontinuity counted as a step
    detector: str
    notes: list[str] = field(default_factory=list)

    def free_counts(self) -> list[int]:
        """The largest measured count of each flat tread: as many tokens as that tread's latency buys."""
        return [s.last for s in self.segments if s.flat]

    def snap(self, count: int) -> int:
        """`count` rounded up to the largest measured count on its flat tread; unchanged on a sloped
        segment, below the first or above the last measured count. Never lowers a count; monotone."""
        count = int(count)
        for segment in self.segments:
            # a count between two segments' measured counts lies in the step's gap: which tread it is on
            # is unknown, so it stays
            if segment.first <= count <= segment.last:
                return max(count, segment.last) if segment.flat else count
        return count


def estimate_noise(x: np.ndarray, y: np.ndarray) -> float:
    """Robust sigma of one point: each interior point's deviation from the line through its two
    neighbours, scaled to unit variance for uneven spacing, then 1.4826 x the median absolute deviation."""
    if len(y) < 3:
        return 0.0
    w = (x[1:-1] - x[:-2]) / (x[2:] - x[:-2])
    deviation = y[1:-1] - (y[:-2] + w * (y[2:] - y[:-2]))
    deviation = deviation / np.sqrt(1 + w**2 + (1 - w) ** 2)
    return float(1.4826 * np.median(np.abs(deviation - np.median(deviation))))


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line; a single point is flat."""
    if len(x) < 2 or x[-1] == x[0]:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def detect_steps(tokens: Sequence[int], latency_ms: Sequence[float], *, min_jump_sigma: float = 6.0,
                 min_jump_rel: float = 0.01, penalty: Optional[float] = None, min_size: int = 2) -> Staircase:
    """Steps of a latency-vs-tokens curve (module docstring: the method). `tokens` ascending, distinct."""
    x = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(latency_ms, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise VidpruneError("tokens and latencies must be two sequences of the same length.")
    if len(x) > 1 and not np.all(np.diff(x) > 0):
        raise VidpruneError("token counts must be distinct and ascending.")
    noise = estimate_noise(x, y)
    level = float(np.median(y)) if len(y) else 0.0
    threshold = max(min_jump_sigma * noise, min_jump_rel * abs(level))
    notes: list[str] = []
    breaks: list[int] = []
    if len(x) < MIN_POINTS:
        notes.append(f"only {len(x)} token counts: at least {MIN_POINTS} are needed to find steps")
    else:
        scale = (x - x[0]) / (x[-1] - x[0])
        signal = np.column_stack([y, scale, np.ones_like(scale)])
        pen = PENALTY_BETA * noise**2 * math.log(len(y)) if penalty is None else float(penalty)
        # a noiseless curve would give a zero penalty and a change point at every point
        pen = max(pen, 1e-12 * max(1.0, level) ** 2)
        candidates = _ruptures().Pelt(model="linear", min_size=min_size, jump=1).fit(signal).predict(pen=pen)[:-1]
        breaks, noise, threshold = _accepted(x, y, candidates, noise, min_jump_sigma, min_jump_rel * abs(level))
    detector = f"ruptures {_ruptures().__version__} Pelt(model='linear'), jumps >= {threshold:.3g} ms"
    bounds = [0, *breaks, len(x)]
    segments, steps = [], []
    for start, stop in zip(bounds, bounds[1:]):
        slope, _ = _line(x[start:stop], y[start:stop])
        rise = slope * (x[stop - 1] - x[start])
        # one-sided: a falling fit is noise too (more tokens are not faster), and no reason against snapping up
        flat = rise <= max(FLAT_SIGMA * noise, min_jump_rel * abs(level))
        segments.append(Segment(int(x[start]), int(x[stop - 1]), float(np.mean(y[start:stop])), float(rise), bool(flat)))
    for b in breaks:
        steps.append(Step(int(x[b - 1]), int(x[b]), _jump(x, y, bounds, b)))
    if len(x) >= MIN_POINTS and not steps:
        notes.append("no steps: latency is flat or changes smoothly over these counts")
    return Staircase(tuple(int(v) for v in x), tuple(float(v) for v in y), tuple(segments), tuple(steps), noise,
                     threshold, detector, notes)


def _jump(x: np.ndarray, y: np.ndarray, bounds: list[int], b: int) -> float:
    """The discontinuity at change point b: the right segment's line at its first count minus the left
    segment's line at its last count."""
    i = bounds.index(b)
    left, right = slice(bounds[i - 1], b), slice(b, bounds[i + 1])
    ls, li = _line(x[left], y[left])
    rs, ri = _line(x[right], y[right])
    return (rs * x[b] + ri) - (ls * x[b - 1] + li)


def _residual_noise(x: np.ndarray, y: np.ndarray, breaks: list[int]) -> float:
    """sigma of the residuals from each segment's line (degrees of freedom: two per segment)."""
    bounds = [0, *breaks, len(x)]
    rss = 0.0
    for start, stop in zip(bounds, bounds[1:]):
        slope, intercept = _line(x[start:stop], y[start:stop])
        rss += float(np.sum((y[start:stop] - (slope * x[start:stop] + intercept)) ** 2))
    dof = len(x) - 2 * (len(bounds) - 1)
    return math.sqrt(rss / dof) if dof > 0 else 0.0


def _accepted(x: np.ndarray, y: np.ndarray, candidates: list[int], noise: float, min_jump_sigma: float,
              floor: float) -> tuple[list[int], float, float]:
    """(change points whose jump reaches the threshold, noise, threshold). The noise is the larger of the
    neighbour estimate and the residual sigma of the candidate segmentation (the better estimate on long
    smooth stretches; the candidates include every real step, so no step inflates it). The weakest change
    point is dropped first and its neighbours refit as one segment each time."""
    breaks = sorted(candidates)
    noise = max(noise, _residual_noise(x, y, breaks))
    threshold = max(min_jump_sigma * noise, floor)
    while breaks:
        bounds = [0, *breaks, len(x)]
        jumps = {b: abs(_jump(x, y, bounds, b)) for b in breaks}
        weakest = min(breaks, key=jumps.get)
        if jumps[weakest] >= threshold:
            break
        breaks.remove(weakest)
    return breaks, noise, threshold


# ---------------------------------------------------------------------------------------------- both

def refinement_counts(staircase: Staircase, points: int = REFINE_POINTS) -> list[int]:
    """Counts strictly inside each step's gap not yet measured: all of them when at most `points`, else
    `points` evenly spaced."""
    measured = set(staircase.tokens)
    extra: set[int] = set()
    for step in staircase.steps:
        inside = list(range(step.below + 1, step.above))
        if len(inside) > points:
            inside = sorted({inside[round(i * (len(inside) - 1) / (points - 1))] for i in range(points)})
        extra.update(n for n in inside if n not in measured)
    return sorted(extra)


def profile_staircase(block: nn.Module, dim: int, counts: Sequence[int], device: torch.device | str = "cpu",
                      batch: int = 1, warmup: int = 3, repeats: int = 10, dtype: torch.dtype = torch.float32,
                      refine: bool = True, refine_points: int = REFINE_POINTS, seed: int = 0,
                      progress: Optional[Callable[[int, float], None]] = None,
                      **detect_options) -> tuple[TokenTimings, Staircase]:
    """Time `block` over `counts`, find the steps, time denser counts inside each step's gap, find again."""
    _ruptures()  # fail before timing anything when the detector is missing
    timings = time_token_counts(block, dim, counts, device, batch, warmup, repeats, dtype, seed, progress)
    staircase = detect_steps(timings.tokens, timings.median_ms, **detect_options)
    extra = refinement_counts(staircase, refine_points) if refine else []
    if extra:
        timings = timings.merged(time_token_counts(block, dim, extra, device, batch, warmup, repeats, dtype,
                                                   seed + 1, progress))
        staircase = detect_steps(timings.tokens, timings.median_ms, **detect_options)
        staircase.notes.append(f"refined with {len(extra)} more counts inside the steps' gaps")
    return timings, staircase


__all__ = ["INSTALL", "TokenTimings", "Step", "Segment", "Staircase", "parse_token_range", "block_forward",
           "time_token_counts", "estimate_noise", "detect_steps", "refinement_counts", "profile_staircase"]
