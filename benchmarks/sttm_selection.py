"""STTM's greedy orthogonal selection: the per-pick loop it replaced vs the Gram-matrix form, side by side.

For each merge layer of STTM on its default backbone (vit-b-cls 8x224, merge ratio 0.5: a per-frame merge
after block 6, a spatio-temporal one after block 9) the selection runs on random tokens of that layer's
shape at the given batch, the two implementations timed in alternation (old, new, new, old, ...) so that
load on a shared machine hits both; the speed-up is the median of the per-round ratios. The picks are
compared too (they must be equal). The old implementation lives in tests/test_sttm_selection.py, its
only other use.

    python benchmarks/sttm_selection.py                      # batch 8, 5 rounds, 1 thread
    python benchmarks/sttm_selection.py --batch 2 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_sttm_selection import reference_most_orthogonal  # noqa: E402

from vidprune.methods.sttm import STTM, most_orthogonal  # noqa: E402
from vidprune.registry import create_model  # noqa: E402


def selection_shapes(model, batch: int) -> list[tuple[str, int, int, int, int]]:
    """(label, groups, tokens per group, dim, picks) of each merge layer, as STTM.merge computes them."""
    method = model.method
    info = model.info
    tokens = info.grid[0] * info.grid[1] * info.grid[2]
    shapes = []
    for layer, kind in method.stages.items():
        groups = info.grid[0] if kind == "spatial" else 1
        per_group = tokens // groups
        out, candidates = method.counts(per_group)
        shapes.append((f"after block {layer} ({kind})", batch * groups, per_group, info.dim, candidates))
        tokens = groups * out
    return shapes


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - start) * 1000.0, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    backbone = STTM.default_backbone
    model = create_model(backbone, "sttm")
    print(f"{backbone} {model.info.frames}x{model.info.size}, merge_ratio {model.method.merge_ratio:g}, batch {args.batch}, "
          f"{args.rounds} rounds, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    generator = torch.Generator().manual_seed(0)
    totals_old, totals_new = [0.0] * args.rounds, [0.0] * args.rounds
    for label, groups, length, dim, picks in selection_shapes(model, args.batch):
        x = torch.randn(groups, length, dim, generator=generator)
        first = torch.randint(length, (groups,), generator=generator)
        old_ms, new_ms = [], []
        with torch.inference_mode():
            timed(most_orthogonal, x, picks, first)  # warm-up
            for r in range(args.rounds):
                pair = [(reference_most_orthogonal, old_ms), (most_orthogonal, new_ms)]
                for fn, sink in (pair if r % 2 == 0 else pair[::-1]):
                    ms, result = timed(fn, x, picks, first)
                    sink.append(ms)
                    if fn is most_orthogonal:
                        new_picks = result
                    else:
                        old_picks = result
                totals_old[r] += old_ms[-1]
                totals_new[r] += new_ms[-1]
        same = torch.equal(old_picks, new_picks)
        ratio = statistics.median(o / n for o, n in zip(old_ms, new_ms))
        print(f"  {label}: G={groups} L={length} D={dim} picks={picks}: per-pick loop {statistics.median(old_ms):.0f} ms, "
              f"Gram {statistics.median(new_ms):.0f} ms, speed-up x{ratio:.1f}, same picks: {same}")
        if not same:
            raise SystemExit("the two implementations picked different tokens")
    ratio = statistics.median(o / n for o, n in zip(totals_old, totals_new))
    print(f"  both merges: per-pick loop {statistics.median(totals_old):.0f} ms, Gram {statistics.median(totals_new):.0f} ms, "
          f"speed-up x{ratio:.1f}")


if __name__ == "__main__":
    main()
