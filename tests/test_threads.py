"""Concurrency: many producer threads, concurrent readers and flushers, close races.

Every item is an int ``producer * STRIDE + seq``: distinct over the test, and
it tells which producer made it and in which order.
"""

from __future__ import annotations

import os
import random
import sys
import sysconfig
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from conftest import PartitionSizeRecorder, run_python, wait_for

from databuffer import BufferClosed

STRIDE = 10_000_000
PRODUCERS = 8
PARTITIONS = 4
MAX_SIZE = 1000
JOIN_TIMEOUT = 120.0


@pytest.fixture
def fine_switching() -> Any:
    """Switch threads often (every 20 µs instead of 5 ms) to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)
    yield
    sys.setswitchinterval(old)


def _per_core(core_name: str, c: int, py: int) -> int:
    return c if core_name == "c" else py


def _produce(buf: Any, producer: int, count: int, rng: random.Random) -> None:
    """Insert ``count`` items, mixing single inserts and batches of 0..2500."""
    seq = 0
    base = producer * STRIDE
    while seq < count:
        if rng.random() < 0.5:
            n = min(rng.randint(0, 2500), count - seq)
            if rng.random() < 0.5:
                buf.insert_batch(list(range(base + seq, base + seq + n)))
            else:
                buf.insert_batch(iter(range(base + seq, base + seq + n)))
            seq += n
        else:
            n = min(rng.randint(1, 400), count - seq)
            insert = buf.insert
            for i in range(base + seq, base + seq + n):
                insert(i)
            seq += n


def _run_threads(targets: list[Callable[[], None]], barrier: threading.Barrier) -> list[BaseException]:
    """Start one thread per target behind ``barrier``; return what they raised."""
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(timeout=JOIN_TIMEOUT)
                target()
            except BaseException as exc:  # reported by the test, not by pytest's hook
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), name=f"test-worker-{i}") for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=JOIN_TIMEOUT)
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "worker threads still running"
    return errors


def _check_delivery(rec: PartitionSizeRecorder, per_producer: int, producers: int, max_size: int) -> None:
    assert rec.problems == []
    delivered = rec.items()
    expected = {p * STRIDE + s for p in range(producers) for s in range(per_producer)}
    assert len(delivered) == len(expected), f"{len(delivered)} items delivered, {len(expected)} inserted"
    counts = Counter(delivered)
    dupes = [item for item, n in counts.items() if n > 1]
    assert dupes == [], f"{len(dupes)} items delivered more than once, e.g. {dupes[:5]}"
    missing = expected - counts.keys()
    assert not missing, f"{len(missing)} items never delivered, e.g. {sorted(missing)[:5]}"
    assert counts.keys() == expected
    # Batches: never empty, never above the threshold.
    sizes = [len(batch) for batch in rec.batches()]
    assert min(sizes) >= 1
    assert max(sizes) <= max_size
    # Order: within a partition, each producer's items arrive in insertion order.
    last: dict[tuple[int, int], int] = defaultdict(lambda: -1)
    for batch, opts, _t in rec.calls:
        partition = opts.partition
        for item in batch:
            producer, seq = divmod(item, STRIDE)
            key = (partition, producer)
            assert seq > last[key], f"partition {partition}: producer {producer} item {seq} after {last[key]}"
            last[key] = seq


def _produce_and_check(
    buf: Any,
    rec: PartitionSizeRecorder,
    producers: int,
    per_producer: int,
    seed: int,
    max_size: int,
    timeout: float,
) -> None:
    """``producers`` threads of ``_produce`` at once; then close and check delivery and counters."""
    barrier = threading.Barrier(producers + 1)
    targets = [
        (lambda p=p: _produce(buf, p, per_producer, random.Random(seed + p))) for p in range(producers)
    ]
    errors = _run_threads(targets, barrier)
    assert errors == [], errors
    buf.close(timeout=timeout)
    _check_delivery(rec, per_producer, producers, max_size)
    _check_counters(buf, producers * per_producer)


def _check_counters(buf: Any, total: int) -> None:
    info = buf.info()
    assert buf.size() == 0
    assert buf.dump() == []
    for d in info:
        assert d["size"] == 0
        assert d["failed"] == 0
        assert d["inserted"] == d["size"] + d["flushed"] + d["failed"]
    assert sum(d["inserted"] for d in info) == total
    assert sum(d["flushed"] for d in info) == total


def test_producers_deliver_everything_exactly_once(
    make_buffer: Any, core_name: str, fine_switching: None
) -> None:
    per_producer = _per_core(core_name, 100_000, 100_000)
    rec = PartitionSizeRecorder()
    buf = make_buffer(
        handle_flush=rec,
        name="threads",
        partitions=PARTITIONS,
        max_size=MAX_SIZE,
        flush_interval=3600.0,
        flush_jitter=0.0,
        insert_timeout=60.0,
    )
    _produce_and_check(buf, rec, PRODUCERS, per_producer, seed=0, max_size=MAX_SIZE, timeout=60)
    triggers = Counter(rec.triggers())
    assert set(triggers) <= {"size", "close"}
    assert triggers["size"] >= PRODUCERS * per_producer // MAX_SIZE - PARTITIONS
    # Only the last batch of a partition can be a close flush.
    assert triggers["close"] <= PARTITIONS
    # Size flushes are exactly max_size (no jitter).
    assert all(len(b) == MAX_SIZE for b, o, _t in rec.calls if o.trigger == "size")


def test_producers_under_heavy_backpressure(make_buffer: Any, core_name: str, fine_switching: None) -> None:
    """Tiny batches: inserts wait for the flusher all the time, and batches split often."""
    per_producer = _per_core(core_name, 20_000, 20_000)
    max_size = 7
    rec = PartitionSizeRecorder()
    buf = make_buffer(
        handle_flush=rec,
        name="pressure",
        partitions=3,
        max_size=max_size,
        flush_interval=3600.0,
        flush_jitter=0.0,
        insert_timeout=60.0,
    )
    _produce_and_check(buf, rec, PRODUCERS, per_producer, seed=1000, max_size=max_size, timeout=60)
    assert all(len(b) == max_size for b, o, _t in rec.calls if o.trigger == "size")


def test_concurrent_flush_dump_size_info_while_inserting(
    make_buffer: Any, core_name: str, fine_switching: None
) -> None:
    producers = 6
    per_producer = _per_core(core_name, 100_000, 60_000)
    max_size = 500
    rec = PartitionSizeRecorder()
    buf = make_buffer(
        handle_flush=rec,
        name="observed",
        partitions=PARTITIONS,
        max_size=max_size,
        flush_interval=3600.0,
        flush_jitter=0.0,
        insert_timeout=60.0,
    )
    valid = range(0, producers * STRIDE)
    # The pure-Python core appends without a lock and checks afterwards: a
    # partition may briefly hold one extra item per racing producer before
    # the batch is sealed (batches themselves never exceed max_size).
    slack = _per_core(core_name, 0, producers)
    stop = threading.Event()
    done = Counter[str]()
    problems: list[str] = []

    def observe() -> None:
        ops = ("flush", "sync_flush", "dump", "size", "info")
        i = 0
        while not stop.is_set() or i < len(ops):
            op = ops[i % len(ops)]
            i += 1
            if op == "flush":
                if buf.flush() is not None:
                    problems.append("flush() returned something")
            elif op == "sync_flush":
                results = buf.sync_flush(timeout=60)
                if not isinstance(results, list):
                    problems.append(f"sync_flush returned {type(results).__name__}")
                    continue
                parts = [p for p, _n in results]
                if parts != sorted(parts):
                    problems.append(f"sync_flush results not in partition order: {parts}")
                if any(not 1 <= n <= max_size for _p, n in results):
                    problems.append(f"sync_flush batch sizes out of range: {results}")
            elif op == "dump":
                items = buf.dump()
                if len(items) != len(set(items)):
                    problems.append("dump() holds an item twice")
                if len(items) > PARTITIONS * (max_size + slack):
                    problems.append(f"dump() holds {len(items)} items")
                if not all(isinstance(x, int) and (x % STRIDE) < per_producer and x in valid for x in items):
                    problems.append("dump() holds an item nobody inserted")
            elif op == "size":
                n = buf.size()
                if not (isinstance(n, int) and 0 <= n <= PARTITIONS * (max_size + slack)):
                    problems.append(f"size() = {n!r}")
            else:
                for d in buf.info():
                    if d["flushed"] + d["failed"] + d["size"] > d["inserted"]:
                        problems.append(f"info counters ahead of inserted: {d}")
                    if d["flush_size"] != max_size or not 0 <= d["size"] <= max_size + slack:
                        problems.append(f"info sizes: {d}")
            done[op] += 1

    barrier = threading.Barrier(producers + 2)
    targets: list[Callable[[], None]] = [
        (lambda p=p: _produce(buf, p, per_producer, random.Random(100 + p))) for p in range(producers)
    ]
    observer_errors: list[BaseException] = []

    def observer_main() -> None:
        try:
            barrier.wait(timeout=JOIN_TIMEOUT)
            observe()
        except BaseException as exc:
            observer_errors.append(exc)

    observer = threading.Thread(target=observer_main, name="test-observer")
    observer.start()
    try:
        errors = _run_threads(targets, barrier)
    finally:
        stop.set()
        observer.join(JOIN_TIMEOUT)
    assert not observer.is_alive()
    assert errors == []
    assert observer_errors == []
    assert problems == []
    assert all(done[op] >= 1 for op in ("flush", "sync_flush", "dump", "size", "info")), done
    buf.close(timeout=60)

    _check_delivery(rec, per_producer, producers, max_size)
    _check_counters(buf, producers * per_producer)
    assert set(rec.triggers()) <= {"size", "manual", "close"}


def test_inserts_racing_close_lose_nothing(make_buffer: Any, core_name: str, fine_switching: None) -> None:
    """Each racing insert either stored its item (then delivered) or raised BufferClosed."""
    producers = 4
    rec = PartitionSizeRecorder()
    release = threading.Event()

    def slow_flush(batch: list[int], opts: Any) -> Any:
        # Keep flushes slow enough that some inserts wait under backpressure
        # when close() comes.
        release.wait(0.001)
        return rec(batch, opts)

    buf = make_buffer(
        handle_flush=slow_flush,
        name="racing",
        partitions=2,
        max_size=100,
        flush_interval=3600.0,
        flush_jitter=0.0,
        insert_timeout=60.0,
    )
    stored: list[list[int]] = [[] for _ in range(producers)]
    refused: list[list[int]] = [[] for _ in range(producers)]

    def produce(p: int) -> None:
        for seq in range(STRIDE):
            item = p * STRIDE + seq
            try:
                buf.insert(item)
            except BufferClosed:
                refused[p].append(item)
                return
            stored[p].append(item)

    barrier = threading.Barrier(producers + 1)
    closer_errors: list[BaseException] = []

    def closer() -> None:
        try:
            wait_for(lambda: sum(map(len, stored)) >= 5_000, timeout=60)
            buf.close(timeout=60)
        except BaseException as exc:
            closer_errors.append(exc)

    closing = threading.Thread(target=closer, name="test-closer")
    closing.start()
    try:
        errors = _run_threads([lambda p=p: produce(p) for p in range(producers)], barrier)
    finally:
        closing.join(JOIN_TIMEOUT)
    assert not closing.is_alive()
    assert closer_errors == []
    assert errors == [], errors
    assert all(len(r) == 1 for r in refused), "every producer ends with one refused insert"

    delivered = rec.items()
    all_stored = [item for items in stored for item in items]
    assert len(delivered) == len(set(delivered))
    assert sorted(delivered) == sorted(all_stored)
    assert not {r[0] for r in refused} & set(delivered)
    _check_counters(buf, len(all_stored))
    with pytest.raises(BufferClosed):
        buf.insert(-1)
    with pytest.raises(BufferClosed):
        buf.insert_batch([-1, -2])


STRESS_PER_PRODUCER = int(os.environ.get("DATABUFFER_STRESS_ITEMS", "1000000"))


def test_four_producers_a_million_inserts_each(make_buffer: Any, core_name: str) -> None:
    """4 threads x 1,000,000 single inserts (without the GIL: really at once).

    ``DATABUFFER_STRESS_ITEMS`` sets the count per thread.
    """
    producers = 4
    per_producer = STRESS_PER_PRODUCER
    rec = PartitionSizeRecorder()
    buf = make_buffer(
        handle_flush=rec,
        name="stress",
        partitions=PARTITIONS,
        max_size=MAX_SIZE,
        flush_interval=3600.0,
        insert_timeout=120.0,
    )

    def produce(p: int) -> None:
        insert = buf.insert
        for item in range(p * STRIDE, p * STRIDE + per_producer):
            insert(item)

    barrier = threading.Barrier(producers + 1)
    errors = _run_threads([lambda p=p: produce(p) for p in range(producers)], barrier)
    assert errors == [], errors
    buf.close(timeout=120)
    _check_delivery(rec, per_producer, producers, MAX_SIZE)
    _check_counters(buf, producers * per_producer)


@pytest.mark.parametrize("producers", [PARTITIONS, 2 * PARTITIONS + 1])
def test_thread_dispatch_keeps_each_producer_in_one_partition(
    make_buffer: Any, core_name: str, producers: int
) -> None:
    """dispatch="thread": exactly once, each producer in one partition, homes spread evenly."""
    per_producer = _per_core(core_name, 100_000, 50_000)
    rec = PartitionSizeRecorder()
    buf = make_buffer(
        handle_flush=rec,
        name="homes",
        partitions=PARTITIONS,
        max_size=MAX_SIZE,
        flush_interval=3600.0,
        insert_timeout=120.0,
        dispatch="thread",
    )
    _produce_and_check(buf, rec, producers, per_producer, seed=2000, max_size=MAX_SIZE, timeout=120)
    partitions_of: dict[int, set[int]] = defaultdict(set)
    for batch, opts, _t in rec.calls:
        for item in batch:
            partitions_of[item // STRIDE].add(opts.partition)
    assert all(len(parts) == 1 for parts in partitions_of.values()), dict(partitions_of)
    # All threads were alive at once (distinct idents): homes go round-robin.
    load = Counter(next(iter(parts)) for parts in partitions_of.values())
    assert sorted(load.values()) == sorted(
        producers // PARTITIONS + (1 if i < producers % PARTITIONS else 0) for i in range(PARTITIONS)
    ), load


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="needs a free-threaded CPython build"
)
def test_the_compiled_core_keeps_the_gil_disabled() -> None:
    """The core declares itself free-threading compatible: importing it leaves the GIL off."""
    code = "import sys, databuffer._core; print(sys._is_gil_enabled())"
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", proc.stderr
    assert "GIL" not in proc.stderr
