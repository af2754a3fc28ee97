"""``on_full``: what an insert does when its partition has no room, on both cores.

A partition has no room when its ring holds a full batch and its flusher
holds every batch it may (the one it flushes and ``max_queued_batches``
queued).  ``"wait"`` (the default) waits up to the insert's timeout;
``"raise"`` raises ``BufferFull`` at once; ``"drop_newest"`` drops the items
that do not fit; ``"drop_oldest"`` drops the oldest buffered items (never a
sealed batch) to make room.  Dropped items count as ``inserted`` and
``dropped``, and ``inserted == size + in_flight + flushed + failed +
dropped`` at every moment.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from conftest import adds_up, wait_for

from databuffer import BufferFull, telemetry

BIG = 3600
M = 3  # max_size


class Gate:
    """A ``handle_flush`` that holds its first call until ``open`` is set, and records every batch."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[Any]] = []

    def __call__(self, batch: list[Any], opts: Any) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.open.wait(30), "the test never opened the gate"
        self.batches.append(list(batch))

    @property
    def items(self) -> list[Any]:
        return [x for b in self.batches for x in b]


def full_buffer(make_buffer: Any, policy: str, **options: Any) -> tuple[Any, Gate]:
    """A buffer with no room: batch [0, 1, 2] in handle_flush, [3, 4, 5] queued, [6, 7, 8] in the ring."""
    gate = Gate()
    options.setdefault("insert_timeout", 30)
    buf = make_buffer(
        handle_flush=gate, max_size=M, max_queued_batches=1, flush_interval=BIG, on_full=policy, **options
    )
    buf.insert_batch(range(M))
    assert gate.entered.wait(10)
    buf.insert_batch(range(M, 3 * M))
    assert buf.info()[0]["queued"] == 1 and buf.size() == M
    return buf, gate


def counters(buf: Any) -> tuple[int, ...]:
    s = buf.stats()
    assert adds_up(s), s
    return (s["inserted"], s["size"], s["in_flight"], s["flushed"], s["dropped"])


# -- the option -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error"),
    [(1, TypeError), (None, TypeError), (b"wait", TypeError), ("drop", ValueError), ("Wait", ValueError)],
)
def test_on_full_is_checked_naming_the_value(Buffer: Any, AsyncBuffer: Any, bad: Any, error: type) -> None:
    for cls in (Buffer, AsyncBuffer):
        with pytest.raises(error, match=rf"on_full .*{bad!r}".replace("(", r"\(").replace(")", r"\)")):
            cls(handle_flush=lambda b, o: None, on_full=bad)


def test_on_full_error_lists_the_policies(Buffer: Any) -> None:
    with pytest.raises(ValueError, match="'wait', 'raise', 'drop_newest', 'drop_oldest'"):
        Buffer(handle_flush=lambda b, o: None, on_full="drop")


@pytest.mark.parametrize("policy", ["wait", "raise", "drop_newest", "drop_oldest"])
def test_info_shows_the_policy_and_stats_count_dropped(make_buffer: Any, policy: str) -> None:
    buf = make_buffer(handle_flush=lambda b, o: None, on_full=policy, partitions=2)
    assert [i["on_full"] for i in buf.info()] == [policy, policy]
    assert buf.stats()["dropped"] == 0
    assert all(i["dropped"] == 0 for i in buf.info())


def test_the_default_is_wait(make_buffer: Any) -> None:
    buf, gate = full_buffer(make_buffer, "wait")
    started = time.monotonic()
    with pytest.raises(BufferFull, match="gave up waiting for room after 0.05s"):
        buf.insert("x", timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert buf.info()[0]["on_full"] == "wait"
    gate.open.set()
    buf.close()
    assert gate.items == list(range(3 * M))


# -- "raise" ----------------------------------------------------------------------------


def test_raise_refuses_at_once_and_stores_nothing(make_buffer: Any) -> None:
    buf, gate = full_buffer(make_buffer, "raise")  # insert_timeout=30: a wait would show
    started = time.monotonic()
    with pytest.raises(BufferFull, match="on_full='raise' does not wait") as info:
        buf.insert("x")
    assert time.monotonic() - started < 5
    assert info.value.stored == 0
    assert "x" not in buf.dump()
    assert counters(buf) == (9, 3, 6, 0, 0)
    gate.open.set()
    buf.close()
    assert gate.items == list(range(3 * M))


def test_raise_with_insert_batch_stores_the_leading_items_that_fit(make_buffer: Any) -> None:
    gate = Gate()
    buf = make_buffer(
        handle_flush=gate,
        max_size=M,
        max_queued_batches=0,
        flush_interval=BIG,
        on_full="raise",
        insert_timeout=30,
    )
    buf.insert_batch([0, 1, 2])
    assert gate.entered.wait(10)
    buf.insert("a")
    with pytest.raises(BufferFull, match=r"2 leading items of the batch stored") as info:
        buf.insert_batch(["b", "c", "d", "e"])
    assert info.value.stored == 2
    assert buf.dump() == ["a", "b", "c"]
    assert buf.stats()["dropped"] == 0
    gate.open.set()
    buf.close()
    assert gate.items == [0, 1, 2, "a", "b", "c"]


# -- "drop_newest" ----------------------------------------------------------------------


def test_drop_newest_drops_what_does_not_fit_and_counts_it(make_buffer: Any) -> None:
    buf, gate = full_buffer(make_buffer, "drop_newest")
    started = time.monotonic()
    buf.insert("x")
    buf.insert_batch(["y", "z"])
    assert time.monotonic() - started < 5
    assert buf.dump() == [6, 7, 8]
    # 12 taken by insert calls: 3 buffered, 6 with the flusher, 3 dropped.
    assert counters(buf) == (12, 3, 6, 0, 3)
    assert buf.info()[0]["dropped"] == 3
    gate.open.set()
    buf.close()
    assert gate.items == list(range(3 * M))
    assert counters(buf) == (12, 0, 0, 9, 3)


def test_drop_newest_stores_the_leading_items_of_a_batch_that_fit(make_buffer: Any) -> None:
    gate = Gate()
    buf = make_buffer(
        handle_flush=gate, max_size=M, max_queued_batches=0, flush_interval=BIG, on_full="drop_newest"
    )
    buf.insert_batch([0, 1, 2])
    assert gate.entered.wait(10)
    buf.insert_batch(["a", "b", "c", "d", "e"])
    assert buf.dump() == ["a", "b", "c"]
    assert counters(buf) == (8, 3, 3, 0, 2)
    gate.open.set()
    buf.close()
    assert gate.items == [0, 1, 2, "a", "b", "c"]


# -- "drop_oldest" ----------------------------------------------------------------------


def test_drop_oldest_drops_buffered_items_never_a_sealed_batch(make_buffer: Any) -> None:
    buf, gate = full_buffer(make_buffer, "drop_oldest")
    buf.insert("x")
    assert buf.dump() == [7, 8, "x"]
    buf.insert_batch(["y", "z"])
    assert buf.dump() == ["x", "y", "z"]
    assert counters(buf) == (12, 3, 6, 0, 3)
    gate.open.set()
    buf.close()
    # The batch being flushed and the queued one arrive whole.
    assert gate.batches == [[0, 1, 2], [3, 4, 5], ["x", "y", "z"]]
    assert counters(buf) == (12, 0, 0, 9, 3)


def test_drop_oldest_keeps_the_newest_items_of_a_batch_larger_than_the_ring(make_buffer: Any) -> None:
    gate = Gate()
    buf = make_buffer(
        handle_flush=gate, max_size=M, max_queued_batches=0, flush_interval=BIG, on_full="drop_oldest"
    )
    buf.insert_batch([0, 1, 2])
    assert gate.entered.wait(10)
    buf.insert("a")
    buf.insert_batch(list("bcdefg"))
    assert buf.dump() == ["e", "f", "g"]
    # 10 taken: 3 with the flusher, 3 buffered, "a".."d" dropped.
    assert counters(buf) == (10, 3, 3, 0, 4)
    gate.open.set()
    buf.close()
    assert gate.items == [0, 1, 2, "e", "f", "g"]


def test_drop_oldest_then_sync_flush_waits_only_for_what_is_left(make_buffer: Any) -> None:
    buf, gate = full_buffer(make_buffer, "drop_oldest")
    buf.insert_batch(["x", "y", "z"])
    threading.Timer(0.05, gate.open.set).start()
    buf.sync_flush(timeout=30)
    assert gate.items == [0, 1, 2, 3, 4, 5, "x", "y", "z"]
    assert counters(buf) == (12, 0, 0, 9, 3)
    buf.close()


# -- telemetry and the warning -------------------------------------------------------------


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_each_drop_emits_a_telemetry_event_with_its_count(make_buffer: Any, policy: str) -> None:
    events: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
    telemetry.attach(
        "drops", telemetry.INSERT_DROP, lambda e, m, md, c: events.append((e, dict(m), dict(md)))
    )
    try:
        buf, gate = full_buffer(make_buffer, policy, name="ticks")
        buf.insert("x")
        buf.insert_batch(["y", "z"])
    finally:
        telemetry.detach("drops")
    assert [(e, m["count"], md) for e, m, md in events] == [
        (("data_buffer", "insert", "drop"), 1, {"buffer": "ticks", "partition": 0, "policy": policy}),
        (("data_buffer", "insert", "drop"), 2, {"buffer": "ticks", "partition": 0, "policy": policy}),
    ]
    assert all(isinstance(m["monotonic_time"], int) for _, m, _ in events)
    gate.open.set()
    buf.close()


def test_drops_are_logged_at_most_once_per_10s_and_the_rest_at_close(
    make_buffer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="databuffer")
    buf, gate = full_buffer(make_buffer, "drop_newest", name="quotes")
    for i in range(5):
        buf.insert(i)
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warnings == [
        "buffer 'quotes' dropped 1 item: a partition was full (on_full='drop_newest'); "
        "drops are logged at most every 10 s and counted in stats()['dropped']"
    ]
    gate.open.set()
    buf.close()
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warnings[1:] == ["buffer 'quotes' dropped 4 more items before it closed (on_full='drop_newest')"]
    assert buf.stats()["dropped"] == 5


def test_an_insert_from_handle_flush_drops_instead_of_waiting(make_buffer: Any) -> None:
    outcome: list[Any] = []
    release = threading.Event()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            try:
                # The ring is full and the queue too: this flusher makes the room.
                buf.insert("from-callback")
                outcome.append("returned")
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                outcome.append(exc)
            release.wait(30)

    buf = make_buffer(
        handle_flush=handle_flush, max_size=M, max_queued_batches=0, flush_interval=BIG, on_full="drop_newest"
    )
    buf.insert_batch([0, 1, 2, 3, 4, 5])  # [0, 1, 2] to the flusher, [3, 4, 5] fills the ring
    wait_for(lambda: outcome)
    assert outcome == ["returned"]
    assert buf.stats()["dropped"] == 1
    release.set()
    buf.close()


# -- under concurrency ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_drops_racing_sync_flush_and_close_under_four_producers(make_buffer: Any, policy: str) -> None:
    delivered: list[tuple[int, int]] = []
    lock = threading.Lock()

    def handle_flush(batch: list[Any], opts: Any) -> None:
        time.sleep(0.0005)  # slower than the producers: the partitions fill up and drop
        with lock:
            delivered.extend(batch)

    buf = make_buffer(
        handle_flush=handle_flush,
        partitions=2,
        max_size=20,
        max_queued_batches=1,
        flush_interval=0.005,
        flush_jitter=0,
        on_full=policy,
    )
    per_thread = 5_000
    stop = threading.Event()
    bad: list[Any] = []
    samples = [0]

    def sample() -> None:
        while not stop.is_set():
            if not adds_up(s := buf.stats()):
                bad.append(s)
            bad.extend(i for i in buf.info() if not adds_up(i))
            samples[0] += 1

    def produce(t: int) -> None:
        i = 0
        while i < per_thread:
            if i % 5 == 0:
                chunk = [(t, j) for j in range(i, min(per_thread, i + 30))]
                buf.insert_batch(chunk)
                i += len(chunk)
            else:
                buf.insert((t, i))
                i += 1
            if i % 1000 == 0:
                buf.sync_flush(timeout=30)

    sampler = threading.Thread(target=sample)
    sampler.start()
    producers = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(60)
    buf.close(timeout=60)
    stop.set()
    sampler.join(10)
    assert bad == []
    assert samples[0] > 0
    s = buf.stats()
    assert s["inserted"] == 4 * per_thread
    assert s["dropped"] > 0, "the test meant to fill the partitions"
    assert s["flushed"] + s["dropped"] == 4 * per_thread
    assert len(delivered) == s["flushed"] == len(set(delivered))
    for t in range(4):
        mine = [i for (u, i) in delivered if u == t]
        assert len(mine) == len(set(mine))


# -- AsyncBuffer ------------------------------------------------------------------------


async def _full_async(AsyncBuffer: Any, policy: str) -> tuple[Any, asyncio.Event, list[list[Any]]]:
    entered = asyncio.Event()
    go = asyncio.Event()
    batches: list[list[Any]] = []

    async def handle_flush(batch: list[Any], opts: Any) -> None:
        if batch[0] == 0:
            entered.set()
            await go.wait()
        batches.append(list(batch))

    buf = AsyncBuffer(
        handle_flush=handle_flush, max_size=M, max_queued_batches=1, flush_interval=BIG, on_full=policy
    )
    await buf.start()
    buf.insert_batch(range(M))
    await asyncio.wait_for(entered.wait(), 10)
    buf.insert_batch(range(M, 3 * M))
    assert buf.info()[0]["queued"] == 1
    return buf, go, batches


@pytest.mark.anyio
async def test_async_raise_refuses_insert_and_ainsert_at_once(AsyncBuffer: Any) -> None:
    buf, go, batches = await _full_async(AsyncBuffer, "raise")
    with pytest.raises(BufferFull, match="on_full='raise'"):
        buf.insert("x")
    with pytest.raises(BufferFull, match="on_full='raise'"):
        await asyncio.wait_for(buf.ainsert("x", timeout=30), 5)
    with pytest.raises(BufferFull, match="on_full='raise'") as info:
        await asyncio.wait_for(buf.ainsert_batch(["x", "y"], timeout=30), 5)
    assert info.value.stored == 0
    go.set()
    await buf.aclose()
    assert [x for b in batches for x in b] == list(range(3 * M))
    assert buf.stats()["dropped"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_async_drop_policies_apply_to_insert_and_ainsert(AsyncBuffer: Any, policy: str) -> None:
    buf, go, batches = await _full_async(AsyncBuffer, policy)
    buf.insert("a")
    await asyncio.wait_for(buf.ainsert("b", timeout=30), 5)
    buf.insert_batch(["c"])
    await asyncio.wait_for(buf.ainsert_batch(["d"], timeout=30), 5)
    s = buf.stats()
    assert adds_up(s) and (s["inserted"], s["dropped"]) == (13, 4)
    expected_ring = [6, 7, 8] if policy == "drop_newest" else ["b", "c", "d"]
    assert buf.dump() == expected_ring
    go.set()
    await buf.aclose()
    assert [x for b in batches for x in b] == [*range(2 * M), *expected_ring]


@pytest.mark.anyio
async def test_async_wait_still_waits_in_ainsert(AsyncBuffer: Any) -> None:
    buf, go, batches = await _full_async(AsyncBuffer, "wait")
    with pytest.raises(BufferFull):
        buf.insert("x")
    waiting = asyncio.ensure_future(buf.ainsert("waited", timeout=30))
    await asyncio.sleep(0)
    assert not waiting.done()
    go.set()
    await asyncio.wait_for(waiting, 10)
    await buf.aclose()
    assert [x for b in batches for x in b] == [*range(3 * M), "waited"]
    assert buf.stats()["dropped"] == 0
