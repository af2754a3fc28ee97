"""``key=``: per-key order, on both cores.

With a key, ``insert``/``insert_batch`` (and ``ainsert``/``ainsert_batch``)
go to partition ``hash(key) % partitions`` whatever ``dispatch`` says, so
the items of equal keys are flushed in insertion order.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

import pytest

from databuffer import BufferFull, telemetry

BIG = 3600


class Record:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_partition: dict[int, list[Any]] = defaultdict(list)

    def __call__(self, batch: list[Any], opts: Any) -> None:
        with self.lock:
            self.by_partition[opts.partition].extend(batch)

    def partition_of(self, item: Any) -> int:
        (found,) = [p for p, items in self.by_partition.items() if item in items]
        return found


@pytest.mark.parametrize("dispatch", ["round_robin", "thread"])
def test_a_key_picks_hash_key_mod_partitions(make_buffer: Any, dispatch: str) -> None:
    rec = Record()
    buf = make_buffer(handle_flush=rec, partitions=5, max_size=1000, flush_interval=BIG, dispatch=dispatch)
    keys = ["AAPL", "MSFT", 17, -3, (1, "x"), 2**70, 1.5]
    for i, key in enumerate(keys):
        buf.insert(("one", i), key=key)
        buf.insert_batch([("batch", i, 0), ("batch", i, 1)], key=key)
    buf.close()
    for i, key in enumerate(keys):
        expected = hash(key) % 5
        assert rec.partition_of(("one", i)) == expected
        assert rec.partition_of(("batch", i, 0)) == rec.partition_of(("batch", i, 1)) == expected


def test_items_of_one_key_keep_their_order_across_threads_and_batches(make_buffer: Any) -> None:
    rec = Record()
    buf = make_buffer(handle_flush=rec, partitions=4, max_size=7, flush_interval=0.01, insert_timeout=30)
    symbols = [f"SYM{i}" for i in range(12)]

    def produce(t: int) -> None:
        for n in range(600):
            symbol = symbols[(t * 5 + n) % len(symbols)]
            if n % 4 == 0:
                buf.insert_batch([(symbol, t, n, 0), (symbol, t, n, 1)], key=symbol)
            else:
                buf.insert((symbol, t, n, 0), key=symbol)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    buf.close()
    seen: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for p, items in rec.by_partition.items():
        for symbol, t, n, j in items:
            assert hash(symbol) % 4 == p
            seen[symbol].append((t, n, j))
    total = sum(len(v) for v in seen.values())
    assert total == 4 * (600 + 150)
    for order in seen.values():
        for t in range(4):
            mine = [(n, j) for (u, n, j) in order if u == t]
            assert mine == sorted(mine), "one thread's items of one key came out of order"


@pytest.mark.parametrize("bad", [[1], {"a": 1}, {2}])
def test_an_unhashable_key_raises_type_error_and_stores_nothing(make_buffer: Any, bad: Any) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, partitions=3, flush_interval=BIG)
    with pytest.raises(TypeError, match=f"key must be hashable, not {type(bad).__name__}"):
        buf.insert("x", key=bad)
    consumed: list[int] = []

    def items() -> Any:
        for i in range(3):
            consumed.append(i)
            yield i

    with pytest.raises(TypeError, match="key must be hashable"):
        buf.insert_batch(items(), key=bad)
    assert consumed == []
    assert buf.size() == 0 and buf.stats()["inserted"] == 0
    buf.close()


def test_a_key_with_a_generator_that_raises_midway_stores_nothing(make_buffer: Any) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, partitions=3, flush_interval=BIG)

    def items() -> Any:
        yield 1
        yield 2
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        buf.insert_batch(items(), key="k")
    assert buf.size() == 0 and buf.stats()["inserted"] == 0
    buf.close()


def test_a_key_whose_hash_raises_propagates_and_stores_nothing(make_buffer: Any) -> None:
    class Broken:
        def __hash__(self) -> int:
            raise ValueError("no hash today")

    buf = make_buffer(handle_flush=lambda b, o: None, partitions=2, flush_interval=BIG)
    with pytest.raises(ValueError, match="no hash today"):
        buf.insert("x", key=Broken())
    assert buf.stats()["inserted"] == 0
    buf.close()


def test_key_none_is_the_plain_dispatch(make_buffer: Any) -> None:
    rec = Record()
    buf = make_buffer(handle_flush=rec, partitions=3, max_size=100, flush_interval=BIG)
    for i in range(6):
        buf.insert(i, key=None)
    buf.close()
    assert sorted(len(items) for items in rec.by_partition.values()) == [2, 2, 2]


def test_a_keyed_insert_waits_for_room_and_emits_insert_events(make_buffer: Any) -> None:
    events: list[Any] = []
    telemetry.attach("keys", telemetry.INSERT_STOP, lambda e, m, md, c: events.append(dict(md)))
    try:
        buf = make_buffer(handle_flush=lambda b, o: None, partitions=4, max_size=100, flush_interval=BIG)
        buf.insert("x", key="AAPL")
        buf.insert_batch(["y", "z"], key="AAPL")
    finally:
        telemetry.detach("keys")
    p = hash("AAPL") % 4
    assert [(e["partition"], e["size"]) for e in events] == [(p, 1), (p, 2)]
    assert buf.info()[p]["size"] == 3
    buf.close()


def test_a_keyed_insert_into_a_full_partition_follows_on_full(make_buffer: Any) -> None:
    release = threading.Event()
    entered = threading.Event()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        entered.set()
        release.wait(30)

    buf = make_buffer(
        handle_flush=handle_flush, partitions=2, max_size=2, max_queued_batches=0, flush_interval=BIG
    )
    key = "k"
    buf.insert_batch([1, 2], key=key)
    assert entered.wait(10)
    buf.insert_batch([3, 4], key=key)
    with pytest.raises(BufferFull, match=f"partition {hash(key) % 2} is full"):
        buf.insert(5, key=key, timeout=0.01)
    release.set()
    buf.close()


# -- AsyncBuffer ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_keys_pick_the_partition_in_every_insert_call(AsyncBuffer: Any) -> None:
    rec = Record()

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        rec(batch, opts)

    async with AsyncBuffer(handle_flush=handle_flush, partitions=3, max_size=100, flush_interval=BIG) as buf:
        for i, key in enumerate(["a", "b", "c", 4, 5]):
            buf.insert(("insert", i), key=key)
            buf.insert_batch([("insert_batch", i)], key=key)
            await buf.ainsert(("ainsert", i), key=key)
            await buf.ainsert_batch([("ainsert_batch", i)], key=key)
        with pytest.raises(TypeError, match="key must be hashable"):
            await buf.ainsert("x", key=[])
        with pytest.raises(TypeError, match="key must be hashable"):
            await buf.ainsert_batch(["x"], key=[])
    for i, key in enumerate(["a", "b", "c", 4, 5]):
        for call in ("insert", "insert_batch", "ainsert", "ainsert_batch"):
            assert rec.partition_of((call, i)) == hash(key) % 3
    assert "x" not in [x for items in rec.by_partition.values() for x in items]


@pytest.mark.anyio
async def test_async_a_keyed_ainsert_waits_for_room_in_its_partition(AsyncBuffer: Any) -> None:
    go = asyncio.Event()
    entered = asyncio.Event()
    batches: list[list[Any]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 1:
            entered.set()
            await go.wait()
        batches.append(list(batch))

    async with AsyncBuffer(
        handle_flush=handle_flush, partitions=2, max_size=2, max_queued_batches=0, flush_interval=BIG
    ) as buf:
        buf.insert_batch([1, 2], key="k")
        await asyncio.wait_for(entered.wait(), 10)
        buf.insert_batch([3, 4], key="k")
        waiting = asyncio.ensure_future(buf.ainsert(5, key="k", timeout=30))
        await asyncio.sleep(0)
        assert not waiting.done()
        go.set()
        await asyncio.wait_for(waiting, 10)
    assert batches == [[1, 2], [3, 4], [5]]
