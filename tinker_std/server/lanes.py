"""The ``seq_id`` turnstile of one training model.

The SDK numbers the requests of each training client 1, 2, ... and may deliver them in any order
(it sends the chunks of one call concurrently, the first one last). ``SeqLane`` runs each
request's *step* once every lower ``seq_id`` has run, one step at a time, on a worker thread of
its own (so a step may block, e.g. a load into the model). Every admitted ``seq_id`` is consumed
whatever its step does: a step reports its outcome through its own future, never by raising.

A request sent again with an already admitted ``seq_id`` (the SDK retries a submission whose
answer was lost) gets the original request id back if its body is the same, so the caller reads
the original result; a different body under a used ``seq_id`` is a ``ConflictError``.

A ``seq_id`` that never arrives (the SDK reserved it, then failed to encode the request on its
side, e.g. a token id over int32) would hold every later request forever; once later requests
have waited ``gap_timeout_s`` for it, the lane gives it up and runs on. If it arrives after all,
it is refused with ``BadRequestError`` (field ``seq_id``).

``admit(..., run_here=True)`` runs a step on the admitting thread instead when the lane is idle
(nothing queued, waiting or running) and the step is the next in order: the answer's thread then
starts the work without waking the lane's worker (a training step's request saves a thread
hand-off). Order holds as before: a step admitted meanwhile is queued, and the worker runs a
step only while it holds the lane's turn, which the step run here holds until it returns. Only
steps that do not block (they hand their work to the client layer and return) may run here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from tinker_std.errors import BadRequestError, ConflictError

__all__ = ["SeqLane"]

Step = Callable[[], None]

#: Put on a lane's queue to make an idle worker (blocked without a timeout) start watching a gap.
_WAKE: Step = lambda: None  # noqa: E731


class SeqLane:
    """Runs admitted steps strictly in ``seq_id`` order on one worker thread."""

    def __init__(self, name: str, gap_timeout_s: float = 30.0) -> None:
        self.name = name
        self.gap_timeout_s = gap_timeout_s
        self._gap_since: float | None = None  # when a later request first waited for next_seq
        self._given_up: set[int] = set()
        self.next_seq = 1
        self._waiting: dict[int, Step] = {}
        self._seen: dict[int, tuple[str, str]] = {}  # seq_id -> (request_id, body digest)
        self._lock = threading.Lock()
        self._turn = threading.Lock()  # held by whoever runs a step
        self._unfinished = 0  # steps queued or running (the worker's or one run here)
        self._queued = 0  # steps on the queue (not _WAKE markers or the close sentinel)
        self._queue: queue.SimpleQueue[Step | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name=f"lane-{name}", daemon=True)
        self._worker.start()

    def admit(self, seq_id: int | None, digest: str, request_id: str, step: Step, run_here: bool = False) -> str:
        """Queue ``step`` as request ``seq_id`` and answer ``request_id``; for a retry of an
        admitted request, answer the original request id and drop ``step``. ``seq_id=None``
        (a request the SDK does not number) runs after everything admitted so far. ``run_here``:
        run a non-blocking ``step`` on this thread, before returning, if the lane is idle and it
        is next (module doc)."""
        with self._lock:
            if seq_id is None:
                self._put(step)
                return request_id
            if seq_id < 1:
                raise BadRequestError("seq_id", f"must be >= 1, got {seq_id}")
            if seq_id in self._given_up:
                raise BadRequestError(
                    "seq_id", f"{seq_id} arrived after the server stopped waiting for it ({self.gap_timeout_s} s)"
                )
            prior = self._seen.get(seq_id)
            if prior is not None:
                if prior[1] == digest:
                    return prior[0]
                raise ConflictError(f"seq_id {seq_id} of model {self.name} was already used by a different request")
            self._seen[seq_id] = (request_id, digest)
            here = run_here and seq_id == self.next_seq and self._unfinished == 0 and not self._waiting
            if here:
                # _unfinished == 0: no step is queued or running, so the turn is free
                self._turn.acquire()
                self._unfinished += 1
                self.next_seq += 1
            else:
                self._waiting[seq_id] = step
                self._drain()
        if here:
            self._run(step)
        return request_id

    def depth(self) -> int:
        """Requests admitted and not yet started: queued, or waiting for a lower ``seq_id``."""
        with self._lock:
            return len(self._waiting) + self._queued

    def _put(self, step: Step) -> None:
        self._unfinished += 1
        self._queued += 1
        self._queue.put(step)

    def _drain(self) -> None:
        while self.next_seq in self._waiting:
            self._put(self._waiting.pop(self.next_seq))
            self.next_seq += 1
        if self._waiting and self._gap_since is None:
            self._gap_since = time.monotonic()
            self._queue.put(_WAKE)  # the worker may be blocked with no timeout: make it watch the gap
        elif not self._waiting:
            self._gap_since = None

    def _check_gap(self) -> None:
        with self._lock:
            if self._gap_since is None or time.monotonic() - self._gap_since < self.gap_timeout_s:
                return
            while self.next_seq not in self._waiting:
                self._given_up.add(self.next_seq)
                self.next_seq += 1
            self._gap_since = None
            self._drain()

    def close(self) -> None:
        """Stop the worker after the steps already queued."""
        self._queue.put(None)

    def _work(self) -> None:
        # An idle lane's worker sleeps until a step (or _WAKE) arrives: a server holding hundreds of
        # models must not wake hundreds of threads every second. It polls only while a gap is open.
        poll = min(1.0, self.gap_timeout_s / 4)
        while True:
            try:
                step = self._queue.get(timeout=poll if self._gap_since is not None else None)
            except queue.Empty:
                self._check_gap()
                continue
            if step is None:
                return
            if step is _WAKE:
                continue
            with self._lock:
                self._queued -= 1
            self._turn.acquire()  # waits while a step runs on an admitting thread
            self._run(step)

    def _run(self, step: Step) -> None:
        """Run ``step`` holding the turn (taken by the caller); then give the turn back."""
        try:
            step()
        except BaseException:  # a step settles its own future; never let one stop the lane
            pass
        finally:
            self._turn.release()  # before the count: _unfinished == 0 implies a free turn
            with self._lock:
                self._unfinished -= 1
