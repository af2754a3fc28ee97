"""A subclass holds the user's code only: no private name of the buffer's machinery is reserved.

In 0.1 the machinery lived in the user's class: a subclass that defined
``_run``, or set ``self._lock``, stopped its buffer.  Now the buffer reaches
its machinery through the core in its one reserved slot.  The subclasses
below override every private name that ``dir(Buffer)`` and
``dir(AsyncBuffer)`` listed in 0.1, and every attribute their instances
had, with values that break a buffer that uses them; the buffers work
exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import wait_for

from databuffer import BufferFull, FlushOpts, FlushTimeout

# Every private name of dir(Buffer), dir(AsyncBuffer) and of their
# instances' (both cores) in databuffer 0.1, except typing's _is_protocol.
V01_PRIVATE_NAMES = """
    _abandon _ainsert_batch_raw _ainsert_raw _ainstrumented _attend _begin_close
    _cancelled_by_loop _check_timeout _close_blocking _close_lock _closed_error _conclude
    _configure _configured _core_by_thread _core_gate_lock _core_init _core_jitter
    _core_max_size _core_n _core_parts _core_random _core_rr _core_seal_hook _counters _deadline
    _describe _drained _dump _emit_flush_event _ended _error_fn _exit_close _fail_buffered
    _fail_taken _finish _first_attempt _flush_and_wait _flush_fn _flush_interval _flush_jitter
    _flush_meta _flush_one _flush_timeout _flusher_done _flusher_main _fork_after_child
    _fork_after_parent _fork_before _fork_child _fork_parent _fork_prepare _forked _full
    _handle_flush_def _handle_flush_stub _in_own_thread _insert_batch_instrumented
    _insert_batch_raw _insert_batch_wait _insert_done _insert_failed _insert_instrumented
    _insert_raw _insert_started _insert_timeout _insert_wait _instrumented _is_closed _iterate
    _join_flushes _leave_flushes _let_flushers_run _log_callback_escape
    _log_error_handler_failure _loop _loop_thread _mark_closed _max_retries _max_size
    _max_size_jitter _name _new_flight _next_interval _no_room _note_request _on_timer
    _own_methods _own_task _partitions _parts _progress _progressed _push_many _random _reached
    _record _refuse_flusher_thread _refuse_own_task _report_outcome _report_retry _report_start
    _request _require_loop _retry_backoff _retry_backoff_max _room_wanted _run _sealed
    _set_attention _settle _shut_down _size _start _start_flusher _start_timer _stats _stopped
    _stopping _supervise _sync_count _take _thread_ended _threads_lock _timed_out _timer
    _timer_cond _timer_loop _timer_main _timer_wake_at _wait_for_room _wait_wake _wake
    _wake_timer_before
""".split()

# What dir() of a bare subclass may show: the public API, the two hooks and
# the reserved names (see the reference's "Reserved names").
PUBLIC = {
    "close",
    "closed",
    "dump",
    "flush",
    "handle_flush",
    "handle_flush_error",
    "info",
    "insert",
    "insert_batch",
    "name",
    "size",
    "stats",
    "sync_flush",
}
ASYNC_PUBLIC = (PUBLIC - {"close"}) | {"aclose", "ainsert", "ainsert_batch", "start"}
RESERVED = {"_databuffer", "_is_protocol"}


class Poison:
    """A value a buffer cannot use: any use of it raises."""

    def __init__(self, name: str) -> None:
        self._poison_name = name

    def __getattr__(self, attr: str) -> Any:
        raise AssertionError(f"the buffer used the subclass's {self._poison_name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the buffer called the subclass's {self._poison_name}")

    def __iter__(self) -> Any:
        raise AssertionError(f"the buffer iterated the subclass's {self._poison_name}")

    def __bool__(self) -> bool:
        raise AssertionError(f"the buffer tested the subclass's {self._poison_name}")


def poisoned(base: type) -> type:
    """A subclass of ``base`` that defines every 0.1 private name, on the class and on the instance."""

    def __init__(self: Any, **options: Any) -> None:
        for name in V01_PRIVATE_NAMES:
            setattr(self, name, Poison(f"self.{name} (set before __init__)"))
        base.__init__(self, **options)
        for name in V01_PRIVATE_NAMES:
            setattr(self, name, Poison(f"self.{name} (set after __init__)"))

    namespace: dict[str, Any] = {name: Poison(name) for name in V01_PRIVATE_NAMES}
    namespace["__init__"] = __init__
    return type(f"Poisoned{base.__name__}", (base,), namespace)


def test_the_list_holds_what_broke_a_buffer_in_0_1() -> None:
    assert len(V01_PRIVATE_NAMES) == 134
    assert {"_run", "_parts", "_name", "_take", "_finish", "_push_many", "_timer"} <= set(V01_PRIVATE_NAMES)


def test_dir_of_a_subclass_shows_the_public_api_the_hooks_and_the_reserved_names(
    Buffer: type, AsyncBuffer: type
) -> None:
    for base, public in ((Buffer, PUBLIC), (AsyncBuffer, ASYNC_PUBLIC)):

        class Mine(base):  # type: ignore[misc, valid-type]
            pass

        names = {name for name in dir(Mine) if not (name.startswith("__") and name.endswith("__"))}
        # typing.Generic sets _is_protocol up to Python 3.12.
        assert public | {"_databuffer"} <= names <= public | RESERVED, sorted(names ^ (public | RESERVED))


def test_a_buffer_whose_subclass_overrides_every_0_1_private_name_works(Buffer: type, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    delivered: list[tuple[str, list[Any]]] = []
    failed: list[tuple[list[Any], type[BaseException]]] = []

    class Sink(poisoned(Buffer)):  # type: ignore[misc]
        def handle_flush(self, batch: list[Any], opts: FlushOpts) -> int:
            if "bad" in batch:
                raise ValueError("bad item")
            delivered.append((opts.trigger, list(batch)))
            return len(batch)

        def handle_flush_error(self, batch: list[Any], opts: FlushOpts, error: BaseException) -> None:
            failed.append((list(batch), type(error)))

    buf = Sink(
        name="poisoned", partitions=2, max_size=10, flush_interval=3600, max_retries=1, retry_backoff=0.01
    )
    assert buf.name == "poisoned" and "poisoned" in repr(buf)
    buf.insert(1)
    buf.insert(2)
    buf.insert_batch([3, 4])
    assert buf.dump() == [1, 3, 4, 2] and buf.size() == 4
    assert buf.sync_flush(timeout=30) == [3, 1]
    assert sorted(delivered) == [("manual", [1, 3, 4]), ("manual", [2])]  # two flushers: any order
    buf.insert_batch(["bad"])
    with pytest.raises(ExceptionGroup):
        buf.sync_flush(timeout=30)
    assert failed == [(["bad"], ValueError)]
    stats = buf.stats()
    assert (stats["inserted"], stats["flushed"], stats["failed"], stats["retried"]) == (5, 4, 1, 1)
    assert [(p["partition"], p["flushing"]) for p in buf.info()] == [(0, False), (1, False)]
    buf.insert_batch(list(range(10)))  # a full partition: flushed by size
    wait_for(lambda: buf.stats()["flushed"] == 14, timeout=30)
    buf.insert(99)
    with buf:
        pass
    assert buf.closed
    assert delivered[-2:] == [("size", list(range(10))), ("close", [99])]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records
    ]

    timed = Sink(flush_interval=0.05, flush_jitter=0)
    timed.insert("on time")
    wait_for(lambda: delivered[-1] == ("interval", ["on time"]), timeout=30)  # the timer thread works
    timed.close(timeout=30)


def test_timeouts_and_backpressure_with_every_0_1_private_name_overridden(Buffer: type) -> None:
    import threading

    release = threading.Event()
    errors: list[BaseException] = []

    class Stuck(poisoned(Buffer)):  # type: ignore[misc]
        def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:
            release.wait(30)

        def handle_flush_error(self, batch: list[Any], opts: FlushOpts, error: BaseException) -> None:
            errors.append(error)

    buf = Stuck(max_size=2, max_queued_batches=0, flush_timeout=0.2, flush_interval=3600)
    try:
        buf.insert_batch([1, 2])  # sealed: its flush is stuck
        buf.insert_batch([3, 4])  # full again
        with pytest.raises(BufferFull):
            buf.insert(5, timeout=0.01)
        wait_for(lambda: errors, timeout=30)
        assert isinstance(errors[0], FlushTimeout)
    finally:
        release.set()
        buf.close(timeout=30)


@pytest.mark.anyio
async def test_an_async_buffer_whose_subclass_overrides_every_0_1_private_name_works(
    AsyncBuffer: type,
) -> None:
    delivered: list[list[Any]] = []

    class Sink(poisoned(AsyncBuffer)):  # type: ignore[misc]
        async def handle_flush(self, batch: list[Any], opts: FlushOpts) -> int:
            await asyncio.sleep(0)
            delivered.append(list(batch))
            return len(batch)

    buf = Sink(max_size=2, flush_interval=3600)
    async with buf:
        buf.insert(1)
        await buf.ainsert(2)
        await buf.ainsert_batch([3])
        await buf.flush()
        assert sum(await buf.sync_flush(timeout=30)) >= 1
        assert buf.stats()["inserted"] == 3
    assert buf.closed
    assert sorted(item for batch in delivered for item in batch) == [1, 2, 3]


def test_the_poison_catches_a_buffer_that_uses_a_name(Buffer: type) -> None:
    """The check can fail: poisoning a name the buffer does use (the reserved one) breaks it."""

    class UsesReserved(Buffer):  # type: ignore[misc, valid-type]
        _databuffer = Poison("_databuffer")

        def handle_flush(self, batch: list[Any], opts: FlushOpts) -> None:
            pass

    buf = UsesReserved(flush_interval=3600)
    try:
        with pytest.raises(AssertionError, match="_databuffer"):
            buf.stats()
    finally:
        del UsesReserved._databuffer
        buf.close(timeout=30)
