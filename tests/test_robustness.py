"""Hostile conditions: re-entrant GC, racing telemetry, odd sizes and times,
callbacks raising BaseException, and calls from inside flush callbacks."""

from __future__ import annotations

import gc
import sys
import threading
import time
from fractions import Fraction
from typing import Any

import pytest
from conftest import Background, wait_for

from databuffer import BufferClosed, FlushTimeout, telemetry
from databuffer._front import engine_of

BIG = 3600.0


def test_gc_finalizer_inserting_while_a_batch_is_sealed(make_buffer: Any) -> None:
    """A ``__del__`` run by the cyclic GC in the middle of an insert may insert too.

    Sealing a batch allocates; the collection it can start runs finalizers.
    Nothing may be lost, duplicated or counted twice.
    """
    got: list[Any] = []
    lock = threading.Lock()

    def sink(batch: list[Any], opts: Any) -> None:
        with lock:
            got.extend(batch)

    buf = make_buffer(handle_flush=sink, max_size=3, flush_interval=BIG)

    class Bomb:
        def __del__(self) -> None:
            buf.insert("from-del")

    threshold = gc.get_threshold()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(20):
            base = 10 * round_
            buf.insert(base)
            buf.insert(base + 1)
            keep = [[] for _ in range(200)]  # drain the list free list
            bomb = Bomb()
            bomb.me = bomb  # type: ignore[attr-defined]
            del bomb
            gc.set_threshold(1)
            gc.enable()
            buf.insert(base + 2)  # reaches the threshold: seals a batch
            gc.disable()
            gc.set_threshold(*threshold)
            del keep
    finally:
        gc.set_threshold(*threshold)
        if was_enabled:
            gc.enable()
    gc.collect()
    buf.sync_flush(timeout=30)
    info = buf.info()[0]
    assert info["size"] >= 0
    expected = sorted(10 * r + k for r in range(20) for k in range(3))
    with lock:
        numbers = sorted(x for x in got if x != "from-del")
        dels = got.count("from-del")
    assert numbers == expected
    assert info["inserted"] == len(expected) + dels == info["flushed"]


def test_gc_callbacks_switching_threads_lose_nothing(make_buffer: Any) -> None:
    """Two producers on one partition, with a GC hook that gives up the GIL."""
    got: list[Any] = []
    lock = threading.Lock()

    def sink(batch: list[Any], opts: Any) -> None:
        with lock:
            got.extend(batch)

    buf = make_buffer(handle_flush=sink, max_size=2, flush_interval=BIG, insert_timeout=60)

    def hook(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            time.sleep(0)  # lets the other producer run mid-insert

    threshold = gc.get_threshold()
    gc.callbacks.append(hook)
    gc.set_threshold(5)
    start = threading.Barrier(2)

    def produce(tag: int) -> None:
        start.wait()
        for i in range(5000):
            buf.insert((tag, i, [None]))  # a container, so that the GC counts it

    try:
        threads = [threading.Thread(target=produce, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        gc.callbacks.remove(hook)
        gc.set_threshold(*threshold)
    buf.sync_flush(timeout=60)
    with lock:
        keys = [(tag, i) for tag, i, _ in got]
    assert len(keys) == len(set(keys)) == 10_000
    info = buf.info()[0]
    assert (info["inserted"], info["size"], info["flushed"]) == (10_000, 0, 10_000)


def test_telemetry_churn_loses_no_event_of_a_steady_handler(make_buffer: Any) -> None:
    # Called from both partitions' flusher threads at once: count with
    # list.append, which is atomic (``+= 1`` is not, without the GIL).
    seen: list[int] = []
    flushes: list[int] = []

    def handler(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        seen.append(1)

    def sink(batch: list[Any], opts: Any) -> None:
        flushes.append(1)

    telemetry.attach("steady", telemetry.FLUSH_STOP, handler)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            telemetry.attach(("churn", i), ("app", "other"), lambda *a: None)
            telemetry.detach(("churn", i))
            i += 1
            time.sleep(0)  # let the flushers run: each insert here hands over a batch

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        buf = make_buffer(handle_flush=sink, max_size=1, partitions=2, flush_interval=BIG)
        for i in range(3000):
            buf.insert(i)
        buf.sync_flush(timeout=60)
    finally:
        stop.set()
        churner.join(30)
    assert len(flushes) == 3000
    assert len(seen) == len(flushes)


@pytest.mark.parametrize(
    ("max_size", "jitter"),
    [(2**61, 0), (2**62, 2**62), (2**63, 0), (sys.maxsize, 1)],
)
def test_huge_sizes_are_refused_naming_the_options(Buffer: Any, max_size: int, jitter: int) -> None:
    with pytest.raises(ValueError, match="max_size \\+ max_size_jitter"):
        Buffer(handle_flush=lambda b, o: None, max_size=max_size, max_size_jitter=jitter)


def test_a_ring_too_large_for_memory_says_so(Buffer: Any, core_name: str) -> None:
    if core_name == "py":
        pytest.skip("the pure-Python core does not allocate its ring up front")
    with pytest.raises(MemoryError, match="max_size \\+ max_size_jitter.*up front; lower max_size$"):
        Buffer(handle_flush=lambda b, o: None, max_size=2**55)


def test_very_long_times_keep_the_timer_and_timeouts_working(make_buffer: Any) -> None:
    """Seconds beyond threading.TIMEOUT_MAX are valid and mean 'practically never'."""
    release = threading.Event()
    reported: list[BaseException] = []

    def stuck(batch: list[Any], opts: Any) -> None:
        release.wait(30)

    buf = make_buffer(
        handle_flush=stuck,
        handle_flush_error=lambda b, o, e: reported.append(e),
        max_size=1,
        flush_interval=1e12,
        flush_jitter=1e12,
        flush_timeout=0.2,
        insert_timeout=1e12,
    )
    try:
        buf.insert(1)
        wait_for(lambda: len(reported) == 1, timeout=30)
        assert isinstance(reported[0], FlushTimeout)
        assert engine_of(buf)._timer.is_alive()
        assert buf.sync_flush(timeout=1e12) == []
    finally:
        release.set()
    buf.close(timeout=1e12)


def test_insert_with_any_real_timeout_after_close_raises(make_buffer: Any) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, flush_interval=BIG)
    buf.close()
    with pytest.raises(BufferClosed):
        buf.insert(1, timeout=Fraction(1, 2))
    assert buf.size() == 0


@pytest.mark.parametrize("call", ["sync_flush", "close"])
@pytest.mark.parametrize("where", ["handle_flush", "handle_flush_error"])
def test_waiting_calls_from_flush_callbacks_raise_at_once(make_buffer: Any, call: str, where: str) -> None:
    caught: list[BaseException] = []

    def attempt() -> None:
        try:
            getattr(buf, call)(timeout=20)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            caught.append(exc)

    def flush(batch: list[Any], opts: Any) -> None:
        if where == "handle_flush":
            attempt()
        else:
            raise ValueError("fail so that handle_flush_error runs")

    def error(batch: list[Any], opts: Any, exc: BaseException) -> None:
        attempt()

    buf = make_buffer(handle_flush=flush, handle_flush_error=error, max_size=1, flush_interval=BIG)
    t0 = time.monotonic()
    buf.insert(1)
    wait_for(lambda: caught, timeout=30)
    assert time.monotonic() - t0 < 15
    assert isinstance(caught[0], RuntimeError)
    assert "cannot be called from its own flush callbacks" in str(caught[0])
    assert not buf.closed


def test_buffer_closed_during_insert_batch_says_how_many_were_stored(make_buffer: Any) -> None:
    release = threading.Event()
    started = threading.Event()
    got: list[Any] = []

    def flush(batch: list[Any], opts: Any) -> None:
        started.set()
        release.wait(30)
        got.extend(batch)

    buf = make_buffer(
        handle_flush=flush, max_size=3, max_queued_batches=0, flush_interval=BIG, insert_timeout=30
    )
    outcome: list[BaseException] = []

    def insert() -> None:
        try:
            buf.insert_batch(range(10))
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            outcome.append(exc)

    inserter = threading.Thread(target=insert)
    inserter.start()
    assert started.wait(30)
    wait_for(lambda: buf.size() == 3, timeout=30)  # [0..2] flushing, [3..5] full, the rest waits
    closer = threading.Thread(target=buf.close)
    closer.start()
    inserter.join(30)
    release.set()
    closer.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], BufferClosed)
    assert outcome[0].stored == 6
    assert got == list(range(6))


def test_close_does_not_wait_for_an_append_taken_back(make_buffer: Any, core_name: str, gates: Any) -> None:
    """The pure-Python core appends before it checks: a close racing that append ends.

    close() reads how many items were inserted and waits until that many are
    flushed; an append it counted and that the insert then took back out
    (because the buffer closed) is never flushed, and must not be waited for.
    """
    if core_name != "py":
        pytest.skip("only the pure-Python core appends an item before it checks the partition")
    release = gates()
    delivered: list[list[Any]] = []

    def flush(batch: list[Any], opts: Any) -> None:
        release.wait(30)
        delivered.append(list(batch))

    buf = make_buffer(handle_flush=flush, max_size=2, flush_interval=BIG)
    buf.insert(1)
    buf.insert(2)  # sealed: the flusher holds [1, 2] until released
    wait_for(lambda: buf.info()[0]["flushing"])
    core = engine_of(buf).core
    ring = core.parts[0]
    ring.append("in flight")  # an insert between its append and its check
    closing = Background(buf.close, timeout=20)
    wait_for(lambda: engine_of(buf).parts[0].syncs)  # close() has read its target
    with pytest.raises(BufferClosed):
        core._appended(ring, "in flight", None)  # the insert's check: closed, take it back
    release.set()
    closing.wait(30)
    assert closing.error is None, closing.error
    assert delivered == [[1, 2]]
    info = buf.info()[0]
    assert info["inserted"] == info["flushed"] == 2
