"""Row segments: which adapter each contiguous run of a mixed batch's rows goes through.

The multi-tenant training pass (``per_row.per_row_adapters``) and the sampler's decode loop over
several adapters (``merged.merged_lora_linears``, ``decode.py``) both describe a batch as segments;
this module is the one description, shared by the fast paths that read it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RowSegments", "Segment"]


#: ``(start, stop, adapter, length)``: batch rows ``start:stop`` go through ``adapter`` (``None``: no
#: adapter) at their first ``length`` positions (``None``: all). Positions past ``length`` are padding
#: for those rows; leaving them out keeps the adapter's matrix products the shapes they have when
#: the rows run alone, so the results are the same bit for bit, not just within rounding.
Segment = tuple[int, int, str | None, int | None]


class RowSegments:
    """Per-row adapter selection for a mixed batch: which adapter each contiguous run of batch
    rows uses. Installed on a model with ``per_row_adapters``; ``segments`` may be replaced
    between forward passes (the decode loop drops finished rows). Segments must tile the batch:
    the first starts at row 0 and each starts where the previous one stops."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = list(segments)

    @property
    def segments(self) -> list[Segment]:
        return self._segments

    @segments.setter
    def segments(self, segments: Sequence[Segment]) -> None:
        row = 0
        for start, stop, _, _ in segments:
            if start != row or stop < start:
                raise ValueError(f"segments must tile the batch in order; got {list(segments)}")
            row = stop
        self._segments = list(segments)
        self.sizes = [stop - start for start, stop, _, _ in segments]
