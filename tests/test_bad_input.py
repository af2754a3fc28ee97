"""Bad input: insert_batch over iterables that fail, non-iterables, and items
whose __eq__, __hash__, __bool__, __len__ or __del__ misbehave."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Boom, wait_for

from databuffer import BufferFull

BIG = 3600


def _raising_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise Boom(f"after {n} items")


class LyingList(list):  # type: ignore[type-arg]
    """A list subclass whose __len__ and __iter__ disagree with its contents."""

    def __len__(self) -> int:
        return 10**6

    def __iter__(self) -> Iterator[Any]:
        yield 1
        raise Boom("iteration fails")


@pytest.mark.parametrize("n", [0, 1, 5, 2500])
def test_an_iterable_that_raises_midway_stores_nothing_and_re_raises(make_buffer: Any, n: int) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, max_size=1000, flush_interval=BIG)
    buf.insert("before")
    with pytest.raises(Boom, match=f"after {n} items"):
        buf.insert_batch(_raising_after(n))
    with pytest.raises(Boom, match="iteration fails"):
        buf.insert_batch(LyingList([1, 2, 3]))
    assert buf.dump() == ["before"]
    assert buf.stats()["inserted"] == 1
    buf.insert_batch(["after"])
    assert buf.dump() == ["before", "after"]


@pytest.mark.parametrize("items", [5, None, 3.5, object()])
def test_a_non_iterable_raises_type_error_naming_it(make_buffer: Any, items: Any) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, flush_interval=BIG)
    with pytest.raises(
        TypeError, match=f"insert_batch\\(\\) needs an iterable of items, not {type(items).__name__}"
    ):
        buf.insert_batch(items)
    assert buf.stats()["inserted"] == 0


@pytest.mark.parametrize("items", ["abc", b"abc", bytearray(b"abc"), ""])
def test_a_str_or_bytes_is_refused_not_split_into_characters(make_buffer: Any, items: Any) -> None:
    buf = make_buffer(handle_flush=lambda batch, opts: None, flush_interval=3600)
    kind = type(items).__name__
    with pytest.raises(TypeError, match=rf"insert_batch\(\) was given a {kind} .*insert\(value\)"):
        buf.insert_batch(items)
    assert buf.size() == 0 and buf.stats()["inserted"] == 0
    buf.insert_batch([items])  # wrapped: one item
    assert buf.dump() == [items]
    buf.close()


@pytest.mark.anyio
async def test_async_a_str_is_refused_by_insert_batch_and_ainsert_batch(AsyncBuffer: Any) -> None:
    async def handle_flush(batch: list[Any], opts: Any) -> None:
        pass

    async with AsyncBuffer(handle_flush=handle_flush, flush_interval=3600) as buf:
        with pytest.raises(TypeError, match="was given a str"):
            buf.insert_batch("abc")
        with pytest.raises(TypeError, match="was given a bytes"):
            await buf.ainsert_batch(b"abc")
        assert buf.size() == 0


def test_buffer_full_from_insert_batch_counts_the_leading_items_stored(make_buffer: Any, gates: Any) -> None:
    release = gates()
    buf = make_buffer(
        handle_flush=lambda b, o: release.wait(30), max_size=4, max_queued_batches=0, flush_interval=BIG
    )
    buf.insert_batch(range(4))  # sealed; its flush is stuck
    wait_for(lambda: buf.info()[0]["flushing"], timeout=30)
    with pytest.raises(BufferFull) as caught:
        buf.insert_batch(range(10, 20), timeout=0.1)
    assert caught.value.stored == 4
    assert buf.dump() == [10, 11, 12, 13]
    assert "with 4 leading items stored" in str(caught.value)


class Hostile:
    """An item that fails every protocol a container might use on it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        raise Boom("__eq__")

    def __hash__(self) -> int:
        raise Boom("__hash__")

    def __bool__(self) -> bool:
        raise Boom("__bool__")

    def __len__(self) -> int:
        raise Boom("__len__")

    def __repr__(self) -> str:
        raise Boom("__repr__")


def test_items_with_hostile_protocols_are_stored_dumped_and_flushed(make_buffer: Any) -> None:
    delivered: list[Any] = []
    buf = make_buffer(
        handle_flush=lambda batch, opts: delivered.extend(batch), partitions=2, max_size=3, flush_interval=BIG
    )
    items = [Hostile(i) for i in range(10)]
    for item in items[:5]:
        buf.insert(item)
    buf.insert_batch(items[5:])
    assert all(any(d is it for it in items) for d in buf.dump())
    buf.sync_flush(timeout=30)
    buf.close(timeout=30)
    assert sorted(d.n for d in delivered) == list(range(10))
    assert buf.stats()["flushed"] == 10


def test_items_whose_del_raises_or_reenters_the_buffer(make_buffer: Any, monkeypatch: Any) -> None:
    # Only the messages are kept: an exception kept would keep its
    # traceback's frames, and through their f_back the frames of the insert
    # that was running when the __del__ ran.  Without the GIL that can be
    # this thread's insert of InsertsInDel (each object is freed by the
    # thread that made it), which would then never be freed.
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: unraisable.append(str(info.exc_value)))
    reinserted = threading.Event()

    class RaisesInDel:
        def __del__(self) -> None:
            raise Boom("__del__")

    class InsertsInDel:
        def __del__(self) -> None:
            # Runs when a flushed batch is released, in a flusher thread.
            buf.insert("from __del__")
            buf.flush()
            reinserted.set()

    buf = make_buffer(handle_flush=lambda b, o: None, max_size=2, flush_interval=BIG)
    buf.insert(RaisesInDel())
    buf.insert(InsertsInDel())  # seals the pair: flushed, then released
    # Polled, with a collection each time: without the GIL, an item is freed
    # by the thread that made it (this one), which may only get to it when
    # it processes its queue of objects released by other threads.
    wait_for(lambda: gc.collect() >= 0 and reinserted.is_set(), timeout=30, interval=0.02)
    buf.sync_flush(timeout=30)
    wait_for(lambda: buf.stats()["flushed"] == 3, timeout=30)
    assert unraisable == ["__del__"]
    stats = buf.stats()
    assert (stats["inserted"], stats["size"], stats["in_flight"]) == (3, 0, 0)


def test_a_generator_that_inserts_into_the_same_buffer(make_buffer: Any) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, max_size=100, flush_interval=BIG)

    def items() -> Iterator[int]:
        for i in range(3):
            buf.insert(("inner", i))
            yield i

    buf.insert_batch(items())
    # The inner inserts happened while the batch was read, before it was stored.
    assert buf.dump() == [("inner", 0), ("inner", 1), ("inner", 2), 0, 1, 2]
