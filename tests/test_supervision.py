"""Supervised threads: the timer and flusher threads survive what callbacks
raise, and a thread that ends anyway is started again by the next insert or
flush, which logs it."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from conftest import wait_for

from databuffer import telemetry
from databuffer._front import engine_of

BIG = 3600


class Cancelled(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


@pytest.mark.parametrize("raised", [Cancelled, GeneratorExit, MemoryError, RecursionError])
@pytest.mark.parametrize("where", ["handle_flush", "handle_flush_error", "telemetry"])
def test_callbacks_raising_anything_else_leave_the_flusher_running(
    make_buffer: Any, where: str, raised: type[BaseException]
) -> None:
    errors: list[BaseException] = []

    def flush(batch: list[Any], opts: Any) -> None:
        if where != "telemetry" and batch == ["bad"]:
            raise raised("from handle_flush")

    def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        errors.append(error)
        if where == "handle_flush_error":
            raise raised("from handle_flush_error")

    def handler(*args: Any) -> None:
        raise raised("from a telemetry handler")

    if where == "telemetry":
        telemetry.attach_many("raiser", [telemetry.FLUSH_START, telemetry.FLUSH_STOP], handler)
    buf = make_buffer(handle_flush=flush, handle_flush_error=on_error, max_size=1, flush_interval=BIG)
    flusher = engine_of(buf).parts[0].thread
    buf.insert("bad")
    wait_for(lambda: buf.stats()["in_flight"] == 0 and buf.stats()["inserted"] == 1, timeout=30)
    buf.insert("good")
    buf.sync_flush(timeout=30)
    assert engine_of(buf).parts[0].thread is flusher and flusher.is_alive()
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] + stats["failed"] == 2
    if where == "telemetry":
        assert stats["failed"] == 0
    else:
        assert stats["failed"] == 1
        assert isinstance(errors[0], raised)


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_a_flusher_ended_by_a_callback_is_replaced_and_logged(
    make_buffer: Any, caplog: Any, raised: type[BaseException]
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    errors: list[BaseException] = []
    delivered: list[Any] = []

    def flush(batch: list[Any], opts: Any) -> None:
        if batch == ["exit"]:
            raise raised()
        delivered.extend(batch)

    buf = make_buffer(handle_flush=flush, handle_flush_error=lambda b, o, e: errors.append(e), max_size=1)
    first = engine_of(buf).parts[0].thread
    buf.insert("exit")
    first.join(30)
    assert not first.is_alive()
    # The batch that ended the thread was reported, and counted, first.
    assert isinstance(errors[0], raised)
    assert buf.stats()["failed"] == 1
    for i in range(5):
        buf.insert(i)
    buf.sync_flush(timeout=30)
    assert delivered == [0, 1, 2, 3, 4]
    assert engine_of(buf).parts[0].thread is not first and engine_of(buf).parts[0].thread.is_alive()
    ended = f"the flusher of partition 0 ends: a flush callback raised {raised.__name__}"
    # Each is logged once its lock is released, maybe just after the flush.
    wait_for(lambda: any(ended in r.getMessage() for r in caplog.records))
    wait_for(lambda: any("started a new flusher for partition 0" in r.getMessage() for r in caplog.records))


@pytest.mark.parametrize("call", ["insert", "insert_batch", "flush", "sync_flush"])
def test_the_next_insert_or_flush_starts_a_thread_that_died(
    make_buffer: Any, caplog: Any, call: str, monkeypatch: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    buf = make_buffer(handle_flush=lambda b, o: None, max_size=1000, flush_interval=BIG)
    timer = engine_of(buf)._timer
    supervise = engine_of(buf)._supervise

    def exit_in_timer() -> None:
        if threading.current_thread() is timer:
            raise SystemExit
        supervise()

    # The timer runs _supervise when told a thread ended: make that raise
    # SystemExit in it, so that it dies through its own exit path.  Nothing
    # else restarts a dead timer, so whatever starts a new one is `call`.
    monkeypatch.setattr(engine_of(buf), "_supervise", exit_in_timer)
    engine_of(buf)._ended = True
    engine_of(buf)._timer_bell.notify()
    timer.join(30)
    assert not timer.is_alive()
    monkeypatch.undo()
    assert engine_of(buf)._timer is timer

    if call == "insert":
        buf.insert(1)
    elif call == "insert_batch":
        buf.insert_batch([1, 2])
    elif call == "flush":
        buf.flush()
    else:
        buf.sync_flush(timeout=30)
    assert engine_of(buf)._timer is not timer and engine_of(buf)._timer.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert any("the timer thread ends: a flush callback raised SystemExit" in m for m in messages)
    assert any("started a new timer thread" in m for m in messages)
    # And the new timer works: a timed flush happens.
    buf.insert("timed")
    engine_of(buf).parts[0].deadline = 0.0  # due now
    engine_of(buf)._timer_bell.notify()
    wait_for(lambda: buf.size() == 0, timeout=30)


def test_sync_flush_reports_base_exceptions_in_a_base_exception_group(make_buffer: Any) -> None:
    def flush(batch: list[Any], opts: Any) -> None:
        if batch == ["cancel"]:
            raise Cancelled("cancelled")
        raise ValueError("plain")

    buf = make_buffer(handle_flush=flush, handle_flush_error=lambda b, o, e: None, partitions=2, max_size=10)
    buf.insert("cancel")
    buf.insert("plain")
    with pytest.raises(BaseExceptionGroup) as caught:
        buf.sync_flush(timeout=30)
    assert not isinstance(caught.value, ExceptionGroup)
    assert sorted(type(e).__name__ for e in caught.value.exceptions) == ["Cancelled", "ValueError"]
    buf.insert("plain")
    with pytest.raises(ExceptionGroup):  # only Exceptions: still an ExceptionGroup
        buf.sync_flush(timeout=30)
