"""Memory: references to items are released, nothing leaks, nothing is left for the GC.

Reference counts are exact while the buffer is idle and its flusher threads
are joined (after ``close()``).  After a flush on an open buffer the flusher
thread may still be on its way out of the frame holding the batch, so those
checks wait (with a deadline) for the count to come back.

Without the GIL, CPython's biased reference counting may leave the last
reference to a batch list queued for the thread that created it, and a
flusher asleep between flushes does not drain its queue until it runs again:
``wait_refs`` then wakes the buffer's flushers (which find nothing to do).
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import threading
import time
import tracemalloc
import weakref
from typing import Any

import pytest
from conftest import Background, Sentinel, wait_for

from databuffer import FlushTimeout
from databuffer._front import engine_of

BIG = 3600.0  # flush_interval: no timed flushes during a test


def refs(obj: object) -> int:
    return sys.getrefcount(obj)


GIL_DISABLED = not getattr(sys, "_is_gil_enabled", lambda: True)()


def wait_refs(obj: object, expected: int, buf: Any, timeout: float = 10.0) -> None:
    """Wait until ``refs(obj)``, as the caller sees it, equals ``expected``."""
    # This frame's ``obj`` is one more reference than the caller has.
    expected += 1

    def back() -> bool:
        if refs(obj) == expected:
            return True
        if GIL_DISABLED:
            engine = engine_of(buf)
            for part in engine.parts:
                engine.core.wake(part.index)
        return False

    try:
        wait_for(back, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"refcount {refs(obj) - 1} != expected {expected - 1} after {timeout}s"
        ) from None


def _dropper() -> tuple[Any, list[int]]:
    """handle_flush that only counts the items and drops the batch."""
    counts: list[int] = []

    def handle_flush(batch: list[Any], opts: Any) -> int:
        counts.append(len(batch))
        return len(batch)

    return handle_flush, counts


def test_buffered_items_hold_exactly_one_reference(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    fn, counts = _dropper()
    buf = make_buffer(handle_flush=fn, partitions=3, max_size=1000, flush_interval=BIG)
    for _ in range(50):
        buf.insert(item)
    assert refs(item) == base + 50
    buf.insert_batch([item] * 30)
    assert refs(item) == base + 80
    buf.insert_batch((item,) * 20)
    assert refs(item) == base + 100
    buf.insert_batch(item for _ in range(25))
    assert refs(item) == base + 125
    assert buf.size() == 125
    buf.close()
    assert sum(counts) == 125
    assert refs(item) == base


def test_size_flushes_release_items(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    fn, counts = _dropper()
    buf = make_buffer(handle_flush=fn, partitions=2, max_size=100, flush_interval=BIG)
    for _ in range(1000):
        buf.insert(item)
    wait_for(lambda: sum(counts) == 1000)
    assert buf.size() == 0
    wait_refs(item, base, buf)  # released by the open buffer, before close()
    buf.close()
    assert counts == [100] * 10
    assert refs(item) == base


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_dropped_and_keyed_items_are_released(make_buffer: Any, gates: Any, policy: str) -> None:
    # on_full drops hand back every reference: evict() moves the ring's
    # references into a list the engine releases, refuse() takes none.
    item, keyed = Sentinel(), Sentinel()
    base, keyed_base = refs(item), refs(keyed)
    release, entered = gates(), threading.Event()

    def fn(batch: list[Any], opts: Any) -> None:
        entered.set()
        release.wait(30)

    buf = make_buffer(handle_flush=fn, max_size=10, max_queued_batches=0, flush_interval=BIG, on_full=policy)
    buf.insert_batch([item] * 10)  # with the flusher
    assert entered.wait(10)
    for _ in range(100):
        buf.insert(item)
    buf.insert_batch([item] * 50)
    buf.insert_batch([keyed] * 30, key="k")
    assert buf.stats()["dropped"] == 170  # 180 offered, 10 fit in the ring
    assert refs(item) + refs(keyed) - base - keyed_base == 20  # the batch flushing, the ring
    release.set()
    buf.close()
    assert (refs(item), refs(keyed)) == (base, keyed_base)


def test_flush_and_sync_flush_release_items(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    fn, counts = _dropper()
    buf = make_buffer(handle_flush=fn, partitions=4, max_size=1000, flush_interval=BIG)
    for _ in range(40):
        buf.insert(item)
    buf.flush()
    wait_for(lambda: sum(counts) == 40)
    wait_refs(item, base, buf)
    buf.insert_batch([item] * 40)
    assert buf.sync_flush(timeout=30) == [40]
    wait_refs(item, base, buf)
    buf.close()
    assert refs(item) == base


def test_close_releases_items(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    fn, counts = _dropper()
    buf = make_buffer(handle_flush=fn, partitions=3, max_size=100, flush_interval=BIG)
    for _ in range(250):
        buf.insert(item)
    buf.insert_batch([item] * 250)
    buf.close()
    assert sum(counts) == 500
    assert buf.size() == 0
    assert refs(item) == base


def test_dump_returns_new_references(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    fn, counts = _dropper()
    buf = make_buffer(handle_flush=fn, partitions=2, max_size=1000, flush_interval=BIG)
    for _ in range(60):
        buf.insert(item)
    assert refs(item) == base + 60
    dumped = buf.dump()
    assert len(dumped) == 60
    assert all(x is item for x in dumped)
    assert refs(item) == base + 120
    del dumped
    assert refs(item) == base + 60
    for _ in range(3):
        buf.dump()
    assert refs(item) == base + 60
    buf.close()
    assert sum(counts) == 60
    assert refs(item) == base
    assert buf.dump() == []
    assert refs(item) == base


def test_insert_batch_of_list_tuple_and_generator_larger_than_max_size(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    fn, counts = _dropper()
    buf = make_buffer(handle_flush=fn, partitions=1, max_size=100, flush_interval=BIG)
    buf.insert_batch([item] * 250)  # 200 flushed by size, 50 buffered
    wait_for(lambda: sum(counts) == 200)
    wait_refs(item, base + 50, buf)
    buf.insert_batch(item for _ in range(120))  # 170 in all: 100 flushed, 70 left
    wait_for(lambda: sum(counts) == 300)
    wait_refs(item, base + 70, buf)
    buf.insert_batch((item,) * 30)  # exactly a full batch
    wait_for(lambda: sum(counts) == 400)
    wait_refs(item, base, buf)
    buf.insert_batch([])
    buf.insert_batch(iter(()))
    assert refs(item) == base
    buf.close()
    assert counts == [100] * 4
    assert refs(item) == base


def test_failed_flushes_release_items(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    reported: list[int] = []

    def failing(batch: list[Any], opts: Any) -> None:
        raise ValueError("cannot write")

    def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        assert isinstance(error, ValueError)
        reported.append(len(batch))

    buf = make_buffer(
        handle_flush=failing,
        handle_flush_error=on_error,
        partitions=2,
        max_size=50,
        flush_interval=BIG,
    )
    for _ in range(230):
        buf.insert(item)
    with pytest.raises(ExceptionGroup) as info:
        buf.sync_flush(timeout=30)
    assert all(isinstance(e, ValueError) for e in info.value.exceptions)
    del info
    buf.insert_batch([item] * 20)
    buf.close()
    assert sum(reported) == 250
    assert sum(d["failed"] for d in buf.info()) == 250
    # A failed call's traceback may form a cycle with the frame holding the
    # batch: the cyclic GC must be able to free it.
    gc.collect()
    assert refs(item) == base


def test_flushed_items_are_freed_without_the_cyclic_gc(make_buffer: Any, no_cyclic_gc: None) -> None:
    item = Sentinel()
    base = refs(item)
    fn, counts = _dropper()
    buf = make_buffer(handle_flush=fn, partitions=2, max_size=10, flush_interval=BIG)
    buf.insert_batch([item] * 95)
    for _ in range(20):
        buf.insert(item)
    buf.sync_flush(timeout=30)
    assert sum(counts) == 115
    wait_refs(item, base, buf)
    buf.close()
    assert refs(item) == base


def _raising_predicate(error: BaseException) -> bool:
    raise RuntimeError("retry_on broke")


@pytest.mark.parametrize(
    "retries",
    [{}, {"max_retries": 2, "retry_on": (KeyError,)}, {"max_retries": 2, "retry_on": _raising_predicate}],
    ids=["no retries", "retry_on rejects", "retry_on raises"],
)
def test_failed_items_are_freed_without_the_cyclic_gc(
    make_buffer: Any, no_cyclic_gc: None, retries: dict[str, Any], monkeypatch: Any
) -> None:
    """Batches whose flush raised, once reported, are not kept alive by reference cycles."""
    # A logged traceback reaches handle_flush's frame, and with it the batch:
    # pytest keeps the records of a test until it ends.  Here nothing is logged.
    monkeypatch.setattr(logging.getLogger("databuffer"), "disabled", True)
    item = Sentinel()
    base = refs(item)
    reported: list[int] = []

    def failing(batch: list[Any], opts: Any) -> None:
        raise ValueError("cannot write")

    buf = make_buffer(
        handle_flush=failing,
        handle_flush_error=lambda batch, opts, error: reported.append(len(batch)),
        partitions=1,
        max_size=10,
        flush_interval=BIG,
        **retries,
    )
    buf.insert_batch([item] * 25)
    buf.close()
    assert sum(reported) == 25
    extra = refs(item) - base
    assert extra == 0, f"{extra} references to failed items are left after close()"


def test_abandoned_items_are_freed_without_the_cyclic_gc(make_buffer: Any, no_cyclic_gc: None) -> None:
    """A batch reported as timed out, once its stuck call returned, is not kept alive by cycles."""
    item = Sentinel()
    base = refs(item)
    release = threading.Event()
    returned = threading.Event()
    reported: list[int] = []

    def stuck(batch: list[Any], opts: Any) -> None:
        try:
            release.wait(60)
        finally:
            returned.set()

    buf = make_buffer(
        handle_flush=stuck,
        handle_flush_error=lambda batch, opts, error: reported.append(len(batch)),
        partitions=1,
        max_size=10,
        flush_interval=BIG,
        flush_timeout=0.1,
    )
    try:
        buf.insert_batch([item] * 10)
        wait_for(lambda: reported == [10], timeout=30)
    finally:
        release.set()
    assert returned.wait(30)
    # Released once reported and returned, before close(): the flusher that
    # took the batch over does not keep it for its life.
    wait_refs(item, base, buf)
    buf.close()
    assert buf.info()[0]["failed"] == 10
    extra = refs(item) - base
    assert extra == 0, f"{extra} references to the abandoned batch's items are left after close()"


def test_abandoned_flush_releases_items(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    release = threading.Event()
    returned = threading.Event()
    timed_out = threading.Event()
    calls: list[int] = []
    delivered: list[int] = []
    errors: list[tuple[int, BaseException]] = []

    def handle_flush(batch: list[Any], opts: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            try:
                release.wait(60)  # stuck until the test lets it go
            finally:
                returned.set()
            return
        delivered.append(len(batch))

    def on_error(batch: list[Any], opts: Any, error: BaseException) -> None:
        errors.append((len(batch), error))
        timed_out.set()

    buf = make_buffer(
        handle_flush=handle_flush,
        handle_flush_error=on_error,
        partitions=1,
        max_size=10,
        flush_interval=BIG,
        flush_timeout=0.2,
    )
    try:
        buf.insert_batch([item] * 10)  # the stuck batch
        assert timed_out.wait(30), "the stuck flush was never reported as timed out"
        buf.insert_batch([item] * 15)  # the partition moved on
        wait_for(lambda: sum(delivered) == 10)
    finally:
        release.set()
    assert returned.wait(30)
    buf.close()
    assert len(errors) == 1
    assert errors[0][0] == 10
    assert isinstance(errors[0][1], FlushTimeout)
    errors.clear()  # the error's traceback may reference the batch
    assert delivered == [10, 5]
    info = buf.info()[0]
    assert (info["inserted"], info["flushed"], info["failed"]) == (25, 15, 10)
    gc.collect()
    assert refs(item) == base


def test_close_timing_out_on_a_stuck_flush_keeps_then_releases_items(make_buffer: Any) -> None:
    item = Sentinel()
    base = refs(item)
    release = threading.Event()
    entered = threading.Event()
    delivered: list[int] = []

    def handle_flush(batch: list[Any], opts: Any) -> None:
        entered.set()
        release.wait(60)
        delivered.append(len(batch))

    buf = make_buffer(handle_flush=handle_flush, partitions=1, max_size=10, flush_interval=BIG)
    try:
        buf.insert_batch([item] * 10)  # sealed and handed to the (stuck) flusher
        assert entered.wait(30)
        buf.insert_batch([item] * 7)  # waits in the ring
        with pytest.raises(TimeoutError):
            buf.close(timeout=0.2)
        # Nothing was lost or released while the flush is stuck.
        assert refs(item) == base + 17
        assert buf.size() == 7
    finally:
        release.set()
    buf.close(timeout=30)
    assert delivered == [10, 7]
    assert refs(item) == base


def _bare_core(Buffer: type, partitions: int, max_size: int) -> Any:
    """A core of the kind ``Buffer`` uses, with no engine (nothing here calls its hooks)."""
    module = sys.modules[next(c for c in Buffer.__mro__ if c.__name__ == "BufferCore").__module__]
    return module.Core(partitions, max_size, 0, False, False, None)


def test_core_deallocated_while_holding_items_releases_them(Buffer: type) -> None:
    """A core freed with items in its ring and a sealed batch drops their references."""
    item = Sentinel()
    base = refs(item)
    bare = _bare_core(Buffer, 2, 10)
    for _ in range(10):
        assert bare.push_many(0, (item,), 0) == 1  # a full batch: sealed, handed to "the flusher"
    for _ in range(6):
        assert bare.push_many(0, (item,), 0) == 1  # in the ring
    assert bare.push_many(1, [item] * 4, 0) == 4
    # Sealing woke partition 0's flusher, once; nothing woke partition 1's.
    assert bare.wait_wake(0, 0.0) is True
    assert bare.wait_wake(0, 0.0) is False
    assert bare.wait_wake(1, 0.0) is False
    assert refs(item) == base + 20
    assert bare.size() == 10
    del bare  # the core's last reference: it is deallocated here
    gc.collect()
    assert refs(item) == base


def test_wait_wake_consumes_one_wake_and_times_out(Buffer: type) -> None:
    """The flusher's wait: wakes before it runs count once; a timeout returns False."""
    bare = _bare_core(Buffer, 2, 10)
    start = time.monotonic()
    assert bare.wait_wake(0, 0.05) is False
    assert time.monotonic() - start >= 0.04
    bare.wake(1)
    bare.wake(1)
    assert bare.wait_wake(1, 0.0) is True
    assert bare.wait_wake(1, 0.0) is False  # the second wake counted once
    assert bare.wait_wake(0, 0.0) is False  # partitions do not share wakes
    for bad in (-1, -0.5, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            bare.wait_wake(0, bad)
    with pytest.raises(IndexError):
        bare.wake(2)
    # A wake from another thread ends a wait without a timeout.
    waiter = Background(bare.wait_wake, 0)
    bare.wake(0)
    assert waiter.wait(10).error is None and waiter.result is True


def test_take_and_dump_on_a_bare_core_hand_over_references(Buffer: type) -> None:
    item = Sentinel()
    base = refs(item)
    bare = _bare_core(Buffer, 1, 5)
    for _ in range(8):
        bare.push_many(0, (item,), 0)
    assert refs(item) == base + 8
    taken = bare.take(0, 0)
    assert taken is not None
    batch, by_size, first = taken
    assert (len(batch), by_size, first) == (5, True, 0)
    assert refs(item) == base + 8  # moved, not copied
    del taken, batch
    assert refs(item) == base + 3
    bare.finish(0, 5, True)
    rest = bare.take(0, 8)  # a flush request up to sequence 8
    assert rest is not None and len(rest[0]) == 3 and rest[1] is False
    assert refs(item) == base + 3
    del rest
    assert refs(item) == base
    assert bare.take(0, 8) is None
    del bare
    gc.collect()
    assert refs(item) == base


def test_buffer_is_freed_after_close(Buffer: type) -> None:
    fn, counts = _dropper()
    buf = Buffer(handle_flush=fn, name="freed", partitions=3, max_size=10, flush_interval=BIG)
    buf.insert_batch(range(25))
    buf.close()
    assert sum(counts) == 25
    assert not [t for t in threading.enumerate() if t.name.startswith("databuffer-freed-")]
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is None
    assert gc.garbage == []


def _churn(buf: Any, n: int) -> None:
    chunk = 1000
    i = 0
    while i < n:
        if (i // chunk) % 2:
            buf.insert_batch([object() for _ in range(chunk)])
        else:
            for _ in range(chunk):
                buf.insert(object())
        i += chunk
        if i % 100_000 == 0:
            assert len(buf.dump()) <= 4 * 1000  # copies handed out and dropped


def test_traced_memory_returns_to_baseline(Buffer: type) -> None:
    n = 1_000_000
    fn, counts = _dropper()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        buf = Buffer(handle_flush=fn, name="traced", partitions=4, max_size=1000, flush_interval=BIG)
        try:
            _churn(buf, n)
            during = tracemalloc.get_traced_memory()[0]
        finally:
            buf.close(timeout=60)
        assert sum(counts) == n
        # Only the flushed batches' sizes stay (the list of counts): the
        # items themselves are gone.
        ref = weakref.ref(buf)
        del buf
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert ref() is None
    assert gc.garbage == []
    counts_size = sys.getsizeof(counts) + 64 * len(set(counts))
    assert after - base < 1024 * 1024 + counts_size, (
        f"{after - base} bytes still traced after {n} items (peak during run {during - base})"
    )


def test_a_million_inserts_flushes_retries_and_dumps_leave_every_refcount_exact(Buffer: type) -> None:
    # 1,000 distinct items, each inserted 1,000 times: any reference the
    # buffer took and did not give back shows in some item's count.
    items = [Sentinel() for _ in range(1000)]
    before = [refs(item) for item in items]
    attempts = [0]

    def flush(batch: list[Any], opts: Any) -> None:
        attempts[0] += 1
        if attempts[0] % 9 in (0, 1):
            # Two attempts in a row fail: some batches fail for good, some succeed on retry.
            raise ValueError("failed on purpose")

    buf = Buffer(
        handle_flush=flush,
        handle_flush_error=lambda batch, opts, error: None,
        name="refcounts",
        partitions=4,
        max_size=1000,
        flush_interval=BIG,
        max_retries=1,
        retry_backoff=0,
        insert_timeout=60,
    )
    insert, insert_batch = buf.insert, buf.insert_batch
    for round_ in range(1000):
        if round_ % 2:
            insert_batch(items)
        else:
            for item in items:
                insert(item)
        if round_ % 100 == 0:
            assert len(buf.dump()) <= 4 * 1000  # a copy, handed out and dropped
    buf.close(timeout=60)
    stats = buf.stats()
    assert stats["inserted"] == stats["flushed"] + stats["failed"] == 1_000_000
    assert stats["retried"] > 0 and stats["failed"] > 0
    assert buf.dump() == []
    del buf, insert, insert_batch, item  # the loop variable holds the last item
    gc.collect()
    assert [refs(item) for item in items] == before
