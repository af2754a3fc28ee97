"""AsyncBuffer: failures, flush_timeout, retries, telemetry, shutdown, memory and fork.

The asyncio counterparts of test_failures, test_retries, test_deadlines,
test_telemetry, test_shutdown and test_memory.  Every async test runs on
both cores and on asyncio's default loop and uvloop (see conftest).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import textwrap
import time
import tracemalloc
import types
import warnings
import weakref
from typing import Any

import pytest
from conftest import AlwaysOne, Boom, Errors, Events, Sentinel, await_for, run_python

from databuffer import BufferClosed, BufferFull, FlushTimeout, telemetry
from databuffer._front import engine_of

pytestmark = pytest.mark.anyio

BIG = 3600.0  # flush_interval: no timed flushes during a test
# A loaded 2-core machine can be late to wake a task: upper bounds on
# durations get this much slack.
MARGIN = 2.0
# uvloop's timers have millisecond resolution on a clock read once per loop
# iteration: they may fire this much early by time.monotonic().
EARLY = 0.005
FLUSH_EVENTS = [telemetry.FLUSH_START, telemetry.FLUSH_STOP, telemetry.FLUSH_EXCEPTION, telemetry.FLUSH_RETRY]
INSERT_EVENTS = [telemetry.INSERT_START, telemetry.INSERT_STOP, telemetry.INSERT_EXCEPTION]


def chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and every exception it was raised from or during."""
    out: list[BaseException] = []
    while error is not None and error not in out:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


async def count(batch: list[Any], opts: Any) -> int:
    """A handle_flush that returns the batch's size."""
    return len(batch)


def is_uvloop(anyio_backend: Any) -> bool:
    return anyio_backend[1].get("loop_factory") is not None


def databuffer_records(caplog: Any, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "databuffer" and r.levelno == level]


# -- handle_flush raising ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["method", "function", "coroutine", "returns awaitable"])
async def test_a_failed_batch_goes_to_handle_flush_error_and_later_batches_flush(
    AsyncBuffer: Any, kind: str
) -> None:
    raised: list[BaseException] = []
    reported: list[tuple[list[Any], Any, BaseException]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        await asyncio.sleep(0)
        if batch[0] == "bad":
            error = Boom(f"batch {batch}")
            raised.append(error)
            raise error
        return len(batch)

    async def on_error_async(batch: list[Any], opts: Any, error: BaseException) -> None:
        await asyncio.sleep(0.01)  # sync_flush waits for it
        reported.append((list(batch), opts, error))

    def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        reported.append((list(batch), opts, error))

    class Failing(AsyncBuffer):  # type: ignore[misc,valid-type]
        async def handle_flush(self, batch: list[Any], opts: Any) -> int:
            return await handle_flush(batch, opts)

        def handle_flush_error(self, batch: list[Any], opts: Any, error: BaseException) -> None:
            on_error(batch, opts, error)

    meta = {"m": 1}
    options: dict[str, Any] = {"name": "failing", "max_size": 100, "flush_interval": BIG, "flush_meta": meta}
    handlers = {
        "function": on_error,
        "coroutine": on_error_async,
        # A plain callable whose result is awaitable: awaited too.
        "returns awaitable": lambda batch, opts, error: on_error_async(batch, opts, error),
    }
    if kind == "method":
        buf = Failing(**options)
    else:
        buf = AsyncBuffer(handle_flush=handle_flush, handle_flush_error=handlers[kind], **options)
    async with buf:
        buf.insert_batch(["bad", 1, 2])
        with pytest.raises(ExceptionGroup) as excinfo:
            await buf.sync_flush(timeout=30)
        assert len(reported) == 1, "sync_flush returned before handle_flush_error had finished"
        batch, opts, error = reported[0]
        assert batch == ["bad", 1, 2]
        assert error is raised[0]
        assert excinfo.value.exceptions == (error,)
        assert (opts.buffer, opts.partition, opts.size, opts.trigger, opts.attempt) == (
            "failing",
            0,
            3,
            "manual",
            1,
        )
        assert opts.meta is meta
        stats = buf.stats()
        assert (stats["failed"], stats["flushed"], stats["in_flight"]) == (3, 0, 0)
        # The partition goes on.
        buf.insert_batch(["good", 3])
        assert await buf.sync_flush(timeout=30) == [2]
    stats = buf.stats()
    assert (stats["inserted"], stats["failed"], stats["flushed"]) == (5, 3, 2)
    assert len(reported) == 1


async def test_the_default_handle_flush_error_logs_at_error_with_name_and_partition(
    AsyncBuffer: Any, caplog: Any
) -> None:
    async def exploding_handle_flush(batch: list[Any], opts: Any) -> None:
        if opts.partition == 1:
            raise Boom("kaboom-xyz")

    caplog.set_level(logging.ERROR, logger="databuffer")
    async with AsyncBuffer(
        handle_flush=exploding_handle_flush,
        name="loud-async",
        partitions=2,
        max_size=100,
        flush_interval=BIG,
    ) as buf:
        buf.insert_batch([1, 2, 3])  # one batch into each partition
        buf.insert_batch([4, 5, 6])
        assert [p["size"] for p in buf.info()] == [3, 3]
        with pytest.raises(ExceptionGroup):
            await buf.sync_flush(timeout=30)
        assert [(p["flushed"], p["failed"]) for p in buf.info()] == [(3, 0), (0, 3)]
    (record,) = databuffer_records(caplog, logging.ERROR)
    message = record.getMessage()
    assert "'loud-async'" in message
    assert "partition 1" in message
    assert "3 items" in message
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Boom)
    assert "kaboom-xyz" in caplog.text
    assert "exploding_handle_flush" in caplog.text  # the failing frame is in the traceback


@pytest.mark.parametrize("kind", ["function", "coroutine"])
async def test_a_raising_handle_flush_error_is_logged_and_the_batch_counted_failed(
    AsyncBuffer: Any, caplog: Any, kind: str
) -> None:
    calls: list[list[Any]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        calls.append(list(batch))
        if batch[0] == "fail":
            raise Boom("first")
        return len(batch)

    def bad_handler(batch: list[Any], opts: Any, error: BaseException) -> None:
        raise RuntimeError("error handler broke")

    async def bad_async_handler(batch: list[Any], opts: Any, error: BaseException) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("error handler broke")

    caplog.set_level(logging.ERROR, logger="databuffer")
    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=bad_handler if kind == "function" else bad_async_handler,
        name="eh-async",
        max_size=2,
        flush_interval=BIG,
    ) as buf:
        buf.insert_batch(["fail", "x"])  # a size flush
        await await_for(lambda: buf.stats()["failed"] == 2, timeout=30)
        records = databuffer_records(caplog, logging.ERROR)
        assert any(
            "handle_flush_error raised" in r.getMessage()
            and "'eh-async'" in r.getMessage()
            and r.exc_info is not None
            and isinstance(r.exc_info[1], RuntimeError)
            for r in records
        ), [r.getMessage() for r in records]
        buf.insert_batch(["ok", "y"])
        buf.insert("z")
        assert await buf.sync_flush(timeout=30) == [1]
        assert calls == [["fail", "x"], ["ok", "y"], ["z"]]
    stats = buf.stats()
    assert (stats["inserted"], stats["failed"], stats["flushed"], stats["in_flight"]) == (5, 2, 3, 0)


async def test_sync_flush_raises_the_errors_in_partition_order_after_every_partition_finished(
    AsyncBuffer: Any,
) -> None:
    errors = {0: Boom("p0"), 2: Boom("p2")}
    reported: list[BaseException] = []
    p0_reported = asyncio.Event()
    p1_done = asyncio.Event()
    p2_reported = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> str:
        if opts.partition == 0:
            raise errors[0]
        if opts.partition == 1:
            # Partition 1 finishes only after partition 0 failed and was reported.
            await asyncio.wait_for(p0_reported.wait(), 30)
            p1_done.set()
            return "p1 ok"
        await asyncio.wait_for(p1_done.wait(), 30)  # partition 2 fails last
        raise errors[2]

    async def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        await asyncio.sleep(0.01)
        reported.append(error)
        (p0_reported if opts.partition == 0 else p2_reported).set()

    async with AsyncBuffer(
        handle_flush=handle_flush, handle_flush_error=on_error, partitions=3, max_size=100, flush_interval=BIG
    ) as buf:
        for i in range(6):
            buf.insert(i)
        assert [p["size"] for p in buf.info()] == [2, 2, 2]
        with pytest.raises(ExceptionGroup) as excinfo:
            await buf.sync_flush(timeout=30)
        group = excinfo.value
        assert len(group.exceptions) == 2
        assert group.exceptions[0] is errors[0] and group.exceptions[1] is errors[2]
        assert (
            str(group)
            == f"sync_flush() of buffer {AsyncBuffer.__name__!r}: 2 batches failed (2 sub-exceptions)"
        )
        # Every partition had finished, error handlers included.
        assert p1_done.is_set() and p2_reported.is_set()
        assert sorted(map(id, reported)) == sorted([id(errors[0]), id(errors[2])])
        info = buf.info()
        assert [p["failed"] for p in info] == [2, 0, 2]
        assert [p["flushed"] for p in info] == [0, 2, 0]


async def test_a_cancelled_error_raised_by_handle_flush_fails_only_its_batch(AsyncBuffer: Any) -> None:
    errors = Errors()
    delivered: list[list[Any]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> str:
        if batch[0] == "cancel":
            raise asyncio.CancelledError("not the flusher's")
        delivered.append(list(batch))
        return "ok"

    async with AsyncBuffer(
        handle_flush=handle_flush, handle_flush_error=errors, name="cx", max_size=100, flush_interval=BIG
    ) as buf:
        buf.insert_batch(["cancel", 1])
        # Not an Exception: a BaseExceptionGroup, which is not an ExceptionGroup.
        with pytest.raises(BaseExceptionGroup) as excinfo:
            await buf.sync_flush(timeout=30)
        assert not isinstance(excinfo.value, ExceptionGroup)
        ((batch, _, error),) = errors.reported
        assert batch == ["cancel", 1]
        assert isinstance(error, asyncio.CancelledError)
        assert excinfo.value.exceptions == (error,)
        # The flusher task was not cancelled: the partition goes on.
        buf.insert_batch(["next", 2])
        assert await buf.sync_flush(timeout=30) == ["ok"]
        assert delivered == [["next", 2]]
        assert not buf.closed
    stats = buf.stats()
    assert (stats["failed"], stats["flushed"]) == (2, 2)


class _PlainCallable:
    """A callable object whose ``__call__`` is a plain function (the constructor cannot tell)."""

    def __init__(self, returns: str) -> None:
        self.returns = returns
        self.calls = 0

    def __call__(self, batch: list[Any], opts: Any) -> Any:
        self.calls += 1
        if self.returns == "coroutine":
            return asyncio.sleep(0, result=len(batch))
        return 42


async def test_a_handle_flush_returning_a_non_awaitable_fails_its_batch_with_type_error(
    AsyncBuffer: Any,
) -> None:
    fn, errors = _PlainCallable("int"), Errors()
    async with AsyncBuffer(
        handle_flush=fn, handle_flush_error=errors, name="not-async", max_size=100, flush_interval=BIG
    ) as buf:
        buf.insert_batch([1, 2])
        with pytest.raises(ExceptionGroup) as excinfo:
            await buf.sync_flush(timeout=30)
        (error,) = excinfo.value.exceptions
        assert isinstance(error, TypeError)
        assert "async def" in str(error)
        assert "'not-async'" in str(error)
        assert "int" in str(error)
        assert [(b, e) for b, _, e in errors.reported] == [([1, 2], error)]
        # Later batches are tried (and fail) the same way: the flusher goes on.
        buf.insert(3)
        with pytest.raises(ExceptionGroup):
            await buf.sync_flush(timeout=30)
        assert fn.calls == 2
    assert buf.stats()["failed"] == 3


async def test_a_plain_callable_returning_a_coroutine_is_awaited(AsyncBuffer: Any) -> None:
    fn = _PlainCallable("coroutine")
    async with AsyncBuffer(handle_flush=fn, max_size=100, flush_interval=BIG) as buf:
        buf.insert_batch([1, 2, 3])
        assert await buf.sync_flush(timeout=30) == [3]
    assert buf.stats()["flushed"] == 3


# -- flush_timeout -----------------------------------------------------------------


async def test_flush_timeout_cancels_the_call_and_reports_a_flush_timeout(AsyncBuffer: Any) -> None:
    timeout = 0.1
    entered: list[float] = []
    cancelled: list[tuple[asyncio.CancelledError, float]] = []
    finished: list[str] = []
    delivered: list[list[int]] = []
    errors = Errors()

    async def handle_flush(batch: list[int], opts: Any) -> str:
        if batch[0] == 0:
            entered.append(time.monotonic())
            try:
                await asyncio.Event().wait()  # forever
            except asyncio.CancelledError as exc:
                cancelled.append((exc, time.monotonic()))
                raise
            finally:
                finished.append("stuck call ended")
        delivered.append(list(batch))
        return "ok"

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="slow-async",
        max_size=2,
        flush_interval=BIG,
        flush_timeout=timeout,
    ) as buf:
        buf.insert_batch([0, 1])  # a size flush, which gets stuck
        await await_for(lambda: entered, timeout=30)
        await buf.ainsert_batch([2, 3], timeout=30)  # behind it in the partition
        await await_for(lambda: errors.reported, timeout=30)

        # The call was really cancelled, after flush_timeout.
        assert finished == ["stuck call ended"]
        ((cancellation, when),) = cancelled
        assert timeout - EARLY <= when - entered[0] < timeout + MARGIN
        ((batch, opts, error),) = errors.reported
        assert batch == [0, 1]
        assert (opts.trigger, opts.size, opts.partition, opts.attempt) == ("size", 2, 0, 1)
        assert isinstance(error, FlushTimeout)
        assert isinstance(error, TimeoutError)
        message = str(error)
        assert "'slow-async'" in message
        assert "partition 0" in message
        assert "flush_timeout=0.1" in message
        # It was raised from the cancellation of the call.
        assert isinstance(error.__cause__, (TimeoutError, asyncio.CancelledError))
        assert not isinstance(error.__cause__, FlushTimeout)
        assert cancellation in chain(error.__cause__)

        # The partition goes on with the next batch.
        await await_for(lambda: delivered == [[2, 3]], timeout=30)
        buf.insert(4)
        assert await buf.sync_flush(timeout=30) == ["ok"]
        assert delivered == [[2, 3], [4]]
    stats = buf.stats()
    assert (stats["failed"], stats["flushed"], stats["in_flight"], stats["size"]) == (2, 3, 0, 0)
    assert len(errors.reported) == 1


async def test_a_timeout_error_of_handle_flush_itself_is_not_a_flush_timeout(AsyncBuffer: Any) -> None:
    errors = Errors()
    own = TimeoutError("the database timed out")

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        await asyncio.sleep(0)
        raise own

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        flush_timeout=30,
    ) as buf:
        buf.insert_batch([1, 2])
        with pytest.raises(ExceptionGroup) as excinfo:
            await buf.sync_flush(timeout=30)
    assert excinfo.value.exceptions == (own,)
    ((_, _, error),) = errors.reported
    assert error is own
    assert not isinstance(error, FlushTimeout)


async def test_a_handle_flush_that_swallows_the_cancellation_is_still_a_flush_timeout(
    AsyncBuffer: Any,
) -> None:
    timeout = 0.1
    swallowed: list[asyncio.CancelledError] = []
    errors = Errors()

    async def handle_flush(batch: list[Any], opts: Any) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            swallowed.append(exc)
            await asyncio.sleep(0.02)  # and returns late
        return "late"

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="swallow",
        max_size=100,
        flush_interval=BIG,
        flush_timeout=timeout,
    ) as buf:
        buf.insert_batch([1, 2, 3])
        start = time.monotonic()
        with pytest.raises(ExceptionGroup) as excinfo:
            await buf.sync_flush()  # no timeout: bounded by flush_timeout
        assert timeout - EARLY <= time.monotonic() - start < timeout + MARGIN
        assert len(swallowed) == 1
        (error,) = excinfo.value.exceptions
        assert isinstance(error, FlushTimeout)
        assert "'swallow'" in str(error)
        assert [(b, e) for b, _, e in errors.reported] == [([1, 2, 3], error)]
        stats = buf.stats()
        assert (stats["failed"], stats["flushed"]) == (3, 0)


async def test_aclose_without_a_timeout_is_bounded_by_flush_timeout(AsyncBuffer: Any) -> None:
    errors = Errors()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        await asyncio.Event().wait()

    buf = AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        flush_timeout=0.1,
    )
    await buf.start()
    buf.insert_batch([1, 2])
    start = time.monotonic()
    await buf.aclose()  # does not raise the flush's failure
    assert 0.1 - EARLY <= time.monotonic() - start < 0.1 + MARGIN
    ((batch, opts, error),) = errors.reported
    assert (batch, opts.trigger) == ([1, 2], "close")
    assert isinstance(error, FlushTimeout)
    assert buf.stats()["failed"] == 2


@pytest.mark.parametrize("call", ["sync_flush", "aclose", "wait_for"])
@pytest.mark.parametrize("stuck", ["handle_flush", "handle_flush_error", "backoff"])
async def test_sync_flush_and_aclose_keep_their_deadline(AsyncBuffer: Any, stuck: str, call: str) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()
    retries: list[int] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if stuck == "handle_flush":
            entered.set()
            await release.wait()
        if stuck in ("handle_flush_error", "backoff") and opts.attempt == 1:
            raise Boom("fail")

    async def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        entered.set()
        await release.wait()

    if stuck == "backoff":
        telemetry.attach("entered", telemetry.FLUSH_RETRY, lambda *a: (entered.set(), retries.append(1)))
    buf = AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=on_error,
        name="deadline",
        max_size=100,
        flush_interval=BIG,
        flush_timeout=60,
        max_retries=1 if stuck == "backoff" else 0,
        retry_backoff=0.5,
        retry_backoff_max=0.5,
    )
    engine_of(buf).random = AlwaysOne()  # a 0.5 s backoff
    await buf.start()
    try:
        buf.insert_batch([1, 2, 3])
        await buf.flush()
        await asyncio.wait_for(entered.wait(), 30)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            if call == "wait_for":  # sync_flush cancelled from outside
                await asyncio.wait_for(buf.sync_flush(), 0.1)
            else:
                await getattr(buf, call)(timeout=0.1)
        assert 0.1 - EARLY <= time.monotonic() - start < 0.1 + MARGIN
        assert buf.closed == (call == "aclose")  # closed to inserts; the flush goes on
        stats = buf.stats()
        assert (stats["in_flight"], stats["flushed"], stats["failed"]) == (3, 0, 0)
    finally:
        release.set()
        await buf.aclose(timeout=30)
    assert retries == ([1] if stuck == "backoff" else [])
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] + stats["failed"] == 3
    assert stats["in_flight"] == 0


# -- retries -----------------------------------------------------------------------


async def test_a_flaky_batch_is_retried_with_its_own_copy_until_it_succeeds(AsyncBuffer: Any) -> None:
    events = Events("retry-async")
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    calls: list[tuple[list[Any], int]] = []
    errors = Errors()

    async def handle_flush(batch: list[Any], opts: Any) -> Any:
        calls.append((list(batch), opts.attempt))
        await asyncio.sleep(0)
        if opts.attempt < 3:
            # Mutating the list must not change what the next attempt gets.
            batch.append("junk")
            del batch[0]
            raise Boom(f"attempt {opts.attempt}")
        return ("ok", opts.attempt)

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="retry-async",
        max_size=100,
        flush_interval=BIG,
        max_retries=2,
        retry_backoff=0,
    ) as buf:
        buf.insert_batch([1, 2, 3])
        assert await buf.sync_flush(timeout=30) == [("ok", 3)]
        assert calls == [([1, 2, 3], 1), ([1, 2, 3], 2), ([1, 2, 3], 3)]
        assert errors.reported == []
        stats = buf.stats()
        assert (
            stats["inserted"],
            stats["flushed"],
            stats["retried"],
            stats["failed"],
            stats["in_flight"],
        ) == (
            3,
            3,
            6,
            0,
            0,
        )
    assert len(events.of(telemetry.FLUSH_START)) == 1
    assert [md["attempt"] for _, md in events.of(telemetry.FLUSH_STOP)] == [3]
    assert events.of(telemetry.FLUSH_EXCEPTION) == []
    retries = events.of(telemetry.FLUSH_RETRY)
    assert [md["attempt"] for _, md in retries] == [1, 2]
    for measurements, metadata in retries:
        assert set(measurements) == {"duration", "delay", "monotonic_time"}
        assert all(isinstance(v, int) and v >= 0 for v in measurements.values())
        assert measurements["delay"] == 0  # retry_backoff=0
        assert {k: metadata[k] for k in ("buffer", "partition", "size", "trigger", "kind")} == {
            "buffer": "retry-async",
            "partition": 0,
            "size": 3,
            "trigger": "manual",
            "kind": "error",
        }
        assert isinstance(metadata["reason"], Boom)
        assert metadata["stacktrace"] is metadata["reason"].__traceback__
    assert [str(md["reason"]) for _, md in retries] == ["attempt 1", "attempt 2"]


async def test_exhausted_retries_reach_handle_flush_error_once_with_the_whole_batch(
    AsyncBuffer: Any,
) -> None:
    events = Events("exhaust")
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    errors = Errors()
    seen: list[tuple[list[Any], int]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        seen.append((list(batch), opts.attempt))
        batch.clear()  # consumed
        raise Boom(f"attempt {opts.attempt}")

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="exhaust",
        max_size=100,
        flush_interval=BIG,
        max_retries=2,
        retry_backoff=0,
    ) as buf:
        buf.insert_batch(["a", "b"])
        with pytest.raises(ExceptionGroup) as excinfo:
            await buf.sync_flush(timeout=30)
        assert [str(e) for e in excinfo.value.exceptions] == ["attempt 3"]
        assert seen == [(["a", "b"], 1), (["a", "b"], 2), (["a", "b"], 3)]
        ((batch, opts, error),) = errors.reported
        assert (batch, opts.attempt, str(error)) == (["a", "b"], 3, "attempt 3")
        stats = buf.stats()
        assert (stats["failed"], stats["retried"], stats["flushed"], stats["in_flight"]) == (2, 4, 0, 0)
    assert [md["attempt"] for _, md in events.of(telemetry.FLUSH_EXCEPTION)] == [3]
    assert [m["delay"] for m, _ in events.of(telemetry.FLUSH_RETRY)] == [0, 0]


async def test_a_retry_completes_before_the_next_batch_of_its_partition_starts(AsyncBuffer: Any) -> None:
    log: list[tuple[str, int, int]] = []

    async def handle_flush(batch: list[int], opts: Any) -> int:
        log.append(("enter", batch[0], opts.attempt))
        await asyncio.sleep(0.002)
        log.append(("exit", batch[0], opts.attempt))
        if batch[0] == 0 and opts.attempt < 3:
            raise Boom("flaky")
        return batch[0]

    async with AsyncBuffer(
        handle_flush=handle_flush, max_size=2, flush_interval=BIG, max_retries=2, retry_backoff=0.02
    ) as buf:
        await buf.ainsert_batch(range(6), timeout=30)  # three batches of one partition
        assert await buf.sync_flush(timeout=30) in ([], [4])
        await await_for(lambda: buf.stats()["flushed"] == 6, timeout=30)
    assert log == [
        ("enter", 0, 1),
        ("exit", 0, 1),
        ("enter", 0, 2),
        ("exit", 0, 2),
        ("enter", 0, 3),
        ("exit", 0, 3),
        ("enter", 2, 1),
        ("exit", 2, 1),
        ("enter", 4, 1),
        ("exit", 4, 1),
    ]
    assert buf.stats()["retried"] == 4


async def test_a_timed_out_attempt_is_retried(AsyncBuffer: Any) -> None:
    events = Events("to-retry")
    telemetry.attach("rec", telemetry.FLUSH_RETRY, events)
    attempts: list[int] = []
    cancelled: list[int] = []

    async def handle_flush(batch: list[Any], opts: Any) -> str:
        attempts.append(opts.attempt)
        if opts.attempt == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(opts.attempt)
                raise
        return "in time"

    async with AsyncBuffer(
        handle_flush=handle_flush,
        name="to-retry",
        max_size=100,
        flush_interval=BIG,
        flush_timeout=0.1,
        max_retries=1,
        retry_backoff=0,
    ) as buf:
        buf.insert_batch([1, 2])
        assert await buf.sync_flush(timeout=30) == ["in time"]
        assert attempts == [1, 2]
        assert cancelled == [1]
        ((_, retry),) = events.of(telemetry.FLUSH_RETRY)
        assert isinstance(retry["reason"], FlushTimeout)
        assert retry["attempt"] == 1
        stats = buf.stats()
        assert (stats["flushed"], stats["failed"], stats["retried"]) == (2, 0, 2)


async def test_the_retry_backoff_is_bounded_and_waited(AsyncBuffer: Any) -> None:
    events = Events("backoff")
    telemetry.attach("rec", telemetry.FLUSH_RETRY, events)
    stamps: list[float] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        stamps.append(time.monotonic())
        raise Boom("always")

    base, cap = 0.02, 0.03
    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda b, o, e: None,
        name="backoff",
        max_size=100,
        flush_interval=BIG,
        max_retries=3,
        retry_backoff=base,
        retry_backoff_max=cap,
    ) as buf:
        buf.insert(1)
        with pytest.raises(ExceptionGroup):
            await buf.sync_flush(timeout=30)
    delays = [(md["attempt"], m["delay"]) for m, md in events.of(telemetry.FLUSH_RETRY)]
    assert [a for a, _ in delays] == [1, 2, 3]
    assert len(stamps) == 4
    for attempt, delay in delays:
        assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1)) * 1e9 + 1
    # Each retry waited its drawn delay after the failed attempt.
    for (_, delay), before, after in zip(delays, stamps, stamps[1:], strict=False):
        assert after - before >= delay * 1e-9 - EARLY


class Other(Exception):
    """An error that the tests' retry_on does not retry."""


async def test_a_failure_retry_on_rejects_goes_to_handle_flush_error_at_once(AsyncBuffer: Any) -> None:
    events = Events("filtered-async")
    telemetry.attach_many("rec", FLUSH_EVENTS, events)
    errors = Errors()
    attempts: list[int] = []
    failures = [ConnectionError("reset"), Other("schema")]

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        attempts.append(opts.attempt)
        await asyncio.sleep(0)
        raise failures[opts.attempt - 1]

    buf = AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="filtered-async",
        max_size=100,
        flush_interval=BIG,
        max_retries=5,
        retry_backoff=0.01,
        retry_on=(ConnectionError,),
    )
    async with buf:
        buf.insert_batch([1, 2, 3])
        with pytest.raises(ExceptionGroup) as group:
            await buf.sync_flush(timeout=30)
        assert list(group.value.exceptions) == [failures[1]]
        assert attempts == [1, 2]
        assert [(b, o.attempt, e) for b, o, e in errors.reported] == [([1, 2, 3], 2, failures[1])]
        stats = buf.stats()
        assert (stats["flushed"], stats["retried"], stats["failed"], stats["in_flight"]) == (0, 3, 3, 0)
        assert (buf.info()[0]["retried"], buf.info()[0]["failed"]) == (3, 3)
    assert len(events.of(telemetry.FLUSH_START)) == 1
    assert [(md["attempt"], md["reason"]) for _, md in events.of(telemetry.FLUSH_RETRY)] == [(1, failures[0])]
    assert [(md["attempt"], md["reason"]) for _, md in events.of(telemetry.FLUSH_EXCEPTION)] == [
        (2, failures[1])
    ]
    assert events.of(telemetry.FLUSH_STOP) == []


async def test_a_rejected_failure_is_not_backed_off(AsyncBuffer: Any) -> None:
    errors = Errors()
    attempts: list[int] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        attempts.append(opts.attempt)
        raise Other("no")

    buf = AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        max_retries=3,
        retry_backoff=BIG,  # a backoff would outlast the test
        retry_backoff_max=BIG,
        retry_on=lambda error: isinstance(error, ConnectionError),
    )
    engine_of(buf).random = AlwaysOne()
    async with buf:
        buf.insert_batch(["a", "b"])
        with pytest.raises(ExceptionGroup):
            await buf.sync_flush(timeout=30)
        assert attempts == [1]
        assert [(b, o.attempt, type(e)) for b, o, e in errors.reported] == [(["a", "b"], 1, Other)]
        assert (buf.stats()["retried"], buf.stats()["failed"]) == (0, 2)


async def test_a_retry_on_predicate_that_raises_rejects_the_retry_and_is_logged_once(
    AsyncBuffer: Any, caplog: Any
) -> None:
    caplog.set_level(logging.ERROR, logger="databuffer")
    asked: list[BaseException] = []

    def predicate(error: BaseException) -> bool:
        asked.append(error)
        raise ValueError("predicate broke")

    failure = ConnectionError("reset")
    errors = Errors()
    events = Events("broken-predicate-async")
    telemetry.attach_many("rec", FLUSH_EVENTS, events)

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        if batch[0] == "bad":
            raise failure
        return len(batch)

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        name="broken-predicate-async",
        max_size=100,
        flush_interval=BIG,
        max_retries=3,
        retry_backoff=0,
        retry_on=predicate,
    ) as buf:
        buf.insert_batch(["bad", 1])
        with pytest.raises(ExceptionGroup) as group:
            await buf.sync_flush(timeout=30)
        assert list(group.value.exceptions) == [failure]
        assert asked == [failure]
        assert [(b, o.attempt, e) for b, o, e in errors.reported] == [(["bad", 1], 1, failure)]
        stats = buf.stats()
        assert (stats["retried"], stats["failed"], stats["in_flight"]) == (0, 2, 0)
        # The flusher task goes on.
        buf.insert("good")
        assert await buf.sync_flush(timeout=30) == [1]
    assert events.of(telemetry.FLUSH_RETRY) == []
    assert [md["reason"] for _, md in events.of(telemetry.FLUSH_EXCEPTION)] == [failure]
    (record,) = [r for r in databuffer_records(caplog, logging.ERROR) if "retry_on" in r.getMessage()]
    assert "'broken-predicate-async'" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


@pytest.mark.parametrize(
    ("retry_on", "retried"),
    [(None, True), ((ConnectionError,), False), ((FlushTimeout,), True)],
    ids=["default", "not listed", "listed"],
)
async def test_a_timed_out_attempt_is_retried_as_retry_on_says(
    AsyncBuffer: Any, retry_on: Any, retried: bool
) -> None:
    errors = Errors()
    attempts: list[int] = []

    async def handle_flush(batch: list[Any], opts: Any) -> str:
        attempts.append(opts.attempt)
        if opts.attempt == 1:
            await asyncio.Event().wait()  # cancelled at flush_timeout
        return "in time"

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=errors,
        max_size=100,
        flush_interval=BIG,
        flush_timeout=0.1,
        max_retries=1,
        retry_backoff=0,
        retry_on=retry_on,
    ) as buf:
        buf.insert_batch([1, 2])
        if retried:
            assert await buf.sync_flush(timeout=30) == ["in time"]
            assert attempts == [1, 2]
            assert errors.reported == []
            assert (buf.stats()["retried"], buf.stats()["failed"]) == (2, 0)
        else:
            with pytest.raises(ExceptionGroup) as group:
                await buf.sync_flush(timeout=30)
            assert [type(e) for e in group.value.exceptions] == [FlushTimeout]
            assert attempts == [1]
            assert [(o.attempt, type(e)) for _, o, e in errors.reported] == [(1, FlushTimeout)]
            assert (buf.stats()["retried"], buf.stats()["failed"]) == (0, 2)


SYSTEM_EXIT_SCRIPT = """
import asyncio
from databuffer import AsyncBuffer

asked = []

async def handle_flush(batch, opts):
    print("attempt", opts.attempt, flush=True)
    raise SystemExit(3)

def on_error(batch, opts, error):
    print("reported", batch, opts.attempt, type(error).__name__, "asked", len(asked), flush=True)

async def main():
    buf = AsyncBuffer(handle_flush=handle_flush, handle_flush_error=on_error, max_retries=3,
                      retry_backoff=0, flush_interval=3600,
                      retry_on=lambda error: asked.append(error) or True)
    await buf.start()
    buf.insert("x")
    await buf.flush()
    await asyncio.sleep(30)

asyncio.run(main())
"""


def test_system_exit_from_an_async_handle_flush_is_not_retried_whatever_retry_on_says(
    core_name: str,
) -> None:
    proc = run_python(SYSTEM_EXIT_SCRIPT, core=core_name)
    # Reported, counted, then raised out of the loop, as without retry_on.
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == ["attempt 1", "reported ['x'] 1 SystemExit asked 0"], proc.stdout


def test_an_attempt_the_loop_shutdown_interrupted_is_tried_again_whatever_retry_on_says(
    AsyncBuffer: Any, loop_factory: Any
) -> None:
    asked: list[BaseException] = []
    buf, got, errors = _left_open_with_a_flush_in_flight(
        AsyncBuffer, loop_factory, retry_on=lambda error: asked.append(error) or False
    )
    assert errors.reported == []
    assert sorted(got) == [0, 1, 2]
    assert asked == []
    assert buf.stats()["flushed"] == 3


# -- telemetry ---------------------------------------------------------------------


def assert_ns(value: object) -> None:
    assert isinstance(value, int) and not isinstance(value, bool), value


async def test_flush_events_surround_each_flush_and_report_failures(AsyncBuffer: Any) -> None:
    rec = Events("tele-async")
    telemetry.attach_many("rec", FLUSH_EVENTS, rec)
    raised: list[BaseException] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        rec.log.append(("call", opts.trigger))
        await asyncio.sleep(0)
        if batch[0] == "bad":
            error = ValueError("nope")
            raised.append(error)
            raise error
        return len(batch)

    t0 = time.monotonic_ns()
    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda b, o, e: None,
        name="tele-async",
        max_size=3,
        flush_interval=BIG,
    ) as buf:
        buf.insert_batch([1, 2, 3])  # a size flush
        await await_for(lambda: rec.of(telemetry.FLUSH_STOP), timeout=30)
        buf.insert_batch(["bad", 4])
        with pytest.raises(ExceptionGroup):
            await buf.sync_flush(timeout=30)
        # Finished for sync_flush means its telemetry has fired.
        assert rec.log[-1] == telemetry.FLUSH_EXCEPTION
        buf.insert("c")
    t1 = time.monotonic_ns()
    expected = [
        {"buffer": "tele-async", "partition": 0, "size": 3, "trigger": "size"},
        {"buffer": "tele-async", "partition": 0, "size": 2, "trigger": "manual"},
        {"buffer": "tele-async", "partition": 0, "size": 1, "trigger": "close"},
    ]
    assert [md for _, md in rec.of(telemetry.FLUSH_START)] == expected
    assert rec.log == [
        telemetry.FLUSH_START,
        ("call", "size"),
        telemetry.FLUSH_STOP,
        telemetry.FLUSH_START,
        ("call", "manual"),
        telemetry.FLUSH_EXCEPTION,
        telemetry.FLUSH_START,
        ("call", "close"),
        telemetry.FLUSH_STOP,
    ]
    assert [md for _, md in rec.of(telemetry.FLUSH_STOP)] == [
        {**expected[0], "attempt": 1},
        {**expected[2], "attempt": 1},
    ]
    ((measurements, metadata),) = rec.of(telemetry.FLUSH_EXCEPTION)
    assert set(metadata) == {
        "buffer",
        "partition",
        "size",
        "trigger",
        "attempt",
        "kind",
        "reason",
        "stacktrace",
    }
    assert {k: metadata[k] for k in ("buffer", "partition", "size", "trigger", "attempt", "kind")} == {
        **expected[1],
        "attempt": 1,
        "kind": "error",
    }
    assert metadata["reason"] is raised[0]
    assert metadata["stacktrace"] is raised[0].__traceback__
    for measurements, _ in rec.of(telemetry.FLUSH_START):
        assert set(measurements) == {"system_time", "monotonic_time"}
        assert_ns(measurements["system_time"])
        assert t0 <= measurements["monotonic_time"] <= t1
    for measurements, _ in rec.of(telemetry.FLUSH_STOP) + rec.of(telemetry.FLUSH_EXCEPTION):
        assert set(measurements) == {"duration", "monotonic_time"}
        assert_ns(measurements["duration"])
        assert 0 <= measurements["duration"] <= t1 - t0
        assert t0 <= measurements["monotonic_time"] <= t1


async def test_insert_events_for_insert_insert_batch_ainsert_and_ainsert_batch(AsyncBuffer: Any) -> None:
    rec = Events("ins-async")
    telemetry.attach_many("rec", INSERT_EVENTS, rec)
    async with AsyncBuffer(
        handle_flush=count,
        name="ins-async",
        partitions=2,
        max_size=100,
        flush_interval=BIG,
    ) as buf:
        t0 = time.monotonic_ns()
        buf.insert("a")
        buf.insert_batch(["b", "c"])
        await buf.ainsert("d")
        await buf.ainsert_batch(["e", "f", "g"])
        await buf.ainsert_batch([])
        t1 = time.monotonic_ns()
        assert buf.size() == 7
    assert rec.names() == [telemetry.INSERT_START, telemetry.INSERT_STOP] * 5
    for measurements, metadata in rec.of(telemetry.INSERT_START):
        assert metadata == {"buffer": "ins-async"}
        assert set(measurements) == {"system_time", "monotonic_time"}
        assert t0 <= measurements["monotonic_time"] <= t1
    stops = rec.of(telemetry.INSERT_STOP)
    assert [md["size"] for _, md in stops] == [1, 2, 1, 3, 0]
    assert all(set(md) == {"buffer", "partition", "size"} for _, md in stops)
    assert [md["partition"] for _, md in stops][:4] in ([0, 1, 0, 1], [1, 0, 1, 0])
    assert stops[4][1]["partition"] is None  # an empty batch goes nowhere
    for measurements, _ in stops:
        assert set(measurements) == {"duration", "monotonic_time"}
        assert 0 <= measurements["duration"] <= t1 - t0


@pytest.mark.parametrize("call", ["ainsert", "ainsert_batch"])
async def test_an_ainsert_that_waits_for_room_emits_one_start_and_one_stop(
    AsyncBuffer: Any, call: str
) -> None:
    rec = Events("room-async")
    release = asyncio.Event()
    entered = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch == [0]:
            entered.set()
            await release.wait()

    async with AsyncBuffer(
        handle_flush=handle_flush,
        name="room-async",
        max_size=1,
        max_queued_batches=0,
        flush_interval=BIG,
        flush_timeout=60,
    ) as buf:
        try:
            buf.insert(0)  # sealed: its flush gets stuck
            await asyncio.wait_for(entered.wait(), 30)
            buf.insert(1)  # the partition is full while flushing
            telemetry.attach_many("rec", INSERT_EVENTS, rec)
            if call == "ainsert":
                waiting = asyncio.ensure_future(buf.ainsert(2, timeout=30))
            else:
                waiting = asyncio.ensure_future(buf.ainsert_batch([2, 3], timeout=30))
            await await_for(lambda: rec.names() == [telemetry.INSERT_START], timeout=30)
            await asyncio.sleep(0.02)
            assert not waiting.done(), "it did not wait for room"
            assert rec.names() == [telemetry.INSERT_START]
        finally:
            release.set()
        await asyncio.wait_for(waiting, 30)
    assert rec.names() == [telemetry.INSERT_START, telemetry.INSERT_STOP]
    ((measurements, metadata),) = rec.of(telemetry.INSERT_STOP)
    assert metadata == {"buffer": "room-async", "partition": 0, "size": 1 if call == "ainsert" else 2}
    assert measurements["duration"] >= (0.02 - EARLY) * 1e9
    assert buf.stats()["flushed"] == (3 if call == "ainsert" else 4)


async def test_inserts_that_find_no_room_emit_an_exception_event(AsyncBuffer: Any) -> None:
    rec = Events("noroom-async")
    release = asyncio.Event()
    entered = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch == [0]:
            entered.set()
            await release.wait()

    async with AsyncBuffer(
        handle_flush=handle_flush,
        name="noroom-async",
        max_size=1,
        max_queued_batches=0,
        flush_interval=BIG,
        flush_timeout=60,
    ) as buf:
        try:
            buf.insert(0)
            await asyncio.wait_for(entered.wait(), 30)
            buf.insert(1)
            telemetry.attach_many("rec", INSERT_EVENTS, rec)
            start = time.monotonic()
            with pytest.raises(BufferFull) as timed_out:
                await buf.ainsert(2, timeout=0.05)
            assert 0.05 - EARLY <= time.monotonic() - start < 0.05 + MARGIN
            with pytest.raises(BufferFull) as refused:
                buf.insert(3)  # a plain insert never waits
            with pytest.raises(BufferFull) as batch_timed_out:
                await buf.ainsert_batch([4, 5], timeout=0.01)
        finally:
            release.set()
    assert rec.names() == [telemetry.INSERT_START, telemetry.INSERT_EXCEPTION] * 3
    exceptions = rec.of(telemetry.INSERT_EXCEPTION)
    for (measurements, metadata), error in zip(
        exceptions, [timed_out.value, refused.value, batch_timed_out.value], strict=True
    ):
        assert set(metadata) == {"buffer", "kind", "reason", "stacktrace"}
        assert metadata["kind"] == "error"
        assert metadata["reason"] is error
        assert isinstance(metadata["stacktrace"], types.TracebackType)
        assert set(measurements) == {"duration", "monotonic_time"}
    assert exceptions[0][0]["duration"] >= (0.05 - EARLY) * 1e9
    assert type(refused.value).__name__ == "BufferFull"
    assert "await ainsert()" in str(refused.value)
    assert buf.stats()["inserted"] == 2


async def test_a_raising_telemetry_handler_does_not_stop_flushing(AsyncBuffer: Any, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="databuffer")
    stops = Events("bad-tele")

    def bad(*args: Any) -> None:
        raise Boom("telemetry handler broke")

    telemetry.attach("bad-start", telemetry.FLUSH_START, bad)
    telemetry.attach("bad-insert", telemetry.INSERT_STOP, bad)
    telemetry.attach("good-stop", telemetry.FLUSH_STOP, stops)
    got: list[Any] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        got.extend(batch)
        return len(batch)

    async with AsyncBuffer(
        handle_flush=handle_flush, name="bad-tele", max_size=100, flush_interval=BIG
    ) as buf:
        buf.insert(1)  # its stop handler raises: the item is stored all the same
        await buf.ainsert(2)
        assert buf.size() == 2
        assert await buf.sync_flush(timeout=30) == [2]
        buf.insert(3)
        assert await buf.sync_flush(timeout=30) == [1]
    assert got == [1, 2, 3]
    assert len(stops.of(telemetry.FLUSH_STOP)) == 2  # a flush for each sync_flush
    # The raising handlers were detached, and logged.
    assert [h["id"] for h in telemetry.list_handlers()] == ["good-stop"]
    messages = [r.getMessage() for r in databuffer_records(caplog, logging.ERROR)]
    assert any("'bad-start'" in m and "detached" in m for m in messages), messages
    assert any("'bad-insert'" in m and "detached" in m for m in messages), messages


class Abort(BaseException):
    """Not an Exception: telemetry does not catch it."""


async def test_a_telemetry_handler_raising_a_base_exception_is_detached_and_flushing_goes_on(
    AsyncBuffer: Any, caplog: Any
) -> None:
    caplog.set_level(logging.ERROR, logger="databuffer")
    raised: list[str] = []

    def abort(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        raised.append(metadata["buffer"])
        raise Abort("handler aborts")

    telemetry.attach("abort", telemetry.FLUSH_STOP, abort)
    got: list[Any] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        got.extend(batch)
        return len(batch)

    async with AsyncBuffer(
        handle_flush=handle_flush, name="abort-tele", max_size=100, flush_interval=BIG
    ) as buf:
        buf.insert_batch([1, 2])
        assert await buf.sync_flush(timeout=30) == [2]
        buf.insert(3)
        assert await buf.sync_flush(timeout=30) == [1]
        stats = buf.stats()
        assert (stats["flushed"], stats["failed"], stats["in_flight"]) == (3, 0, 0)
    assert got == [1, 2, 3]
    # Detached at its first raise, like a handler raising an Exception.
    assert raised == ["abort-tele"]
    assert not telemetry.list_handlers(telemetry.FLUSH_STOP)
    records = databuffer_records(caplog, logging.ERROR)
    assert any(r.exc_info is not None and isinstance(r.exc_info[1], Abort) for r in records), [
        r.getMessage() for r in records
    ]
    assert any("'abort'" in r.getMessage() and "detached" in r.getMessage() for r in records)


# -- shutdown ----------------------------------------------------------------------


async def test_cancelling_the_task_that_owns_the_block_still_flushes_everything(AsyncBuffer: Any) -> None:
    got: list[Any] = []
    triggers: list[str] = []
    holder: list[Any] = []
    inside = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        await asyncio.sleep(0.01)
        got.extend(batch)
        triggers.append(opts.trigger)

    async def owner() -> None:
        async with AsyncBuffer(
            handle_flush=handle_flush, name="owned", partitions=2, max_size=100, flush_interval=BIG
        ) as buf:
            holder.append(buf)
            buf.insert_batch(range(5))
            buf.insert_batch(range(5, 8))
            inside.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.ensure_future(owner())
    await asyncio.wait_for(inside.wait(), 30)
    assert got == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    (buf,) = holder
    assert sorted(got) == list(range(8))
    assert triggers == ["close", "close"]
    assert buf.closed
    stats = buf.stats()
    assert (stats["flushed"], stats["size"], stats["in_flight"]) == (8, 0, 0)
    with pytest.raises(BufferClosed):
        buf.insert(9)


async def test_a_cancelled_owner_waits_for_a_stuck_flush_only_up_to_flush_timeout(AsyncBuffer: Any) -> None:
    timeout = 0.1
    got: list[Any] = []
    errors = Errors()
    holder: list[Any] = []
    entered = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            entered.set()
            await asyncio.Event().wait()  # stuck until flush_timeout cancels it
        got.extend(batch)

    async def owner() -> None:
        async with AsyncBuffer(
            handle_flush=handle_flush,
            handle_flush_error=errors,
            name="owned-stuck",
            max_size=2,
            flush_interval=BIG,
            flush_timeout=timeout,
        ) as buf:
            holder.append(buf)
            buf.insert_batch([0, 1])  # its flush gets stuck
            buf.insert(2)
            await asyncio.Event().wait()

    task = asyncio.ensure_future(owner())
    await asyncio.wait_for(entered.wait(), 30)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert time.monotonic() - start < timeout + MARGIN
    (buf,) = holder
    assert got == [2]
    ((batch, _, error),) = errors.reported
    assert batch == [0, 1]
    assert isinstance(error, FlushTimeout)
    stats = buf.stats()
    assert (stats["flushed"], stats["failed"], stats["in_flight"], stats["size"]) == (1, 2, 0, 0)


async def test_aclose_timing_out_on_a_stuck_flush_closes_to_inserts_and_can_be_awaited_again(
    AsyncBuffer: Any,
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()
    got: list[Any] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            entered.set()
            await release.wait()
        got.extend(batch)

    buf = AsyncBuffer(
        handle_flush=handle_flush, name="stuck-close", max_size=2, flush_interval=BIG, flush_timeout=60
    )
    await buf.start()
    try:
        buf.insert_batch([0, 1])  # its flush gets stuck
        await asyncio.wait_for(entered.wait(), 30)
        buf.insert(2)
        start = time.monotonic()
        with pytest.raises(TimeoutError) as excinfo:
            await buf.aclose(timeout=0.05)
        assert 0.05 - EARLY <= time.monotonic() - start < 0.05 + MARGIN
        assert not isinstance(excinfo.value, (FlushTimeout, BufferFull))
        assert "'stuck-close'" in str(excinfo.value)
        assert buf.closed
        with pytest.raises(BufferClosed):
            buf.insert(3)
        with pytest.raises(BufferClosed):
            await buf.ainsert(4)
        with pytest.raises(BufferClosed):
            buf.insert_batch([5])
        assert got == []
        closing = asyncio.ensure_future(buf.aclose())
        await asyncio.sleep(0.02)
        assert not closing.done(), "aclose() returned while a flush was still running"
        release.set()
        await asyncio.wait_for(closing, 30)
        assert closing.result() is None
    finally:
        release.set()
        await buf.aclose()
    assert got == [0, 1, 2]
    stats = buf.stats()
    assert (stats["inserted"], stats["flushed"], stats["in_flight"], stats["size"]) == (3, 3, 0, 0)


@pytest.mark.parametrize("where", ["handle_flush", "handle_flush_error"])
@pytest.mark.parametrize("call", ["sync_flush", "aclose"])
async def test_sync_flush_and_aclose_refuse_to_run_from_the_buffers_own_callbacks(
    AsyncBuffer: Any, caplog: Any, call: str, where: str
) -> None:
    caplog.set_level(logging.ERROR, logger="databuffer")
    errors: list[tuple[list[Any], BaseException]] = []
    handler_errors: list[BaseException] = []
    holder: list[Any] = []

    async def reenter() -> None:
        await getattr(holder[0], call)()

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        if batch[0] == "reenter":
            if where == "handle_flush":
                await reenter()
            else:
                raise Boom("to the error handler")
        return len(batch)

    async def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        errors.append((list(batch), error))
        if where == "handle_flush_error":
            try:
                await reenter()
            except RuntimeError as exc:
                handler_errors.append(exc)
                raise

    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=on_error,
        name="reentrant",
        max_size=1,
        flush_interval=BIG,
    ) as buf:
        holder.append(buf)
        buf.insert("reenter")  # a size flush
        await await_for(lambda: buf.stats()["failed"] == 1, timeout=30)
        ((batch, error),) = errors
        assert batch == ["reenter"]
        if where == "handle_flush":
            refused = error
        else:
            assert isinstance(error, Boom)
            (refused,) = handler_errors
            records = databuffer_records(caplog, logging.ERROR)
            assert any(r.exc_info is not None and r.exc_info[1] is refused for r in records)
        assert isinstance(refused, RuntimeError)
        assert f"{call}()" in str(refused)
        assert "own flush callbacks" in str(refused)
        # Refused without effect: the buffer is open and flushes on.
        assert not buf.closed
        buf.insert("later")
        await await_for(lambda: buf.stats()["flushed"] == 1, timeout=30)


# -- the loop shutting down with the buffer open -------------------------------------


def _run_in_runner(main: Any, loop_factory: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def test_a_buffer_left_open_when_its_loop_shuts_down_warns_and_flushes(
    AsyncBuffer: Any, loop_factory: Any, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    got: list[Any] = []
    triggers: list[str] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        await asyncio.sleep(0.005)  # the flusher can still await while the loop shuts down
        got.extend(batch)
        triggers.append(opts.trigger)

    async def main() -> Any:
        buf = AsyncBuffer(
            handle_flush=handle_flush, name="left-open", partitions=2, max_size=100, flush_interval=BIG
        )
        await buf.start()
        buf.insert_batch(range(4))
        buf.insert_batch(range(4, 7))
        await buf.ainsert(7)
        return buf  # without closing it

    buf = _run_in_runner(main, loop_factory)
    assert sorted(got) == list(range(8))
    assert sorted(triggers) == ["close", "close"]
    warnings_ = databuffer_records(caplog, logging.WARNING)
    assert len(warnings_) == 1, [r.getMessage() for r in warnings_]
    message = warnings_[0].getMessage()
    assert "'left-open'" in message
    assert "8 items" in message
    assert buf.closed
    stats = buf.stats()
    assert (stats["inserted"], stats["flushed"], stats["size"], stats["in_flight"]) == (8, 8, 0, 0)
    with pytest.raises(BufferClosed):
        buf.insert(8)
    with pytest.raises(BufferClosed):
        buf.insert_batch([9])


def test_a_buffer_left_open_with_nothing_buffered_still_warns(
    AsyncBuffer: Any, loop_factory: Any, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")

    async def main() -> Any:
        buf = AsyncBuffer(handle_flush=count, name="empty-open", flush_interval=BIG)
        await buf.start()
        return buf

    buf = _run_in_runner(main, loop_factory)
    (record,) = databuffer_records(caplog, logging.WARNING)
    assert "'empty-open'" in record.getMessage()
    assert "0 items" in record.getMessage()
    assert buf.closed


def _left_open_with_a_flush_in_flight(
    AsyncBuffer: Any, loop_factory: Any, **options: Any
) -> tuple[Any, list[Any], Errors]:
    """Run a loop that returns with a batch in handle_flush and another buffered.

    ``options``: more options of the buffer.
    """
    got: list[Any] = []
    errors = Errors()

    async def main() -> Any:
        started = asyncio.Event()

        async def handle_flush(batch: list[Any], opts: Any) -> None:
            if batch == [0, 1]:
                started.set()
                await asyncio.sleep(0.05)  # in flight when the loop shuts down
            got.extend(batch)

        buf = AsyncBuffer(
            handle_flush=handle_flush,
            handle_flush_error=errors,
            name="in-flight",
            max_size=2,
            flush_interval=BIG,
            **options,
        )
        await buf.start()
        buf.insert_batch([0, 1])  # a size flush
        await asyncio.wait_for(started.wait(), 30)
        buf.insert(2)
        return buf

    return _run_in_runner(main, loop_factory), got, errors


def test_a_loop_shutting_down_during_a_flush_loses_no_item_silently(
    AsyncBuffer: Any, loop_factory: Any, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    buf, got, errors = _left_open_with_a_flush_in_flight(AsyncBuffer, loop_factory)
    (record,) = databuffer_records(caplog, logging.WARNING)
    assert "'in-flight'" in record.getMessage()
    assert "holding 3 items (1 buffered, 2 in flight)" in record.getMessage()
    # Every item was either flushed or reported to handle_flush_error.
    reported = [item for batch, _, _ in errors.reported for item in batch]
    assert sorted(got + reported) == [0, 1, 2]
    assert 2 in got  # the buffered one was flushed
    stats = buf.stats()
    assert (stats["inserted"], stats["flushed"] + stats["failed"], stats["in_flight"], stats["size"]) == (
        3,
        3,
        0,
        0,
    )
    assert stats["failed"] == len(reported)


def test_a_batch_in_flight_when_the_loop_shuts_down_is_flushed(AsyncBuffer: Any, loop_factory: Any) -> None:
    buf, got, errors = _left_open_with_a_flush_in_flight(AsyncBuffer, loop_factory)
    assert [(batch, type(error).__name__) for batch, _, error in errors.reported] == []
    assert sorted(got) == [0, 1, 2]
    assert buf.stats()["flushed"] == 3


def test_a_loop_shutting_down_while_an_async_handle_flush_error_runs_still_drains(
    AsyncBuffer: Any, loop_factory: Any, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    got: list[Any] = []
    errors: list[list[Any]] = []

    async def main() -> Any:
        reporting = asyncio.Event()

        async def handle_flush(batch: list[Any], opts: Any) -> None:
            if batch[0] == 0:
                raise Boom("to the error handler")
            got.extend(batch)

        async def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
            reporting.set()
            await asyncio.sleep(0.05)  # the loop shuts down meanwhile
            errors.append(list(batch))

        buf = AsyncBuffer(
            handle_flush=handle_flush,
            handle_flush_error=on_error,
            name="drain-eh",
            max_size=3,
            flush_interval=BIG,
        )
        await buf.start()
        buf.insert_batch([0, 1, 2])
        await asyncio.wait_for(reporting.wait(), 30)
        buf.insert_batch([3, 4, 5])
        return buf

    buf = _run_in_runner(main, loop_factory)
    assert buf.closed
    (record,) = databuffer_records(caplog, logging.WARNING)
    assert "'drain-eh'" in record.getMessage()
    assert got == [3, 4, 5]
    stats = buf.stats()
    assert (stats["inserted"], stats["flushed"], stats["failed"], stats["size"], stats["in_flight"]) == (
        6,
        3,
        3,
        0,
        0,
    )


def test_a_loop_shutting_down_between_two_batches_still_drains(
    AsyncBuffer: Any, loop_factory: Any, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    got: list[Any] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        got.extend(batch)  # returns without suspending

    async def main() -> Any:
        buf = AsyncBuffer(handle_flush=handle_flush, name="drain", max_size=3, flush_interval=BIG)
        await buf.start()
        await asyncio.sleep(0)  # the flusher waits for work
        # Two batches due: the flusher flushes the first, takes the second
        # and yields (asyncio.sleep(0)) just as the loop stops.
        buf.insert_batch([0, 1, 2])
        buf.insert_batch([3, 4, 5])
        return buf

    buf = _run_in_runner(main, loop_factory)
    stats = buf.stats()
    assert (stats["inserted"], stats["flushed"], stats["size"], stats["in_flight"]) == (6, 6, 0, 0)
    assert got == [0, 1, 2, 3, 4, 5]
    assert buf.closed
    (record,) = databuffer_records(caplog, logging.WARNING)
    assert "'drain'" in record.getMessage()


LOOP_CLOSED_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from databuffer import AsyncBuffer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    mode = sys.argv[1]

    async def handle_flush(batch, opts):
        print("flushed", batch, opts.trigger, flush=True)

    async def main():
        buf = AsyncBuffer(handle_flush=handle_flush, name="orphan-buf", max_size=1000, flush_interval=3600)
        await buf.start()
        buf.insert_batch(range(5))
        return buf

    loop = asyncio.new_event_loop()
    buf = loop.run_until_complete(main())   # its tasks are never cancelled
    if mode == "closed":
        loop.close()
    print("main done", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["closed", "stopped"])
def test_a_buffer_whose_loop_ended_without_cancelling_its_tasks_is_handled_at_exit(
    core_name: str, mode: str
) -> None:
    proc = run_python(LOOP_CLOSED_SCRIPT, mode, core=core_name)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    if mode == "closed":
        # Nothing can run the flushes any more: the items left are named.
        assert out == ["main done"], proc.stdout
        assert "orphan-buf" in proc.stderr
        assert "'orphan-buf' was left open when its event loop closed: 5 items left unflushed" in proc.stderr
    else:
        # The loop is not closed: the exit hook runs it until aclose() returns.
        assert out == ["main done", "flushed [0, 1, 2, 3, 4] close"], proc.stdout
        assert "left unflushed" not in proc.stderr


LOOP_THREAD_SCRIPT = textwrap.dedent(
    """
    import asyncio, threading
    from databuffer import AsyncBuffer

    async def handle_flush(batch, opts):
        await asyncio.sleep(0.01)
        print("flushed", batch, opts.trigger, flush=True)

    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = []

    async def main():
        buf = AsyncBuffer(handle_flush=handle_flush, name="threaded", max_size=100, flush_interval=3600)
        await buf.start()
        holder.append(buf)
        started.set()
        await asyncio.Event().wait()   # runs until the interpreter exits

    threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True).start()
    assert started.wait(30)
    holder[0].insert_batch([1, 2, 3])   # from the main thread
    holder[0].insert(4)
    print("main done", flush=True)
    """
)


def test_a_buffer_whose_loop_runs_in_another_thread_is_flushed_there_at_exit(core_name: str) -> None:
    proc = run_python(LOOP_THREAD_SCRIPT, core=core_name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["main done", "flushed [1, 2, 3, 4] close"], proc.stdout + proc.stderr
    assert "unflushed" not in proc.stderr


# -- a flusher task that ends unexpectedly --------------------------------------------


@pytest.mark.parametrize("how", ["flush", "sync_flush", "timer"])
async def test_a_crashed_flusher_is_restarted_on_the_next_flush_or_timer_round(
    AsyncBuffer: Any, caplog: Any, how: str
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    got: list[Any] = []
    triggers: list[str] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        got.extend(batch)
        triggers.append(opts.trigger)
        return len(batch)

    buf = AsyncBuffer(
        handle_flush=handle_flush,
        name="crashy",
        max_size=100,
        flush_interval=0.1 if how == "timer" else BIG,
        flush_jitter=0,
    )
    engine = engine_of(buf)
    real_core = engine.core
    crashes: list[int] = []

    class TakeOnceBroken:
        """The buffer's core, whose first take() raises."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real_core, name)

        def take(self, p: int, upto: int) -> Any:
            if not crashes:
                crashes.append(p)
                raise Boom("the flusher crashed")
            return real_core.take(p, upto)

    # Before start(): the flusher task binds core.take when it starts.
    engine.core = TakeOnceBroken()
    async with buf:
        await await_for(lambda: databuffer_records(caplog, logging.ERROR), timeout=30)
        (record,) = databuffer_records(caplog, logging.ERROR)
        assert "'crashy'" in record.getMessage()
        assert "Boom" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
        buf.insert_batch([1, 2])
        if how == "flush":
            await asyncio.sleep(0.02)
            assert got == []  # no flusher: nothing happens by itself
            await buf.flush()  # starts a new one
            await await_for(lambda: got == [1, 2], timeout=30)
        elif how == "sync_flush":
            assert await buf.sync_flush(timeout=30) == [2]
        else:
            await await_for(lambda: got == [1, 2], timeout=30)
            assert triggers == ["interval"]
        restarts = [r.getMessage() for r in databuffer_records(caplog, logging.WARNING)]
        assert any("'crashy'" in m and "new flusher" in m for m in restarts), restarts
        buf.insert(3)
        assert await buf.sync_flush(timeout=30) == [1]
    assert crashes == [0]
    assert got == [1, 2, 3]
    assert buf.stats()["flushed"] == 3


# -- memory ------------------------------------------------------------------------


async def test_flushed_items_are_released(AsyncBuffer: Any) -> None:
    counts: list[int] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        await asyncio.sleep(0)
        counts.append(len(batch))
        return len(batch)

    async with AsyncBuffer(handle_flush=handle_flush, partitions=2, max_size=10, flush_interval=BIG) as buf:
        items = [Sentinel() for _ in range(35)]
        refs = [weakref.ref(item) for item in items]
        for item in items[:20]:
            buf.insert(item)
        await buf.ainsert_batch(items[20:], timeout=30)
        del items, item
        await buf.sync_flush(timeout=30)
        assert sum(counts) == 35
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        assert alive == 0, f"{alive} flushed items still alive"


async def test_an_items_refcount_returns_to_its_baseline_after_its_flush(AsyncBuffer: Any) -> None:
    item = Sentinel()
    base = sys.getrefcount(item)

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        return len(batch)

    async with AsyncBuffer(handle_flush=handle_flush, partitions=3, max_size=1000, flush_interval=BIG) as buf:
        for _ in range(50):
            buf.insert(item)
        buf.insert_batch([item] * 30)
        await buf.ainsert(item)
        await buf.ainsert_batch((item,) * 19)
        assert sys.getrefcount(item) == base + 100
        assert sum(await buf.sync_flush(timeout=30)) == 100
        assert sys.getrefcount(item) == base
        await buf.ainsert_batch([item] * 10)
    assert sys.getrefcount(item) == base
    assert buf.stats()["flushed"] == 110


@pytest.mark.parametrize("how", ["flushed", "fails", "times out"])
async def test_flushed_failed_and_timed_out_items_are_freed_without_the_cyclic_gc(
    AsyncBuffer: Any, no_cyclic_gc: None, how: str
) -> None:
    reported: list[int] = []

    async def handle_flush(batch: list[Any], opts: Any) -> int:
        if how == "fails":
            raise ValueError("cannot write")
        if how == "times out":
            await asyncio.Event().wait()
        return len(batch)

    item = Sentinel()
    base = sys.getrefcount(item)
    others = [Sentinel() for _ in range(10)]
    refs = [weakref.ref(other) for other in others]
    async with AsyncBuffer(
        handle_flush=handle_flush,
        handle_flush_error=lambda batch, opts, error: reported.append(len(batch)),
        max_size=10,
        flush_interval=BIG,
        flush_timeout=0.05,
    ) as buf:
        await buf.ainsert_batch([item] * 25, timeout=30)
        await buf.ainsert_batch(others, timeout=30)
        del others
    stats = buf.stats()
    if how == "flushed":
        assert (stats["flushed"], reported) == (35, [])
    else:
        assert (stats["failed"], sum(reported)) == (35, 35)
    # Not kept alive by reference cycles (tracebacks, frames, tasks).
    extra = sys.getrefcount(item) - base
    assert extra == 0, f"{extra} references to {how} items are left after aclose()"
    assert all(ref() is None for ref in refs)


async def test_inserting_and_flushing_many_items_leaves_no_traced_memory_behind(AsyncBuffer: Any) -> None:
    n = 25_000  # a round: 2 * n items
    counts: list[int] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        counts.append(len(batch))

    async def round_(buf: Any, n: int) -> None:
        for i in range(n):
            if i % 2:
                await buf.ainsert(object())
            else:
                try:
                    buf.insert(object())
                except BufferFull:
                    await buf.ainsert(object())
        await buf.ainsert_batch([object() for _ in range(n)])
        await buf.sync_flush(timeout=60)

    async with AsyncBuffer(handle_flush=handle_flush, partitions=2, max_size=500, flush_interval=BIG) as buf:
        await round_(buf, 5_000)  # warm up: free lists, caches
        gc.collect()
        tracemalloc.start()
        try:
            await round_(buf, n)
            gc.collect()
            first = tracemalloc.get_traced_memory()[0]
            await round_(buf, n)
            gc.collect()
            second = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    assert sum(counts) == 2 * 5_000 + 4 * n
    # A leak of even one pointer per item would be 2 * n * 8 = 400 KB.
    assert second - first < 128 * 1024, f"{second - first} bytes more traced after {2 * n} more items"


# -- fork ----------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="os.fork on linux only")
async def test_a_forked_child_finds_the_buffer_closed(AsyncBuffer: Any, anyio_backend: Any) -> None:
    if is_uvloop(anyio_backend):
        pytest.skip("forking the test process once (on asyncio's loop) is enough")
    got: list[Any] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        got.extend(batch)

    async with AsyncBuffer(
        handle_flush=handle_flush, name="forked-async", max_size=100, flush_interval=BIG
    ) as buf:
        buf.insert_batch([1, 2, 3])
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
            pid = os.fork()
        if pid == 0:  # the child: report, and leave at once
            code = 1
            try:
                lines = [f"closed={buf.closed}", f"size={buf.size()}"]
                try:
                    buf.insert(4)
                except BufferClosed as exc:
                    lines.append("insert=BufferClosed " + " | ".join(getattr(exc, "__notes__", [])))
                try:
                    buf.insert_batch([5])
                except BufferClosed as exc:
                    lines.append("insert_batch=BufferClosed " + " | ".join(getattr(exc, "__notes__", [])))
                os.write(write, "\n".join(lines).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child did not finish")
            await asyncio.sleep(0.005)
        with os.fdopen(read) as f:
            report = f.read().splitlines()
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert report[:2] == ["closed=True", "size=0"]
        assert report[2].startswith("insert=BufferClosed ") and "fork" in report[2], report
        assert report[3].startswith("insert_batch=BufferClosed ") and "fork" in report[3], report
        # The parent's buffer is untouched and goes on.
        assert not buf.closed
        buf.insert(6)
        assert await buf.sync_flush(timeout=30) == [None]
    assert got == [1, 2, 3, 6]


async def test_an_ainsert_cancelled_while_it_waits_emits_its_exception_event(AsyncBuffer: Any) -> None:
    """One start and one exception event, even when the wait for room ends in a cancellation."""
    events: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    telemetry.attach_many(
        "async-cancelled-ainsert",
        [telemetry.INSERT_START, telemetry.INSERT_STOP, telemetry.INSERT_EXCEPTION],
        lambda event, measurements, metadata, config: events.append((event, dict(metadata))),
    )
    release = asyncio.Event()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        await release.wait()

    buf = AsyncBuffer(
        handle_flush=handle_flush, name="cancel-wait", max_size=1, max_queued_batches=0, flush_interval=BIG
    )
    async with buf:
        buf.insert(1)  # sealed: in flight, blocked
        buf.insert(2)  # the partition is full
        events.clear()
        waiter = asyncio.ensure_future(buf.ainsert(3, timeout=30))
        await await_for(lambda: len(events) == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
    kinds = [event for event, metadata in events if metadata["buffer"] == "cancel-wait"]
    assert kinds[:2] == [telemetry.INSERT_START, telemetry.INSERT_EXCEPTION]
    (exception,) = [md for event, md in events if event == telemetry.INSERT_EXCEPTION]
    assert isinstance(exception["reason"], asyncio.CancelledError)
    assert buf.stats()["inserted"] == 2
