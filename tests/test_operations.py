"""Operations of SPEC section 3: insert, insert_batch, flush, sync_flush, dump, size, info."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import Background, PartitionBatchRecorder, first_partition, wait_for

INFO_KEYS = {
    "partition",
    "name",
    "size",
    "flush_size",
    "flush_interval",
    "flush_jitter",
    "flush_timeout",
    "max_queued_batches",
    "on_full",
    "flushing",
    "queued",
    "inserted",
    "in_flight",
    "flushed",
    "retried",
    "failed",
    "dropped",
}


def test_insert_and_insert_batch_return_none(make_buffer):
    buf = make_buffer(handle_flush=PartitionBatchRecorder(), flush_interval=3600)
    assert buf.insert(1) is None
    assert buf.insert(2, timeout=1.0) is None
    assert buf.insert_batch([3, 4]) is None
    assert buf.insert_batch((5,), timeout=1) is None
    assert buf.size() == 5


def test_insert_rotates_round_robin_one_step_per_call(make_buffer):
    buf = make_buffer(handle_flush=PartitionBatchRecorder(), partitions=3, max_size=100, flush_interval=3600)
    buf.insert(0)
    start = first_partition(buf)
    for i in range(1, 9):
        buf.insert(i)
    assert [p["size"] for p in buf.info()] == [3, 3, 3]
    by_partition: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for i in range(9):
        by_partition[(start + i) % 3].append(i)
    assert buf.dump() == by_partition[0] + by_partition[1] + by_partition[2]


def test_dispatch_round_robin_is_the_default(make_buffer):
    buf = make_buffer(handle_flush=PartitionBatchRecorder(), partitions=2, max_size=100, flush_interval=3600)
    explicit = make_buffer(
        handle_flush=PartitionBatchRecorder(),
        partitions=2,
        max_size=100,
        flush_interval=3600,
        dispatch="round_robin",
    )
    for b in (buf, explicit):
        b.insert(1)
        b.insert(2)
        assert [p["size"] for p in b.info()] == [1, 1]


def test_dispatch_thread_keeps_one_thread_in_one_partition(make_buffer):
    recorder = PartitionBatchRecorder()
    buf = make_buffer(
        handle_flush=recorder, partitions=3, max_size=100, flush_interval=3600, dispatch="thread"
    )
    for i in range(5):
        buf.insert(i)
    buf.insert_batch([5, 6])
    buf.insert_batch(iter([7]))
    sizes = [p["size"] for p in buf.info()]
    home = first_partition(buf)
    assert sizes[home] == 8 and sum(sizes) == 8
    assert buf.dump() == list(range(8))
    buf.sync_flush(timeout=30)
    assert set(recorder.partition_of().values()) == {home}


def test_dispatch_thread_gives_threads_homes_round_robin(make_buffer):
    """Threads get partitions in the order they first insert; each keeps its own."""
    buf = make_buffer(
        handle_flush=PartitionBatchRecorder(),
        partitions=3,
        max_size=100,
        flush_interval=3600,
        dispatch="thread",
    )
    buf.insert(("main", 0))
    main_home = first_partition(buf)
    turns = [threading.Event() for _ in range(5)]
    done = threading.Event()

    def worker(t: int) -> None:
        assert turns[t].wait(30)
        for i in range(t + 1):
            buf.insert((t, i))
        turns[t + 1].set()
        # Stay alive until every thread has inserted: ended threads' idents
        # may be reused, and a reused ident takes over its home.
        assert done.wait(30)

    workers = [Background(worker, t) for t in range(4)]
    turns[0].set()
    assert turns[4].wait(30)
    buf.insert(("main", 1))
    done.set()
    for w in workers:
        assert w.wait().error is None
    homes = {"main": main_home} | {t: (main_home + 1 + t) % 3 for t in range(4)}
    inserted = [("main", 0)] + [(t, i) for t in range(4) for i in range(t + 1)] + [("main", 1)]
    expected = [item for p in range(3) for item in inserted if homes[item[0]] == p]
    assert buf.dump() == expected


def test_dispatch_thread_home_survives_many_buffers(make_buffer):
    """One thread alternating over more buffers than its home cache holds keeps every home."""
    bufs = [
        make_buffer(
            handle_flush=PartitionBatchRecorder(),
            partitions=4,
            max_size=100,
            flush_interval=3600,
            dispatch="thread",
        )
        for _ in range(20)
    ]
    for round_ in range(3):
        for b in bufs:
            b.insert(round_)
    for b in bufs:
        sizes = [p["size"] for p in b.info()]
        assert sorted(sizes) == [0, 0, 0, 3], sizes
        assert b.dump() == [0, 1, 2]


def test_insert_batch_takes_one_round_robin_step(make_buffer):
    recorder = PartitionBatchRecorder()
    buf = make_buffer(handle_flush=recorder, partitions=3, max_size=100, flush_interval=3600)
    buf.insert_batch(["a1", "a2"])
    start = first_partition(buf)
    buf.insert_batch(["b1"])
    buf.insert_batch(("c1", "c2", "c3"))
    buf.insert_batch(iter(["d1"]))
    buf.insert_batch(x for x in ["e1", "e2"])
    sizes = [p["size"] for p in buf.info()]
    expected_sizes = [0, 0, 0]
    for offset, n in enumerate([2, 1, 3, 1, 2]):
        expected_sizes[(start + offset) % 3] += n
    assert sizes == expected_sizes
    buf.sync_flush(timeout=30)
    where = recorder.partition_of()
    assert where["a1"] == where["a2"] == where["d1"] == start
    assert where["b1"] == where["e1"] == where["e2"] == (start + 1) % 3
    assert where["c1"] == where["c2"] == where["c3"] == (start + 2) % 3


def test_insert_and_insert_batch_share_the_rotation(make_buffer):
    recorder = PartitionBatchRecorder()
    buf = make_buffer(handle_flush=recorder, partitions=2, max_size=100, flush_interval=3600)
    buf.insert("x")
    buf.insert_batch(["y", "z"])
    buf.insert("w")
    buf.insert_batch(["v"])
    buf.sync_flush(timeout=30)
    where = recorder.partition_of()
    assert where["x"] == where["w"]
    assert where["y"] == where["z"] == where["v"]
    assert where["x"] != where["y"]
    by_partition = {opts.partition: batch for batch, opts, _ in recorder.calls}
    assert by_partition[where["x"]] == ["x", "w"]
    assert by_partition[where["y"]] == ["y", "z", "v"]


def test_insert_batch_accepts_any_iterable(make_buffer):
    buf = make_buffer(handle_flush=PartitionBatchRecorder(), max_size=100, flush_interval=3600)
    buf.insert_batch(range(3))
    buf.insert_batch(i for i in (3, 4))
    buf.insert_batch({5: "five"}.keys())
    buf.insert_batch([])
    assert buf.dump() == [0, 1, 2, 3, 4, 5]
    assert buf.size() == 6


def test_dump_does_not_clear_and_keeps_order(make_buffer):
    obj = object()
    buf = make_buffer(handle_flush=PartitionBatchRecorder(), partitions=2, max_size=100, flush_interval=3600)
    buf.insert(obj)
    start = first_partition(buf)
    buf.insert("b")
    buf.insert("c")
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


def test_size_counts_items_not_handed_to_a_flusher(make_buffer, gates):
    release = gates()
    started = threading.Event()

    def fn(batch, opts):
        started.set()
        release.wait(30)
        return len(batch)

    buf = make_buffer(handle_flush=fn, max_size=3, flush_interval=3600, insert_timeout=30)
    assert buf.size() == 0
    assert buf.dump() == []
    buf.insert_batch([1, 2, 3])  # a full batch, handed to the flusher at once
    assert started.wait(30)
    buf.insert(4)
    assert buf.size() == 1
    assert buf.dump() == [4]
    (info,) = buf.info()
    assert info["flushing"] is True
    assert info["inserted"] == 4
    release.set()
    assert buf.sync_flush(timeout=30) == [1]
    assert buf.size() == 0


def test_info_keys_and_counters(make_buffer):
    recorder = PartitionBatchRecorder()
    buf = make_buffer(
        handle_flush=recorder,
        name="info-buf",
        partitions=2,
        max_size=3,
        flush_interval=100,
        flush_jitter=1.5,
        flush_timeout=20,
    )
    info = buf.info()
    assert isinstance(info, list) and len(info) == 2
    for p, part in enumerate(info):
        assert set(part) == INFO_KEYS
        assert part["partition"] == p
        assert part["name"] == "info-buf"
        assert part["size"] == 0
        assert part["flush_size"] == 3
        assert part["flush_interval"] == 100.0
        assert part["flush_jitter"] == 1.5
        assert part["flush_timeout"] == 20.0
        assert part["flushing"] is False
        assert (part["max_queued_batches"], part["queued"]) == (4, 0)
        assert (part["inserted"], part["in_flight"], part["flushed"], part["retried"], part["failed"]) == (
            0,
            0,
            0,
            0,
            0,
        )

    buf.insert(0)
    start = first_partition(buf)
    other = 1 - start
    for i in range(1, 7):
        buf.insert(i)  # start gets 0,2,4,6 (flushes 0,2,4); other gets 1,3,5 (flushes)
    wait_for(lambda: sum(p["flushed"] for p in buf.info()) == 6, timeout=30)
    wait_for(lambda: not any(p["flushing"] for p in buf.info()), timeout=30)
    info = buf.info()
    assert (info[start]["inserted"], info[start]["size"], info[start]["flushed"]) == (4, 1, 3)
    assert (info[other]["inserted"], info[other]["size"], info[other]["flushed"]) == (3, 0, 3)
    assert info[start]["failed"] == info[other]["failed"] == 0
    assert buf.size() == 1
    assert buf.dump() == [6]


def test_flush_returns_without_waiting(make_buffer, gates):
    release = gates()
    started = threading.Event()
    finished = threading.Event()

    def fn(batch, opts):
        started.set()
        release.wait(30)
        finished.set()

    buf = make_buffer(handle_flush=fn, max_size=100, flush_interval=3600)
    buf.insert("x")
    assert buf.flush() is None
    assert started.wait(30)
    assert not finished.is_set()
    assert buf.size() == 0
    release.set()
    assert finished.wait(30)


def test_flush_on_empty_buffer_calls_nothing(make_buffer):
    recorder = PartitionBatchRecorder()
    buf = make_buffer(handle_flush=recorder, partitions=3, flush_interval=3600)
    buf.flush()
    assert buf.sync_flush(timeout=30) == []
    assert recorder.calls == []
    assert all(p["flushed"] == 0 for p in buf.info())


def test_sync_flush_returns_results_in_partition_order(make_buffer):
    partition2_called = threading.Event()

    def fn(batch, opts):
        if opts.partition == 2:
            partition2_called.set()
        if opts.partition == 0:
            # Partition 0 finishes last: the order of the results must not
            # depend on the order the flushes finish in.
            partition2_called.wait(30)
        return (opts.partition, list(batch))

    buf = make_buffer(handle_flush=fn, partitions=3, max_size=100, flush_interval=3600)
    for i in range(6):
        buf.insert(i)
    result = buf.sync_flush(timeout=30)
    assert [r[0] for r in result] == [0, 1, 2]
    assert sorted(item for _, batch in result for item in batch) == list(range(6))
    for _p, batch in result:
        assert batch == sorted(batch)
        assert len(batch) == 2
    assert buf.size() == 0
    assert all(p["flushed"] == 2 for p in buf.info())


def test_sync_flush_skips_empty_partitions(make_buffer):
    recorder = PartitionBatchRecorder()
    buf = make_buffer(handle_flush=recorder, partitions=3, max_size=100, flush_interval=3600)
    buf.insert_batch(["only"])
    start = first_partition(buf)
    assert buf.sync_flush(timeout=30) == [(start, ["only"])]
    assert len(recorder.calls) == 1
    assert recorder.calls[0][1].trigger == "manual"


def test_sync_flush_waits_for_a_flush_in_flight(make_buffer, gates):
    release = gates()
    started = threading.Event()
    finished: list[list[Any]] = []

    def fn(batch, opts):
        if batch[0] == 0:
            started.set()
            release.wait(30)
        finished.append(list(batch))
        return list(batch)

    buf = make_buffer(handle_flush=fn, max_size=2, flush_interval=3600, insert_timeout=30)
    buf.insert_batch([0, 1])  # size flush, stuck in handle_flush
    assert started.wait(30)
    buf.insert(2)
    call = Background(buf.sync_flush, timeout=30)
    assert not call.done.wait(0.3), "sync_flush returned while a flush was still running"
    release.set()
    call.wait()
    assert call.error is None
    assert finished[0] == [0, 1]
    assert [2] in finished
    assert [2] in call.result
    (info,) = buf.info()
    assert info["flushed"] == 3
    assert info["flushing"] is False


def test_sync_flush_times_out_when_a_flush_is_stuck(make_buffer, gates):
    release = gates()
    started = threading.Event()

    def fn(batch, opts):
        started.set()
        release.wait(30)
        return "done"

    buf = make_buffer(handle_flush=fn, max_size=100, flush_interval=3600, flush_timeout=60)
    buf.insert("x")
    with pytest.raises(TimeoutError):
        buf.sync_flush(timeout=0.3)
    assert started.is_set()
    release.set()
    # Waits for the flush in flight, which holds the only item.
    assert buf.sync_flush(timeout=30) == []
    assert buf.info()[0]["flushed"] == 1
