"""``tinker_std.sampling_rules`` (spec SMP): the batched token choice every torch decode step takes.

``choose_tokens`` must draw exactly the token ``choose_token`` draws, row by row, with the same
generator state afterwards: it only finds the kept set of a filtered row faster.
"""

from __future__ import annotations

import pytest
import torch

from tinker_std.sampling_rules import choose_token, choose_tokens
from tinker_std.types import SamplingParams


@pytest.mark.parametrize("vocab", [7, 384, 49152])
def test_choose_tokens_draws_exactly_what_choose_token_draws(vocab: int) -> None:
    """Same token, same generator state afterwards, for every row; including heavy ties (logits
    rounded to a few values), top-k cuts inside a tie group, and extreme temperatures."""
    gen = torch.Generator().manual_seed(vocab)
    smooth = torch.randn(6, vocab, generator=gen, dtype=torch.float64) * 3
    tied = torch.round(torch.randn(6, vocab, generator=gen, dtype=torch.float64) * 2) / 2
    peaked = torch.randn(4, vocab, generator=gen, dtype=torch.float64) * 40
    flat = torch.zeros(2, vocab, dtype=torch.float64)
    logits = torch.cat([smooth, tied, peaked, flat])
    grid = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.3, top_k=3),
        SamplingParams(temperature=2.0, top_p=0.5),
        SamplingParams(temperature=0.9, top_k=vocab // 2 + 1, top_p=0.97),
        SamplingParams(temperature=1e-3, top_k=1),
        SamplingParams(temperature=0.0),
    ]
    drawn = 0
    for params in grid:
        for repeat in range(3):
            seeds = [1000 * repeat + r for r in range(logits.shape[0])]
            ours = [torch.Generator().manual_seed(s) for s in seeds]
            reference = [torch.Generator().manual_seed(s) for s in seeds]
            got = choose_tokens(logits, [params] * logits.shape[0], ours)
            want = [choose_token(logits[r], params, reference[r]) for r in range(logits.shape[0])]
            assert got == want, f"{params}"
            for a, b in zip(ours, reference, strict=True):
                assert torch.equal(a.get_state(), b.get_state())
            drawn += len(got)
    assert drawn == len(grid) * 3 * logits.shape[0]


def test_choose_tokens_falls_back_on_nan() -> None:
    logits = torch.tensor([[0.0, float("nan"), 1.0]], dtype=torch.float64)
    params = SamplingParams(temperature=1.0)
    got = choose_tokens(logits, [params], [torch.Generator().manual_seed(1)])
    assert got == [choose_token(logits[0], params, torch.Generator().manual_seed(1))]


def test_mixed_rows_draw_what_each_row_alone_draws() -> None:
    """A batch mixing temperatures, filters, greedy rows and a NaN row (the decode loop's case):
    each row gets the token and generator state ``choose_token`` gives it alone, and one generator
    shared by two rows is drawn from in row order."""
    vocab = 49152
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(9, vocab, generator=gen, dtype=torch.float64) * 4
    logits[7, 3] = float("nan")
    grid = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.3, top_k=20),
        SamplingParams(temperature=1e-3),
        SamplingParams(temperature=2.5),
        SamplingParams(temperature=0.9, top_p=0.8),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.31),
    ]
    seeds = [7, 8, 9, 10, 11, 12, 13, 14, 7]
    ours = [torch.Generator().manual_seed(s) for s in seeds[:-1]]
    ours.append(ours[0])  # the last row shares the first row's generator
    reference = [torch.Generator().manual_seed(s) for s in seeds[:-1]]
    reference.append(reference[0])
    got = choose_tokens(logits, grid, ours)
    want = [choose_token(logits[r], grid[r], reference[r]) for r in range(len(grid))]
    assert got == want
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a.get_state(), b.get_state())
    for r in range(8):
        assert choose_tokens(logits[r : r + 1], grid[r : r + 1], [torch.Generator().manual_seed(seeds[r])]) == [got[r]]
