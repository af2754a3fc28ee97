"""AsyncBuffer in normal operation: lifecycle, triggers, order, backpressure, threads, options.

The asyncio counterpart of test_flushing.py, test_operations.py and
test_threads.py.  Every test runs on both cores and on both loops (asyncio's
default loop and uvloop, see conftest's ``anyio_backend``).  Failures,
timeouts, retries, telemetry and shutdown are in test_async_failures.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import AlwaysOne, AsyncRecorder, Background, adds_up, await_for, first_partition

from databuffer import BufferClosed, BufferFull, FlushOpts
from databuffer._front import engine_of

pytestmark = pytest.mark.anyio

# Lower bounds on loop.time() differences: uvloop's clock counts whole
# milliseconds (two readings taken at different points of a flush may be a
# tick apart), and a difference of two large float readings rounds (0.2 can
# come out as 0.19999999999708962).
CLOCK_SLACK = 0.002


async def wait_event(event: asyncio.Event, timeout: float = 10.0) -> None:
    """Wait for an asyncio event without polling (the loop sleeps until it is set)."""
    await asyncio.wait_for(event.wait(), timeout)


@contextlib.asynccontextmanager
async def stuck(AsyncBuffer: type, **options: Any) -> AsyncIterator[tuple[Any, asyncio.Event, AsyncRecorder]]:
    """A started buffer (max_size=2, one partition, no queue) whose batch [0, 1] is stuck in handle_flush.

    With ``max_queued_batches=0`` (unless given), two more items fill it.

    Yields (buffer, release, recorder); releases and closes it on the way out.
    """
    release = asyncio.Event()
    started = asyncio.Event()
    recorder = AsyncRecorder()

    async def fn(batch: list[Any], opts: FlushOpts) -> int:
        if batch[0] == 0:
            started.set()
            await release.wait()
        return await recorder(batch, opts)

    options.setdefault("name", "stuck")
    options.setdefault("max_queued_batches", 0)
    buf = AsyncBuffer(handle_flush=fn, max_size=2, flush_interval=3600, **options)
    await buf.start()
    try:
        buf.insert_batch([0, 1])
        await wait_event(started)
        yield buf, release, recorder
    finally:
        release.set()
        await buf.aclose(timeout=30)


def run_in_other_loop(loop_factory: Any, main: Any) -> Background:
    """Run ``main()`` on a new event loop (of the loop under test's kind) in a thread."""

    def run() -> Any:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())

    return Background(run)


# -- lifecycle ------------------------------------------------------------------


async def test_async_with_returns_the_buffer_and_closes_it(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=3600)
    assert buf.closed is False
    async with buf as entered:
        assert entered is buf
        assert buf.closed is False
        buf.insert("x")
        await buf.ainsert("y")
        assert recorder.calls == []
    assert buf.closed is True
    assert recorder.batches() == [["x", "y"]]
    assert recorder.triggers() == ["close"]


async def test_start_is_idempotent_on_the_same_loop_and_returns_the_buffer(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, partitions=2, max_size=100, flush_interval=3600)
    before = len(asyncio.all_tasks())
    try:
        assert await buf.start() is buf
        after_first = len(asyncio.all_tasks())
        assert after_first > before  # its flusher tasks
        assert await buf.start() is buf
        assert await buf.start() is buf
        assert len(asyncio.all_tasks()) == after_first  # no second set of flushers
        buf.insert_batch([1, 2])
        assert await buf.sync_flush(timeout=30) == [2]
        assert recorder.batches() == [[1, 2]]  # flushed once
    finally:
        await buf.aclose(timeout=30)
    assert len(asyncio.all_tasks()) == before  # aclose stopped them


async def test_aclose_is_idempotent_and_the_readers_answer_after_it(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, name="after", partitions=2, max_size=100, flush_interval=3600)
    await buf.start()
    buf.insert_batch([1, 2, 3])
    buf.insert("x")
    assert buf.stats()["closed"] is False
    assert await buf.aclose(timeout=30) is None
    assert buf.closed is True
    assert await buf.aclose(timeout=30) is None
    await buf.aclose()
    assert buf.closed is True
    assert sorted(recorder.batches(), key=len) == [["x"], [1, 2, 3]]
    assert buf.size() == 0
    assert buf.dump() == []
    stats = buf.stats()
    assert stats["name"] == "after"
    assert stats["partitions"] == 2
    assert stats["closed"] is True
    assert (stats["inserted"], stats["size"], stats["in_flight"], stats["flushed"], stats["failed"]) == (
        4,
        0,
        0,
        4,
        0,
    )
    info = buf.info()
    assert [p["partition"] for p in info] == [0, 1]
    assert sorted(p["flushed"] for p in info) == [1, 3]
    assert not any(p["flushing"] for p in info)


async def test_inserts_after_aclose_raise_buffer_closed(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, name="shut", max_size=100, flush_interval=3600)
    async with buf:
        buf.insert(1)
    with pytest.raises(BufferClosed, match="shut"):
        buf.insert(2)
    with pytest.raises(BufferClosed):
        buf.insert_batch([3, 4])
    with pytest.raises(BufferClosed):
        await buf.ainsert(5)
    with pytest.raises(BufferClosed) as excinfo:
        await buf.ainsert_batch([6, 7])
    assert excinfo.value.stored == 0
    with pytest.raises(BufferClosed):
        await buf.ainsert(8, timeout=0.01)
    assert buf.stats()["inserted"] == 1
    assert buf.dump() == []
    assert recorder.items() == [1]


async def test_start_after_aclose_raises(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=3600)
    async with buf:
        buf.insert(1)
    assert buf.closed is True
    with pytest.raises(BufferClosed, match="is closed"):
        await buf.start()


async def test_aclose_starts_a_never_started_buffer_and_flushes_what_it_holds(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, max_size=3, flush_interval=3600)
    assert buf.closed is False
    buf.insert_batch([0, 1, 2])  # a full batch, sealed: nothing runs it yet
    buf.insert(3)
    await buf.ainsert(4)  # there is room: no need to be started
    await asyncio.sleep(0.05)
    assert recorder.calls == []
    assert buf.stats()["inserted"] == 5
    assert buf.dump() == [3, 4]
    await buf.aclose(timeout=30)
    assert buf.closed is True
    assert recorder.batches() == [[0, 1, 2], [3, 4]]
    assert recorder.triggers() == ["size", "close"]
    stats = buf.stats()
    assert (stats["flushed"], stats["size"], stats["in_flight"]) == (5, 0, 0)


async def test_start_flushes_a_batch_sealed_before_it(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, max_size=2, flush_interval=3600)
    try:
        buf.insert_batch(["a", "b"])  # sealed; no loop to wake yet
        assert buf.info()[0]["flushing"] is True
        await buf.start()
        await wait_event(recorder.called)
        assert recorder.batches() == [["a", "b"]]
        assert recorder.triggers() == ["size"]
    finally:
        await buf.aclose(timeout=30)


async def test_concurrent_acloses_both_wait_for_the_flushes(AsyncBuffer):
    async with stuck(AsyncBuffer) as (buf, release, recorder):
        buf.insert(2)
        first = asyncio.create_task(buf.aclose(timeout=30))
        second = asyncio.create_task(buf.aclose(timeout=30))
        await await_for(lambda: buf.closed)
        await asyncio.sleep(0.1)
        assert not first.done() and not second.done(), "aclose returned while a flush was running"
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert recorder.batches() == [[0, 1], [2]]
        assert recorder.triggers() == ["size", "close"]
        stats = buf.stats()
        assert (stats["inserted"], stats["flushed"], stats["in_flight"]) == (3, 3, 0)


async def test_calls_that_need_the_loop_raise_before_start(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(
        handle_flush=recorder, name="unstarted", max_size=2, max_queued_batches=0, flush_interval=3600
    )
    try:
        with pytest.raises(RuntimeError, match=r"^flush\(\).*start") as excinfo:
            await buf.flush()
        assert "unstarted" in str(excinfo.value)
        with pytest.raises(RuntimeError, match=r"^sync_flush\(\).*start"):
            await buf.sync_flush()
        buf.insert_batch([0, 1, 2, 3])  # [0, 1] sealed, [2, 3] buffered: full
        with pytest.raises(RuntimeError, match=r"^ainsert\(\).*start"):
            await buf.ainsert(4)
        with pytest.raises(RuntimeError, match=r"^ainsert_batch\(\).*start"):
            await buf.ainsert_batch([4, 5])
        with pytest.raises(BufferFull):
            buf.insert(4)  # never waits, started or not
        assert buf.stats()["inserted"] == 4
        assert buf.dump() == [2, 3]
        assert recorder.calls == []
        assert buf.closed is False
    finally:
        await buf.aclose(timeout=30)
    assert recorder.items() == [0, 1, 2, 3]


async def test_a_buffer_refuses_calls_from_another_event_loop(AsyncBuffer, loop_factory):
    async with stuck(AsyncBuffer, name="bound") as (buf, release, recorder):
        buf.insert_batch([2, 3])  # the partition is full while [0, 1] is flushing

        async def main() -> dict[str, BaseException | None]:
            calls = {
                "start": buf.start,
                "flush": buf.flush,
                "sync_flush": buf.sync_flush,
                "aclose": buf.aclose,
                "ainsert": lambda: buf.ainsert(4, timeout=5),
                "ainsert_batch": lambda: buf.ainsert_batch([4, 5], timeout=5),
            }
            out: dict[str, BaseException | None] = {}
            for name, call in calls.items():
                try:
                    await call()
                except BaseException as exc:  # noqa: BLE001 - checked by the test
                    out[name] = exc
                else:
                    out[name] = None
            return out

        other = run_in_other_loop(loop_factory, main)
        await await_for(other.done.is_set, timeout=30)
        assert other.error is None
        errors = other.result
        for name, error in errors.items():
            assert type(error) is RuntimeError, (name, error)
        assert "another event loop" in str(errors["start"])
        for name in ("flush", "sync_flush", "aclose", "ainsert", "ainsert_batch"):
            assert str(errors[name]).startswith(f"{name}() of"), errors[name]
            assert "must run on the event loop the buffer was started on" in str(errors[name])
        # Nothing happened to the buffer.
        assert buf.closed is False
        assert buf.stats()["inserted"] == 4
        assert buf.dump() == [2, 3]
        release.set()
        assert await buf.sync_flush(timeout=30) == [2]
        assert recorder.items() == [0, 1, 2, 3]


async def test_plain_inserts_and_ainsert_with_room_work_from_another_loop(AsyncBuffer, loop_factory):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=3600) as buf:

        async def main() -> None:
            buf.insert("plain")
            buf.insert_batch(["batch-1", "batch-2"])
            await buf.ainsert("async")  # room: returns at once, from any loop
            await buf.ainsert_batch(["async-batch"])

        other = run_in_other_loop(loop_factory, main)
        await await_for(other.done.is_set, timeout=30)
        assert other.error is None
        assert buf.dump() == ["plain", "batch-1", "batch-2", "async", "async-batch"]
        assert await buf.sync_flush(timeout=30) == [5]
    assert recorder.items() == ["plain", "batch-1", "batch-2", "async", "async-batch"]


# -- the size trigger -------------------------------------------------------------


async def test_size_trigger_is_eager(AsyncBuffer):
    recorder = AsyncRecorder()
    meta = object()
    async with AsyncBuffer(
        handle_flush=recorder, name="sized", max_size=3, flush_interval=3600, flush_meta=meta
    ) as buf:
        buf.insert("a")
        buf.insert("b")
        assert buf.size() == 2
        buf.insert("c")
        # No further insert, no await of the buffer: the full batch is flushed on its own.
        await wait_event(recorder.called)
        ((batch, opts, _),) = recorder.calls
        assert batch == ["a", "b", "c"]
        assert isinstance(opts, FlushOpts)
        assert opts.trigger == "size"
        assert opts.size == 3
        assert opts.partition == 0
        assert opts.buffer == "sized"
        assert opts.meta is meta
        assert opts.attempt == 1
        assert buf.size() == 0
        await await_for(lambda: buf.stats()["flushed"] == 3)


async def test_size_trigger_by_each_kind_of_insert(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=2, flush_interval=3600) as buf:
        buf.insert_batch([1, 2])
        await await_for(lambda: len(recorder.calls) == 1)
        await buf.ainsert(3)
        await buf.ainsert(4)
        await await_for(lambda: len(recorder.calls) == 2)
        await buf.ainsert_batch([5, 6])
        await await_for(lambda: len(recorder.calls) == 3)
        assert recorder.batches() == [[1, 2], [3, 4], [5, 6]]
        assert recorder.triggers() == ["size"] * 3


async def test_large_ainsert_batch_is_split_into_consecutive_batches(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=3, flush_interval=3600) as buf:
        await buf.ainsert_batch(range(10))
        await await_for(lambda: len(recorder.calls) == 3)
        assert recorder.batches() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
        assert recorder.triggers() == ["size"] * 3
        assert buf.dump() == [9]
        assert await buf.sync_flush(timeout=30) == [1]
        assert recorder.batches()[-1] == [9]
        assert recorder.triggers()[-1] == "manual"


async def test_no_batch_above_threshold_with_single_ainserts(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=4, flush_interval=3600) as buf:
        for i in range(18):
            await buf.ainsert(i)
        # [12..15] was handed to the flusher before 16 found room: only [16, 17] is buffered.
        assert await buf.sync_flush(timeout=30) == [2]
    assert [len(b) for b in recorder.batches()] == [4, 4, 4, 4, 2]
    assert recorder.triggers() == ["size"] * 4 + ["manual"]
    assert recorder.items() == list(range(18))


# -- the interval trigger -----------------------------------------------------------


async def test_interval_trigger_not_before_flush_interval(AsyncBuffer):
    interval, jitter = 0.05, 0.05
    recorder = AsyncRecorder()
    loop = asyncio.get_running_loop()
    buf = AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=interval, flush_jitter=jitter)
    t0 = loop.time()
    async with buf:
        buf.insert("x")
        await wait_event(recorder.called)
        ((batch, opts, t1),) = recorder.calls
        assert batch == ["x"]
        assert opts.trigger == "interval"
        assert t1 - t0 >= interval - CLOCK_SLACK
        assert t1 - t0 <= interval + jitter + 5.0  # generous slack for a loaded machine

        # Each later timed flush is counted from the previous one.
        previous = t1
        for n in range(2, 4):
            buf.insert(n)
            await await_for(lambda n=n: len(recorder.calls) == n)
            batch, opts, t = recorder.calls[-1]
            assert batch == [n]
            assert opts.trigger == "interval"
            assert t - previous >= interval - CLOCK_SLACK
            assert t - previous <= interval + jitter + 5.0
            previous = t


async def test_the_default_jitter_is_a_fifth_of_the_interval(AsyncBuffer):
    interval = 0.5
    recorder = AsyncRecorder()
    loop = asyncio.get_running_loop()
    buf = AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=interval)
    engine_of(buf).random = AlwaysOne()  # every jitter drawn from now on is the whole jitter
    async with buf:
        buf.insert("a")
        t_manual = loop.time()
        assert await buf.sync_flush(timeout=30) == [1]
        if recorder.triggers() != ["manual"]:
            pytest.skip("the machine was too slow to flush by hand before the first timed flush")
        buf.insert("b")
        await await_for(lambda: len(recorder.calls) == 2, timeout=30)
        batch, opts, t = recorder.calls[1]
        assert (batch, opts.trigger) == (["b"], "interval")
        # The interval plus all of its jitter, 20 % of it; the fixed 2.0 s of
        # before would have waited 2.5 s.
        assert t - t_manual >= interval * 1.2 - CLOCK_SLACK
        assert t - t_manual < interval + 2.0


async def test_interval_counted_from_last_flush_of_any_kind(AsyncBuffer):
    interval = 0.2
    recorder = AsyncRecorder()
    loop = asyncio.get_running_loop()
    buf = AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=interval, flush_jitter=0)
    t0 = loop.time()
    async with buf:
        buf.insert("a")
        # Let part of the first interval pass, then flush by hand: the timed
        # flush must now come a whole interval after this manual flush.
        await await_for(lambda: loop.time() - t0 >= interval / 2)
        t_manual = loop.time()
        assert await buf.sync_flush(timeout=30) == [1]
        if t_manual - t0 >= interval:
            pytest.skip("the machine was too slow to place the manual flush inside the interval")
        assert recorder.triggers() == ["manual"]
        buf.insert("b")
        await await_for(lambda: len(recorder.calls) == 2)
        batch, opts, t = recorder.calls[1]
        assert batch == ["b"]
        assert opts.trigger == "interval"
        assert t - t_manual >= interval - CLOCK_SLACK


async def test_interval_flush_of_an_empty_partition_calls_nothing(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(
        handle_flush=recorder, partitions=2, max_size=100, flush_interval=0.05, flush_jitter=0
    ) as buf:
        buf.insert("x")
        await wait_event(recorder.called)
        assert recorder.batches() == [["x"]]
        assert recorder.triggers() == ["interval"]
        # Several more intervals pass for both partitions, now empty: nothing is called.
        await asyncio.sleep(0.3)
        assert recorder.batches() == [["x"]]
        assert buf.stats()["flushed"] == 1


# -- manual flushes and close ---------------------------------------------------------


async def test_flush_returns_without_waiting(AsyncBuffer):
    release = asyncio.Event()
    started = asyncio.Event()
    finished = asyncio.Event()
    triggers: list[str] = []

    async def fn(batch, opts):
        triggers.append(opts.trigger)
        started.set()
        await release.wait()
        finished.set()

    buf = AsyncBuffer(handle_flush=fn, max_size=100, flush_interval=3600)
    await buf.start()
    try:
        buf.insert("x")
        assert await buf.flush() is None
        await wait_event(started)
        assert not finished.is_set()
        assert buf.size() == 0
        assert buf.stats()["in_flight"] == 1
        assert buf.info()[0]["flushing"] is True
        release.set()
        await wait_event(finished)
        assert triggers == ["manual"]
    finally:
        release.set()
        await buf.aclose(timeout=30)


async def test_flush_and_sync_flush_of_an_empty_buffer_call_nothing(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, partitions=3, flush_interval=3600) as buf:
        assert await buf.flush() is None
        assert await buf.sync_flush(timeout=30) == []
        assert await buf.sync_flush() == []
        assert recorder.calls == []
        assert all(p["flushed"] == 0 for p in buf.info())
    assert recorder.calls == []  # nor does closing it


async def test_sync_flush_returns_results_in_partition_order(AsyncBuffer):
    partition2_called = asyncio.Event()
    calls: list[tuple[int, list[int], str]] = []

    async def fn(batch, opts):
        calls.append((opts.partition, list(batch), opts.trigger))
        if opts.partition == 2:
            partition2_called.set()
        if opts.partition == 0:
            # Partition 0 finishes last: the order of the results must not
            # depend on the order the flushes finish in.
            await wait_event(partition2_called)
        return (opts.partition, list(batch))

    async with AsyncBuffer(handle_flush=fn, partitions=3, max_size=100, flush_interval=3600) as buf:
        buf.insert(0)
        start = first_partition(buf)
        for i in range(1, 9):
            buf.insert(i)  # round-robin, one step per call
        expected = {(start + i) % 3: [] for i in range(3)}
        for i in range(9):
            expected[(start + i) % 3].append(i)
        assert buf.dump() == expected[0] + expected[1] + expected[2]
        result = await buf.sync_flush(timeout=30)
        assert result == [(0, expected[0]), (1, expected[1]), (2, expected[2])]
        assert buf.size() == 0
        assert [p["flushed"] for p in buf.info()] == [3, 3, 3]
    assert sorted(p for p, _, _ in calls) == [0, 1, 2]
    assert {trigger for _, _, trigger in calls} == {"manual"}


async def test_sync_flush_skips_empty_partitions(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, partitions=3, max_size=100, flush_interval=3600) as buf:
        buf.insert_batch(["only", "one"])
        start = first_partition(buf)
        assert await buf.sync_flush(timeout=30) == [2]
        assert len(recorder.calls) == 1
        assert recorder.calls[0][1].partition == start
        assert recorder.triggers() == ["manual"]


async def test_sync_flush_waits_for_a_flush_in_flight(AsyncBuffer):
    async with stuck(AsyncBuffer) as (buf, release, recorder):
        buf.insert(2)
        call = asyncio.create_task(buf.sync_flush(timeout=30))
        await asyncio.sleep(0.1)
        assert not call.done(), "sync_flush returned while a flush was still running"
        release.set()
        # The batch in flight before the call is waited for, not reported.
        assert await asyncio.wait_for(call, 10) == [1]
        assert recorder.batches() == [[0, 1], [2]]
        assert recorder.triggers() == ["size", "manual"]
        (info,) = buf.info()
        assert (info["flushed"], info["in_flight"]) == (3, 0)
        await await_for(lambda: buf.info()[0]["flushing"] is False)


async def test_concurrent_sync_flushes_each_get_their_batches(AsyncBuffer):
    calls: list[list[int]] = []

    async def fn(batch, opts):
        await asyncio.sleep(0.01)
        calls.append(list(batch))
        return list(batch)

    async with AsyncBuffer(handle_flush=fn, max_size=100, flush_interval=3600) as buf:
        buf.insert(1)
        first = asyncio.create_task(buf.sync_flush(timeout=30))
        await await_for(lambda: buf.stats()["in_flight"] == 1)  # [1] is in handle_flush
        buf.insert(2)
        second = asyncio.create_task(buf.sync_flush(timeout=30))
        await asyncio.sleep(0)  # the second call starts: 2 is buffered
        results = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert results[0] == [[1]]
        assert [item for batch in results[1] for item in batch] == [2]
        assert await buf.sync_flush(timeout=30) == []
    assert calls == [[1], [2]]


async def test_close_trigger(AsyncBuffer):
    recorder = AsyncRecorder()
    buf = AsyncBuffer(handle_flush=recorder, partitions=2, max_size=100, flush_interval=3600)
    async with buf:
        buf.insert_batch([1, 2])
        buf.insert_batch([3])
    assert sorted(recorder.batches()) == [[1, 2], [3]]
    assert recorder.triggers() == ["close", "close"]


# -- order, and one flush at a time per partition ----------------------------------------


async def test_order_within_partition_across_batches(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, partitions=2, max_size=3, flush_interval=3600) as buf:
        for i in range(20):
            await buf.ainsert(i)
        for i in range(20, 30, 2):
            await buf.ainsert_batch([i, i + 1])
        await buf.sync_flush(timeout=30)
    items_0 = recorder.items(0)
    items_1 = recorder.items(1)
    assert sorted(items_0 + items_1) == list(range(30))
    assert items_0 == sorted(items_0)
    assert items_1 == sorted(items_1)
    assert all(0 < len(b) <= 3 for b in recorder.batches())


async def test_batches_of_one_partition_are_flushed_one_at_a_time(AsyncBuffer):
    active = {0: 0, 1: 0}
    peak = {0: 0, 1: 0}
    both = 0
    seen: list[int] = []

    async def fn(batch, opts):
        nonlocal both
        active[opts.partition] += 1
        peak[opts.partition] = max(peak[opts.partition], active[opts.partition])
        if active[0] and active[1]:
            both += 1
        await asyncio.sleep(0.005)  # simulated work: other tasks run meanwhile
        seen.extend(batch)
        active[opts.partition] -= 1

    async with AsyncBuffer(handle_flush=fn, partitions=2, max_size=2, flush_interval=3600) as buf:
        for i in range(30):
            await buf.ainsert(i)
        await buf.sync_flush(timeout=30)
    assert peak == {0: 1, 1: 1}
    assert both > 0  # while the partitions did flush at the same time
    assert sorted(seen) == list(range(30))


async def test_partitions_flush_concurrently(AsyncBuffer):
    started = {0: asyncio.Event(), 1: asyncio.Event()}
    overlap: dict[int, bool] = {}

    async def fn(batch, opts):
        started[opts.partition].set()
        other = 1 - opts.partition
        # Each waits for the other to have started: only possible if both run at once.
        await wait_event(started[other])
        overlap[opts.partition] = True
        return opts.partition

    async with AsyncBuffer(handle_flush=fn, partitions=2, max_size=100, flush_interval=3600) as buf:
        buf.insert("a")
        buf.insert("b")
        assert await buf.sync_flush(timeout=30) == [0, 1]
    assert overlap == {0: True, 1: True}


async def test_never_an_empty_flush(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(
        handle_flush=recorder, partitions=3, max_size=2, flush_interval=0.05, flush_jitter=0
    ) as buf:
        await buf.flush()
        assert await buf.sync_flush(timeout=30) == []
        for i in range(7):
            await buf.ainsert(i)
        buf.insert_batch([])
        await buf.ainsert_batch([])
        await buf.flush()
        await buf.sync_flush(timeout=30)
        await buf.flush()
        await buf.sync_flush(timeout=30)
        await asyncio.sleep(0.15)  # timer rounds over empty partitions
    assert recorder.batches()
    assert all(len(b) > 0 for b in recorder.batches())
    assert all(o.size == len(b) for b, o, _ in recorder.calls)
    assert sorted(recorder.items()) == list(range(7))


# -- insert and insert_batch never wait ----------------------------------------------------


async def test_insert_into_a_full_partition_raises_buffer_full_at_once(AsyncBuffer):
    async with stuck(AsyncBuffer, name="brimful") as (buf, release, recorder):
        buf.insert(2)
        buf.insert(3)  # the partition now holds a full batch while [0, 1] is flushing
        before = (buf.size(), buf.dump(), buf.stats()["inserted"])
        assert before == (2, [2, 3], 4)
        t0 = time.monotonic()
        with pytest.raises(BufferFull) as excinfo:
            buf.insert(4)
        assert time.monotonic() - t0 < 1.0  # at once: insert_timeout (5 s) is for ainsert
        error = excinfo.value
        assert type(error).__name__ == "BufferFull"
        assert isinstance(error, TimeoutError)
        assert error.stored == 0
        assert "brimful" in str(error)
        assert "ainsert()" in str(error)
        assert (buf.size(), buf.dump(), buf.stats()["inserted"]) == before
        with pytest.raises(BufferFull):
            buf.insert(5)
        assert buf.stats()["inserted"] == 4
        release.set()
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3]


async def test_insert_batch_into_a_full_partition_reports_stored(AsyncBuffer):
    async with stuck(AsyncBuffer, name="brimful") as (buf, release, recorder):
        t0 = time.monotonic()
        with pytest.raises(BufferFull) as excinfo:
            buf.insert_batch([2, 3, 4, 5])
        assert time.monotonic() - t0 < 1.0
        error = excinfo.value
        assert error.stored == 2
        assert type(error).__name__ == "BufferFull"
        assert "brimful" in str(error)
        assert "ainsert_batch()" in str(error)
        assert "2 leading items stored" in str(error)
        assert buf.dump() == [2, 3]
        assert buf.stats()["inserted"] == 4
        # Already full: nothing of the next call is stored.
        with pytest.raises(BufferFull) as excinfo:
            buf.insert_batch([6, 7])
        assert excinfo.value.stored == 0
        assert buf.dump() == [2, 3]
        release.set()
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3]


async def test_a_plain_insert_from_another_thread_does_not_wait_either(AsyncBuffer):
    async with stuck(AsyncBuffer) as (buf, release, recorder):
        buf.insert_batch([2, 3])
        call = Background(buf.insert, 4)
        await await_for(call.done.is_set, timeout=10)
        assert isinstance(call.error, BufferFull)
        assert buf.stats()["inserted"] == 4
        release.set()
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3]


# -- ainsert and ainsert_batch wait for room ---------------------------------------------------


async def test_ainsert_waits_for_room_until_the_flush_finishes(AsyncBuffer):
    async with stuck(AsyncBuffer) as (buf, release, recorder):
        buf.insert_batch([2, 3])
        waiting = asyncio.create_task(buf.ainsert(4, timeout=30))
        await asyncio.sleep(0.1)
        assert not waiting.done(), "ainsert returned although the partition was full"
        assert buf.dump() == [2, 3]
        assert buf.stats()["inserted"] == 4
        release.set()
        assert await asyncio.wait_for(waiting, 10) is None
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3, 4]
        assert buf.stats()["inserted"] == 5


async def test_ainsert_timeout_raises_buffer_full_storing_nothing(AsyncBuffer):
    loop = asyncio.get_running_loop()
    async with stuck(AsyncBuffer, name="patience") as (buf, release, recorder):
        buf.insert_batch([2, 3])
        before = (buf.size(), buf.dump(), buf.stats()["inserted"])
        t0 = loop.time()
        with pytest.raises(BufferFull) as excinfo:
            await buf.ainsert(4, timeout=0.05)
        assert loop.time() - t0 >= 0.05 - CLOCK_SLACK
        assert isinstance(excinfo.value, TimeoutError)
        assert excinfo.value.stored == 0
        assert "patience" in str(excinfo.value)
        assert "0.05s" in str(excinfo.value)
        with pytest.raises(BufferFull):
            await buf.ainsert(4, timeout=0)
        assert (buf.size(), buf.dump(), buf.stats()["inserted"]) == before
        release.set()
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3]


async def test_insert_timeout_is_the_default_timeout_of_ainsert(AsyncBuffer):
    loop = asyncio.get_running_loop()
    async with stuck(AsyncBuffer, insert_timeout=0.05) as (buf, release, recorder):
        buf.insert_batch([2, 3])
        t0 = loop.time()
        with pytest.raises(BufferFull) as excinfo:
            await buf.ainsert(4)
        assert loop.time() - t0 >= 0.05 - CLOCK_SLACK
        assert "0.05s" in str(excinfo.value)
        with pytest.raises(BufferFull) as excinfo:
            await buf.ainsert_batch([4, 5])
        assert excinfo.value.stored == 0
        assert buf.dump() == [2, 3]
        # An explicit timeout overrides it.
        waiting = asyncio.create_task(buf.ainsert(4, timeout=30))
        await asyncio.sleep(0.15)
        assert not waiting.done()
        release.set()
        await asyncio.wait_for(waiting, 10)
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3, 4]


async def test_ainsert_batch_waits_for_room_between_chunks(AsyncBuffer):
    async with stuck(AsyncBuffer) as (buf, release, recorder):
        waiting = asyncio.create_task(buf.ainsert_batch([2, 3, 4, 5, 6], timeout=30))
        await await_for(lambda: buf.dump() == [2, 3])
        await asyncio.sleep(0.1)
        assert not waiting.done(), "ainsert_batch returned although the partition was full"
        assert buf.dump() == [2, 3]
        release.set()
        assert await asyncio.wait_for(waiting, 10) is None
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3, 4, 5, 6]
        assert all(0 < len(b) <= 2 for b in recorder.batches())


async def test_ainsert_batch_stores_everything_in_order_in_one_partition(AsyncBuffer):
    recorder = AsyncRecorder()

    async def slow(batch, opts):
        await asyncio.sleep(0.001)
        return await recorder(batch, opts)

    async with AsyncBuffer(handle_flush=slow, partitions=3, max_size=2, flush_interval=3600) as buf:

        async def others() -> None:
            for i in range(100, 130):
                await buf.ainsert(i)

        other = asyncio.create_task(others())
        await buf.ainsert_batch(x for x in range(40))  # many waits for room
        await asyncio.wait_for(other, 10)
        await buf.sync_flush(timeout=30)
    where = recorder.partition_of()
    (home,) = {where[i] for i in range(40)}
    assert [item for item in recorder.items(home) if item < 100] == list(range(40))
    assert sorted(recorder.items()) == list(range(40)) + list(range(100, 130))
    assert all(0 < len(b) <= 2 for b in recorder.batches())


async def test_ainsert_batch_timeout_raises_buffer_full_with_stored(AsyncBuffer):
    loop = asyncio.get_running_loop()
    async with stuck(AsyncBuffer, name="partial") as (buf, release, recorder):
        t0 = loop.time()
        with pytest.raises(BufferFull) as excinfo:
            await buf.ainsert_batch([2, 3, 4, 5], timeout=0.05)
        assert loop.time() - t0 >= 0.05 - CLOCK_SLACK
        assert excinfo.value.stored == 2
        assert "partial" in str(excinfo.value)
        assert "2 leading items stored" in str(excinfo.value)
        assert buf.dump() == [2, 3]
        assert buf.stats()["inserted"] == 4
        with pytest.raises(BufferFull) as excinfo:
            await buf.ainsert_batch([6, 7], timeout=0.05)
        assert excinfo.value.stored == 0
        assert buf.dump() == [2, 3]
        release.set()
        await buf.sync_flush(timeout=30)
        assert recorder.items() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (-0.5, ValueError), (math.nan, ValueError), (math.inf, ValueError)]
    + [("x", TypeError), ("1", TypeError), (True, TypeError), ([1], TypeError)],
)
async def test_a_bad_timeout_is_refused_naming_it(AsyncBuffer, timeout, error):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=3600) as buf:
        with pytest.raises(error, match="timeout"):
            await buf.ainsert(1, timeout=timeout)
        with pytest.raises(error, match="timeout"):
            await buf.ainsert_batch([2, 3], timeout=timeout)
        with pytest.raises(error, match="timeout"):
            await buf.sync_flush(timeout=timeout)
        with pytest.raises(error, match="timeout"):
            await buf.aclose(timeout=timeout)
        assert buf.closed is False
        assert buf.stats()["inserted"] == 0
        await buf.ainsert(4, timeout=0)  # 0 is fine: there is room
        assert buf.dump() == [4]
    assert recorder.items() == [4]


async def test_ainsert_waiting_for_room_when_aclose_comes_loses_nothing(AsyncBuffer):
    release = asyncio.Event()
    started = asyncio.Event()
    recorder = AsyncRecorder()

    async def fn(batch, opts):
        if batch[0] == 0:
            started.set()
            await release.wait()
        return await recorder(batch, opts)

    buf = AsyncBuffer(handle_flush=fn, max_size=2, max_queued_batches=0, flush_interval=3600)
    await buf.start()
    closing = None
    try:
        buf.insert_batch([0, 1])
        await wait_event(started)
        buf.insert_batch([2, 3])  # full while [0, 1] is flushing
        one = asyncio.create_task(buf.ainsert(4, timeout=30))
        many = asyncio.create_task(buf.ainsert_batch([5, 6, 7], timeout=30))
        await asyncio.sleep(0.05)
        assert not one.done() and not many.done()
        closing = asyncio.create_task(buf.aclose(timeout=30))
        # Closing wakes the waiting inserts at once, before the stuck flush ends.
        await asyncio.wait_for(asyncio.wait([one, many]), 10)
        assert buf.closed is True
        release.set()
        await asyncio.wait_for(closing, 30)
    finally:
        release.set()
        if closing is None:
            await buf.aclose(timeout=30)
    stored = [0, 1, 2, 3]
    refused = []
    if one.exception() is None:
        stored.append(4)
    else:
        assert isinstance(one.exception(), BufferClosed)
        refused.append(4)
    if many.exception() is None:
        stored += [5, 6, 7]
    else:
        exc = many.exception()
        assert isinstance(exc, BufferClosed)
        stored += [5, 6, 7][: exc.stored]
        refused += [5, 6, 7][exc.stored :]
    delivered = recorder.items()
    assert sorted(delivered) == sorted(stored)
    assert len(delivered) == len(set(delivered))
    assert not set(refused) & set(delivered)
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] == len(stored)
    assert (stats["size"], stats["in_flight"], stats["failed"]) == (0, 0, 0)


# -- inserts from other threads ----------------------------------------------------------------


async def test_a_seal_from_another_thread_wakes_the_loop(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=5, flush_interval=60, flush_jitter=0) as buf:
        producer = Background(lambda: [buf.insert(i) for i in range(5)])
        # No polling: the loop sleeps until the seal reaches it (or the 60 s timer would).
        await wait_event(recorder.called, timeout=10)
        assert recorder.batches() == [[0, 1, 2, 3, 4]]
        assert recorder.triggers() == ["size"]
        await await_for(producer.done.is_set)
        assert producer.error is None

        recorder.called.clear()
        producer = Background(buf.insert_batch, list(range(5, 10)))
        await wait_event(recorder.called, timeout=10)
        assert recorder.batches()[-1] == [5, 6, 7, 8, 9]
        assert recorder.triggers() == ["size", "size"]
        await await_for(producer.done.is_set)
        assert producer.error is None


async def test_threads_and_the_loop_inserting_at_once_deliver_everything_exactly_once(AsyncBuffer):
    threads, per_thread, on_loop = 4, 400, 400
    stride = 100_000
    calls: list[tuple[int, list[int]]] = []

    async def fn(batch, opts):
        if len(calls) % 3 == 0:
            await asyncio.sleep(0)
        calls.append((opts.partition, list(batch)))

    full_in_threads = Counter[int]()
    go = threading.Event()

    def produce(t: int) -> None:
        assert go.wait(30)
        deadline = time.monotonic() + 60
        for seq in range(per_thread):
            item = t * stride + seq
            while True:
                try:
                    buf.insert(item)
                    break
                except BufferFull:
                    # Counted, then tried again: the item is stored once in the end.
                    full_in_threads[t] += 1
                    assert time.monotonic() < deadline
                    time.sleep(0.0005)

    buf = AsyncBuffer(handle_flush=fn, name="mixed", partitions=2, max_size=16, flush_interval=3600)
    async with buf:
        producers = [Background(produce, t) for t in range(1, threads + 1)]
        go.set()
        for seq in range(on_loop):
            await buf.ainsert(seq)  # thread 0's items: the loop's own
        await await_for(lambda: all(p.done.is_set() for p in producers), timeout=60)
        assert [p.error for p in producers] == [None] * threads
    delivered = [item for _, batch in calls for item in batch]
    expected = set(range(on_loop)) | {
        t * stride + s for t in range(1, threads + 1) for s in range(per_thread)
    }
    counts = Counter(delivered)
    assert [item for item, n in counts.items() if n > 1] == []
    assert counts.keys() == expected
    assert all(0 < len(batch) <= 16 for _, batch in calls)
    # Within a partition, each producer's items arrive in insertion order.
    last: dict[tuple[int, int], int] = defaultdict(lambda: -1)
    for partition, batch in calls:
        for item in batch:
            producer, seq = divmod(item, stride)
            assert seq > last[partition, producer]
            last[partition, producer] = seq
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] == len(expected)
    assert (stats["size"], stats["in_flight"], stats["failed"]) == (0, 0, 0)


async def test_dispatch_thread_keeps_each_thread_in_one_partition(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(
        handle_flush=recorder, partitions=3, max_size=100, flush_interval=3600, dispatch="thread"
    ) as buf:
        buf.insert(("loop", 0))
        await buf.ainsert(("loop", 1))
        buf.insert_batch([("loop", 2)])
        await buf.ainsert_batch([("loop", 3), ("loop", 4)])
        home = first_partition(buf)
        assert [p["size"] for p in buf.info()][home] == 5
        assert buf.size() == 5

        done = threading.Event()
        entered = [threading.Event() for _ in range(2)]

        def worker(t: int) -> None:
            for i in range(4):
                buf.insert((t, i))
            buf.insert_batch([(t, 4), (t, 5)])
            entered[t].set()
            # Stay alive until every thread has inserted: an ended thread's
            # ident may be reused, and a reused ident takes over its home.
            assert done.wait(30)

        workers = [Background(worker, t) for t in range(2)]
        try:
            await await_for(lambda: all(e.is_set() for e in entered))
        finally:
            done.set()
        for w in workers:
            await await_for(w.done.is_set)
            assert w.error is None
        await buf.sync_flush(timeout=30)
    where = recorder.partition_of()
    homes = {}
    for who in ("loop", 0, 1):
        (homes[who],) = {p for item, p in where.items() if item[0] == who}
        assert [item for item in recorder.items(homes[who]) if item[0] == who] == [
            (who, i) for i in range(6 if who != "loop" else 5)
        ]
    assert homes["loop"] == home
    # Three threads, three partitions: homes are given round-robin.
    assert sorted(homes.values()) == [0, 1, 2]


# -- dump, size, info, stats -----------------------------------------------------------------


async def test_dump_does_not_clear_and_keeps_partition_order(AsyncBuffer):
    obj = object()
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, partitions=2, max_size=100, flush_interval=3600) as buf:
        assert buf.dump() == []
        buf.insert(obj)
        start = first_partition(buf)
        buf.insert("b")
        await buf.ainsert("c")
        buf.insert_batch(["d", "e"])
        own = [obj, "c"]
        other = ["b", "d", "e"]
        expected = own + other if start == 0 else other + own
        first = buf.dump()
        assert first == expected
        assert any(item is obj for item in first)
        first.clear()  # a copy: changing it changes nothing
        assert buf.dump() == expected
        assert buf.size() == 5
        assert [p["size"] for p in buf.info()] == ([2, 3] if start == 0 else [3, 2])
        await buf.sync_flush(timeout=30)
        assert buf.dump() == []
        assert buf.size() == 0
    assert sorted(map(len, recorder.batches())) == [2, 3]


async def test_size_counts_items_not_handed_to_a_flusher(AsyncBuffer):
    release = asyncio.Event()
    started = asyncio.Event()

    async def fn(batch, opts):
        started.set()
        await release.wait()
        return len(batch)

    buf = AsyncBuffer(handle_flush=fn, max_size=3, flush_interval=3600)
    await buf.start()
    try:
        assert buf.size() == 0
        buf.insert_batch([1, 2, 3])  # a full batch, handed to the flusher at once
        assert buf.size() == 0
        assert buf.info()[0]["flushing"] is True
        await wait_event(started)
        buf.insert(4)
        assert buf.size() == 1
        assert buf.dump() == [4]
        (info,) = buf.info()
        assert info["flushing"] is True
        assert (info["inserted"], info["size"], info["in_flight"], info["flushed"]) == (4, 1, 3, 0)
        release.set()
        assert await buf.sync_flush(timeout=30) == [1]
        assert buf.size() == 0
        (info,) = buf.info()
        assert (info["inserted"], info["in_flight"], info["flushed"]) == (4, 0, 4)
        assert info["flushing"] is False
    finally:
        release.set()
        await buf.aclose(timeout=30)


async def test_flushing_is_false_once_sync_flush_returns(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=100, flush_interval=3600) as buf:
        buf.insert(1)
        assert await buf.sync_flush(timeout=30) == [1]
        (info,) = buf.info()
        assert info["in_flight"] == 0
        # "flushing: a batch is with the flusher" -- none is (Buffer says False here).
        assert info["flushing"] is False


async def test_info_has_the_keys_of_buffer_info_and_right_values(AsyncBuffer, make_buffer):
    plain_keys = set(make_buffer(handle_flush=lambda batch, opts: None, flush_interval=3600).info()[0])
    recorder = AsyncRecorder()
    buf = AsyncBuffer(
        handle_flush=recorder,
        name="info-buf",
        partitions=2,
        max_size=3,
        flush_interval=100,
        flush_jitter=1.5,
        flush_timeout=20,
    )
    async with buf:
        info = buf.info()
        assert isinstance(info, list) and len(info) == 2
        for p, part in enumerate(info):
            assert set(part) == plain_keys
            assert part["partition"] == p
            assert part["name"] == "info-buf"
            assert part["size"] == 0
            assert part["flush_size"] == 3
            assert part["flush_interval"] == 100.0
            assert part["flush_jitter"] == 1.5
            assert part["flush_timeout"] == 20.0
            assert part["flushing"] is False
            counters = ("inserted", "in_flight", "flushed", "retried", "failed", "dropped")
            assert [part[k] for k in counters] == [0] * 6
        assert set(buf.stats()) == {
            "name",
            "partitions",
            "closed",
            "inserted",
            "size",
            "in_flight",
            "flushed",
            "retried",
            "failed",
            "dropped",
        }

        buf.insert(0)
        start = first_partition(buf)
        other = 1 - start
        for i in range(1, 7):
            buf.insert(i)  # start gets 0,2,4,6 (flushes 0,2,4); other gets 1,3,5 (flushes)
        await await_for(lambda: buf.stats()["flushed"] == 6)
        await await_for(lambda: not any(p["flushing"] for p in buf.info()))
        info = buf.info()
        assert (info[start]["inserted"], info[start]["size"], info[start]["flushed"]) == (4, 1, 3)
        assert (info[other]["inserted"], info[other]["size"], info[other]["flushed"]) == (3, 0, 3)
        assert info[start]["failed"] == info[other]["failed"] == 0
        assert buf.size() == 1
        assert buf.dump() == [6]


async def test_stats_stay_consistent_while_producers_run(AsyncBuffer):
    total_loop, total_thread = 600, 600
    go = threading.Event()

    async def fn(batch, opts):
        await asyncio.sleep(0)

    buf = AsyncBuffer(handle_flush=fn, partitions=2, max_size=7, flush_interval=3600)

    def produce() -> None:
        assert go.wait(30)
        deadline = time.monotonic() + 60
        for i in range(total_thread):
            while True:
                try:
                    buf.insert(-i - 1)
                    break
                except BufferFull:
                    assert time.monotonic() < deadline
                    time.sleep(0.0002)

    async def produce_on_loop() -> None:
        for i in range(total_loop):
            await buf.ainsert(i)

    checks = 0
    problems: list[str] = []
    flushed_before = 0
    async with buf:
        thread = Background(produce)
        go.set()
        task = asyncio.create_task(produce_on_loop())
        while not (task.done() and thread.done.is_set()):
            stats = buf.stats()
            checks += 1
            s = stats
            if not adds_up(s):
                problems.append(f"stats: {s}")
            if min(s["size"], s["in_flight"], s["flushed"]) < 0:
                problems.append(f"negative: {s}")
            if s["flushed"] < flushed_before:
                problems.append(f"flushed went back from {flushed_before}: {s}")
            flushed_before = s["flushed"]
            for d in buf.info():
                if not adds_up(d):
                    problems.append(f"info: {d}")
            await asyncio.sleep(0.0005)
        await task
        assert thread.error is None
    assert problems == []
    assert checks > 5
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] == total_loop + total_thread
    assert (stats["size"], stats["in_flight"], stats["failed"], stats["retried"]) == (0, 0, 0, 0)


# -- options ----------------------------------------------------------------------------------


async def noop(batch: list[Any], opts: FlushOpts) -> None:
    return None


BAD_OPTIONS = [
    ("max_size", 0, ValueError),
    ("max_size", -1, ValueError),
    ("partitions", 0, ValueError),
    ("partitions", "2", TypeError),
    ("max_size", 2.0, TypeError),
    ("max_size_jitter", -1, ValueError),
    ("flush_interval", 0, ValueError),
    ("flush_interval", "1", TypeError),
    ("flush_jitter", math.nan, ValueError),
    ("flush_jitter", -1, ValueError),
    ("flush_jitter", "2", TypeError),
    ("flush_timeout", -1, ValueError),
    ("insert_timeout", 0, ValueError),
    ("insert_timeout", None, TypeError),
    ("max_retries", -1, ValueError),
    ("retry_on", "ConnectionError", TypeError),
    ("retry_on", (ConnectionError, int), TypeError),
    ("retry_on", 3, TypeError),
    ("dispatch", "threads", ValueError),
    ("dispatch", None, TypeError),
    ("name", 3, TypeError),
]


async def test_options_are_checked_as_for_buffer(AsyncBuffer, make_buffer):
    for option, value, error in BAD_OPTIONS:
        with pytest.raises(error, match=option):
            AsyncBuffer(handle_flush=noop, **{option: value})
        # The same error as Buffer's.
        with pytest.raises(error, match=option):
            make_buffer(handle_flush=lambda batch, opts: None, **{option: value})
    with pytest.raises(TypeError, match=r"\(\) got an unknown option 'bogus_option'; its options are "):
        AsyncBuffer(handle_flush=noop, bogus_option=1)
    with pytest.raises(TypeError, match="takes its options as keywords only"):
        AsyncBuffer(noop)


async def test_defaults(AsyncBuffer):
    buf = AsyncBuffer(handle_flush=noop)
    async with buf:
        (part,) = buf.info()  # partitions=1
        assert part["flush_size"] == 5000
        assert part["flush_interval"] == 10.0
        assert part["flush_jitter"] == 2.0
        assert part["flush_timeout"] == 60.0
        assert part["name"] == AsyncBuffer.__name__


async def test_handle_flush_is_required_and_must_be_async(AsyncBuffer):
    with pytest.raises(TypeError, match="async def handle_flush"):
        AsyncBuffer()

    class NoMethod(AsyncBuffer):
        pass

    with pytest.raises(TypeError, match="async def handle_flush"):
        NoMethod(max_size=3)

    class WithMethod(AsyncBuffer):
        async def handle_flush(self, batch, opts):
            return None

    with pytest.raises(TypeError, match="handle_flush"):
        WithMethod(handle_flush=noop)

    def plain(batch, opts):
        return None

    with pytest.raises(TypeError, match="async def"):
        AsyncBuffer(handle_flush=plain)
    with pytest.raises(TypeError, match="async def"):
        AsyncBuffer(handle_flush=lambda batch, opts: None)

    class PlainMethod(AsyncBuffer):
        def handle_flush(self, batch, opts):
            return None

    with pytest.raises(TypeError, match="async def"):
        PlainMethod()
    with pytest.raises(TypeError, match="handle_flush"):
        AsyncBuffer(handle_flush="not callable")
    with pytest.raises(TypeError, match="handle_flush_error"):
        AsyncBuffer(handle_flush=noop, handle_flush_error=42)


async def test_subclass_style(AsyncBuffer):
    class EventBuffer(AsyncBuffer):
        def __init__(self, sink, **options):
            self.sink = sink
            super().__init__(**options)

        async def handle_flush(self, batch, opts):
            await asyncio.sleep(0)
            self.sink.append((list(batch), opts))
            return len(batch)

    sink: list = []
    buf = EventBuffer(sink, partitions=2, max_size=10, flush_interval=3600)
    assert isinstance(buf, AsyncBuffer)
    async with buf:
        buf.insert_batch([1, 2, 3])
        buf.insert_batch([4])
        assert await buf.sync_flush(timeout=30) == [3, 1]
    assert sorted(sink, key=lambda call: call[1].partition)[0][0] == [1, 2, 3]
    assert {opts.buffer for _, opts in sink} == {"EventBuffer"}


async def test_callback_style_and_async_callables(AsyncBuffer):
    calls = []
    meta = {"table": "events"}

    async def fn(batch, opts):
        calls.append((list(batch), opts))
        return ("fn", len(batch))

    class Sink:
        async def __call__(self, batch, opts):
            calls.append((list(batch), opts))
            return ("object", len(batch))

    async def with_prefix(prefix, batch, opts):
        calls.append((list(batch), opts))
        return (prefix, len(batch))

    for handler, expected in (
        (fn, ("fn", 2)),
        (Sink(), ("object", 2)),
        (functools.partial(with_prefix, "partial"), ("partial", 2)),
    ):
        calls.clear()
        async with AsyncBuffer(
            handle_flush=handler, name="callback-buf", flush_meta=meta, flush_interval=3600
        ) as buf:
            buf.insert("a")
            await buf.ainsert("b")
            assert await buf.sync_flush(timeout=30) == [expected]
        ((batch, opts),) = calls
        assert batch == ["a", "b"]
        assert isinstance(opts, FlushOpts)
        assert opts.meta is meta
        assert (opts.size, opts.partition, opts.buffer, opts.trigger, opts.attempt) == (
            2,
            0,
            "callback-buf",
            "manual",
            1,
        )


async def test_handle_flush_error_may_be_plain_or_async(AsyncBuffer):
    async def failing(batch, opts):
        raise ValueError(f"cannot write {batch}")

    seen: list[tuple[str, list[Any], str, BaseException]] = []

    def plain_handler(batch, opts, error):
        seen.append(("plain", list(batch), opts.trigger, error))

    async def async_handler(batch, opts, error):
        await asyncio.sleep(0)
        seen.append(("async", list(batch), opts.trigger, error))

    for kind, handler in (("plain", plain_handler), ("async", async_handler)):
        buf = AsyncBuffer(handle_flush=failing, handle_flush_error=handler, flush_interval=3600)
        async with buf:
            buf.insert_batch([1, 2])
        ((who, batch, trigger, error),) = [s for s in seen if s[0] == kind]
        assert (batch, trigger) == ([1, 2], "close")
        assert isinstance(error, ValueError)
        stats = buf.stats()
        assert (stats["failed"], stats["flushed"], stats["in_flight"]) == (2, 0, 0)
    assert [s[0] for s in seen] == ["plain", "async"]


# -- max_size_jitter ----------------------------------------------------------------------------


async def test_max_size_jitter_bounds_with_ainsert(AsyncBuffer):
    max_size, jitter = 3, 2
    recorder = AsyncRecorder()
    async with AsyncBuffer(
        handle_flush=recorder, max_size=max_size, max_size_jitter=jitter, flush_interval=3600
    ) as buf:
        for i in range(80):
            threshold = buf.info()[0]["flush_size"]
            assert max_size <= threshold <= max_size + jitter
            await buf.ainsert(i)
        await buf.sync_flush(timeout=30)
    batches = recorder.batches()
    sized = [len(b) for b, t in zip(batches, recorder.triggers(), strict=True) if t == "size"]
    assert len(sized) >= 80 // (max_size + jitter)
    assert all(max_size <= n <= max_size + jitter for n in sized), sized
    assert all(0 < len(b) <= max_size + jitter for b in batches)
    # Drawn anew after every flush: over ~20 draws from 3 values, more than one shows.
    assert len(set(sized)) > 1, sized
    assert recorder.items() == list(range(80))


async def test_max_size_jitter_with_ainsert_batch(AsyncBuffer):
    recorder = AsyncRecorder()
    async with AsyncBuffer(handle_flush=recorder, max_size=2, max_size_jitter=3, flush_interval=3600) as buf:
        await buf.ainsert_batch(range(40))
        await buf.ainsert_batch(iter(range(40, 60)))
        await buf.sync_flush(timeout=30)
    batches = recorder.batches()
    sized = [len(b) for b, t in zip(batches, recorder.triggers(), strict=True) if t == "size"]
    assert sized
    assert all(2 <= n <= 5 for n in sized), sized
    assert all(0 < len(b) <= 5 for b in batches), batches
    assert all(o.size == len(b) for b, o, _ in recorder.calls)
    assert recorder.items() == list(range(60))


async def test_the_insert_then_ainsert_idiom_lets_the_flushers_run(AsyncBuffer):
    """After a plain insert found a partition full, the next ainsert yields to the loop once.

    With several partitions, ainsert stores its item in the next partition,
    which often has room: without that yield, the producer would not let the
    full partitions' flusher tasks run until every partition was full, and
    nearly every insert would raise BufferFull.
    """
    flushed = 0

    async def count(batch, opts):
        nonlocal flushed
        flushed += len(batch)

    items, slow = 20_000, 0
    async with AsyncBuffer(handle_flush=count, partitions=4, max_size=100, flush_interval=3600) as buf:
        for i in range(items):
            try:
                buf.insert(i)
            except BufferFull:
                slow += 1
                await buf.ainsert(i)
    assert flushed == items
    batches = items // 100
    # About one BufferFull per two to four batches; without the yield, dozens per batch.
    assert slow <= batches, f"{slow} inserts found their partition full, for {batches} batches"
