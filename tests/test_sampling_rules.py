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
