"""The bounds of the options and timeouts, against both cores: a bound on
``partitions``, a floor under ``flush_interval`` and ``flush_timeout``, and
ints too large for a float, refused with a ``ValueError`` that names the
option (``timeout`` for a call's) before anything is built or stored.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import Recorder, wait_for

from databuffer import BufferFull, FlushOpts

BIG = 3600
# The documented bound and floors (the messages name them).
MAX_PARTITIONS = 1024
FLOOR = 0.001
GIANT = 10**400  # an int too large for a float
SECONDS_OPTIONS = (
    "flush_interval",
    "flush_jitter",
    "flush_timeout",
    "insert_timeout",
    "retry_backoff",
    "retry_backoff_max",
)


def noop(batch: list[Any], opts: FlushOpts) -> None:
    return None


async def anoop(batch: list[Any], opts: FlushOpts) -> None:
    return None


@pytest.fixture(params=["Buffer", "AsyncBuffer"])
def build(request: pytest.FixtureRequest, make_buffer: Any, AsyncBuffer: type) -> Any:
    """Construct a ``Buffer`` or an ``AsyncBuffer`` (never started: no loop needed) with the given options."""
    if request.param == "Buffer":
        return lambda **options: make_buffer(handle_flush=noop, **options)
    return lambda **options: AsyncBuffer(handle_flush=anoop, **options)


def refused(build: Any, option: str, value: object) -> str:
    """The message of the ``ValueError`` that building with ``option=value`` raises, quickly."""
    options: dict[str, Any] = {"flush_interval": BIG, option: value}
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=option) as caught:
        build(**options)
    assert time.monotonic() - t0 < 5, "refusing the option took too long"
    return str(caught.value)


# -- partitions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(MAX_PARTITIONS + 1, "1025"), (4096, "4096"), (2**63, str(2**63)), (GIANT, "10**400")],
    ids=["bound+1", "4096", "2**63", "10**400"],
)
def test_partitions_above_the_bound_are_refused_naming_the_bound_and_the_value(
    build: Any, value: int, shown: str
) -> None:
    message = refused(build, "partitions", value)
    assert f"<= {MAX_PARTITIONS}" in message
    assert "flusher thread" in message
    assert shown in message


def test_partitions_at_the_bound_are_accepted(AsyncBuffer: type) -> None:
    # An AsyncBuffer starts no task before start(): its 1024 partitions cost
    # no threads (a Buffer would start 1024 flusher threads).
    buf = AsyncBuffer(handle_flush=anoop, partitions=MAX_PARTITIONS, max_size=1)
    assert len(buf.info()) == MAX_PARTITIONS


def test_partitions_below_the_bound_work(make_buffer: Any) -> None:
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, partitions=4, max_size=100, flush_interval=BIG)
    buf.insert_batch(range(8))
    buf.insert_batch(range(8, 10))
    assert sorted(buf.sync_flush(timeout=30)) == [2, 8]


# -- ints too large for a float ---------------------------------------------------------


@pytest.mark.parametrize("value", [GIANT, -GIANT], ids=["10**400", "-10**400"])
@pytest.mark.parametrize("option", SECONDS_OPTIONS)
def test_a_giant_int_as_seconds_is_refused_naming_the_option(build: Any, option: str, value: int) -> None:
    message = refused(build, option, value)
    assert "10**400" in message
    assert "float" in message


@pytest.mark.parametrize("option", SECONDS_OPTIONS)
def test_finite_seconds_beyond_timeout_max_stay_accepted(build: Any, option: str) -> None:
    value = 10**300 if option != "flush_jitter" else 2**200  # ints, well past threading.TIMEOUT_MAX
    assert value > threading.TIMEOUT_MAX
    buf = build(**{"flush_interval": BIG, option: value})
    if option in ("flush_interval", "flush_jitter", "flush_timeout"):
        assert buf.info()[0][option] == float(value)


def stuck(make_buffer: Any, gates: Any, *, room: bool) -> tuple[Any, list[int]]:
    """A buffer (max_size=2, no queue) whose first batch is stuck in handle_flush; the partition
    holds one item (``room``: one more fits) or two (full). Returns it and what it holds."""
    release = gates()
    started = threading.Event()

    def fn(batch: list[Any], opts: FlushOpts) -> None:
        started.set()
        release.wait(30)

    buf = make_buffer(
        handle_flush=fn, max_size=2, max_queued_batches=0, flush_interval=BIG, insert_timeout=30
    )
    buf.insert_batch([0, 1])
    assert started.wait(30)
    held = [2] if room else [2, 3]
    buf.insert_batch(held)
    assert buf.dump() == held
    return buf, held


def _generator(items: list[int]) -> Any:
    yield from items


CALLS = {
    "insert": lambda buf, timeout: buf.insert(9, timeout=timeout),
    "insert_batch(list)": lambda buf, timeout: buf.insert_batch([7, 8, 9], timeout=timeout),
    "insert_batch(tuple)": lambda buf, timeout: buf.insert_batch((7, 8, 9), timeout=timeout),
    "insert_batch(generator)": lambda buf, timeout: buf.insert_batch(_generator([7, 8, 9]), timeout=timeout),
}


@pytest.mark.parametrize("value", [GIANT, -GIANT], ids=["10**400", "-10**400"])
@pytest.mark.parametrize("room", [True, False], ids=["room", "full"])
@pytest.mark.parametrize("call", list(CALLS))
def test_an_insert_with_a_giant_timeout_is_refused_and_stores_nothing(
    make_buffer: Any, gates: Any, call: str, room: bool, value: int
) -> None:
    buf, held = stuck(make_buffer, gates, room=room)
    inserted = buf.stats()["inserted"]
    with pytest.raises(ValueError, match="timeout") as caught:
        CALLS[call](buf, value)
    assert "10**400" in str(caught.value)
    assert not isinstance(caught.value, BufferFull)
    assert buf.dump() == held
    assert buf.stats()["inserted"] == inserted


@pytest.mark.parametrize("timeout", [2**70, 10**300, 1e308], ids=["2**70", "10**300", "1e308"])
def test_an_insert_with_a_huge_finite_timeout_still_works(make_buffer: Any, timeout: float) -> None:
    buf = make_buffer(handle_flush=noop, max_size=100, flush_interval=BIG)
    buf.insert(1, timeout=timeout)
    buf.insert_batch([2, 3], timeout=timeout)
    assert buf.dump() == [1, 2, 3]


@pytest.mark.parametrize("value", [GIANT, -GIANT], ids=["10**400", "-10**400"])
def test_sync_flush_and_close_with_a_giant_timeout_are_refused(make_buffer: Any, value: int) -> None:
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, max_size=100, flush_interval=BIG)
    buf.insert_batch([1, 2])
    for call in (buf.sync_flush, buf.close):
        with pytest.raises(ValueError, match="timeout") as caught:
            call(timeout=value)
        assert "10**400" in str(caught.value)
    # Refused before doing anything: nothing was flushed, the buffer is open.
    assert not buf.closed
    assert buf.dump() == [1, 2]
    assert recorder.batches() == []
    buf.insert(3)
    buf.close(timeout=30)
    assert recorder.items() == [1, 2, 3]


@pytest.mark.anyio
async def test_async_calls_with_a_giant_timeout_are_refused(AsyncBuffer: type) -> None:
    calls: list[list[Any]] = []

    async def fn(batch: list[Any], opts: FlushOpts) -> None:
        calls.append(list(batch))

    buf = AsyncBuffer(handle_flush=fn, max_size=100, flush_interval=BIG)
    async with buf:
        buf.insert(1)
        attempts = (
            lambda: buf.ainsert(2, timeout=GIANT),
            lambda: buf.ainsert_batch([3, 4], timeout=GIANT),
            lambda: buf.sync_flush(timeout=GIANT),
            lambda: buf.aclose(timeout=GIANT),
        )
        for attempt in attempts:
            with pytest.raises(ValueError, match="timeout"):
                await attempt()
        for sync_call in (lambda: buf.insert(5, timeout=GIANT), lambda: buf.insert_batch([6], timeout=GIANT)):
            with pytest.raises(ValueError, match="timeout"):
                sync_call()
        assert not buf.closed
        assert buf.dump() == [1]
        assert calls == []
        await asyncio.sleep(0)
    assert calls == [[1]]


# -- the floor under flush_interval and flush_timeout -------------------------------------


@pytest.mark.parametrize("value", [0.0009, 1e-9, 0, -1], ids=["0.0009", "1e-9", "0", "-1"])
@pytest.mark.parametrize("option", ["flush_interval", "flush_timeout"])
def test_times_below_the_floor_are_refused_naming_the_floor(build: Any, option: str, value: float) -> None:
    message = refused(build, option, value)
    assert f">= {FLOOR} seconds" in message
    assert repr(value) in message


@pytest.mark.parametrize("option", ["flush_interval", "flush_timeout"])
def test_times_at_the_floor_are_accepted(build: Any, option: str) -> None:
    buf = build(**{"flush_interval": BIG, option: FLOOR})
    assert buf.info()[0][option] == FLOOR


def test_a_buffer_at_the_floor_flushes_on_its_timer(make_buffer: Any) -> None:
    recorder = Recorder()
    buf = make_buffer(handle_flush=recorder, max_size=100, flush_interval=FLOOR, flush_jitter=0)
    buf.insert(1)
    wait_for(lambda: recorder.items() == [1], timeout=30)
    assert recorder.triggers() == ["interval"]
