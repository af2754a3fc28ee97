"""The queue of sealed batches (``max_queued_batches``), on both cores.

A partition holds up to ``max_queued_batches`` full batches sealed and
waiting for its flusher, besides the one it flushes; its flusher flushes
every waiting batch in one wake-up.  These tests hold the flusher in
``handle_flush`` (a gate) so that the queue fills, then check what the
buffer accepts, reports and delivers.  The ``AsyncBuffer`` counterparts are
at the end.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest
from conftest import Background, adds_up, await_for, wait_for

from databuffer import BufferFull, FlushTimeout

BIG = 3600


class Gate:
    """A ``handle_flush`` that records each batch and holds the calls whose batch ``hold`` says."""

    def __init__(self, hold: Any = lambda batch: True) -> None:
        self.hold = hold
        self.open = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[Any]] = []
        self.calls = 0
        self.inside = 0
        self.overlapped = False
        self._lock = threading.Lock()

    def __call__(self, batch: list[Any], opts: Any) -> int:
        with self._lock:
            self.inside += 1
            self.overlapped |= self.inside > 1
            self.calls += 1
        try:
            self.entered.set()
            if self.hold(batch):
                assert self.open.wait(30), "the test never opened the gate"
            self.batches.append(list(batch))
            return len(batch)
        finally:
            with self._lock:
                self.inside -= 1

    @property
    def items(self) -> list[Any]:
        return [item for batch in self.batches for item in batch]


def _fill(buf: Any, gate: Gate, max_size: int, queued: int) -> int:
    """Hold the flusher on a first batch, then fill the queue and the ring; the items stored."""
    buf.insert_batch(range(max_size))
    assert gate.entered.wait(10)
    n = max_size
    # The queued batches, then a full ring: all that fits.
    buf.insert_batch(range(n, n + (queued + 1) * max_size))
    return n + (queued + 1) * max_size


@pytest.mark.parametrize("queued", [0, 1, 3])
def test_a_partition_accepts_its_queue_then_refuses_with_buffer_full(make_buffer: Any, queued: int) -> None:
    gate = Gate()
    m = 5
    buf = make_buffer(handle_flush=gate, max_size=m, max_queued_batches=queued, flush_interval=BIG)
    n = _fill(buf, gate, m, queued)
    info = buf.info()[0]
    assert (info["queued"], info["size"], info["in_flight"], info["flushing"]) == (
        queued,
        m,
        (queued + 1) * m,
        True,
    )
    assert info["max_queued_batches"] == queued
    stats = buf.stats()
    assert adds_up(stats) and stats["inserted"] == n
    started = time.monotonic()
    with pytest.raises(BufferFull) as excinfo:
        buf.insert("one too many", timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert excinfo.value.stored == 0
    if queued:
        assert f"{queued} more batch" in str(excinfo.value)
    with pytest.raises(BufferFull) as excinfo:
        buf.insert_batch(["a", "b"], timeout=0.01)
    assert excinfo.value.stored == 0
    gate.open.set()
    buf.close(timeout=30)
    assert gate.items == list(range(n))
    assert [len(b) for b in gate.batches] == [m] * (n // m)
    assert not gate.overlapped


def test_max_queued_batches_0_holds_one_batch_and_one_ring_as_before(make_buffer: Any) -> None:
    # Before the queue existed a partition held the batch being flushed and
    # one ring of items: the same with max_queued_batches=0.
    gate = Gate()
    buf = make_buffer(handle_flush=gate, max_size=3, max_queued_batches=0, flush_interval=BIG)
    for i in range(6):
        buf.insert(i)
    assert gate.entered.wait(10)
    wait_for(lambda: buf.info()[0]["size"] == 3)
    info = buf.info()[0]
    assert (info["queued"], info["in_flight"]) == (0, 3)
    with pytest.raises(BufferFull):
        buf.insert(6, timeout=0.01)
    gate.open.set()
    buf.insert(6, timeout=10)  # room once the first batch is done
    buf.close(timeout=30)
    assert gate.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_an_insert_waiting_for_room_goes_on_once_the_flusher_takes_a_queued_batch(make_buffer: Any) -> None:
    gate = Gate()
    m = 4
    buf = make_buffer(handle_flush=gate, max_size=m, max_queued_batches=2, flush_interval=BIG)
    n = _fill(buf, gate, m, 2)
    waiting = Background(buf.insert, "waited", timeout=30)
    # It waits: nothing can be sealed while the queue is full.
    assert not waiting.done.wait(0.1)
    gate.open.set()
    waiting.wait()
    assert waiting.error is None
    buf.close(timeout=30)
    assert gate.items == [*range(n), "waited"]


def test_batches_of_a_queue_reach_handle_flush_one_at_a_time_in_order(make_buffer: Any) -> None:
    gate = Gate(hold=lambda batch: False)
    buf = make_buffer(handle_flush=gate, max_size=7, max_queued_batches=4, flush_interval=BIG)
    for i in range(7 * 50 + 3):
        buf.insert(i)
    buf.close(timeout=30)
    assert gate.items == list(range(7 * 50 + 3))
    assert all(len(b) == 7 for b in gate.batches[:-1]) and len(gate.batches[-1]) == 3
    assert not gate.overlapped


def test_sync_flush_with_a_full_queue_waits_for_every_batch(make_buffer: Any) -> None:
    gate = Gate()
    m = 5
    buf = make_buffer(handle_flush=gate, max_size=m, max_queued_batches=3, flush_interval=BIG)
    buf.insert_batch(range(m))
    assert gate.entered.wait(10)
    n = 4 * m + 2
    buf.insert_batch(range(m, n))  # three queued batches, two items buffered
    assert buf.info()[0]["queued"] == 3
    flushing = Background(buf.sync_flush, timeout=30)
    assert not flushing.done.wait(0.05)  # the held batch and the queue are not done
    gate.open.set()
    flushing.wait()
    assert flushing.error is None
    # It waited for every batch; its results are those of the batches of the
    # items that were buffered (not yet sealed) when it was called.
    assert flushing.result == [2]
    assert gate.items == list(range(n))
    stats = buf.stats()
    assert (stats["flushed"], stats["in_flight"], stats["size"]) == (n, 0, 0)


def test_close_with_a_full_queue_flushes_everything(make_buffer: Any) -> None:
    gate = Gate()
    m = 5
    buf = make_buffer(handle_flush=gate, max_size=m, max_queued_batches=3, flush_interval=BIG)
    n = _fill(buf, gate, m, 3)
    closing = Background(buf.close, timeout=30)
    assert not closing.done.wait(0.05)
    gate.open.set()
    closing.wait()
    assert closing.error is None
    assert gate.items == list(range(n))
    assert buf.stats()["flushed"] == n


def test_a_flush_timeout_in_the_middle_of_a_drained_run(make_buffer: Any) -> None:
    # Batch [5..9] is stuck past flush_timeout while three batches wait behind
    # it: it is reported failed, and a new flusher goes on with the queue.
    first_in, first_go = threading.Event(), threading.Event()
    stuck_in, stuck_go = threading.Event(), threading.Event()
    delivered: list[list[Any]] = []
    failed: list[tuple[list[Any], BaseException]] = []

    def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            first_in.set()
            assert first_go.wait(30)
        elif batch[0] == 5:
            stuck_in.set()
            assert stuck_go.wait(30)
        delivered.append(list(batch))

    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda b, o, e: failed.append((list(b), e)),
        max_size=5,
        max_queued_batches=4,
        flush_interval=BIG,
        flush_timeout=1.0,
    )
    buf.insert_batch(range(5))
    assert first_in.wait(10)
    n = 25
    buf.insert_batch(range(5, n))  # four queued batches
    first_go.set()
    assert stuck_in.wait(10)
    wait_for(lambda: len(failed) == 1, timeout=10)
    assert failed[0][0] == [5, 6, 7, 8, 9] and isinstance(failed[0][1], FlushTimeout)
    wait_for(lambda: buf.stats()["flushed"] == n - 5, timeout=10)
    assert delivered == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [20, 21, 22, 23, 24]]
    stuck_go.set()  # the stuck call returns: too late, its result is dropped
    buf.close(timeout=30)
    stats = buf.stats()
    assert (stats["flushed"], stats["failed"]) == (n - 5, 5)


def test_retries_inside_a_drained_run_come_before_the_next_batch(make_buffer: Any) -> None:
    calls: list[tuple[int, int]] = []
    entered = threading.Event()
    go = threading.Event()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        calls.append((batch[0], opts.attempt))
        if batch[0] == 0:
            entered.set()
            assert go.wait(30)
        if batch[0] in (4, 8) and opts.attempt < 3:
            raise ConnectionError("try again")

    buf = make_buffer(
        handle_flush=handle_flush,
        max_size=4,
        max_queued_batches=3,
        max_retries=2,
        retry_backoff=0,
        flush_interval=BIG,
    )
    buf.insert_batch(range(4))
    assert entered.wait(10)
    buf.insert_batch(range(4, 20))  # three queued batches and a full ring
    go.set()
    buf.close(timeout=30)
    assert calls == [(0, 1), (4, 1), (4, 2), (4, 3), (8, 1), (8, 2), (8, 3), (12, 1), (16, 1)]
    stats = buf.stats()
    assert (stats["flushed"], stats["retried"], stats["failed"]) == (20, 16, 0)


def test_the_accounting_identity_holds_under_four_producers(make_buffer: Any) -> None:
    rng = random.Random(1)
    delivered: list[int] = []
    lock = threading.Lock()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        if rng.random() < 0.05:
            time.sleep(0.002)
        with lock:
            delivered.extend(batch)

    buf = make_buffer(
        handle_flush=handle_flush,
        partitions=2,
        max_size=50,
        max_queued_batches=3,
        flush_interval=0.01,
        flush_jitter=0,
        insert_timeout=30,
    )
    per_thread = 20_000
    stop = threading.Event()
    bad: list[Any] = []

    def sample() -> None:
        while not stop.is_set():
            s = buf.stats()
            if not adds_up(s):
                bad.append(s)
            for info in buf.info():
                if not 0 <= info["queued"] <= 4 or info["queued"] * 50 > info["in_flight"]:
                    bad.append(info)

    def produce(t: int) -> None:
        i = 0
        while i < per_thread:
            if i % 7 == 0:
                chunk = [(t, j) for j in range(i, min(per_thread, i + 60))]
                buf.insert_batch(chunk)
                i += len(chunk)
            else:
                buf.insert((t, i))
                i += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    producers = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(60)
    buf.close(timeout=60)
    stop.set()
    sampler.join(10)
    assert bad == []
    assert sorted(delivered) == sorted((t, i) for t in range(4) for i in range(per_thread))
    for t in range(4):
        mine = [i for (u, i) in delivered if u == t]
        # Each producer's items keep their order within a partition; over
        # two partitions, round-robin may interleave them.
        assert sorted(mine) == list(range(per_thread))


@pytest.mark.parametrize("bad", [-1, 65537, 1.5, "4", True])
def test_max_queued_batches_is_checked(Buffer: Any, bad: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="max_queued_batches"):
        Buffer(handle_flush=lambda b, o: None, max_queued_batches=bad)


# -- AsyncBuffer -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_partition_accepts_its_queue_then_refuses(AsyncBuffer: Any) -> None:
    entered = asyncio.Event()
    go = asyncio.Event()
    batches: list[list[Any]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            entered.set()
            await go.wait()
        batches.append(list(batch))

    m = 5
    async with AsyncBuffer(
        handle_flush=handle_flush, max_size=m, max_queued_batches=2, flush_interval=BIG
    ) as buf:
        buf.insert_batch(range(m))
        await asyncio.wait_for(entered.wait(), 10)
        buf.insert_batch(range(m, 4 * m))  # two queued, a full ring
        assert buf.info()[0]["queued"] == 2
        with pytest.raises(BufferFull):
            buf.insert("x")
        with pytest.raises(BufferFull):
            await buf.ainsert("x", timeout=0.02)
        waiting = asyncio.ensure_future(buf.ainsert("waited", timeout=30))
        await asyncio.sleep(0)
        assert not waiting.done()
        go.set()
        await asyncio.wait_for(waiting, 10)
    assert [x for b in batches for x in b] == [*range(4 * m), "waited"]
    assert [len(b) for b in batches] == [m, m, m, m, 1]


@pytest.mark.anyio
async def test_async_flusher_drains_its_queue_in_one_wake_up(AsyncBuffer: Any) -> None:
    # While the first batch is held, three batches queue behind it; once it
    # returns, the queued ones are flushed before any other task runs.
    entered = asyncio.Event()
    go = asyncio.Event()
    order: list[Any] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            entered.set()
            await go.wait()
        order.append(batch[0])

    async def other() -> None:
        order.append("other task")

    async with AsyncBuffer(
        handle_flush=handle_flush, max_size=4, max_queued_batches=3, flush_interval=BIG
    ) as buf:
        buf.insert_batch(range(4))
        await asyncio.wait_for(entered.wait(), 10)
        buf.insert_batch(range(4, 16))  # three queued batches
        go.set()
        task = asyncio.ensure_future(other())
        await await_for(lambda: len(order) >= 5)
        await task
    assert order[:4] == [0, 4, 8, 12]


@pytest.mark.anyio
async def test_async_flush_timeout_in_the_middle_of_a_drained_run(AsyncBuffer: Any) -> None:
    entered = asyncio.Event()
    go = asyncio.Event()
    delivered: list[list[Any]] = []
    failed: list[tuple[list[Any], BaseException]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            entered.set()
            await go.wait()
        elif batch[0] == 4:
            await asyncio.sleep(BIG)  # stuck: cancelled at flush_timeout
        delivered.append(list(batch))

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda b, o, e: failed.append((list(b), e)),
        max_size=4,
        max_queued_batches=3,
        flush_interval=BIG,
        flush_timeout=0.2,
    ) as buf:
        buf.insert_batch(range(4))
        await asyncio.wait_for(entered.wait(), 10)
        buf.insert_batch(range(4, 16))  # three queued batches
        go.set()
        await await_for(lambda: len(delivered) == 3, timeout=10)
    assert delivered == [[0, 1, 2, 3], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert [(b, type(e)) for b, e in failed] == [([4, 5, 6, 7], FlushTimeout)]


@pytest.mark.anyio
async def test_async_flush_timeout_is_watched_without_a_timer_per_batch(AsyncBuffer: Any) -> None:
    # One watchdog per partition, armed when idle: not a loop timer per call.
    loop = asyncio.get_running_loop()
    batches: list[int] = []
    all_done = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        batches.append(len(batch))
        if len(batches) == 51:
            all_done.set()

    async with AsyncBuffer(
        handle_flush=handle_flush, max_size=10, max_queued_batches=64, flush_interval=BIG, flush_timeout=30
    ) as buf:
        await buf.ainsert_batch(range(10))
        await await_for(lambda: len(batches) == 1)
        calls = 0
        call_at = loop.call_at

        def counting_call_at(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return call_at(*args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        try:
            for _ in range(50):
                buf.insert_batch(range(10))  # all queued: nothing waits for room
            await all_done.wait()  # no polling: a poll's sleep is a loop timer too
        finally:
            del loop.call_at
    # The partition's timed flush is re-armed lazily, when it fires (BIG away).
    assert calls <= 2, calls
