"""Failures and timeouts (SPEC section 4): handle_flush_error, logging, counters,
sync_flush errors, flush_timeout."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import pytest
from conftest import Background, Boom, wait_for

from databuffer import FlushTimeout


def assert_at_rest_invariant(buf) -> None:
    for part in buf.info():
        assert part["inserted"] == part["size"] + part["flushed"] + part["failed"], part


# -- handle_flush_error ---------------------------------------------------------


def test_handle_flush_error_method_receives_batch_opts_error(make_buffer, Buffer):
    class Failing(Buffer):
        def __init__(self, **options):
            self.errors: list[tuple[list[Any], Any, BaseException]] = []
            self.raised: list[BaseException] = []
            super().__init__(**options)

        def handle_flush(self, batch, opts):
            error = Boom(f"batch {batch}")
            self.raised.append(error)
            raise error

        def handle_flush_error(self, batch, opts, error):
            self.errors.append((list(batch), opts, error))

    meta = {"m": 1}
    buf = make_buffer(Failing, name="failing", max_size=3, flush_interval=3600, flush_meta=meta)
    buf.insert_batch([1, 2, 3])
    wait_for(lambda: buf.info()[0]["failed"] == 3, timeout=30)
    assert len(buf.errors) == 1
    batch, opts, error = buf.errors[0]
    assert batch == [1, 2, 3]
    assert error is buf.raised[0]
    assert (opts.buffer, opts.partition, opts.size, opts.trigger) == ("failing", 0, 3, "size")
    assert opts.meta is meta
    assert buf.info()[0]["flushed"] == 0


def test_handle_flush_error_keyword(make_buffer):
    raised: list[BaseException] = []
    errors: list[tuple[list[Any], Any, BaseException]] = []

    def fn(batch, opts):
        if "bad" in batch:
            error = Boom("bad item")
            raised.append(error)
            raise error
        return len(batch)

    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=lambda batch, opts, error: errors.append((list(batch), opts, error)),
        partitions=2,
        max_size=100,
        flush_interval=3600,
    )
    buf.insert_batch(["good", "good"])
    buf.insert_batch(["bad", "x"])
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    assert len(errors) == 1
    batch, opts, error = errors[0]
    assert batch == ["bad", "x"]
    assert error is raised[0]
    assert opts.trigger == "manual"
    assert opts.size == 2
    assert sum(p["flushed"] for p in buf.info()) == 2
    assert sum(p["failed"] for p in buf.info()) == 2


def test_default_handler_logs_at_error_with_name_partition_size_traceback(make_buffer, caplog):
    def exploding_handle_flush(batch, opts):
        if opts.partition == 1:
            raise Boom("kaboom-xyz")
        return None

    caplog.set_level(logging.ERROR, logger="databuffer")
    buf = make_buffer(
        handle_flush=exploding_handle_flush,
        name="loud-buffer",
        partitions=2,
        max_size=100,
        flush_interval=3600,
    )
    buf.insert("p-first")
    start = next(p["partition"] for p in buf.info() if p["size"])
    if start == 1:
        buf.insert("filler")
    buf.insert_batch(list(range(7)))  # 7 items into partition 1
    assert buf.info()[1]["size"] == 7 + (1 if start == 1 else 0)
    size = buf.info()[1]["size"]
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    records = [r for r in caplog.records if r.name == "databuffer" and r.levelno == logging.ERROR]
    assert len(records) == 1
    record = records[0]
    message = record.getMessage()
    assert "loud-buffer" in message
    assert re.search(r"\b1\b", message), message  # the partition
    assert str(size) in message
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Boom)
    text = caplog.text
    assert "Traceback" in text
    assert "kaboom-xyz" in text
    assert "exploding_handle_flush" in text  # the failing frame is in the traceback


def test_raising_handle_flush_error_is_logged_and_buffer_keeps_working(make_buffer, caplog):
    calls: list[list[Any]] = []

    def fn(batch, opts):
        calls.append(list(batch))
        if batch[0] == "fail":
            raise Boom("first")
        return len(batch)

    def bad_error_handler(batch, opts, error):
        raise RuntimeError("error handler broke")

    caplog.set_level(logging.ERROR, logger="databuffer")
    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=bad_error_handler,
        name="eh-buf",
        max_size=2,
        flush_interval=3600,
    )
    buf.insert_batch(["fail", "x"])
    wait_for(lambda: buf.info()[0]["failed"] == 2, timeout=30)
    records = [r for r in caplog.records if r.name == "databuffer" and r.levelno >= logging.ERROR]
    assert records, "a raising handle_flush_error was not logged"
    assert (
        any(r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError) for r in records)
        or "error handler broke" in caplog.text
    )
    # The buffer goes on: later batches are flushed.
    buf.insert_batch(["ok", "y"])
    buf.insert("z")
    assert buf.sync_flush(timeout=30) == [1]
    wait_for(lambda: buf.info()[0]["flushed"] == 3, timeout=30)
    assert calls == [["fail", "x"], ["ok", "y"], ["z"]]
    assert_at_rest_invariant(buf)


def test_counters_no_item_vanishes(make_buffer):
    lock = threading.Lock()
    delivered: list[int] = []
    reported: list[int] = []

    def fn(batch, opts):
        if any(item % 4 == 0 for item in batch):
            raise Boom(str(batch))
        with lock:
            delivered.extend(batch)
        return len(batch)

    def on_error(batch, opts, error):
        with lock:
            reported.extend(batch)

    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=on_error,
        partitions=2,
        max_size=3,
        flush_interval=3600,
        insert_timeout=30,
    )
    for i in range(15):
        buf.insert(i)
    buf.insert_batch(range(15, 25))
    try:
        buf.sync_flush(timeout=30)
    except ExceptionGroup:
        pass
    assert_at_rest_invariant(buf)
    assert sorted(delivered + reported) == list(range(25))
    assert not set(delivered) & set(reported)
    assert reported, "some batches should have failed"
    info = buf.info()
    assert sum(p["flushed"] for p in info) == len(delivered)
    assert sum(p["failed"] for p in info) == len(reported)
    # With items left buffered the invariant still holds.
    buf.insert(100)
    buf.insert(101)
    assert buf.size() == 2
    assert_at_rest_invariant(buf)


# -- sync_flush and errors --------------------------------------------------------


def test_sync_flush_raises_exception_group_after_every_partition_finished(make_buffer):
    errors = {0: Boom("p0"), 2: Boom("p2")}
    reported: list[BaseException] = []
    p0_reported = threading.Event()
    p1_done = threading.Event()
    p2_reported = threading.Event()

    def fn(batch, opts):
        if opts.partition == 0:
            raise errors[0]
        if opts.partition == 1:
            # Partition 1 finishes only after partition 0 has failed and been reported.
            p0_reported.wait(30)
            p1_done.set()
            return "p1 ok"
        p1_done.wait(30)  # partition 2 fails last
        raise errors[2]

    def on_error(batch, opts, error):
        reported.append(error)
        (p0_reported if opts.partition == 0 else p2_reported).set()

    buf = make_buffer(
        handle_flush=fn, handle_flush_error=on_error, partitions=3, max_size=100, flush_interval=3600
    )
    for i in range(6):
        buf.insert(i)
    with pytest.raises(ExceptionGroup) as excinfo:
        buf.sync_flush(timeout=60)
    group = excinfo.value
    assert list(group.exceptions) == [errors[0], errors[2]]
    assert group.exceptions[0] is errors[0] and group.exceptions[1] is errors[2]
    # Every partition had finished, error handlers included.
    assert p1_done.is_set() and p2_reported.is_set()
    assert sorted(map(id, reported)) == sorted([id(errors[0]), id(errors[2])])
    info = buf.info()
    assert [p["failed"] for p in info] == [2, 0, 2]
    assert [p["flushed"] for p in info] == [0, 2, 0]


def test_sync_flush_waits_for_a_stuck_flush_up_to_flush_timeout(make_buffer, gates):
    release = gates()
    reported: list[BaseException] = []

    def fn(batch, opts):
        release.wait(30)
        return "late"

    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=lambda batch, opts, error: reported.append(error),
        max_size=100,
        flush_interval=3600,
        flush_timeout=0.3,
    )
    buf.insert("x")
    t0 = time.monotonic()
    with pytest.raises(ExceptionGroup) as excinfo:
        buf.sync_flush()  # no timeout: bounded by flush_timeout
    assert time.monotonic() - t0 >= 0.3
    (error,) = excinfo.value.exceptions
    assert isinstance(error, FlushTimeout)
    assert isinstance(error, TimeoutError)
    assert reported == [error]
    assert buf.info()[0]["failed"] == 1


# -- flush_timeout ----------------------------------------------------------------


@pytest.mark.parametrize("late", ["return", "raise"])
def test_flush_timeout_reports_moves_on_and_ignores_late_outcome(make_buffer, gates, late):
    release = gates()
    started = threading.Event()
    reported_event = threading.Event()
    stuck: dict[str, Any] = {}
    delivered: list[list[int]] = []
    reported: list[tuple[list[int], Any, BaseException, float]] = []
    timeout = 0.3

    def fn(batch, opts):
        if batch[0] == 0:
            stuck["thread"] = threading.current_thread()
            stuck["start"] = time.monotonic()
            started.set()
            release.wait(30)
            if late == "raise":
                raise Boom("late failure")
            return "late result"
        delivered.append(list(batch))
        return "ok"

    def on_error(batch, opts, error):
        reported.append((list(batch), opts, error, time.monotonic()))
        reported_event.set()

    buf = make_buffer(
        handle_flush=fn,
        handle_flush_error=on_error,
        max_size=2,
        flush_interval=3600,
        flush_timeout=timeout,
        insert_timeout=30,
    )
    buf.insert(0)
    buf.insert(1)  # batch [0, 1] gets stuck
    assert started.wait(30)
    buf.insert(2)
    buf.insert(3)  # full while [0, 1] is flushing
    waiting = Background(buf.insert, 4, timeout=30)

    assert reported_event.wait(30)
    batch, opts, error, when = reported[0]
    assert batch == [0, 1]
    assert isinstance(error, FlushTimeout)
    assert (opts.trigger, opts.size, opts.partition) == ("size", 2, 0)
    # Reported once the call has run for flush_timeout (the deadline is set
    # just before the call, hence the small tolerance).
    assert when - stuck["start"] >= timeout - 0.05

    # The waiting insert resumes and the partition moves on.
    waiting.wait()
    assert waiting.error is None
    wait_for(lambda: [2, 3] in delivered, timeout=30)
    assert buf.sync_flush(timeout=30) == ["ok"]
    assert delivered == [[2, 3], [4]]

    # The abandoned call ends later; its outcome is ignored.
    release.set()
    stuck["thread"].join(30)
    assert not stuck["thread"].is_alive()
    buf.insert(5)
    assert buf.sync_flush(timeout=30) == ["ok"]
    (info,) = buf.info()
    assert info["failed"] == 2
    assert info["flushed"] == 4
    assert len(reported) == 1
    assert_at_rest_invariant(buf)
