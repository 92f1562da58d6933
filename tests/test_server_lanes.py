"""``SeqLane`` (``tinker_std/server/lanes.py``): steps run one at a time in ``seq_id`` order, also
when a step runs on the admitting thread (``run_here``); and ``ServerRecords.touch_run``'s
request times, noted in memory, reach every read and the database file."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tinker_std.server.lanes import SeqLane
from tinker_std.server.records import ServerRecords


def _recording_step(log: list[tuple[int, str]], seq: int, running: list[int]) -> Callable[[], None]:
    def step() -> None:
        running.append(seq)
        assert len(running) == 1, f"steps {running} ran at the same time"
        log.append((seq, threading.current_thread().name))
        time.sleep(0.001)
        running.remove(seq)

    return step


def test_an_idle_lanes_next_step_runs_on_the_admitting_thread() -> None:
    lane = SeqLane("m", gap_timeout_s=30.0)
    log: list[tuple[int, str]] = []
    running: list[int] = []
    try:
        for seq in (1, 2, 3):
            lane.admit(seq, "d", f"r{seq}", _recording_step(log, seq, running), run_here=True)
        assert log == [(s, threading.current_thread().name) for s in (1, 2, 3)]
        # without run_here the lane's worker runs it
        done = threading.Event()
        lane.admit(4, "d", "r4", lambda: (log.append((4, threading.current_thread().name)), done.set()))
        assert done.wait(10)
        assert log[-1] == (4, "lane-m")
    finally:
        lane.close()


def test_a_step_admitted_while_one_runs_here_waits_for_it() -> None:
    lane = SeqLane("m", gap_timeout_s=30.0)
    order: list[str] = []
    release = threading.Event()
    second_done = threading.Event()

    def first() -> None:
        order.append("first started")
        release.wait(10)
        order.append("first finished")

    def second() -> None:
        order.append("second")
        second_done.set()

    admitting = threading.Thread(target=lambda: lane.admit(1, "d", "r1", first, run_here=True))
    try:
        admitting.start()
        deadline = time.monotonic() + 10
        while not order and time.monotonic() < deadline:
            time.sleep(0.001)
        assert order == ["first started"]
        # seq 2 arrives while seq 1 runs on the admitting thread: queued for the worker, which
        # must not start it before seq 1 returns (nor run it here: the lane is busy)
        lane.admit(2, "d", "r2", second, run_here=True)
        time.sleep(0.2)
        assert order == ["first started"], "the worker started seq 2 while seq 1 was still running"
        release.set()
        assert second_done.wait(10)
        assert order == ["first started", "first finished", "second"]
    finally:
        release.set()
        admitting.join(10)
        lane.close()


def test_steps_admitted_out_of_order_from_many_threads_run_in_order_one_at_a_time() -> None:
    lane = SeqLane("m", gap_timeout_s=30.0)
    log: list[tuple[int, str]] = []
    running: list[int] = []
    n = 200
    seqs = list(range(1, n + 1))
    random.Random(0).shuffle(seqs)
    chunks = [seqs[i::4] for i in range(4)]

    def admit_all(chunk: list[int]) -> None:
        for seq in chunk:
            lane.admit(seq, "d", f"r{seq}", _recording_step(log, seq, running), run_here=seq % 3 != 0)

    threads = [threading.Thread(target=admit_all, args=(c,)) for c in chunks]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        deadline = time.monotonic() + 30
        # the last step is logged 1 ms before it leaves ``running``: wait for both (a step whose
        # concurrency check raised stays in ``running`` and fails the last assertion)
        while (len(log) < n or running) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [seq for seq, _ in log] == list(range(1, n + 1))
        assert not running
    finally:
        lane.close()


def test_a_resend_of_a_step_run_here_answers_the_original_id() -> None:
    lane = SeqLane("m", gap_timeout_s=30.0)
    calls: list[int] = []
    try:
        assert lane.admit(1, "d", "r1", lambda: calls.append(1), run_here=True) == "r1"
        assert lane.admit(1, "d", "r1-again", lambda: calls.append(99), run_here=True) == "r1"
        assert calls == [1]
    finally:
        lane.close()


def test_touched_request_times_reach_reads_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite"
    records = ServerRecords(path)
    records.add_run("run-1", "tenant", "base", 4)
    created = records.run("tenant", "run-1")
    assert created is not None
    time.sleep(0.01)
    before = time.time()
    records.touch_run("run-1")
    touched = records.run("tenant", "run-1")  # a read sees the noted time
    assert touched is not None and touched.last_request >= before > created.last_request
    time.sleep(0.01)
    later = time.time()
    records.touch_run("run-1")
    records.flush()  # the reaper's tick writes it without a read
    other = ServerRecords(path)  # another connection reads the file
    listed = other.run("tenant", "run-1")
    assert listed is not None and listed.last_request >= later
    time.sleep(0.01)
    last = time.time()
    records.touch_run("run-1")
    records.close()  # closing writes what is left
    reread = other.run("tenant", "run-1")
    assert reread is not None and reread.last_request >= last
    other.close()


def test_an_idle_lanes_worker_sleeps_until_a_step_or_a_gap() -> None:
    """An idle lane's worker blocks without polling (a server with hundreds of models must not
    wake hundreds of threads every second); once a gap opens it polls again and gives the gap up
    after ``gap_timeout_s``, so the later step still runs."""
    lane = SeqLane("m", gap_timeout_s=0.08)  # would poll every 20 ms
    checks: list[float] = []
    check_gap = lane._check_gap

    def counted() -> None:
        checks.append(time.monotonic())
        check_gap()

    lane._check_gap = counted  # type: ignore[method-assign]
    time.sleep(0.3)
    assert checks == [], f"an idle worker woke {len(checks)} times in 0.3 s"
    ran = threading.Event()
    lane.admit(2, "d2", "r2", ran.set)  # seq_id 1 never arrives: a gap opens on a sleeping worker
    assert lane.depth() == 1
    assert ran.wait(5.0), "the gap was never given up"
    assert len(checks) >= 2, "the worker did not watch the gap"
    n = len(checks)
    time.sleep(0.3)
    assert len(checks) <= n + 1, "the worker kept polling after the gap closed"
    assert lane.depth() == 0
    lane.close()
