"""``AsyncBuffer`` beside ``Buffer``: the ``insert`` call on a running loop, end to end into an async sink.

1. ``test_async_insert``: the per-call cost of ``AsyncBuffer.insert`` (a
   plain call that never waits) beside ``Buffer.insert`` and
   ``deque.append``, same loop (``_bench.make_loop``), same item, same
   options.  Every benchmark runs inside a coroutine on a running asyncio
   loop (``benchmark.pedantic`` is called from it), the ``AsyncBuffer``
   started on that loop.  The loop cannot run its flusher tasks while
   pytest-benchmark's rounds run, so each buffer's ``max_size`` holds every
   item of every round: nothing is sealed or flushed during the rounds (min
   and median are both the cost of the call; the flushing share is in the
   end-to-end figures below, and in ``python -m databuffer bench``).
   Afterwards, untimed: ``sync_flush()`` and the check that every item was
   flushed exactly once.
2. ``test_async_end_to_end``: ``E2E_ITEMS`` items from a coroutine into a
   fresh buffer whose ``handle_flush`` only counts (``async def`` for the
   ``AsyncBuffer``), timed from the first insert until ``aclose()`` (or
   ``close()``) returned.  The producer is the fast-path idiom, one loop
   compiled from the same source for every subject::

       try:
           buf.insert(x)
       except BufferFull:
           await buf.ainsert(x)

   (``insert_batch`` of ``E2E_CHUNK``-item chunks, and ``await
   buf.ainsert_batch(chunk[exc.stored:])``).  Subjects: ``AsyncBuffer`` on
   asyncio's default loop and on uvloop (skipped when not importable);
   baselines: ``Buffer`` with the same options (its ``insert`` waits under
   backpressure instead of raising; its flushers are threads) and the deque
   floor (``deque.append`` / ``deque.extend``: no batching, no flushing).
   Buffer options: ``partitions=1, max_size=5000`` (``AsyncBuffer``'s
   defaults) and ``partitions=4, max_size=1000`` (those of
   test_bench_end_to_end.py).

Only correctness is asserted; the issue's target (the ``AsyncBuffer``
``insert`` end-to-end figure at 5 million items/s or more on the compiled
core) is reported in a note under its table.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _bench import (
    CALLS,
    COMPILED,
    E2E_CHUNK,
    E2E_ITEMS,
    E2E_ROUNDS,
    ROUNDS,
    STYLES,
    TIMEOUT,
    WARMUP,
    FlushCounter,
    Results,
    median,
    new_buffer,
    reps,
    run_loop_rounds,
    shut,
)

import databuffer
from databuffer import AsyncBuffer, BufferFull
from databuffer._support import loop_factory

pytestmark = pytest.mark.timeout(TIMEOUT)

ITEM = ("tick", 1)  # one small object, reused: the figure is the call, not an allocation
PARTITIONS = (1, 4)
#: The issue's target for the AsyncBuffer end-to-end insert figure (compiled core), items/s.
TARGET = 5_000_000
SUBJECT_LABEL = "AsyncBuffer" if COMPILED else "AsyncBuffer (pure core!)"


class AsyncFlushCounter:
    """An ``async def`` ``handle_flush`` that only counts items and calls.

    All of a buffer's flusher tasks run on one loop, one step at a time:
    the counts need no lock.
    """

    def __init__(self) -> None:
        self.items = 0
        self.calls = 0

    async def sink(self, batch: list[Any], opts: Any) -> None:
        self.items += len(batch)
        self.calls += 1


def uvloop_or_skip() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``loop_factory``; skips the test when uvloop is not installed."""
    try:
        return loop_factory("uvloop")
    except ImportError:
        pytest.skip("uvloop is not installed")


# -- 1. insert -----------------------------------------------------------------------

INSERT_SUBJECTS = ["deque.append", "Buffer", "AsyncBuffer"]
INSERT_CASES = [
    pytest.param(style, p, subject, id=f"{style}-p{p}-{subject}")
    for style in STYLES
    for p in PARTITIONS
    for subject in INSERT_SUBJECTS
]


def async_insert_title(style: str, partitions: int, max_size: int) -> str:
    return (
        f"AsyncBuffer insert, on a running asyncio loop, {partitions} partition(s), max_size={max_size:,} "
        f"(nothing flushed during the rounds), {STYLES[style]}"
    )


@pytest.mark.parametrize(("style", "partitions", "subject"), INSERT_CASES)
def test_async_insert(benchmark: Any, results: Results, style: str, partitions: int, subject: str) -> None:
    # Every item of every round (warm-up included) fits in its partition.
    max_size = (ROUNDS + WARMUP) * CALLS // partitions + 1
    title = async_insert_title(style, partitions, max_size)
    benchmark.group = title
    options: dict[str, Any] = {"partitions": partitions, "max_size": max_size, "flush_interval": 3600.0}

    async def main() -> None:
        if subject == "deque.append":
            d: collections.deque[Any] = collections.deque()

            def cleared() -> Any:
                d.clear()
                return d

            run_loop_rounds(
                benchmark, style=style, method="append", get_target=cleared, item=ITEM, calls=CALLS
            )
            results.add(benchmark, CALLS, (title, "deque.append", "baseline"))
            return
        if subject == "Buffer":
            counter = FlushCounter()
            buf = new_buffer(databuffer.Buffer, counter, **options)
            try:
                inserted = run_loop_rounds(
                    benchmark, style=style, method="insert", get_target=lambda: buf, item=ITEM, calls=CALLS
                )
                buf.sync_flush()
            finally:
                buf.close(timeout=60)
            assert counter.items == inserted
            assert counter.calls == partitions  # one batch each, at sync_flush
            results.add(benchmark, CALLS, (title, "Buffer.insert", "baseline"))
            return
        acounter = AsyncFlushCounter()
        abuf: AsyncBuffer[Any] = AsyncBuffer(handle_flush=acounter.sink, **options)
        async with abuf:
            inserted = run_loop_rounds(
                benchmark, style=style, method="insert", get_target=lambda: abuf, item=ITEM, calls=CALLS
            )
            await abuf.sync_flush()
        assert acounter.items == inserted
        assert acounter.calls == partitions
        assert sum(p["flushed"] for p in abuf.info()) == inserted
        results.add(benchmark, CALLS, (title, f"{SUBJECT_LABEL}.insert", "subject"))

    asyncio.run(main())


# -- 2. end to end --------------------------------------------------------------------

_INSERT_SRC = """
async def loop(fn, afn, item, rng):
    for _ in rng:
        try:
            fn(item)
        except BufferFull:
            await afn(item)
"""

_BATCH_SRC = """
async def loop(fn, afn, chunk, rng):
    for _ in rng:
        try:
            fn(chunk)
        except BufferFull as exc:
            await afn(chunk[exc.stored:])
"""


def make_async_loop(style: str) -> Callable[..., Awaitable[None]]:
    """The producer of one benchmark, compiled anew (its own code object, as ``_bench.make_loop``)."""
    src = {"insert": _INSERT_SRC, "insert_batch": _BATCH_SRC}[style]
    namespace: dict[str, Any] = {"BufferFull": BufferFull}
    exec(compile(src, f"<bench async loop {style}>", "exec"), namespace)
    loop: Callable[..., Awaitable[None]] = namespace["loop"]
    return loop


E2E_CONFIGS = (
    (1, 5000),
    (4, 1000),
)  # (partitions, max_size): AsyncBuffer's defaults, test_bench_end_to_end's
E2E_SUBJECTS = ["floor", "Buffer", "AsyncBuffer", "AsyncBuffer-uvloop"]
E2E_CASES = [
    pytest.param(style, p, max_size, subject, id=f"{style}-p{p}-max{max_size}-{subject}")
    for p, max_size in E2E_CONFIGS
    for style in ("insert", "insert_batch")
    for subject in E2E_SUBJECTS
]


@pytest.mark.parametrize(("style", "partitions", "max_size", "subject"), E2E_CASES)
def test_async_end_to_end(
    benchmark: Any, results: Results, style: str, partitions: int, max_size: int, subject: str
) -> None:
    arg: Any
    if style == "insert":
        calls, arg, items = E2E_ITEMS, ITEM, E2E_ITEMS
        how = "insert, await ainsert on BufferFull"
    else:
        calls = E2E_ITEMS // E2E_CHUNK
        arg, items = [ITEM] * E2E_CHUNK, calls * E2E_CHUNK
        how = f"insert_batch of {E2E_CHUNK}-item chunks, await ainsert_batch(rest) on BufferFull"
    title = (
        f"AsyncBuffer end to end: {items:,} items from a coroutine, {partitions} partition(s), "
        f"max_size={max_size}, {how}, until aclose()/close() returned"
    )
    benchmark.group = title
    factory = uvloop_or_skip() if subject == "AsyncBuffer-uvloop" else None
    producer = make_async_loop(style)
    options: dict[str, Any] = {"partitions": partitions, "max_size": max_size, "insert_timeout": 60.0}
    # Per round: the loop and the object (untimed), then, timed, the producer and the close.
    state: dict[str, Any] = {}
    flushes: list[int] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        runner = asyncio.Runner(loop_factory=factory)
        state["runner"] = runner
        afn: Any = None
        finish: Callable[[], Awaitable[Any]]
        if subject == "floor":
            obj: Any = collections.deque()
            fn = obj.append if style == "insert" else obj.extend

            async def finish() -> None:
                pass

            runner.run(finish())  # makes the loop, untimed
        elif subject == "Buffer":
            state["counter"] = FlushCounter()
            obj = new_buffer(databuffer.Buffer, state["counter"], **options)
            fn = getattr(obj, style)

            async def finish() -> None:
                obj.close()

            runner.run(asyncio.sleep(0))
        else:
            state["counter"] = AsyncFlushCounter()
            obj = AsyncBuffer(handle_flush=state["counter"].sink, flush_interval=60.0, **options)
            runner.run(obj.start())
            fn, afn = getattr(obj, style), getattr(obj, f"a{style}")
            finish = obj.aclose
        state["obj"] = obj

        async def produce() -> None:
            await producer(fn, afn, arg, reps(calls))
            await finish()

        return (runner, produce), {}

    def run(runner: asyncio.Runner, produce: Callable[[], Awaitable[None]]) -> None:
        runner.run(produce())

    def teardown(*args: Any) -> None:
        obj = state.pop("obj")
        runner = state.pop("runner")
        try:
            if subject == "floor":
                assert len(obj) == items
                return
            counter = state.pop("counter")
            assert counter.items == items
            assert sum(p["flushed"] for p in obj.info()) == items
            flushes.append(counter.calls)
        finally:
            runner.close()

    try:
        benchmark.pedantic(
            run, setup=setup, teardown=teardown, rounds=E2E_ROUNDS, warmup_rounds=0, iterations=1
        )
    finally:
        shut(state.pop("obj", None), state.pop("runner", None))

    label = {
        "floor": f"deque.{'append' if style == 'insert' else 'extend'} floor (no flushing)",
        "Buffer": "Buffer, same options (flusher threads)",
        "AsyncBuffer": f"{SUBJECT_LABEL}, asyncio loop",
        "AsyncBuffer-uvloop": f"{SUBJECT_LABEL}, uvloop",
    }[subject]
    extra: dict[str, Any] = {"items": items, "partitions": partitions, "max_size": max_size, "variant": how}
    meta = getattr(benchmark, "stats", None)
    if meta is not None:
        st = meta.stats
        if flushes:
            per_round = median([float(f) for f in flushes])
            extra["flushes_per_round"] = per_round
            extra["flushes_per_s_min_time"] = per_round / st.min
            extra["flushes_per_s_median_time"] = per_round / st.median
        if subject == "AsyncBuffer" and style == "insert":
            rate = items / st.median
            verdict = (
                ("met" if rate >= TARGET else "NOT met") if COMPILED else "not checked (pure-Python core)"
            )
            results.group(title, "throughput").notes.append(
                f"target: AsyncBuffer insert/ainsert end to end >= {TARGET:,} items/s on the compiled core: "
                f"{verdict} ({rate:,.0f} items/s, median round, asyncio loop)"
            )
    results.add(
        benchmark,
        items,
        (title, label, "baseline" if subject in ("floor", "Buffer") else "subject"),
        kind="throughput",
        extra=extra,
    )
