"""Choosing between the co-batched and the one-at-a-time ``forward_backward`` path.

Which path is faster depends on the model, the device and the request shapes: on a GPU, or with a
small model, one pass over the rows of several clients beats one pass per client because each pass
has a fixed cost (kernel launches, Python per layer) and bigger matrix products run closer to peak;
on a CPU with a larger model, one pass per client is often as fast or faster (the matrix products
are already large enough, and the padded batch does extra work). Rather than guessing, the chooser
measures: for each workload signature (number of clients, padded tokens rounded up to a power of
two) it runs each path ``probes`` times on real requests, then uses the one with the lower median
seconds per token, re-measuring the other every ``reprobe_every`` groups so a changed machine load
is noticed. Both paths return the same results (see ``spec/notes/multi-tenant-batching.md``), so
the choice only affects speed.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from typing import Literal

__all__ = ["BatchingMode", "PathChooser", "Path"]

Path = Literal["batched", "serial"]
BatchingMode = Literal["auto", "batched", "serial"]

_PATHS: tuple[Path, Path] = ("batched", "serial")


class PathChooser:
    """Measured choice of the ``forward_backward`` path per workload signature.

    ``mode``: ``"auto"`` (measure and pick), or ``"batched"`` / ``"serial"`` (always that path).
    """

    def __init__(self, mode: BatchingMode = "auto", probes: int = 2, reprobe_every: int = 50, window: int = 5) -> None:
        if mode not in ("auto", "batched", "serial"):
            raise ValueError(f"batching must be 'auto', 'batched' or 'serial', not {mode!r}")
        self.mode: BatchingMode = mode
        self.probes = probes
        self.reprobe_every = reprobe_every
        self._times: dict[tuple[int, int], dict[Path, deque[float]]] = defaultdict(
            lambda: {path: deque(maxlen=window) for path in _PATHS}
        )
        self._decisions: dict[tuple[int, int], int] = defaultdict(int)

    @staticmethod
    def signature(clients: int, padded_tokens: int) -> tuple[int, int]:
        """The workload key: client count and padded tokens rounded up to a power of two."""
        return clients, 1 << max(padded_tokens - 1, 0).bit_length()

    def choose(self, clients: int, padded_tokens: int) -> Path:
        """The path for a group of ``clients`` requests with ``padded_tokens`` in the batched pass."""
        if clients < 2:
            return "serial"
        if self.mode != "auto":
            return self.mode
        key = self.signature(clients, padded_tokens)
        times = self._times[key]
        for path in _PATHS:
            if len(times[path]) < self.probes:
                return path
        self._decisions[key] += 1
        best = min(_PATHS, key=lambda path: statistics.median(times[path]))
        if self._decisions[key] % self.reprobe_every == 0:
            return "serial" if best == "batched" else "batched"
        return best

    def record(self, clients: int, padded_tokens: int, path: Path, seconds_per_token: float) -> None:
        """Report how long ``path`` took for a group (seconds per real token)."""
        if clients >= 2:
            self._times[self.signature(clients, padded_tokens)][path].append(seconds_per_token)

    def preferred(self) -> dict[tuple[int, int], Path]:
        """The currently preferred path per measured signature (for benchmarks and logs)."""
        return {
            key: min(_PATHS, key=lambda path: statistics.median(times[path]))
            for key, times in self._times.items()
            if all(times[path] for path in _PATHS)
        }
