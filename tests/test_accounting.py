"""Accounting: stats() and info() add up at every moment,
inserted == size + in_flight + flushed + failed + dropped."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from conftest import adds_up, wait_for

BIG = 3600
COUNTERS = ("inserted", "size", "in_flight", "flushed", "retried", "failed", "dropped")


def test_stats_keys_and_a_fresh_buffer(make_buffer: Any) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, name="acct", partitions=3, flush_interval=BIG)
    assert buf.stats() == {
        "name": "acct",
        "partitions": 3,
        "closed": False,
        **dict.fromkeys(COUNTERS, 0),
    }
    buf.close()
    assert buf.stats()["closed"] is True


def test_stats_sum_info_and_in_flight_counts_a_batch_in_handle_flush(make_buffer: Any, gates: Any) -> None:
    release, entered = gates(), threading.Event()

    def fn(batch: list[Any], opts: Any) -> None:
        entered.set()
        release.wait(30)

    buf = make_buffer(handle_flush=fn, partitions=2, max_size=3, flush_interval=BIG)
    buf.insert_batch([1, 2, 3])  # sealed: in flight
    assert entered.wait(30)
    buf.insert_batch([4])
    buf.insert_batch([5, 6])
    stats = buf.stats()
    assert (stats["inserted"], stats["size"], stats["in_flight"], stats["flushed"]) == (6, 3, 3, 0)
    info = buf.info()
    for key in COUNTERS:
        assert stats[key] == sum(part[key] for part in info), key
    release.set()
    buf.sync_flush(timeout=30)
    wait_for(lambda: buf.stats()["in_flight"] == 0, timeout=30)
    assert buf.stats()["flushed"] == 6


def test_the_sum_holds_at_every_moment_under_concurrency_and_failures(
    make_buffer: Any, core_name: str
) -> None:
    producers, per_producer = 4, 5000
    delivered: list[int] = []
    failed: list[int] = []
    lock = threading.Lock()
    rng = random.Random(7)

    def flush(batch: list[int], opts: Any) -> None:
        with lock:
            roll = rng.random()
        if roll < 0.25:
            raise ValueError("flaky")
        with lock:
            delivered.extend(batch)

    def on_error(batch: list[int], opts: Any, error: BaseException) -> None:
        with lock:
            failed.extend(batch)

    buf = make_buffer(
        handle_flush=flush,
        handle_flush_error=on_error,
        partitions=3,
        max_size=50,
        max_size_jitter=20,
        flush_interval=0.01,
        flush_jitter=0.01,
        insert_timeout=30,
        max_retries=1,
        retry_backoff=0.001,
    )
    stop = threading.Event()
    snapshots = [0]
    problems: list[str] = []
    monotonic_py = ("flushed", "failed", "retried")

    def watch() -> None:
        last = dict.fromkeys(COUNTERS, 0)
        while not stop.is_set():
            for counters in [buf.stats(), *buf.info()]:
                if not adds_up(counters):
                    problems.append(f"does not add up: {counters}")
                if min(counters[k] for k in COUNTERS) < 0:
                    problems.append(f"negative: {counters}")
            stats = buf.stats()
            # The pure-Python core appends before it checks for room: an
            # insert that must wait takes its item back out, and `inserted`
            # steps back by it (never below what was really stored).
            for key in ("inserted", "flushed", "failed", "retried") if core_name == "c" else monotonic_py:
                if stats[key] < last[key]:
                    problems.append(f"{key} went down: {last[key]} -> {stats[key]}")
            last = stats
            snapshots[0] += 1

    def produce(n: int) -> None:
        local = random.Random(n)
        i = n * per_producer
        end = i + per_producer
        while i < end:
            if local.random() < 0.5:
                buf.insert(i)
                i += 1
            else:
                k = min(local.randint(1, 120), end - i)
                buf.insert_batch(range(i, i + k))
                i += k
            if local.random() < 0.01:
                buf.flush()

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        buf.sync_flush(timeout=60)
    except ExceptionGroup:
        pass  # failures are expected: they are counted below
    wait_for(lambda: buf.stats()["in_flight"] == 0, timeout=30)
    deadline = time.monotonic() + 0.2
    while snapshots[0] < 50 and time.monotonic() < deadline + 10:
        time.sleep(0.01)
    stop.set()
    watcher.join(30)
    assert problems == []
    assert snapshots[0] >= 50

    total = producers * per_producer
    stats = buf.stats()
    assert stats["inserted"] == total
    assert (stats["size"], stats["in_flight"]) == (0, 0)
    assert stats["flushed"] == len(delivered)
    assert stats["failed"] == len(failed)
    assert sorted(delivered + failed) == list(range(total))
    assert stats["retried"] > 0
