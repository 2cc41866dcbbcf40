"""STTM's vectorised greedy orthogonal selection picks exactly what the per-pick loop it replaced picked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidprune.methods import sttm
from vidprune.methods.sttm import most_orthogonal


def reference_most_orthogonal(x: torch.Tensor, count: int, first: torch.Tensor) -> torch.Tensor:
    """The implementation before the Gram matrix, verbatim: one (G, L, D) x (G, D) product per pick."""
    g, length, d = x.shape
    unit = F.normalize(x, dim=-1)
    closest = torch.full((g, length), -1.0, dtype=x.dtype, device=x.device)
    done = torch.full((g, 1), float("inf"), dtype=x.dtype, device=x.device)
    current = first
    picks = [current]
    closest = closest.scatter(1, current[:, None], done)
    for _ in range(count - 1):
        chosen = unit.gather(1, current[:, None, None].expand(-1, 1, d))
        cosine = torch.bmm(unit, chosen.transpose(1, 2)).squeeze(-1).abs()
        closest = torch.maximum(closest, cosine)
        current = closest.argmin(dim=1)
        closest = closest.scatter(1, current[:, None], done)
        picks.append(current)
    return torch.stack(picks, dim=1)


@pytest.mark.parametrize("groups,length,dim,count", [(1, 5, 3, 4), (6, 49, 32, 36), (16, 196, 96, 147),
                                                     (2, 392, 768, 294), (2, 196, 1024, 147), (3, 30, 8, 30),
                                                     (4, 10, 16, 1)])
def test_same_picks_as_the_per_pick_loop_on_random_tokens(groups, length, dim, count):
    g = torch.Generator().manual_seed(groups * 1000 + length)
    for _ in range(3):
        x = torch.randn(groups, length, dim, generator=g)
        first = torch.randint(length, (groups,), generator=g)
        new = most_orthogonal(x, count, first)
        assert new.shape == (groups, count) and new.dtype == torch.long
        assert torch.equal(new, reference_most_orthogonal(x, count, first))
        assert all(len(set(row)) == count for row in new.tolist())  # never the same token twice


def exact_tokens(groups: int, count: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """Tokens of four +-1 entries (norm 2), so unit entries are +-0.5 and every cosine is a multiple of 1/4,
    exact in any summation order: ties are real ties, not rounding, in both implementations."""
    x = torch.zeros(groups, count, dim)
    for i in range(groups):
        for t in range(count):
            support = torch.randperm(dim, generator=g)[:4]
            x[i, t, support] = torch.randint(0, 2, (4,), generator=g).float() * 2 - 1
    return x


def test_same_picks_with_ties():
    g = torch.Generator().manual_seed(7)
    base = exact_tokens(4, 12, 16, g)
    # duplicates, scaled and negated copies (|cos| = 1 to their originals) and few distinct |cos| values
    # (0, 1/4, 1/2, 3/4, 1): ties at nearly every step, resolved to the lowest index by both
    x = torch.cat([base, base[:, :4], -3 * base[:, 4:8], 2 * exact_tokens(4, 12, 16, g)], dim=1)
    first = torch.tensor([0, 5, 17, 30])
    for count in (10, 20, x.shape[1]):
        assert torch.equal(most_orthogonal(x, count, first), reference_most_orthogonal(x, count, first))
    # a group of identical tokens: every step is a tie
    same = torch.ones(2, 9, 4)
    assert torch.equal(most_orthogonal(same, 9, torch.tensor([4, 0])), reference_most_orthogonal(same, 9, torch.tensor([4, 0])))
    assert most_orthogonal(same, 4, torch.tensor([4, 0])).tolist() == [[4, 0, 1, 2], [0, 1, 2, 3]]


def test_groups_done_in_chunks_pick_the_same(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 20, 16, generator=g)
    first = torch.randint(20, (7,), generator=g)
    whole = most_orthogonal(x, 12, first)
    monkeypatch.setattr(sttm, "GRAM_ELEMENTS", 2 * 20 * 20)  # two groups per chunk, the last alone
    assert torch.equal(most_orthogonal(x, 12, first), whole)
    monkeypatch.setattr(sttm, "NORMALIZE_ELEMENTS", 20 * 16)  # and one group normalised at a time
    assert torch.equal(most_orthogonal(x, 12, first), whole)
    assert torch.equal(whole, reference_most_orthogonal(x, 12, first))


def test_a_forward_pass_at_batch_two_equals_the_loop(monkeypatch):
    from vidprune.models import create_model

    torch.manual_seed(0)
    model = create_model("vit-s-cls", "sttm", frames=4, size=64)
    video = torch.randn(model.input_shape(2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        new = model(video)
        monkeypatch.setattr(sttm, "most_orthogonal", reference_most_orthogonal)
        old = model(video)
    assert torch.equal(new, old)
