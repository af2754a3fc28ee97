"""Flushing (SPEC section 4): triggers, sizes, jitter, order, never empty, backpressure."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import AlwaysOne, Background, Recorder, stuck_buffer, wait_for

from databuffer import BufferFull
from databuffer._front import engine_of

# -- triggers ---------------------------------------------------------------


def test_size_trigger_is_eager(make_buffer):
    recorder = Recorder()
    meta = object()
    buf = make_buffer(handle_flush=recorder, name="sized", max_size=3, flush_interval=3600, flush_meta=meta)
    buf.insert("a")
    buf.insert("b")
    assert buf.size() == 2
    buf.insert("c")
    # No further insert: the full batch must be flushed on its own.
    assert recorder.called.wait(30)
    ((batch, opts, _),) = recorder.calls
    assert batch == ["a", "b", "c"]
    assert opts.trigger == "size"
    assert opts.size == 3
    assert opts.partition == 0
    assert opts.buffer == "sized"
    assert opts.meta is meta
    assert buf.size() == 0
    wait_for(lambda: buf.info()[0]["flushed"] == 3, timeout=30)


def test_size_trigger_by_insert_batch_is_eager(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, max_size=4, flush_interval=3600)
    buf.insert_batch([1, 2, 3, 4])
    assert recorder.called.wait(30)
    assert recorder.batches() == [[1, 2, 3, 4]]
    assert recorder.triggers() == ["size"]


def test_manual_trigger(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, max_size=100, flush_interval=3600)
    buf.insert_batch([1, 2])
    buf.flush()
    assert recorder.called.wait(30)
    assert recorder.batches() == [[1, 2]]
    assert recorder.triggers() == ["manual"]
    buf.insert(3)
    assert buf.sync_flush(timeout=30) == [1]
    assert recorder.batches() == [[1, 2], [3]]
    assert recorder.triggers() == ["manual", "manual"]


def test_close_trigger(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, partitions=2, max_size=100, flush_interval=3600)
    buf.insert_batch([1, 2])
    buf.insert_batch([3])
    buf.close(timeout=30)
    assert sorted(recorder.batches()) == [[1, 2], [3]]
    assert recorder.triggers() == ["close", "close"]


def test_interval_trigger_not_before_flush_interval(make_buffer):
    interval, jitter = 0.2, 0.2
    recorder = Recorder()
    t0 = time.monotonic()
    buf = make_buffer(handle_flush=recorder, max_size=100, flush_interval=interval, flush_jitter=jitter)
    buf.insert("x")
    assert recorder.called.wait(30)
    ((batch, opts, t1),) = recorder.calls
    assert batch == ["x"]
    assert opts.trigger == "interval"
    assert t1 - t0 >= interval
    assert t1 - t0 <= interval + jitter + 5.0  # generous slack for a loaded machine

    # Each later timed flush is counted from the previous one.
    previous = t1
    for n in range(2, 4):
        buf.insert(n)
        wait_for(lambda n=n: len(recorder.calls) == n, timeout=30)
        batch, opts, t = recorder.calls[-1]
        assert batch == [n]
        assert opts.trigger == "interval"
        assert t - previous >= interval
        assert t - previous <= interval + jitter + 5.0
        previous = t


def test_the_default_jitter_is_a_fifth_of_the_interval(make_buffer):
    interval = 0.5
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, max_size=100, flush_interval=interval)
    engine_of(buf).random = AlwaysOne()  # every jitter drawn from now on is the whole jitter
    buf.insert("a")
    t_manual = time.monotonic()
    buf.sync_flush(timeout=30)
    if recorder.triggers() != ["manual"]:
        pytest.skip("the machine was too slow to flush by hand before the first timed flush")
    buf.insert("b")
    wait_for(lambda: len(recorder.calls) == 2, timeout=30)
    batch, opts, t = recorder.calls[1]
    assert (batch, opts.trigger) == (["b"], "interval")
    # Counted from the manual flush: the interval plus all of its jitter, 20 %
    # of it; the fixed 2.0 s of before would have waited 2.5 s.
    assert t - t_manual >= interval * 1.2
    assert t - t_manual < interval + 2.0


def test_interval_counted_from_last_flush_of_any_kind(make_buffer):
    interval = 0.4
    recorder = Recorder()
    t0 = time.monotonic()
    buf = make_buffer(handle_flush=recorder, max_size=100, flush_interval=interval, flush_jitter=0)
    buf.insert("a")
    # Let part of the first interval pass, then flush by hand: the timed flush
    # must now come a whole interval after this manual flush.
    wait_for(lambda: time.monotonic() - t0 >= interval / 2, timeout=30)
    t_manual = time.monotonic()
    buf.sync_flush(timeout=30)
    if t_manual - t0 >= interval:
        pytest.skip("the machine was too slow to place the manual flush inside the interval")
    assert recorder.triggers() == ["manual"]
    buf.insert("b")
    wait_for(lambda: len(recorder.calls) == 2, timeout=30)
    batch, opts, t = recorder.calls[1]
    assert batch == ["b"]
    assert opts.trigger == "interval"
    assert t - t_manual >= interval


def test_interval_flush_of_an_empty_partition_calls_nothing(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, partitions=2, max_size=100, flush_interval=0.05, flush_jitter=0)
    buf.insert("x")
    assert recorder.called.wait(30)
    assert recorder.batches() == [["x"]]
    recorder.called.clear()
    # Many more intervals pass for both partitions, now empty: nothing is called.
    assert not recorder.called.wait(0.6)
    assert recorder.batches() == [["x"]]
    assert sum(p["flushed"] for p in buf.info()) == 1


# -- sizes --------------------------------------------------------------------


def test_large_insert_batch_is_split_into_consecutive_batches(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, max_size=3, flush_interval=3600, insert_timeout=30)
    buf.insert_batch(range(10))
    wait_for(lambda: len(recorder.calls) == 3, timeout=30)
    assert recorder.batches() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert recorder.triggers() == ["size"] * 3
    assert buf.dump() == [9]
    assert buf.sync_flush(timeout=30) == [1]
    assert recorder.batches()[-1] == [9]
    assert all(len(b) <= 3 for b in recorder.batches())


def test_no_batch_above_threshold_with_single_inserts(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, max_size=4, flush_interval=3600, insert_timeout=30)
    for i in range(18):
        buf.insert(i)
    buf.sync_flush(timeout=30)
    batches = recorder.batches()
    assert all(0 < len(b) <= 4 for b in batches)
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]
    assert recorder.triggers() == ["size"] * 4 + ["manual"]
    assert recorder.items() == list(range(18))


def test_max_size_jitter_bounds(make_buffer):
    max_size, jitter = 3, 2
    recorder = Recorder()
    buf = make_buffer(
        handle_flush=recorder,
        max_size=max_size,
        max_size_jitter=jitter,
        flush_interval=3600,
        insert_timeout=30,
    )
    thresholds = set()
    for i in range(80):
        threshold = buf.info()[0]["flush_size"]
        assert max_size <= threshold <= max_size + jitter
        thresholds.add(threshold)
        buf.insert(i)
    buf.sync_flush(timeout=30)
    batches = recorder.batches()
    triggers = recorder.triggers()
    sized = [len(b) for b, t in zip(batches, triggers, strict=False) if t == "size"]
    assert len(sized) >= 80 // (max_size + jitter)
    assert all(max_size <= n <= max_size + jitter for n in sized), sized
    assert all(0 < len(b) <= max_size + jitter for b in batches)
    # Drawn anew after every flush: over ~20 draws from 3 values, more than one shows.
    assert len(set(sized)) > 1, sized
    assert recorder.items() == list(range(80))
    assert max_size <= buf.info()[0]["flush_size"] <= max_size + jitter


def test_max_size_jitter_with_insert_batch(make_buffer):
    recorder = Recorder()
    buf = make_buffer(
        handle_flush=recorder, max_size=2, max_size_jitter=3, flush_interval=3600, insert_timeout=30
    )
    buf.insert_batch(range(40))
    buf.sync_flush(timeout=30)
    batches = recorder.batches()
    sized = [len(b) for b, t in zip(batches, recorder.triggers(), strict=False) if t == "size"]
    assert all(2 <= n <= 5 for n in sized), sized
    assert all(0 < len(b) <= 5 for b in batches)
    assert recorder.items() == list(range(40))


# -- order and concurrency ----------------------------------------------------


def test_order_within_partition_across_batches(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, partitions=2, max_size=3, flush_interval=3600, insert_timeout=30)
    for i in range(20):
        buf.insert(i)
    for i in range(20, 30, 2):
        buf.insert_batch([i, i + 1])
    buf.sync_flush(timeout=30)
    items_0 = [item for batch in recorder.batches(0) for item in batch]
    items_1 = [item for batch in recorder.batches(1) for item in batch]
    assert sorted(items_0 + items_1) == list(range(30))
    assert items_0 == sorted(items_0)
    assert items_1 == sorted(items_1)
    assert all(0 < len(b) <= 3 for b in recorder.batches())


def test_batches_of_one_partition_are_flushed_one_at_a_time(make_buffer):
    lock = threading.Lock()
    active = {0: 0, 1: 0}
    peak = {0: 0, 1: 0}
    seen: list[Any] = []

    def fn(batch, opts):
        with lock:
            active[opts.partition] += 1
            peak[opts.partition] = max(peak[opts.partition], active[opts.partition])
        threading.Event().wait(0.005)  # simulated work
        with lock:
            seen.extend(batch)
            active[opts.partition] -= 1

    buf = make_buffer(handle_flush=fn, partitions=2, max_size=2, flush_interval=3600, insert_timeout=30)
    for i in range(30):
        buf.insert(i)
    buf.sync_flush(timeout=30)
    assert peak == {0: 1, 1: 1}
    assert sorted(seen) == list(range(30))


def test_partitions_flush_concurrently(make_buffer):
    started = {0: threading.Event(), 1: threading.Event()}
    overlap = {}

    def fn(batch, opts):
        started[opts.partition].set()
        other = 1 - opts.partition
        # Each waits for the other to have started: only possible if both run at once.
        overlap[opts.partition] = started[other].wait(30)
        return opts.partition

    buf = make_buffer(handle_flush=fn, partitions=2, max_size=100, flush_interval=3600)
    buf.insert("a")
    buf.insert("b")
    assert buf.sync_flush(timeout=60) == [0, 1]
    assert overlap == {0: True, 1: True}


def test_never_an_empty_flush(make_buffer):
    recorder = Recorder()
    buf = make_buffer(
        handle_flush=recorder,
        partitions=3,
        max_size=2,
        flush_interval=0.05,
        flush_jitter=0,
        insert_timeout=30,
    )
    buf.flush()
    assert buf.sync_flush(timeout=30) == []
    for i in range(7):
        buf.insert(i)
    buf.insert_batch([])
    buf.flush()
    buf.sync_flush(timeout=30)
    buf.flush()
    buf.sync_flush(timeout=30)
    buf.close(timeout=30)
    assert recorder.batches()
    assert all(len(b) > 0 for b in recorder.batches())
    assert all(o.size == len(b) for b, o, _ in recorder.calls)
    assert sorted(recorder.items()) == list(range(7))


def test_close_of_an_empty_buffer_calls_nothing(make_buffer):
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, partitions=2, flush_interval=3600)
    buf.close(timeout=30)
    assert recorder.calls == []


# -- backpressure ---------------------------------------------------------------


def test_insert_raises_buffer_full_after_timeout_storing_nothing(make_buffer, gates):
    buf, release, recorder = stuck_buffer(make_buffer, gates, insert_timeout=30)
    buf.insert(2)
    buf.insert(3)  # the partition now holds a full batch while [0, 1] is flushing
    before = (buf.size(), buf.dump(), buf.info()[0]["inserted"])
    assert before == (2, [2, 3], 4)
    t0 = time.monotonic()
    with pytest.raises(BufferFull) as excinfo:
        buf.insert(4, timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert isinstance(excinfo.value, TimeoutError)
    assert (buf.size(), buf.dump(), buf.info()[0]["inserted"]) == before
    release.set()
    buf.sync_flush(timeout=30)
    assert recorder.items() == [0, 1, 2, 3]


def test_insert_uses_insert_timeout_by_default(make_buffer, gates):
    buf, release, recorder = stuck_buffer(make_buffer, gates, insert_timeout=0.3)
    buf.insert_batch([2, 3])
    t0 = time.monotonic()
    with pytest.raises(BufferFull):
        buf.insert(4)
    assert time.monotonic() - t0 >= 0.3
    assert buf.dump() == [2, 3]
    assert buf.info()[0]["inserted"] == 4
    release.set()
    buf.sync_flush(timeout=30)
    assert recorder.items() == [0, 1, 2, 3]


def test_insert_batch_out_of_room_reports_stored(make_buffer, gates):
    buf, release, recorder = stuck_buffer(make_buffer, gates, insert_timeout=30)
    t0 = time.monotonic()
    with pytest.raises(BufferFull) as excinfo:
        buf.insert_batch([2, 3, 4, 5], timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert excinfo.value.stored == 2
    assert buf.dump() == [2, 3]
    assert buf.info()[0]["inserted"] == 4
    # Already full: nothing of the next call is stored.
    with pytest.raises(BufferFull) as excinfo:
        buf.insert_batch([6, 7], timeout=0.2)
    assert excinfo.value.stored == 0
    assert buf.dump() == [2, 3]
    release.set()
    buf.sync_flush(timeout=30)
    assert recorder.items() == [0, 1, 2, 3]


def test_waiting_insert_resumes_when_the_flush_finishes(make_buffer, gates):
    buf, release, recorder = stuck_buffer(make_buffer, gates, insert_timeout=0.1)
    buf.insert_batch([2, 3], timeout=30)
    waiting = Background(buf.insert, 4, timeout=30)
    assert not waiting.done.wait(0.3), "insert returned although the partition was full"
    assert buf.dump() == [2, 3]
    release.set()
    waiting.wait()
    assert waiting.error is None
    buf.sync_flush(timeout=30)
    assert recorder.items() == [0, 1, 2, 3, 4]
    assert buf.info()[0]["inserted"] == 5


def test_waiting_insert_batch_resumes_when_the_flush_finishes(make_buffer, gates):
    buf, release, recorder = stuck_buffer(make_buffer, gates, insert_timeout=0.1)
    waiting = Background(buf.insert_batch, [2, 3, 4, 5, 6], timeout=30)
    wait_for(lambda: buf.dump() == [2, 3], timeout=30)
    assert not waiting.done.wait(0.3), "insert_batch returned although the partition was full"
    release.set()
    waiting.wait()
    assert waiting.error is None
    buf.sync_flush(timeout=30)
    assert recorder.items() == [0, 1, 2, 3, 4, 5, 6]
    assert all(len(b) <= 2 for b in recorder.batches())
