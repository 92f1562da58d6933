"""Shared-prefix layout: datums that start with the same tokens run those tokens once.

An RL batch holds several completions of each prompt (GRPO groups), and a causal decoder's hidden
states at the prompt positions depend on the prompt alone, so running each prompt once per group
instead of once per completion gives the same hidden states for a fraction of the work. ``plan``
lays a batch of token sequences out as rows of prefix trees: each row holds a run of sequences that
share at least ``MIN_SHARED`` leading tokens, every distinct prefix once (a radix tree in
depth-first order: a node's tokens follow its parent's), and an attention mask under which a token
sees exactly the tokens of its own sequence up to itself: its node's earlier tokens and its
ancestors'. Position ids are the positions within the sequence, so rotary embeddings are those of
the unshared layout, and each sequence's hidden states equal the unshared ones within float32
rounding (the attention sums run over differently laid-out keys). Gradients of the shared positions
sum over the sequences that use them, as the index-select backward does.

A row is at most ``max(2 x the longest sequence, MIN_ROW)`` tokens: the mask makes attention cost
grow with the square of the row length, so long runs are split over several rows.

``plain`` is the usual layout (one right-padded row per sequence) and ``stack`` joins the layouts
of several requests into one batch, each keeping its own rows and width: the multi-tenant pass
lays every client's datums out exactly as that client's own pass would, so that its LoRA products
keep their shapes (``row_segments.Segment``) and its results their bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MIN_SHARED", "RowLayout", "plain", "plan", "stack"]

#: Leading tokens sequences must share to be laid out in one tree.
MIN_SHARED = 8
#: Shortest row cap, so that short sequences still group.
MIN_ROW = 256
#: The layout is used only when it runs at most this fraction of the padded tokens of the plain layout.
MAX_FRACTION = 0.8


@dataclass(frozen=True)
class RowLayout:
    """A batch's rows: ``input_ids`` and ``position_ids`` ``(R, T)``; ``positions[i]`` indexes
    sequence ``i``'s tokens, in order, in the flattened ``(R * T)`` positions.

    ``allowed`` ``(R, T, T)`` says which key each query attends to (padding queries attend to
    themselves only, so no row of the mask is empty), or is ``None`` for plain causal rows whose
    first ``lengths[r]`` positions are real."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    allowed: torch.Tensor | None
    lengths: list[int]
    positions: list[torch.Tensor]

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def decoder_inputs(self, additive: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and (for trees) ``position_ids`` for a decoder: plain
        rows get the usual ``(R, T)`` padding mask; trees the prepared ``(R, 1, T, T)`` mask,
        boolean (``True`` attends) or additive in ``dtype`` (0 attends, the dtype's minimum not)."""
        if self.allowed is None:
            mask = (torch.arange(self.width).unsqueeze(0) < torch.tensor(self.lengths).unsqueeze(1)).long()
            return {"input_ids": self.input_ids, "attention_mask": mask}
        allowed = self.allowed.unsqueeze(1)
        if additive:
            allowed = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        return {"input_ids": self.input_ids, "attention_mask": allowed, "position_ids": self.position_ids}


def plain(sequences: Sequence[Sequence[int]]) -> RowLayout:
    """One right-padded row per sequence."""
    lengths = [len(s) for s in sequences]
    width = max(lengths)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, tokens in enumerate(sequences):
        ids[i, : lengths[i]] = torch.as_tensor(tokens, dtype=torch.long)
    positions = [torch.arange(n) + i * width for i, n in enumerate(lengths)]
    position_ids = torch.arange(width).expand(len(sequences), width).clone()
    return RowLayout(ids, position_ids, None, lengths, positions)


def _causal(lengths: Sequence[int], width: int) -> torch.Tensor:
    """The ``allowed`` mask of plain rows."""
    real = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (R, T)
    causal = torch.ones((width, width), dtype=torch.bool).tril_()
    allowed = causal & real.unsqueeze(1) & real.unsqueeze(2)
    return allowed | torch.diag_embed(~real)


def stack(layouts: Sequence[RowLayout]) -> tuple[RowLayout, list[tuple[int, int, int]]]:
    """The layouts' rows in one batch, padded to the widest, and each layout's
    ``(first row, stop row, width)`` in it. Plain when every layout is plain."""
    width = max(lay.width for lay in layouts)
    rows = sum(lay.input_ids.shape[0] for lay in layouts)
    ids = torch.zeros((rows, width), dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    trees = any(lay.allowed is not None for lay in layouts)
    allowed = torch.zeros((rows, width, width), dtype=torch.bool) if trees else None
    lengths: list[int] = []
    positions: list[torch.Tensor] = []
    ranges: list[tuple[int, int, int]] = []
    row = 0
    for lay in layouts:
        r, w = lay.input_ids.shape
        ids[row : row + r, :w] = lay.input_ids
        position_ids[row : row + r, :w] = lay.position_ids
        if allowed is not None:
            allowed[row : row + r] = _causal([0] * r, width)  # padding: each position sees itself
            allowed[row : row + r, :w, :w] = lay.allowed if lay.allowed is not None else _causal(lay.lengths, w)
        lengths += lay.lengths
        positions += [(p // w + row) * width + p % w for p in lay.positions]
        ranges.append((row, row + r, w))
        row += r
    return RowLayout(ids, position_ids, allowed, lengths, positions), ranges


@dataclass
class _Node:
    """Tokens ``start:stop`` of sequence ``source``, under ``parent`` (an index into the row's nodes)."""

    source: int
    start: int
    stop: int
    parent: int


def _common(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def _tree(
    members: Sequence[int], seqs: Sequence[np.ndarray], lcps: Sequence[int]
) -> tuple[list[_Node], dict[int, int]]:
    """The radix tree of ``members`` (sorted sequences; ``lcps[j]`` is the common prefix length of
    members ``j - 1`` and ``j``): its nodes in depth-first order, and the node each member's
    sequence ends in."""
    nodes: list[_Node] = []
    ends: dict[int, int] = {}

    def build(lo: int, hi: int, depth: int, parent: int) -> None:
        # members[lo:hi] share ``depth`` tokens, already laid out by the ancestors
        if hi - lo == 1:
            source = members[lo]
            if len(seqs[source]) > depth:
                nodes.append(_Node(source, depth, len(seqs[source]), parent))
            ends[source] = len(nodes) - 1 if len(seqs[source]) > depth else parent
            return
        shared = min(lcps[lo + 1 : hi])
        here = parent
        if shared > depth:
            nodes.append(_Node(members[lo], depth, shared, parent))
            here = len(nodes) - 1
        start = lo
        for j in range(lo + 1, hi + 1):
            if j == hi or lcps[j] == shared:
                build(start, j, shared, here)
                start = j

    build(0, len(members), 0, -1)
    return nodes, ends


def _runs(order: Sequence[int], seqs: Sequence[np.ndarray], cap: int) -> list[tuple[list[int], list[int]]]:
    """Consecutive sorted sequences sharing at least ``MIN_SHARED`` tokens, split so that each
    run's tree holds at most ``cap`` tokens; each run with its adjacent common-prefix lengths."""
    runs: list[tuple[list[int], list[int]]] = []
    members: list[int] = []
    lcps: list[int] = []
    size = 0
    for i in order:
        common = _common(seqs[members[-1]], seqs[i]) if members else 0
        if members and common >= MIN_SHARED and size + len(seqs[i]) - common <= cap:
            members.append(i)
            lcps.append(common)
            size += len(seqs[i]) - common  # a sorted run's tree holds sum(len) - sum(adjacent lcp) tokens
            continue
        if members:
            runs.append((members, lcps))
        members, lcps, size = [i], [0], len(seqs[i])
    if members:
        runs.append((members, lcps))
    return runs


def plan(sequences: Sequence[Sequence[int]]) -> RowLayout | None:
    """The shared-prefix layout of ``sequences``, or ``None`` when sharing would not save at least
    ``1 - MAX_FRACTION`` of the padded tokens of one right-padded row per sequence."""
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    if len(seqs) < 2:
        return None
    longest = max(len(s) for s in seqs)
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].tolist())
    runs = _runs(order, seqs, max(2 * longest, MIN_ROW))
    trees = [_tree(members, seqs, lcps) for members, lcps in runs]
    width = max(sum(n.stop - n.start for n in nodes) for nodes, _ in trees)
    if len(trees) * width > MAX_FRACTION * len(seqs) * longest:
        return None
    rows = len(trees)
    input_ids = torch.zeros((rows, width), dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.zeros((rows, width, width), dtype=torch.bool)
    positions: list[torch.Tensor | None] = [None] * len(seqs)
    for r, ((members, _), (nodes, ends)) in enumerate(zip(runs, trees, strict=True)):
        offsets, col = [], 0
        node_of = torch.full((width,), -1, dtype=torch.long)
        for k, node in enumerate(nodes):
            n = node.stop - node.start
            input_ids[r, col : col + n] = torch.from_numpy(seqs[node.source][node.start : node.stop])
            position_ids[r, col : col + n] = torch.arange(node.start, node.stop)
            node_of[col : col + n] = k
            offsets.append(col)
            col += n
        ancestor = torch.eye(len(nodes), dtype=torch.bool)  # ancestor[k, j]: node j is k or an ancestor of k
        for k, node in enumerate(nodes):
            if node.parent >= 0:
                ancestor[k] |= ancestor[node.parent]
        real = node_of >= 0
        causal = torch.ones((width, width), dtype=torch.bool).tril_()
        if len(nodes):
            index = node_of.clamp(min=0)
            allowed[r] = ancestor[index][:, index] & causal & real.unsqueeze(0) & real.unsqueeze(1)
        allowed[r] |= torch.diag(~real)
        for i in members:
            path, k = [], ends[i]
            while k >= 0:
                path.append(k)
                k = nodes[k].parent
            cols = [torch.arange(offsets[k], offsets[k] + nodes[k].stop - nodes[k].start) for k in reversed(path)]
            flat = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long)
            positions[i] = flat + r * width
    lengths = [sum(n.stop - n.start for n in nodes) for nodes, _ in trees]
    return RowLayout(input_ids, position_ids, allowed, lengths, [p for p in positions if p is not None])
