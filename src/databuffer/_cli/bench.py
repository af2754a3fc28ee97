"""``python -m databuffer bench``: a quick benchmark against baselines measured in the same run.

Every figure is a ratio to a baseline timed (or weighed) in the same process,
interleaved with it, so that the figures mean something on the machine they
were measured on, however fast or noisy it is:

* ``insert`` of one small object on a running buffer, versus
  ``collections.deque.append`` and versus the same insert on the pure-Python
  core: the best block of calls (the cost of one call) and the amortized mean
  (all the time, the buffer's flushing share included, over all the calls);
  beside them, a thread hand-off round trip per item of a 1,000-item batch:
  with the GIL, each batch's flush costs the producer at least that much;
* ``insert_batch`` of a 1,000-item list, per item, versus ``list.extend`` of
  the same list into a list cleared each time;
* end to end: N items through a 4-partition buffer into a counting
  ``handle_flush``, by ``insert_batch`` and by ``insert``, until all are
  flushed (and counted), versus a ``deque.append`` loop of the same N;
* ``AsyncBuffer``: its ``insert`` on a running loop, timed in the same
  interleaved rounds as ``Buffer.insert`` (versus ``deque.append`` and
  versus ``Buffer.insert``), and end to end: N items from a coroutine into an
  ``AsyncBuffer`` with an ``async def`` counting ``handle_flush``, until
  ``aclose()`` returned, versus a ``Buffer`` of the same options, runs
  alternating; on asyncio's default loop and on uvloop when importable;
* memory: bytes per buffered ``None`` (tracemalloc), versus a list;
* the pipeline (a second table): one producer, one partition of 1,000, for
  ``max_queued_batches=0`` and for the default (or the default alone when
  the build has no such option): N items end to end by ``insert`` until
  ``close()`` returned, versus a ``deque.append`` loop, a
  ``queue.SimpleQueue`` with one consumer thread that batches by 1,000
  (:class:`SimpleQueueBatcher`) and the OpenTelemetry SDK's batch processor
  (when installed); by ``insert_batch(1,000)``, versus deque loops;
  ``insert`` and ``insert_batch`` amortized, versus ``deque.append`` and
  ``list.extend``; and the flusher's own cost per batch, ``handle_flush``
  excluded, versus the ``SimpleQueue`` consumer thread's (see
  :func:`bench_flusher`).

Only the standard library is used, and the OpenTelemetry SDK when it is
importable (its baseline is skipped otherwise).  Each ``bench_*`` function
returns a result dataclass; :func:`run` runs them all, :func:`format_table`
shows a :class:`BenchReport` (a summary in plain words, then the tables and
their numbered notes, in at most :data:`WIDTH` columns), and :func:`main` is
the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gc
import importlib
import inspect
import json
import math
import platform
import queue
import re
import statistics
import struct
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from .. import USING_EXTENSION, AsyncBuffer, Buffer, BufferFull, __version__, _core_py, telemetry
from .._support import PyBuffer, available_loops, loop_factory
from .._text import plural

__all__ = (
    "ASYNC_MAX_SIZE",
    "ASYNC_PARTITIONS",
    "BLOCK",
    "DEFAULT_ITEMS",
    "DEFAULT_MEMORY_ITEMS",
    "DEFAULT_REPEAT",
    "DEFAULT_ROUNDS",
    "WIDTH",
    "AsyncEndToEndResult",
    "BatchResult",
    "BenchReport",
    "EndToEndResult",
    "FlusherCost",
    "HandOff",
    "InsertResult",
    "MemoryResult",
    "OTelBaseline",
    "OTelUnavailable",
    "PipelineEndToEnd",
    "PipelineResult",
    "PipelineRow",
    "QueueConfig",
    "Row",
    "SimpleQueueBatcher",
    "Timing",
    "add_arguments",
    "bench_async_end_to_end",
    "bench_end_to_end",
    "bench_flusher",
    "bench_insert",
    "bench_insert_batch",
    "bench_memory",
    "bench_pipeline",
    "bench_pipeline_amortized",
    "bench_pipeline_end_to_end",
    "environment",
    "format_table",
    "main",
    "otel_processor",
    "queue_configs",
    "run",
    "run_command",
    "stamp_overhead",
)

#: Calls per timed block of ``insert`` (and items per ``insert_batch`` call).
BLOCK = 1000
#: Blocks per chunk: a subject runs a chunk of blocks, then the next subject.
#: 100,000 calls: 25 full batches per partition, so a chunk ends with every
#: batch sealed, and its drain (``sync_flush``) finds no partial one.
CHUNK_BLOCKS = 100
#: The pure-Python core is several times slower: shorter chunks.
PURE_CHUNK_BLOCKS = 20
#: Thread hand-off round trips per timed block, and blocks per chunk.
HANDOFF_TRIPS = 20
HANDOFF_CHUNK_BLOCKS = 5
#: ``insert_batch`` calls per timed block: one per partition.
BATCH_CALLS = 4
#: ``insert_batch`` blocks per chunk: 100,000 items too.
BATCH_CHUNK_BLOCKS = 25

DEFAULT_ROUNDS = 400
DEFAULT_REPEAT = 5
DEFAULT_ITEMS = 2_000_000
DEFAULT_MEMORY_ITEMS = 1_000_000
MIN_MEMORY_ITEMS = 10_000

# The buffers timed: 4 partitions of 1,000, no timed flush during a run (a
# long flush_interval, no jitter), and no insert giving up on a slow machine.
PARTITIONS = 4
MAX_SIZE = 1000
_OPTIONS: dict[str, Any] = {
    "partitions": PARTITIONS,
    "max_size": MAX_SIZE,
    "flush_interval": 3600.0,
    "flush_jitter": 0.0,
    "insert_timeout": 60.0,
}

# One small object, inserted again and again: the figures are the cost of
# the calls, not of making and freeing items.
_ITEM = ("tick", 1)
#: The key of the keyed insert figure (a str: its hash is cached after the first call).
KEY = "AAPL"

#: The ``AsyncBuffer`` end-to-end figures use its defaults (one partition of
#: 5,000), on every loop of :func:`~databuffer._support.available_loops`, and
#: the options of the ``Buffer`` end-to-end figures (:data:`PARTITIONS` of
#: :data:`MAX_SIZE`), on asyncio's loop; each beside a ``Buffer`` of the same
#: options.
ASYNC_PARTITIONS = 1
ASYNC_MAX_SIZE = 5000


class _Counter:
    """A ``handle_flush`` that counts items and batches, per partition.

    Each partition's batches reach ``handle_flush`` one at a time, so
    per-partition counters need no lock (a shared ``+=`` could lose counts).
    """

    def __init__(self, partitions: int) -> None:
        self.items = [0] * partitions
        self.batches = [0] * partitions

    def handle_flush(self, batch: list[Any], opts: Any) -> None:
        self.items[opts.partition] += len(batch)
        self.batches[opts.partition] += 1

    @property
    def total(self) -> int:
        return sum(self.items)

    @property
    def flushes(self) -> int:
        return sum(self.batches)


class _AsyncCounter(_Counter):
    """The ``async def`` ``handle_flush`` of an ``AsyncBuffer``: counts as :class:`_Counter` does."""

    async def handle_flush(self, batch: list[Any], opts: Any) -> None:  # type: ignore[override]
        _Counter.handle_flush(self, batch, opts)


def _count_problem(what: str, counted: int, expected: int) -> list[str]:
    if counted == expected:
        return []
    return [f"{what}: handle_flush got {counted:,} items, expected {expected:,}"]


# -- timing ---------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """One subject timed in blocks of calls.

    Attributes:
        name: what was timed.
        items: items per block (calls times items per call).
        best: seconds of the fastest block.
        total: seconds of all blocks, and of waiting for the flushes they
            started (for a buffer).
        total_items: items over all blocks.
    """

    name: str
    items: int
    best: float
    total: float
    total_items: int

    @property
    def call_ns(self) -> float:
        """Nanoseconds per item in the fastest block: the cost of a call."""
        return self.best / self.items * 1e9

    @property
    def amortized_ns(self) -> float:
        """Nanoseconds per item over everything, flushing included."""
        return self.total / self.total_items * 1e9


class _Subject:
    """A callable timed in blocks: ``fn(arg)`` ``calls`` times per block."""

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Any],
        arg: Any,
        calls: int,
        items_per_call: int,
        *,
        blocks: int,
        drain: Callable[[], Any] | None = None,
        reset: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.chunk_blocks = blocks
        self.fn = fn
        self.arg = arg
        self.calls = calls
        self.items_per_call = items_per_call
        self.drain = drain
        self.reset = reset
        self.best = math.inf
        self.total = 0.0
        self.blocks = 0
        self.items = 0  # every item handed over, warm-up included

    def chunk(self, blocks: int, *, record: bool = True) -> None:
        """Time ``blocks`` blocks, then (timed) the drain, then (untimed) the reset."""
        perf = time.perf_counter
        best, total = self._time_blocks(blocks)
        if self.drain is not None:
            # Wait for the flushes this chunk started: the amortized figure
            # charges them to the buffer, not to whatever runs next.
            t0 = perf()
            self.drain()
            total += perf() - t0
        self._account(blocks, best, total, record)

    def _time_blocks(self, blocks: int) -> tuple[float, float]:
        """The fastest block's seconds and all blocks' seconds: ``fn(arg)`` ``calls`` times a block."""
        perf = time.perf_counter
        fn = self.fn
        arg = self.arg
        calls = range(self.calls)
        best = math.inf
        total = 0.0
        # The same loop for every subject: only fn and arg differ.
        for _ in range(blocks):
            t0 = perf()
            for _ in calls:
                fn(arg)
            dt = perf() - t0
            total += dt
            if dt < best:
                best = dt
        return best, total

    def _account(self, blocks: int, best: float, total: float, record: bool) -> None:
        if self.reset is not None:
            self.reset()
        self.items += blocks * self.calls * self.items_per_call
        if record:
            self.best = min(self.best, best)
            self.total += total
            self.blocks += blocks

    def timing(self) -> Timing:
        per_block = self.calls * self.items_per_call
        return Timing(self.name, per_block, self.best, self.total, self.blocks * per_block)


class _KeyedSubject(_Subject):
    """``fn(arg, key=KEY)`` timed in blocks, as :class:`_Subject` times ``fn(arg)``.

    A timed loop of its own: passing a key through the shared loop would add
    its cost to every subject.
    """

    def _time_blocks(self, blocks: int) -> tuple[float, float]:
        perf = time.perf_counter
        fn: Callable[..., Any] = self.fn
        arg = self.arg
        calls = range(self.calls)
        best = math.inf
        total = 0.0
        for _ in range(blocks):
            t0 = perf()
            for _ in calls:
                fn(arg, key=KEY)
            dt = perf() - t0
            total += dt
            if dt < best:
                best = dt
        return best, total


class _AsyncSubject(_Subject):
    """A subject whose blocks run in a coroutine on an event loop (an ``AsyncBuffer``'s).

    Each chunk is one ``runner.run()`` of a coroutine that times the blocks
    with the same loop as :meth:`_Subject.chunk`; after each block it yields
    to the loop once (``asyncio.sleep(0)``), so that the flusher tasks take
    the batches the block sealed.  The yield counts in the total (the
    amortized figure), not in the block's time; the drain, timed as well,
    awaits ``adrain()`` (the buffer's ``sync_flush``).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Any],
        arg: Any,
        calls: int,
        items_per_call: int,
        *,
        blocks: int,
        runner: asyncio.Runner,
        adrain: Callable[[], Awaitable[Any]],
    ) -> None:
        super().__init__(name, fn, arg, calls, items_per_call, blocks=blocks)
        self.runner = runner
        self.adrain = adrain

    def chunk(self, blocks: int, *, record: bool = True) -> None:
        best, total = self.runner.run(self._blocks(blocks))
        self._account(blocks, best, total, record)

    async def _blocks(self, blocks: int) -> tuple[float, float]:
        perf = time.perf_counter
        pause = asyncio.sleep
        fn = self.fn
        arg = self.arg
        calls = range(self.calls)
        best = math.inf
        total = 0.0
        for _ in range(blocks):
            t0 = perf()
            for _ in calls:
                fn(arg)
            dt = perf() - t0
            if dt < best:
                best = dt
            await pause(0)
            total += perf() - t0
        t0 = perf()
        await self.adrain()
        total += perf() - t0
        return best, total


def _interleave(subjects: Sequence[_Subject], rounds: int) -> None:
    """A short warm-up chunk each, then ``rounds`` rounds of one chunk each, order rotating."""
    for subject in subjects:
        subject.chunk(max(1, subject.chunk_blocks // 10), record=False)
    for r in range(rounds):
        k = r % len(subjects)
        for subject in (*subjects[k:], *subjects[:k]):
            subject.chunk(subject.chunk_blocks)


def _buffer_subject(
    name: str, cls: type, counter: _Counter, method: str, arg: Any, calls: int, per_call: int, blocks: int
) -> tuple[_Subject, Any]:
    buf = cls(handle_flush=counter.handle_flush, name=f"bench-{name}", **_OPTIONS)
    subject = _Subject(name, getattr(buf, method), arg, calls, per_call, blocks=blocks, drain=buf.sync_flush)
    return subject, buf


# -- 1. insert ------------------------------------------------------------


@dataclass(frozen=True)
class InsertResult:
    """``insert`` of one small object, versus ``deque.append`` and the pure-Python core.

    Attributes:
        buffer: the default ``Buffer`` (its core per ``USING_EXTENSION``).
        deque: ``collections.deque.append``.
        pure: ``insert`` on the pure-Python core; ``None`` when the default
            core is the pure-Python one.
        handoff: thread hand-off round trips, counted as :data:`MAX_SIZE`
            items each (so ``call_ns`` is per item of a batch); ``None`` if
            not timed.
        problems: items not flushed exactly once; empty if none.
        async_buffer: ``insert`` on an ``AsyncBuffer`` of the same options
            (same core), started on a running loop, called from a
            coroutine on it (see :class:`_AsyncSubject`); ``None`` if not
            timed.
        async_control: ``insert`` on a second ``Buffer`` (same options and
            core), timed exactly as ``async_buffer`` is (in a coroutine on
            the same loop, yielding after each block): what the harness
            alone adds to ``buffer``; ``None`` if not timed.
        keyed: ``insert(item, key=KEY)`` on a third ``Buffer`` of the same
            options (every call to one partition); ``None`` if not timed.
    """

    buffer: Timing
    deque: Timing
    pure: Timing | None
    handoff: Timing | None = None
    problems: list[str] = field(default_factory=list)
    async_buffer: Timing | None = None
    async_control: Timing | None = None
    keyed: Timing | None = None


class HandOff:
    """Two threads passing control back and forth through two locks.

    ``trip()`` wakes the partner thread and waits until the partner has
    woken it in turn.  With the GIL, a batch's flush needs at least that:
    the flusher thread takes the interpreter lock, runs, and gives it back.
    """

    def __init__(self) -> None:
        self._go = threading.Lock()
        self._back = threading.Lock()
        self._go.acquire()
        self._back.acquire()
        self._stop = False
        self._thread = threading.Thread(target=self._partner, name="databuffer-bench-hand-off", daemon=True)
        self._thread.start()

    def _partner(self) -> None:
        while True:
            self._go.acquire()
            if self._stop:
                return
            self._back.release()

    def trip(self, _arg: Any = None) -> None:
        self._go.release()
        self._back.acquire()

    def close(self) -> None:
        self._stop = True
        self._go.release()
        self._thread.join()


def bench_insert(
    rounds: int = DEFAULT_ROUNDS,
    blocks: int = CHUNK_BLOCKS,
    *,
    pure: bool | None = None,
    pure_blocks: int = PURE_CHUNK_BLOCKS,
    asynchronous: bool = True,
) -> InsertResult:
    """Time ``insert`` against ``deque.append`` (and the pure-Python core), interleaved.

    Each subject runs ``blocks`` blocks of :data:`BLOCK` calls in a row (a
    chunk), then the next subject; ``rounds`` rounds.  After each chunk the
    buffer is flushed and waited for (``sync_flush``), timed as part of its
    amortized total; the deque is cleared, untimed.

    Args:
        rounds: chunks per subject.
        blocks: blocks per chunk.
        pure: also time the pure-Python core; by default, when the default
            core is the compiled one.
        pure_blocks: blocks per chunk of the pure-Python core, several times
            slower: fewer, so that the others get more blocks in the same time.
        asynchronous: also time ``insert`` on an ``AsyncBuffer`` (same
            options, default core), started on an asyncio loop and called
            from a coroutine on it, ``blocks`` blocks per chunk; between
            blocks the coroutine yields once to the loop, where the
            flusher tasks run (see :class:`_AsyncSubject`).  And, as its
            control, ``insert`` on another ``Buffer`` timed the same way.
    """
    if pure is None:
        pure = USING_EXTENSION
    counter = _Counter(PARTITIONS)
    d: collections.deque[Any] = collections.deque()
    subjects: list[_Subject] = [
        _Subject("deque.append", d.append, _ITEM, BLOCK, 1, blocks=blocks, reset=d.clear)
    ]
    buffers = []
    hand_off = HandOff()
    # Each round trip stands for one batch of MAX_SIZE items.
    handoff = _Subject("hand-off", hand_off.trip, None, HANDOFF_TRIPS, MAX_SIZE, blocks=HANDOFF_CHUNK_BLOCKS)
    classes: list[tuple[str, type, int]] = [("insert", Buffer, blocks)]
    if pure:
        classes.append(("insert (pure-Python core)", PyBuffer, pure_blocks))
    async_counter = _AsyncCounter(PARTITIONS)
    control_counter = _Counter(PARTITIONS)
    async_subjects: list[_AsyncSubject] = []
    runner = asyncio.Runner() if asynchronous else None
    abuf: AsyncBuffer[Any] | None = None
    extra_counter = _Counter(PARTITIONS)
    extras: list[_Subject] = []
    try:
        for name, cls, n in classes:
            subject, buf = _buffer_subject(name, cls, counter, "insert", _ITEM, BLOCK, 1, n)
            subjects.append(subject)
            buffers.append(buf)
        keyed_buf = Buffer(handle_flush=extra_counter.handle_flush, name="bench-insert-key", **_OPTIONS)
        buffers.append(keyed_buf)
        extras.append(
            _KeyedSubject(
                "insert(key=)", keyed_buf.insert, _ITEM, BLOCK, 1, blocks=blocks, drain=keyed_buf.sync_flush
            )
        )
        if runner is not None:
            abuf = AsyncBuffer(handle_flush=async_counter.handle_flush, name="bench-async-insert", **_OPTIONS)
            runner.run(abuf.start())
            control = Buffer(
                handle_flush=control_counter.handle_flush, name="bench-insert-control", **_OPTIONS
            )
            buffers.append(control)

            async def control_drain() -> None:
                control.sync_flush()

            for name, fn, drain in (
                ("AsyncBuffer.insert", abuf.insert, abuf.sync_flush),
                ("Buffer.insert, timed as AsyncBuffer.insert", control.insert, control_drain),
            ):
                async_subjects.append(
                    _AsyncSubject(name, fn, _ITEM, BLOCK, 1, blocks=blocks, runner=runner, adrain=drain)
                )
        gc.collect()
        _interleave([*subjects, *extras, *async_subjects, handoff], rounds)
    finally:
        hand_off.close()
        for buf in buffers:
            buf.close()
        if runner is not None:
            try:
                if abuf is not None:
                    runner.run(abuf.aclose())
            finally:
                runner.close()
    expected = sum(s.items for s in subjects[1:])
    problems = _count_problem("insert", counter.total, expected)
    problems += _count_problem("insert(key=)", extra_counter.total, sum(s.items for s in extras))
    async_buffer = async_control = None
    if async_subjects:
        a, c = async_subjects
        problems += _count_problem("AsyncBuffer.insert", async_counter.total, a.items)
        problems += _count_problem("insert (timed as AsyncBuffer.insert)", control_counter.total, c.items)
        async_buffer, async_control = a.timing(), c.timing()
    return InsertResult(
        buffer=subjects[1].timing(),
        deque=subjects[0].timing(),
        pure=subjects[2].timing() if pure else None,
        handoff=handoff.timing(),
        problems=problems,
        async_buffer=async_buffer,
        async_control=async_control,
        keyed=extras[0].timing(),
    )


# -- 2. insert_batch ------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    """``insert_batch`` of a :data:`BLOCK`-item list versus ``list.extend``, per item.

    Attributes:
        buffer: ``insert_batch`` on the default ``Buffer``.
        extend: ``list.clear()`` then ``list.extend()`` of the same list.
        problems: items not flushed exactly once; empty if none.
    """

    buffer: Timing
    extend: Timing
    problems: list[str] = field(default_factory=list)


def bench_insert_batch(rounds: int = DEFAULT_ROUNDS, blocks: int = BATCH_CHUNK_BLOCKS) -> BatchResult:
    """Time ``insert_batch`` against ``list.extend``, interleaved as in :func:`bench_insert`.

    A block is :data:`BATCH_CALLS` calls (one per partition) with the same
    list of :data:`BLOCK` references to one small object.
    """
    batch = [_ITEM] * BLOCK
    target: list[Any] = []
    clear = target.clear
    extend = target.extend

    def extend_cleared(items: list[Any]) -> None:
        clear()
        extend(items)

    counter = _Counter(PARTITIONS)
    baseline = _Subject("list.extend", extend_cleared, batch, BATCH_CALLS, BLOCK, blocks=blocks, reset=clear)
    subject, buf = _buffer_subject(
        "insert_batch", Buffer, counter, "insert_batch", batch, BATCH_CALLS, BLOCK, blocks
    )
    try:
        gc.collect()
        _interleave([baseline, subject], rounds)
    finally:
        buf.close()
    return BatchResult(
        buffer=subject.timing(),
        extend=baseline.timing(),
        problems=_count_problem("insert_batch", counter.total, subject.items),
    )


# -- 4. end to end --------------------------------------------------------


@dataclass(frozen=True)
class EndToEndResult:
    """N items through a buffer until all are flushed, versus a ``deque.append`` loop.

    Attributes:
        mode: ``"insert_batch"`` (lists of :data:`BLOCK`) or ``"insert"``.
        items: N.
        seconds: best wall time from the first insert until ``close()``
            returned (every batch flushed).
        flushes: ``handle_flush`` calls in that run.
        flushed: items that reached ``handle_flush`` in the worst run.
        baseline_seconds: best wall time of the ``deque.append`` loop.
        problems: runs in which ``flushed`` was not N; empty if none.
    """

    mode: str
    items: int
    seconds: float
    flushes: int
    flushed: int
    baseline_seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds

    @property
    def flushes_per_second(self) -> float:
        return self.flushes / self.seconds

    @property
    def baseline_items_per_second(self) -> float:
        return self.items / self.baseline_seconds


def _deque_loop(items: int) -> float:
    d: collections.deque[Any] = collections.deque()
    append = d.append
    item = _ITEM
    t0 = time.perf_counter()
    for _ in range(items):
        append(item)
    seconds = time.perf_counter() - t0
    d.clear()
    return seconds


def _buffer_run(
    mode: str, items: int, buffer_class: type, options: dict[str, Any] = _OPTIONS
) -> tuple[float, _Counter]:
    counter = _Counter(options["partitions"])
    buf = buffer_class(handle_flush=counter.handle_flush, name=f"bench-{mode}", **options)
    try:
        item = _ITEM
        if mode == "insert":
            insert = buf.insert
            t0 = time.perf_counter()
            for _ in range(items):
                insert(item)
        else:
            insert_batch = buf.insert_batch
            chunk = [item] * BLOCK
            full, rest = divmod(items, BLOCK)
            t0 = time.perf_counter()
            for _ in range(full):
                insert_batch(chunk)
            if rest:
                insert_batch(chunk[:rest])
        buf.close()
        seconds = time.perf_counter() - t0
    finally:
        buf.close()
    return seconds, counter


def bench_end_to_end(
    mode: str, items: int = DEFAULT_ITEMS, repeat: int = DEFAULT_REPEAT, *, buffer_class: type = Buffer
) -> EndToEndResult:
    """Push ``items`` items through a 4-partition buffer and close it; best of ``repeat``.

    Each repetition times a ``deque.append`` loop of the same length, then
    the buffer (built before the clock starts).  Every run checks that
    ``handle_flush`` got exactly ``items`` items.

    Args:
        mode: ``"insert_batch"`` (lists of :data:`BLOCK` items) or ``"insert"``.
        items: N, >= 1.
        repeat: runs of each; the fastest counts.
        buffer_class: the ``Buffer`` class to run.
    """
    if mode not in ("insert", "insert_batch"):
        raise ValueError(f"mode must be 'insert' or 'insert_batch', got {mode!r}")
    if items < 1 or repeat < 1:
        raise ValueError(f"items and repeat must be >= 1, got {items!r} and {repeat!r}")
    best = math.inf
    flushes = 0
    baseline = math.inf
    flushed = items
    problems: list[str] = []
    for _ in range(repeat):
        gc.collect()
        baseline = min(baseline, _deque_loop(items))
        gc.collect()
        seconds, counter = _buffer_run(mode, items, buffer_class)
        if counter.total != items:
            flushed = counter.total
            problems = _count_problem(f"end to end ({mode})", counter.total, items)
        if seconds < best:
            best, flushes = seconds, counter.flushes
    return EndToEndResult(mode, items, best, flushes, flushed, baseline, problems)


# -- 5. AsyncBuffer end to end ---------------------------------------------


@dataclass(frozen=True)
class AsyncEndToEndResult:
    """N items from a coroutine into an ``AsyncBuffer`` until ``aclose()`` returned, beside a ``Buffer``.

    Attributes:
        mode: ``"insert"``: one ``buf.insert(x)`` per item, and on
            ``BufferFull`` (the partition full while its batch is flushing)
            ``await buf.ainsert(x)``; ``"insert_batch"``: lists of
            :data:`BLOCK` items, ``buf.insert_batch(chunk)``, and on
            ``BufferFull`` ``await buf.ainsert_batch(chunk[exc.stored:])``.
        loop: ``"asyncio"`` (its default event loop) or ``"uvloop"``.
        items: N.
        partitions: the partitions of both buffers.
        max_size: the ``max_size`` of both buffers.
        seconds: best wall time from the first insert until ``aclose()``
            returned (every batch flushed).
        flushes: ``handle_flush`` calls in that run.
        flushed: items that reached ``handle_flush`` in the worst run.
        buffer_seconds: best wall time of a ``Buffer`` of the same options
            (and core), N items inserted the same way (``insert`` or
            ``insert_batch``), until ``close()`` returned; its runs
            alternate with the ``AsyncBuffer`` ones.
        problems: runs in which either buffer did not flush exactly N items.
    """

    mode: str
    loop: str
    items: int
    partitions: int
    max_size: int
    seconds: float
    flushes: int
    flushed: int
    buffer_seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds

    @property
    def flushes_per_second(self) -> float:
        return self.flushes / self.seconds

    @property
    def buffer_items_per_second(self) -> float:
        return self.items / self.buffer_seconds


async def _produce(buf: AsyncBuffer[Any], mode: str, items: int) -> float:
    """Insert ``items`` items the fast way, then ``aclose()``; the seconds it all took."""
    perf = time.perf_counter
    item = _ITEM
    if mode == "insert":
        insert = buf.insert
        ainsert = buf.ainsert
        t0 = perf()
        for _ in range(items):
            try:
                insert(item)
            except BufferFull:
                await ainsert(item)
    else:
        insert_batch = buf.insert_batch
        ainsert_batch = buf.ainsert_batch
        chunk = [item] * BLOCK
        full, rest = divmod(items, BLOCK)
        last = chunk[:rest]
        t0 = perf()
        for _ in range(full):
            try:
                insert_batch(chunk)
            except BufferFull as exc:
                await ainsert_batch(chunk[exc.stored :])
        if rest:
            try:
                insert_batch(last)
            except BufferFull as exc:
                await ainsert_batch(last[exc.stored :])
    await buf.aclose()
    return perf() - t0


def _async_run(
    mode: str, items: int, async_class: type, loop: str, options: dict[str, Any]
) -> tuple[float, _AsyncCounter]:
    counter = _AsyncCounter(options["partitions"])
    buf = async_class(handle_flush=counter.handle_flush, name=f"bench-async-{mode}", **options)
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        try:
            runner.run(buf.start())
            seconds = runner.run(_produce(buf, mode, items))
        finally:
            runner.run(buf.aclose())
    return seconds, counter


def bench_async_end_to_end(
    mode: str,
    items: int = DEFAULT_ITEMS,
    repeat: int = DEFAULT_REPEAT,
    *,
    loops: Sequence[str] | None = None,
    partitions: int = ASYNC_PARTITIONS,
    max_size: int = ASYNC_MAX_SIZE,
    async_class: type = AsyncBuffer,
    buffer_class: type = Buffer,
) -> list[AsyncEndToEndResult]:
    """Push ``items`` items from a coroutine through an ``AsyncBuffer`` and close it; best of ``repeat``.

    Each repetition runs a ``Buffer`` of the same options (the baseline),
    then the ``AsyncBuffer`` on each loop of ``loops``, each on a new event
    loop, the buffer built and started before the clock starts.  The
    ``handle_flush`` is an ``async def`` that counts; every run checks that
    it got exactly ``items`` items.  See :class:`AsyncEndToEndResult`.

    Args:
        mode: ``"insert"`` or ``"insert_batch"`` (lists of :data:`BLOCK` items).
        items: N, >= 1.
        repeat: runs of each; the fastest counts.
        loops: ``"asyncio"`` and/or ``"uvloop"``; by default
            :func:`~databuffer._support.available_loops`.
        partitions: of both buffers (no timed flushes, no jitter, as in
            the other figures).
        max_size: of both buffers.
        async_class: the ``AsyncBuffer`` class to run.
        buffer_class: the ``Buffer`` class of the baseline.

    Returns:
        One result per loop, in the order of ``loops``, with the same baseline.
    """
    if mode not in ("insert", "insert_batch"):
        raise ValueError(f"mode must be 'insert' or 'insert_batch', got {mode!r}")
    if items < 1 or repeat < 1:
        raise ValueError(f"items and repeat must be >= 1, got {items!r} and {repeat!r}")
    loops = available_loops() if loops is None else list(loops)
    for loop in loops:
        loop_factory(loop)  # a bad name fails before anything runs
    options = {**_OPTIONS, "partitions": partitions, "max_size": max_size}
    config = f"{partitions}x{max_size:,}"
    baseline = math.inf
    best = dict.fromkeys(loops, math.inf)
    flushes = dict.fromkeys(loops, 0)
    flushed = dict.fromkeys(loops, items)
    problems: dict[str, list[str]] = {loop: [] for loop in loops}
    baseline_problems: list[str] = []
    for _ in range(repeat):
        gc.collect()
        seconds, counter = _buffer_run(mode, items, buffer_class, options)
        baseline = min(baseline, seconds)
        if counter.total != items:
            baseline_problems = _count_problem(
                f"AsyncBuffer end to end {config} ({mode}): its Buffer baseline", counter.total, items
            )
        for loop in loops:
            gc.collect()
            seconds, acounter = _async_run(mode, items, async_class, loop, options)
            if acounter.total != items:
                flushed[loop] = acounter.total
                problems[loop] = _count_problem(
                    f"AsyncBuffer end to end {config} ({mode}, {loop})", acounter.total, items
                )
            if seconds < best[loop]:
                best[loop], flushes[loop] = seconds, acounter.flushes
    return [
        AsyncEndToEndResult(
            mode,
            loop,
            items,
            partitions,
            max_size,
            best[loop],
            flushes[loop],
            flushed[loop],
            baseline,
            # The baseline's problem is reported once, with the first loop.
            problems[loop] + (baseline_problems if n == 0 else []),
        )
        for n, loop in enumerate(loops)
    ]


# -- 6. memory ------------------------------------------------------------


@dataclass(frozen=True)
class MemoryResult:
    """Bytes per buffered ``None``, versus a list of as many ``None`` s.

    Attributes:
        items: N.
        traced_bytes: what tracemalloc saw the buffer allocate, from before
            its construction until N items were buffered.
        untraced_ring_bytes: the compiled core's rings, allocated with C
            ``malloc`` where tracemalloc does not see them: ``partitions *
            (max_size + max_size_jitter)`` pointers (see docs/concepts/partitions.md); 0 when
            tracemalloc saw them (the pure-Python core).
        list_bytes: what tracemalloc saw a list grow by, appending N ``None``.
        problems: items not buffered, or not flushed by ``close()``.
    """

    items: int
    traced_bytes: int
    untraced_ring_bytes: int
    list_bytes: int
    problems: list[str] = field(default_factory=list)

    @property
    def buffer_bytes(self) -> int:
        return self.traced_bytes + self.untraced_ring_bytes

    @property
    def bytes_per_item(self) -> float:
        return self.buffer_bytes / self.items

    @property
    def list_bytes_per_item(self) -> float:
        return self.list_bytes / self.items


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


def bench_memory(items: int = DEFAULT_MEMORY_ITEMS, *, buffer_class: type = Buffer) -> MemoryResult:
    """Measure the memory of ``items`` buffered ``None`` s (partitions=1, max_size=items + 1).

    Args:
        items: N; at least :data:`MIN_MEMORY_ITEMS`, so that the buffer's
            fixed cost (threads, locks) does not swamp the per-item figure.
        buffer_class: the ``Buffer`` class to weigh.
    """
    if items < MIN_MEMORY_ITEMS:
        raise ValueError(f"items must be >= {MIN_MEMORY_ITEMS}, got {items!r}")
    counter = _Counter(1)
    max_size = items + 1  # N items stay buffered: none reaches the threshold
    problems: list[str] = []
    started = not tracemalloc.is_tracing()
    gc.collect()
    if started:
        tracemalloc.start()
    try:
        before = _traced()
        target: list[Any] = []
        append = target.append
        for _ in range(items):
            append(None)
        list_bytes = _traced() - before
        del target, append
        gc.collect()

        # From before the construction: the compiled core allocates its ring
        # (and a spare list to move a batch into) up front.
        before = _traced()
        buf = buffer_class(
            handle_flush=counter.handle_flush,
            name="bench-memory",
            partitions=1,
            max_size=max_size,
            flush_interval=3600.0,
            flush_jitter=0.0,
        )
        try:
            constructed = _traced() - before
            insert = buf.insert
            for _ in range(items):
                insert(None)
            traced_bytes = _traced() - before
            if buf.size() != items:
                problems.append(f"memory: {buf.size():,} items buffered, expected {items:,}")
        finally:
            buf.close()
    finally:
        if started:
            tracemalloc.stop()
    problems += _count_problem("memory", counter.total, items)
    ring = max_size * struct.calcsize("P")
    # The compiled core mallocs its ring; tracemalloc sees only its spare
    # list (as many pointers) and the fixed cost.  Should the ring be traced
    # one day, construction would show both: then nothing is added.
    untraced = ring if _is_compiled(buffer_class) and constructed < 2 * ring else 0
    return MemoryResult(items, traced_bytes, untraced, list_bytes, problems)


def _is_compiled(buffer_class: type) -> bool:
    return not issubclass(buffer_class, _core_py.BufferCore)


# -- 7. the pipeline: one partition, one producer, max_queued_batches ------

#: The pipeline figures' buffers: one partition of :data:`MAX_SIZE`, one producer.
PIPELINE_OPTIONS: dict[str, Any] = {**_OPTIONS, "partitions": 1}
#: The option compared: 0 (one sealed batch at a time, as before it existed) and the default.
QUEUED_OPTION = "max_queued_batches"


def _no_flush(batch: list[Any], opts: Any) -> None:
    pass


@dataclass(frozen=True)
class QueueConfig:
    """A ``max_queued_batches`` setting the pipeline figures run with.

    Attributes:
        label: ``"max_queued_batches=0"``, ``"default (max_queued_batches=N)"``,
            or ``"default"`` (the build has no such option, or its default
            could not be read).
        options: given to the buffers besides :data:`PIPELINE_OPTIONS`.
        depth: sealed batches a partition may hold waiting besides the one
            being flushed (0: one at a time); what the flusher figure queues
            behind the batch it holds.
    """

    label: str
    options: dict[str, Any]
    depth: int


def queue_configs(buffer_class: type = Buffer) -> tuple[list[QueueConfig], str]:
    """The settings to compare, and a sentence saying which (or why only the default).

    ``max_queued_batches`` is supported when ``buffer_class`` names it in its
    signature and takes ``0``; its default is read from ``info()`` when a
    buffer reports it, else from the signature.
    """
    try:
        param = inspect.signature(buffer_class).parameters.get(QUEUED_OPTION)
    except (TypeError, ValueError):
        param = None
    options = {**PIPELINE_OPTIONS, "name": "bench-probe"}
    if param is not None:
        try:
            buffer_class(handle_flush=_no_flush, **options, **{QUEUED_OPTION: 0}).close()
        except TypeError:
            param = None
    if param is None:
        note = f"{QUEUED_OPTION} not supported by this build: default only (one sealed batch at a time)"
        return [QueueConfig("default", {}, 0)], note
    probe = buffer_class(handle_flush=_no_flush, **options)
    try:
        info = probe.info()[0]
    finally:
        probe.close()
    default = info.get(QUEUED_OPTION, param.default)
    if type(default) is not int or default < 0:
        note = f"{QUEUED_OPTION}: 0 and the default (its value not readable from this build)"
        return [QueueConfig(f"{QUEUED_OPTION}=0", {QUEUED_OPTION: 0}, 0), QueueConfig("default", {}, 0)], note
    note = (
        f"{QUEUED_OPTION}: 0 (one sealed batch at a time, as before the option) and the default ({default})"
    )
    return [
        QueueConfig(f"{QUEUED_OPTION}=0", {QUEUED_OPTION: 0}, 0),
        QueueConfig(f"default ({QUEUED_OPTION}={default})", {}, default),
    ], note


class _BatchCounter:
    """A batch sink (a consumer's per-batch call, an exporter's ``export``) that counts."""

    def __init__(self) -> None:
        self.items = 0
        self.calls = 0

    def __call__(self, batch: list[Any], opts: Any = None) -> None:
        self.items += len(batch)
        self.calls += 1


class SimpleQueueBatcher:
    """The baseline pipeline: a ``queue.SimpleQueue`` and one consumer thread.

    The producer calls :attr:`put` per item; the consumer groups the items
    into lists of ``batch_size`` and calls ``handle_batch(batch)`` per list
    (the rest at the end); :meth:`close` returns once every item was handed
    over.
    """

    _END = object()

    def __init__(self, batch_size: int, handle_batch: Callable[[list[Any]], Any]) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.put = self._queue.put
        self._consumer = threading.Thread(
            target=self._consume, args=(batch_size, handle_batch), name="bench-simplequeue", daemon=True
        )
        self._consumer.start()

    def _consume(self, batch_size: int, handle_batch: Callable[[list[Any]], Any]) -> None:
        get, end = self._queue.get, self._END
        batch: list[Any] = []
        while (item := get()) is not end:
            batch.append(item)
            if len(batch) == batch_size:
                handle_batch(batch)
                batch = []
        if batch:
            handle_batch(batch)

    def close(self) -> None:
        """Queue the end marker and wait until the consumer has handed over every item."""
        if self._consumer.is_alive():
            self.put(self._END)
            self._consumer.join()


class OTelUnavailable(Exception):
    """The OpenTelemetry SDK is not importable: its baseline is skipped (the message says why)."""


@dataclass(frozen=True)
class OTelBaseline:
    """An OpenTelemetry SDK batch processor with a no-op exporter.

    Attributes:
        processor: the SDK object (``shutdown()``, ``force_flush()``).
        emit: its per-item call.
        item: what to pass to ``emit`` (a span for ``BatchSpanProcessor``).
        label: which class and call, for the report.
    """

    processor: Any
    emit: Callable[[Any], Any]
    item: Any
    label: str


def otel_processor(
    batch_size: int, queue_size: int, handle_batch: Callable[[list[Any]], Any], item: Any = _ITEM
) -> OTelBaseline:
    """The SDK's batch processor exporting batches of ``batch_size`` to ``handle_batch``.

    Recent SDKs (>= 1.34) have ``opentelemetry.sdk._shared_internal.BatchProcessor``
    (behind ``BatchSpanProcessor`` and ``BatchLogRecordProcessor``), whose
    ``emit`` takes any object; older ones get a ``BatchSpanProcessor`` fed
    one sampled span again and again (``on_end``).  ``max_queue_size`` is
    ``queue_size``: the callers make it large enough that nothing is
    dropped, and check the count.  The schedule delay is an hour: exports
    are triggered by the batch size, as the buffer's flushes are.

    Raises:
        OTelUnavailable: opentelemetry-sdk is not installed.
    """
    delay_ms = 3_600_000.0
    try:
        shared = importlib.import_module("opentelemetry.sdk._shared_internal")
    except ImportError:
        shared = None
    cls = getattr(shared, "BatchProcessor", None)
    if cls is not None:

        class Exporter:
            def export(self, batch: list[Any], /) -> None:
                handle_batch(batch)

            def shutdown(self, *args: Any, **kwargs: Any) -> None:
                pass

        kwargs: dict[str, Any] = {
            "exporter": Exporter(),
            "schedule_delay_millis": delay_ms,
            "max_export_batch_size": batch_size,
            "export_timeout_millis": 30_000,
            "max_queue_size": queue_size,
            "exporting": "Bench",
        }
        if "metrics" in inspect.signature(cls).parameters:  # SDK >= 1.40 or so
            metrics = importlib.import_module("opentelemetry.sdk._shared_internal._processor_metrics")
            kwargs["metrics"] = metrics.NoOpProcessorMetrics()
        processor = cls(**kwargs)
        return OTelBaseline(processor, processor.emit, item, "OTel BatchProcessor.emit")
    try:
        export = importlib.import_module("opentelemetry.sdk.trace.export")
        sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
        api_trace = importlib.import_module("opentelemetry.trace")
    except ImportError as exc:
        raise OTelUnavailable(
            f"opentelemetry-sdk is not importable ({exc}): pip install opentelemetry-sdk, "
            "or databuffer's bench extra"
        ) from None

    def export_spans(self: Any, spans: Any) -> Any:
        handle_batch(list(spans))
        return export.SpanExportResult.SUCCESS

    # An SDK SpanExporter whose export only hands the batch over (made with
    # type(): the SDK's classes are untyped here, imported by name).
    span_exporter = type("BenchSpanExporter", (export.SpanExporter,), {"export": export_spans})

    processor = export.BatchSpanProcessor(
        span_exporter(),
        max_queue_size=queue_size,
        schedule_delay_millis=delay_ms,
        max_export_batch_size=batch_size,
    )
    context = api_trace.SpanContext(
        trace_id=1, span_id=1, is_remote=False, trace_flags=api_trace.TraceFlags(api_trace.TraceFlags.SAMPLED)
    )
    span = sdk_trace.ReadableSpan(name="bench", context=context)
    label = "OTel BatchSpanProcessor.on_end (this SDK has no _shared_internal.BatchProcessor)"
    return OTelBaseline(processor, processor.on_end, span, label)


# End to end, one run each; every run returns its seconds and checks its count.


def _deque_extend_loop(items: int) -> float:
    d: collections.deque[Any] = collections.deque()
    extend = d.extend
    chunk = [_ITEM] * BLOCK
    full, rest = divmod(items, BLOCK)
    t0 = time.perf_counter()
    for _ in range(full):
        extend(chunk)
    if rest:
        extend(chunk[:rest])
    seconds = time.perf_counter() - t0
    d.clear()
    return seconds


def _simple_queue_run(items: int) -> tuple[float, int]:
    """N items through :class:`SimpleQueueBatcher` (started before the clock) until it handed all over."""
    counter = _BatchCounter()
    pipe = SimpleQueueBatcher(MAX_SIZE, counter)
    try:
        put = pipe.put
        item = _ITEM
        t0 = time.perf_counter()
        for _ in range(items):
            put(item)
        pipe.close()
        seconds = time.perf_counter() - t0
    finally:
        pipe.close()
    return seconds, counter.items


def _otel_run(items: int) -> tuple[float, int, str]:
    """N items emitted into the OTel processor until its ``shutdown()`` returned (everything exported)."""
    counter = _BatchCounter()
    otel = otel_processor(MAX_SIZE, items + 1, counter)
    try:
        emit = otel.emit
        item = otel.item
        t0 = time.perf_counter()
        for _ in range(items):
            emit(item)
        otel.processor.shutdown()
        seconds = time.perf_counter() - t0
    finally:
        otel.processor.shutdown()  # a no-op once shut down
    return seconds, counter.items, otel.label


def _pipeline_key(mode: str, config: QueueConfig) -> str:
    return f"{mode}, {config.label}"


@dataclass(frozen=True)
class PipelineEndToEnd:
    """The end-to-end runs of the pipeline figures.

    Attributes:
        items: N per run.
        seconds: run times by subject, in run order: ``"deque.append loop"``,
            ``"deque.extend loop"``, ``"SimpleQueue + consumer thread"``, the
            OTel label (absent when skipped), and ``"insert, <config>"`` /
            ``"insert_batch, <config>"`` per :class:`QueueConfig` label.
        otel: the OTel subject's label, or ``None`` when skipped.
        otel_skipped: why the OTel subject was skipped; ``""`` if it ran.
        problems: runs that did not hand over exactly N items.
    """

    items: int
    seconds: dict[str, list[float]]
    otel: str | None
    otel_skipped: str
    problems: list[str] = field(default_factory=list)

    def items_per_second(self, key: str) -> float:
        """N over the median run time of ``key``."""
        return self.items / statistics.median(self.seconds[key])


def bench_pipeline_end_to_end(
    items: int = DEFAULT_ITEMS,
    runs: int = DEFAULT_REPEAT,
    configs: Sequence[QueueConfig] | None = None,
    *,
    otel: bool = True,
    buffer_class: type = Buffer,
) -> PipelineEndToEnd:
    """N items from one producer through one partition of 1,000, until all were handed over; ``runs`` rounds.

    Each round runs every subject once, the order rotating from round to
    round, each from a fresh object built before the clock starts: a
    ``deque.append`` loop and a ``deque.extend`` loop of 1,000-item lists
    (storing only), :class:`SimpleQueueBatcher` until ``close()`` returned,
    the OTel processor (see :func:`otel_processor`) until ``shutdown()``
    returned, and per config a ``Buffer`` fed by ``insert`` and one fed by
    ``insert_batch`` of 1,000-item lists, until ``close()`` returned, into a
    ``handle_flush`` that counts.
    """
    if items < 1 or runs < 1:
        raise ValueError(f"items and runs must be >= 1, got {items!r} and {runs!r}")
    configs = queue_configs(buffer_class)[0] if configs is None else list(configs)
    problems: list[str] = []
    subjects: dict[str, Callable[[], float]] = {
        "deque.append loop": lambda: _deque_loop(items),
        "deque.extend loop": lambda: _deque_extend_loop(items),
    }

    def simple_queue() -> float:
        seconds, got = _simple_queue_run(items)
        problems.extend(_count_problem("pipeline, SimpleQueue + consumer thread", got, items))
        return seconds

    subjects["SimpleQueue + consumer thread"] = simple_queue
    otel_label: str | None = None
    otel_skipped = "not run"
    if otel:
        try:
            probe = otel_processor(MAX_SIZE, 1, _BatchCounter())
        except OTelUnavailable as exc:
            otel_skipped = str(exc)
        else:
            probe.processor.shutdown()  # it has a worker thread
            otel_label, otel_skipped = probe.label, ""

            def otel_subject() -> float:
                seconds, got, _ = _otel_run(items)
                if got != items:
                    problems.append(f"pipeline, {otel_label}: the exporter got {got:,} items of {items:,}")
                return seconds

            subjects[otel_label] = otel_subject
    for config in configs:
        options = {**PIPELINE_OPTIONS, **config.options}
        for mode in ("insert", "insert_batch"):
            key = _pipeline_key(mode, config)

            def buffer_subject(mode: str = mode, key: str = key, options: dict[str, Any] = options) -> float:
                seconds, counter = _buffer_run(mode, items, buffer_class, options)
                problems.extend(_count_problem(f"pipeline, {key}", counter.total, items))
                return seconds

            subjects[key] = buffer_subject
    seconds: dict[str, list[float]] = {key: [] for key in subjects}
    order = list(subjects)
    for r in range(runs):
        k = r % len(order)
        for key in (*order[k:], *order[:k]):
            gc.collect()
            seconds[key].append(subjects[key]())
    return PipelineEndToEnd(items, seconds, otel_label, otel_skipped, problems)


def bench_pipeline_amortized(
    rounds: int = DEFAULT_ROUNDS,
    configs: Sequence[QueueConfig] | None = None,
    *,
    blocks: int = CHUNK_BLOCKS,
    batch_blocks: int = BATCH_CHUNK_BLOCKS,
    buffer_class: type = Buffer,
) -> tuple[dict[str, Timing], list[str]]:
    """``insert`` and ``insert_batch(1,000)`` per item on one partition, per config, interleaved.

    The subjects of :func:`bench_insert` and :func:`bench_insert_batch`
    (``deque.append``; ``list.clear`` + ``list.extend``; buffers drained by
    ``sync_flush`` after each chunk, timed), all in the same rounds.
    Returns the timings by name (``"deque.append"``, ``"list.extend"``,
    ``"insert, <config>"``, ``"insert_batch, <config>"``) and the count
    problems.
    """
    configs = queue_configs(buffer_class)[0] if configs is None else list(configs)
    d: collections.deque[Any] = collections.deque()
    batch = [_ITEM] * BLOCK
    target: list[Any] = []
    clear, extend = target.clear, target.extend

    def extend_cleared(items: list[Any]) -> None:
        clear()
        extend(items)

    subjects = [
        _Subject("deque.append", d.append, _ITEM, BLOCK, 1, blocks=blocks, reset=d.clear),
        _Subject("list.extend", extend_cleared, batch, BATCH_CALLS, BLOCK, blocks=batch_blocks, reset=clear),
    ]
    counted: list[tuple[_Subject, _Counter]] = []
    buffers: list[Any] = []
    try:
        for config in configs:
            for mode, arg, calls, per_call, n in (
                ("insert", _ITEM, BLOCK, 1, blocks),
                ("insert_batch", batch, BATCH_CALLS, BLOCK, batch_blocks),
            ):
                counter = _Counter(1)
                buf = buffer_class(
                    handle_flush=counter.handle_flush,
                    name=f"bench-pipeline-{mode}",
                    **PIPELINE_OPTIONS,
                    **config.options,
                )
                buffers.append(buf)
                name = _pipeline_key(mode, config)
                subject = _Subject(
                    name, getattr(buf, mode), arg, calls, per_call, blocks=n, drain=buf.sync_flush
                )
                subjects.append(subject)
                counted.append((subject, counter))
        gc.collect()
        _interleave(subjects, rounds)
    finally:
        for buf in buffers:
            buf.close()
    problems: list[str] = []
    for subject, counter in counted:
        problems += _count_problem(f"pipeline, {subject.name} (amortized)", counter.total, subject.items)
    return {s.name: s.timing() for s in subjects}, problems


class _Stamps:
    """A batch sink that reads ``clock`` at the entry and the exit of each call.

    It runs in the thread that hands the batches over (a buffer's flusher,
    a consumer thread).  With ``time.thread_time`` (that thread's CPU time,
    user and system), the time from one call's exit to the next call's
    entry is what that thread spent on its own per-batch work, waits not
    counted.  :meth:`cycle` holds a first call at a gate until the producer
    has queued more batches behind it, then lets them all through and
    returns the gaps between their calls: batches were waiting for every
    one of them.
    """

    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self.clock = clock
        self.calls: list[tuple[float, float]] = []  # (entry, exit) per call
        self.items = 0
        self._hold = False
        self._target = 0
        self._entered = threading.Event()
        self._gate = threading.Event()
        self._done = threading.Event()

    def __call__(self, batch: list[Any], opts: Any = None) -> None:
        entry = self.clock()
        if self._hold:
            self._hold = False
            self._entered.set()
            self._gate.wait()
        self.items += len(batch)
        self.calls.append((entry, self.clock()))
        if len(self.calls) == self._target:
            self._done.set()

    def _arm(self, more: int) -> int:
        first = len(self.calls)
        self._target = first + 1 + more
        self._entered.clear()
        self._gate.clear()
        self._done.clear()
        self._hold = True
        return first

    def _gaps(self, first: int, more: int) -> list[float]:
        calls = self.calls
        return [calls[i + 1][0] - calls[i][1] for i in range(first, first + more)]

    def cycle(self, feed: Callable[[int], Any], more: int, timeout: float = 60.0) -> list[float]:
        """``feed(1)``, wait for its call, ``feed(more)``, open the gate; the ``more`` gaps.

        ``feed(n)`` hands over ``n`` batches; it must not block (no more
        than fit behind the held batch).
        """
        first = self._arm(more)
        try:
            feed(1)
            if not self._entered.wait(timeout):
                raise RuntimeError(f"no batch call within {timeout} s")
            feed(more)
        finally:
            self._gate.set()
        if not self._done.wait(timeout):
            raise RuntimeError(f"{plural(more, 'queued batch')} not handed over within {timeout} s")
        return self._gaps(first, more)


class _AsyncStamps(_Stamps):
    """:class:`_Stamps` as an ``async def`` ``handle_flush``, on one event loop, with wall time.

    While a :meth:`acycle` waits for the queued batches, the loop has
    nothing else to run than the buffer's flusher task.
    """

    def __init__(self) -> None:
        super().__init__(time.perf_counter)
        self._aentered = asyncio.Event()
        self._agate = asyncio.Event()
        self._adone = asyncio.Event()

    async def handle_flush(self, batch: list[Any], opts: Any) -> None:
        entry = self.clock()
        if self._hold:
            self._hold = False
            self._aentered.set()
            await self._agate.wait()
        self.items += len(batch)
        self.calls.append((entry, self.clock()))
        if len(self.calls) == self._target:
            self._adone.set()

    async def acycle(self, feed: Callable[[int], Any], more: int, timeout: float = 60.0) -> list[float]:
        first = self._arm(more)
        self._aentered.clear()
        self._agate.clear()
        self._adone.clear()
        try:
            feed(1)
            await asyncio.wait_for(self._aentered.wait(), timeout)
            feed(more)
        finally:
            self._agate.set()
        await asyncio.wait_for(self._adone.wait(), timeout)
        return self._gaps(first, more)


@dataclass(frozen=True)
class FlusherCost:
    """A flushing thread's (or task's) own work per batch, between two batch calls with batches waiting.

    Attributes:
        name: whose.
        clock: ``"thread CPU"`` (``time.thread_time`` of the flushing
            thread) or ``"wall"`` (``time.perf_counter``, on an event loop
            running nothing else).
        samples: gaps measured.
        median_us: their median, in microseconds.
        min_us: the smallest, in microseconds.
    """

    name: str
    clock: str
    samples: int
    median_us: float
    min_us: float


def _flusher_cost(name: str, clock: str, gaps: list[float]) -> FlusherCost:
    if not gaps:
        return FlusherCost(name, clock, 0, math.nan, math.nan)
    return FlusherCost(name, clock, len(gaps), statistics.median(gaps) * 1e6, min(gaps) * 1e6)


def stamp_overhead(calls: int = 1000) -> float:
    """Microseconds the stamping itself puts in a gap: :class:`_Stamps` called back to back (median)."""
    stamps = _Stamps()
    batch = [_ITEM]
    for _ in range(calls):
        stamps(batch)
    c = stamps.calls
    return statistics.median(c[i + 1][0] - c[i][1] for i in range(len(c) - 1)) * 1e6


def wake_round_trip(trips: int = 2000) -> float:
    """Microseconds of one thread wake-up round trip (median of ``trips``), timed one by one.

    A :class:`HandOff` trip: wake a sleeping thread and sleep until it wakes
    this one.  End to end, with one producer faster than its flusher, each
    time the partition's queue is full costs at least that: the producer
    sleeps (the flusher wakes and drains), then the flusher sleeps (the
    producer wakes).  The median, not the best block of the hand-off row in
    the insert table: what a typical wake-up costs on this machine.
    """
    hand_off = HandOff()
    perf = time.perf_counter
    times: list[float] = []
    try:
        for _ in range(trips):
            t0 = perf()
            hand_off.trip()
            times.append(perf() - t0)
    finally:
        hand_off.close()
    return statistics.median(times) * 1e6


def _run_aclose(runner: asyncio.Runner, buf: Any) -> None:
    runner.run(buf.aclose())


class _FlusherRun:
    """One subject of :func:`bench_flusher`: its sink, how to hand it a batch, and its gaps."""

    def __init__(
        self,
        name: str,
        stamps: _Stamps,
        hand_over: Callable[[], Any],
        more: int,
        runner: asyncio.Runner | None = None,
    ) -> None:
        self.name = name
        self.stamps = stamps
        self.hand_over = hand_over
        self.more = more
        self.runner = runner
        self.fed = 0  # items handed over
        self.gaps: list[float] = []

    def feed(self, n: int) -> None:
        for _ in range(n):
            self.hand_over()
            self.fed += BLOCK

    def cycle(self) -> None:
        if isinstance(self.stamps, _AsyncStamps):
            assert self.runner is not None
            self.gaps += self.runner.run(self.stamps.acycle(self.feed, self.more))
        else:
            self.gaps += self.stamps.cycle(self.feed, self.more)

    def cost(self) -> FlusherCost:
        clock = "wall" if isinstance(self.stamps, _AsyncStamps) else "thread CPU"
        return _flusher_cost(self.name, clock, self.gaps)


def bench_flusher(
    cycles: int = DEFAULT_ROUNDS,
    configs: Sequence[QueueConfig] | None = None,
    *,
    asynchronous: bool = True,
    buffer_class: type = Buffer,
    async_class: type = AsyncBuffer,
) -> tuple[dict[str, FlusherCost], list[str]]:
    """The flusher's own cost per batch, ``handle_flush`` excluded, per config; ``cycles`` interleaved cycles.

    A cycle (see :class:`_Stamps`): the producer hands over one batch of
    1,000 (``insert_batch``), whose ``handle_flush`` call waits at a gate
    until the producer has queued ``depth + 1`` more behind it (``depth``
    sealed batches and a full ring: all that fits), then the flusher takes
    them one after the other.  ``Buffer``: the flusher thread's CPU time
    from one call's exit to the next call's entry.  ``AsyncBuffer`` (same
    options, an ``async def`` sink): wall time between its calls, the loop
    running nothing else.  Baseline: :class:`SimpleQueueBatcher`'s consumer
    thread, CPU time between its per-batch calls (1,000 ``get`` and
    ``append`` per batch), with as many batches queued as the deepest
    config.  Every subject runs one cycle per round, the order rotating.

    Returns:
        The costs by name (``"SimpleQueue consumer thread"``,
        ``"Buffer, <config>"``, ``"AsyncBuffer, <config>"``) and the problems.
    """
    configs = queue_configs(buffer_class)[0] if configs is None else list(configs)
    chunk = [_ITEM] * BLOCK
    problems: list[str] = []
    subjects: list[_FlusherRun] = []
    closers: list[Callable[[], Any]] = []
    runner = asyncio.Runner() if asynchronous else None
    try:
        stamps = _Stamps()
        pipe = SimpleQueueBatcher(MAX_SIZE, stamps)
        closers.append(pipe.close)
        put = pipe.put

        def put_batch() -> None:
            for item in chunk:
                put(item)

        more = max(c.depth for c in configs) + 1
        subjects.append(_FlusherRun("SimpleQueue consumer thread", stamps, put_batch, more))
        for config in configs:
            stamps = _Stamps()
            options = {**PIPELINE_OPTIONS, **config.options, "insert_timeout": 10.0}
            buf = buffer_class(handle_flush=stamps, name="bench-flusher", **options)
            closers.append(buf.close)
            hand_over = functools.partial(buf.insert_batch, chunk)
            subjects.append(_FlusherRun(f"Buffer, {config.label}", stamps, hand_over, config.depth + 1))
        if runner is not None:
            for config in configs:
                astamps = _AsyncStamps()
                options = {**PIPELINE_OPTIONS, **config.options}
                abuf = async_class(handle_flush=astamps.handle_flush, name="bench-async-flusher", **options)
                runner.run(abuf.start())
                closers.append(functools.partial(_run_aclose, runner, abuf))
                hand_over = functools.partial(abuf.insert_batch, chunk)
                name = f"AsyncBuffer, {config.label}"
                subjects.append(_FlusherRun(name, astamps, hand_over, config.depth + 1, runner))
        failed: set[str] = set()
        gc.collect()
        for r in range(cycles):
            k = r % len(subjects)
            for subject in (*subjects[k:], *subjects[:k]):
                if subject.name in failed:
                    continue
                try:
                    subject.cycle()
                except (RuntimeError, TimeoutError) as exc:
                    failed.add(subject.name)
                    problems.append(f"pipeline, flusher per batch, {subject.name}: {exc!r}")
    finally:
        try:
            for close in reversed(closers):
                close()
        finally:
            if runner is not None:
                runner.close()
    for subject in subjects:
        what = f"pipeline, flusher per batch, {subject.name}"
        problems += _count_problem(what, subject.stamps.items, subject.fed)
    return {s.name: s.cost() for s in subjects}, problems


@dataclass(frozen=True)
class PipelineRow:
    """One line of the pipeline table: ``ratio`` is ``value / baseline_value``, in ``unit``.

    ``figure``, ``subject`` and ``baseline`` say it in full (the JSON's
    rows); ``group``, ``label`` and ``vs_label`` are the table's shorter
    texts for them (``[^key]`` marks a footnote, see :class:`_Notes`).
    """

    figure: str
    unit: str
    subject: str
    value: float
    baseline: str
    baseline_value: float
    group: str = ""
    label: str = ""
    vs_label: str = ""

    def to_json(self) -> dict[str, Any]:
        keys = ("figure", "unit", "subject", "value", "baseline", "baseline_value")
        return {**{key: getattr(self, key) for key in keys}, "ratio": self.ratio}

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value


@dataclass(frozen=True)
class PipelineResult:
    """Everything :func:`bench_pipeline` measured.

    Attributes:
        configs: the ``max_queued_batches`` settings compared.
        queue_note: which, or why only the default.
        end_to_end: see :func:`bench_pipeline_end_to_end`.
        amortized: see :func:`bench_pipeline_amortized`.
        flusher: see :func:`bench_flusher`.
        stamp_overhead_us: what stamping adds to each flusher gap (:func:`stamp_overhead`).
        wake_round_trip_us: one thread wake-up round trip (:func:`wake_round_trip`).
        rounds: interleaved rounds of the amortized figures.
        cycles: interleaved cycles of the flusher figures.
        problems: counts that were not exact.
    """

    configs: list[QueueConfig]
    queue_note: str
    end_to_end: PipelineEndToEnd
    amortized: dict[str, Timing]
    flusher: dict[str, FlusherCost]
    stamp_overhead_us: float
    wake_round_trip_us: float
    rounds: int
    cycles: int
    problems: list[str] = field(default_factory=list)

    def ceiling(self, config: QueueConfig) -> float:
        """End-to-end ``insert`` items/s that thread wake-ups alone allow with ``config``.

        With one producer faster than its flusher, the producer fills the
        partition (the batch being flushed, ``depth`` queued, the one it
        fills) and sleeps; the flusher drains and sleeps; so one wake-up
        round trip per ``depth + 2`` batches, measured as about that on this
        machine (twice as many of the producer thread's voluntary context
        switches).  The ceiling is a ``deque.append`` loop's rate with that
        added, as if ``insert`` cost no more than ``deque.append`` and the
        flusher nothing.
        """
        per_item = 1 / self.end_to_end.items_per_second("deque.append loop")
        per_item += self.wake_round_trip_us * 1e-6 / ((config.depth + 2) * MAX_SIZE)
        return 1 / per_item

    def rows(self) -> list[PipelineRow]:
        """Each config against each baseline, then the default against ``max_queued_batches=0``."""
        rows: list[PipelineRow] = []
        e2e = self.end_to_end
        configs = self.configs
        # The table's names: "Buffer, q=0" for "Buffer, max_queued_batches=0", and so on.
        short = {
            f"{kind}, {c.label}": f"{kind}, {_short_label(c)}"
            for kind in ("Buffer", "AsyncBuffer")
            for c in configs
        }
        if e2e.otel:
            short[e2e.otel] = _short_otel(e2e.otel)

        def row(
            figure: str,
            unit: str,
            subject: str,
            value: float,
            baseline: str,
            baseline_value: float,
            group: str,
            label: str = "",
        ) -> PipelineRow:
            return PipelineRow(
                figure,
                unit,
                subject,
                value,
                baseline,
                baseline_value,
                group=group,
                label=label or short.get(subject, subject),
                vs_label=short.get(baseline, baseline),
            )

        def add(
            figure: str,
            unit: str,
            values: dict[str, float],
            baselines: Sequence[str],
            kind: str,
            group: str,
        ) -> None:
            for config in configs:
                subject = f"{kind}, {config.label}"
                for baseline in baselines:
                    rows.append(
                        row(figure, unit, subject, values[subject], baseline, values[baseline], group)
                    )
            if len(configs) == 2:
                old, new = (f"{kind}, {c.label}" for c in configs)
                rows.append(row(figure, unit, new, values[new], old, values[old], group))

        rate = {key: e2e.items_per_second(key) for key in e2e.seconds}
        for mode, fig in (("insert", "insert"), ("insert_batch", f"insert_batch({BLOCK:,})")):
            values = {
                k.replace(f"{mode}, ", "Buffer, ", 1): v for k, v in rate.items() if k.startswith(f"{mode}, ")
            }
            values.update(rate)
            if mode == "insert":
                baselines = ["deque.append loop", "SimpleQueue + consumer thread"]
                baselines += [e2e.otel] if e2e.otel else []
            else:
                baselines = ["deque.extend loop", "deque.append loop"]
            add(f"end to end, {fig}, until close() returned", "items/s", values, baselines, "Buffer", fig)
            if mode == "insert":
                figure = (
                    f"end to end, insert: ceiling from thread wake-ups ({self.wake_round_trip_us:.0f} us "
                    "round trip per max_queued_batches+2 batches)"
                )
                group = "insert: ceiling from thread wake-ups [^ceiling]"
                for config in configs:
                    subject = f"Buffer, {config.label}"
                    ceiling = self.ceiling(config)
                    rows.append(
                        row(
                            figure,
                            "items/s",
                            f"{subject}, ceiling",
                            ceiling,
                            baselines[0],
                            values[baselines[0]],
                            group,
                            label=f"ceiling, {_short_label(config)}",
                        )
                    )
                    rows.append(
                        row(figure, "items/s", subject, values[subject], "its ceiling", ceiling, group)
                    )
        amortized = {name: t.amortized_ns for name, t in self.amortized.items()}
        for mode, fig, baseline in (
            ("insert", "insert", "deque.append"),
            ("insert_batch", f"insert_batch({BLOCK:,})", "list.extend"),
        ):
            values = {
                k.replace(f"{mode}, ", "Buffer, ", 1): v for k, v in amortized.items() if k.startswith(mode)
            }
            values[baseline] = amortized[baseline]
            add(f"{fig}: amortized", "ns/item", values, [baseline], "Buffer", fig)
        flusher = {name: cost.median_us for name, cost in self.flusher.items()}
        if "SimpleQueue consumer thread" in flusher:
            add(
                "flusher per batch, handle_flush excluded (thread CPU, median)",
                "us/batch",
                flusher,
                ["SimpleQueue consumer thread"],
                "Buffer",
                "Buffer, thread CPU",
            )
        if any(name.startswith("AsyncBuffer") for name in flusher):
            figure = "AsyncBuffer flusher per batch, handle_flush excluded (wall, median)"
            group = "AsyncBuffer, wall time"
            for config in configs:
                subject = f"AsyncBuffer, {config.label}"
                baseline = f"Buffer, {config.label}"
                rows.append(
                    PipelineRow(
                        figure,
                        "us/batch",
                        subject,
                        flusher[subject],
                        baseline + ", thread CPU",
                        flusher[baseline],
                        group=group,
                        label=short[subject],
                        vs_label=short[baseline] + ", thread CPU",
                    )
                )
            if len(configs) == 2:
                old, new = (f"AsyncBuffer, {c.label}" for c in configs)
                rows.append(row(figure, "us/batch", new, flusher[new], old, flusher[old], group))
        return rows

    def to_json(self) -> dict[str, Any]:
        e2e = self.end_to_end
        return {
            "settings": {
                "partitions": PIPELINE_OPTIONS["partitions"],
                "max_size": MAX_SIZE,
                "items": e2e.items,
                "runs": min(len(s) for s in e2e.seconds.values()),
                "rounds": self.rounds,
                "cycles": self.cycles,
            },
            "max_queued_batches": {
                "configs": [asdict(c) for c in self.configs],
                "note": self.queue_note,
            },
            "otel": e2e.otel,
            "otel_skipped": e2e.otel_skipped,
            "rows": [row.to_json() for row in self.rows()],
            "end_to_end_seconds": e2e.seconds,
            "end_to_end_items_per_second": {key: e2e.items_per_second(key) for key in e2e.seconds},
            "amortized": {name: asdict(t) for name, t in self.amortized.items()},
            "flusher": {name: asdict(c) for name, c in self.flusher.items()},
            "stamp_overhead_us": self.stamp_overhead_us,
            "wake_round_trip_us": self.wake_round_trip_us,
            "ceilings": {c.label: self.ceiling(c) for c in self.configs},
            "problems": self.problems,
        }


def bench_pipeline(
    items: int = DEFAULT_ITEMS,
    runs: int = DEFAULT_REPEAT,
    rounds: int = DEFAULT_ROUNDS,
    cycles: int = DEFAULT_ROUNDS,
    *,
    otel: bool = True,
    asynchronous: bool = True,
    say: Callable[[str], Any] | None = None,
) -> PipelineResult:
    """The pipeline figures for each ``max_queued_batches`` setting: end to end, amortized, flusher cost."""
    configs, note = queue_configs()
    if say is not None:
        say("pipeline (1 partition): end to end")
    e2e = bench_pipeline_end_to_end(items, runs, configs, otel=otel)
    if say is not None:
        say("pipeline (1 partition): insert and insert_batch amortized")
    amortized, problems = bench_pipeline_amortized(rounds, configs)
    if say is not None:
        say("pipeline (1 partition): flusher per batch")
    flusher, flusher_problems = bench_flusher(cycles, configs, asynchronous=asynchronous)
    return PipelineResult(
        configs,
        note,
        e2e,
        amortized,
        flusher,
        stamp_overhead(),
        wake_round_trip(),
        rounds,
        cycles,
        e2e.problems + problems + flusher_problems,
    )


# -- the report -----------------------------------------------------------


def environment() -> dict[str, Any]:
    """Where the figures were measured: Python, platform, core, GIL."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return {
        "databuffer": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "using_extension": USING_EXTENSION,
        # Before Python 3.13 there is no free-threaded build: the GIL is on.
        "gil_enabled": bool(is_gil_enabled()) if is_gil_enabled is not None else True,
        "telemetry_handlers": len(telemetry.list_handlers()),
    }


@dataclass(frozen=True)
class Row:
    """One line of the table: ``ratio`` is ``databuffer / baseline``, in ``unit``.

    ``figure``, ``versus`` and ``note`` say it in full (the JSON's rows);
    ``group``, ``label``, ``vs_label`` and ``extra`` are the table's shorter
    texts and extra cells (``[^key]`` marks a footnote, see :class:`_Notes`).
    """

    figure: str
    unit: str
    databuffer: float
    baseline: float
    versus: str
    note: str = ""
    group: str = ""
    label: str = ""
    vs_label: str = ""
    extra: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        return self.databuffer / self.baseline

    def to_json(self) -> dict[str, Any]:
        keys = ("figure", "unit", "databuffer", "baseline", "versus", "note")
        return {**{key: getattr(self, key) for key in keys}, "ratio": self.ratio}


@dataclass(frozen=True)
class BenchReport:
    """Everything one run measured."""

    env: dict[str, Any]
    settings: dict[str, Any]
    insert: InsertResult | None = None
    insert_batch: BatchResult | None = None
    end_to_end: list[EndToEndResult] = field(default_factory=list)
    memory: MemoryResult | None = None
    seconds: float = 0.0
    async_end_to_end: list[AsyncEndToEndResult] = field(default_factory=list)
    pipeline: PipelineResult | None = None

    @property
    def problems(self) -> list[str]:
        found: list[str] = []
        for result in (
            self.insert,
            self.insert_batch,
            *self.end_to_end,
            *self.async_end_to_end,
            self.pipeline,
            self.memory,
        ):
            if result is not None:
                found += result.problems
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def rows(self) -> list[Row]:
        rows: list[Row] = []
        ns = "ns/item"
        if self.insert is not None:
            r = self.insert
            b, d = r.buffer, r.deque
            call, amortized = "insert: call (best block)", "insert: amortized"
            rows.append(Row(call, ns, b.call_ns, d.call_ns, "deque.append", label="insert, call [^call]"))
            rows.append(
                Row(
                    amortized,
                    ns,
                    b.amortized_ns,
                    d.amortized_ns,
                    "deque.append",
                    label="insert, amortized [^call]",
                )
            )
            if r.handoff is not None:
                note = "deque.append; with the GIL, insert amortized >= insert call + this"
                fig = f"thread hand-off per {MAX_SIZE:,}-item batch"
                label = "thread hand-off per batch [^handoff]"
                rows.append(
                    Row(fig, ns, r.handoff.call_ns, d.call_ns, note, label=label, vs_label="deque.append")
                )
            if r.keyed is not None:
                fig = f"insert(item, key={KEY!r}): call (best block)"
                label = f"insert(x, key={KEY!r}), call"
                rows.append(
                    Row(
                        fig,
                        ns,
                        r.keyed.call_ns,
                        b.call_ns,
                        "insert(item), same rounds",
                        label=label,
                        vs_label="insert(x), same rounds",
                    )
                )
            if r.pure is not None:
                p = r.pure
                vs, vs_label = "same, pure-Python core", "insert, pure-Python core"
                rows.append(Row(call, ns, b.call_ns, p.call_ns, vs, label="insert, call", vs_label=vs_label))
                rows.append(
                    Row(
                        amortized,
                        ns,
                        b.amortized_ns,
                        p.amortized_ns,
                        vs,
                        label="insert, amortized",
                        vs_label=vs_label,
                    )
                )
            if r.async_buffer is not None:
                a = r.async_buffer
                call, amortized = "AsyncBuffer.insert: call (best block)", "AsyncBuffer.insert: amortized"
                labels = ("AsyncBuffer.insert, call", "AsyncBuffer.insert, amortized")
                versus = [("deque.append", d, "deque.append"), ("Buffer.insert, same rounds", b, "")]
                if r.async_control is not None:
                    vs = "Buffer.insert timed the same way (coroutine, yield per block)"
                    versus.append((vs, r.async_control, "Buffer.insert in a coroutine [^async]"))
                for n, (vs, base, vs_label) in enumerate(versus):
                    mark = " [^async]" if n == 0 else ""
                    rows.append(
                        Row(call, ns, a.call_ns, base.call_ns, vs, label=labels[0] + mark, vs_label=vs_label)
                    )
                    rows.append(
                        Row(
                            amortized,
                            ns,
                            a.amortized_ns,
                            base.amortized_ns,
                            vs,
                            label=labels[1],
                            vs_label=vs_label,
                        )
                    )
        if self.insert_batch is not None:
            b, e = self.insert_batch.buffer, self.insert_batch.extend
            vs = "list.clear + list.extend"
            fig = f"insert_batch({BLOCK:,})"
            rows.append(Row(f"{fig}: call (best block)", ns, b.call_ns, e.call_ns, vs, label=f"{fig}, call"))
            rows.append(
                Row(f"{fig}: amortized", ns, b.amortized_ns, e.amortized_ns, vs, label=f"{fig}, amortized")
            )
        for e2e in self.end_to_end:
            fig = f"end to end, {e2e.mode}" + (f"({BLOCK:,})" if e2e.mode == "insert_batch" else "")
            note = f"{e2e.flushes:,} flushes, {e2e.flushes_per_second:,.0f}/s"
            rows.append(
                Row(
                    fig,
                    "items/s",
                    e2e.items_per_second,
                    e2e.baseline_items_per_second,
                    "deque.append loop",
                    note,
                    group=f"Buffer, partitions={PARTITIONS}, max_size={MAX_SIZE:,}",
                    label=e2e.mode,
                    extra=(f"{e2e.flushes:,}", f"{e2e.flushes_per_second:,.0f}"),
                )
            )
        for a2e in self.async_end_to_end:
            fig = _async_figure(a2e)
            if a2e.loop != "asyncio":
                fig += f", {a2e.loop}"
            note = f"{a2e.flushes:,} flushes, {a2e.flushes_per_second:,.0f}/s"
            rows.append(
                Row(
                    fig,
                    "items/s",
                    a2e.items_per_second,
                    a2e.buffer_items_per_second,
                    "Buffer, same options and N",
                    note,
                    group=f"AsyncBuffer, partitions={a2e.partitions}, max_size={a2e.max_size:,} [^async-e2e]",
                    label=a2e.mode + ("" if a2e.loop == "asyncio" else f", {a2e.loop}"),
                    vs_label="Buffer, same options",
                    extra=(f"{a2e.flushes:,}", f"{a2e.flushes_per_second:,.0f}"),
                )
            )
        if self.memory is not None:
            m = self.memory
            diff = m.bytes_per_item - m.list_bytes_per_item
            note = f"{diff:+.2f} B/item"
            label = f"{m.items:,} buffered Nones"
            if m.untraced_ring_bytes:
                note += f"; incl. {_size(m.untraced_ring_bytes)} ring not seen by tracemalloc"
                label += " [^ring]"
            rows.append(
                Row(
                    f"memory, {m.items:,} buffered Nones",
                    "bytes/item",
                    m.bytes_per_item,
                    m.list_bytes_per_item,
                    "list.append",
                    note,
                    label=label,
                    vs_label=f"list.append ({diff:+.2f})",
                )
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """The figures of the plain-words summary that heads the table, and its lines (``"text"``).

        A figure not measured in this run is ``None``.
        """
        return _summary(self)

    def to_json(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if self.insert is not None:
            results["insert"] = asdict(self.insert)
        if self.insert_batch is not None:
            results["insert_batch"] = asdict(self.insert_batch)
        results["end_to_end"] = [
            {
                **asdict(r),
                "items_per_second": r.items_per_second,
                "flushes_per_second": r.flushes_per_second,
                "baseline_items_per_second": r.baseline_items_per_second,
            }
            for r in self.end_to_end
        ]
        results["async_end_to_end"] = [
            {
                **asdict(r),
                "items_per_second": r.items_per_second,
                "flushes_per_second": r.flushes_per_second,
                "buffer_items_per_second": r.buffer_items_per_second,
            }
            for r in self.async_end_to_end
        ]
        if self.memory is not None:
            m = self.memory
            results["memory"] = {
                **asdict(m),
                "bytes_per_item": m.bytes_per_item,
                "list_bytes_per_item": m.list_bytes_per_item,
            }
        document: dict[str, Any] = _finite(
            {
                "summary": self.summary(),
                "environment": self.env,
                "settings": self.settings,
                "rows": [row.to_json() for row in self.rows()],
                "results": results,
                "pipeline": self.pipeline.to_json() if self.pipeline is not None else None,
                "ok": self.ok,
                "problems": self.problems,
                "seconds": self.seconds,
            }
        )
        return document


def _async_figure(result: AsyncEndToEndResult) -> str:
    """``AsyncBuffer end to end PxM, insert/ainsert``: partitions x max_size, and how it inserts."""
    how = "insert/ainsert" if result.mode == "insert" else f"insert_batch({BLOCK:,})/ainsert_batch"
    return f"AsyncBuffer end to end {result.partitions}x{result.max_size:,}, {how}"


def _finite(value: Any) -> Any:
    """``value`` with infinities and NaNs as ``None``: strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- the summary ----------------------------------------------------------


def _default_config(result: PipelineResult) -> QueueConfig:
    """The buffer's default setting: the last one compared."""
    return result.configs[-1]


def _summary(report: BenchReport) -> dict[str, Any]:
    """See :meth:`BenchReport.summary`: the figures first, then the lines saying them in plain words."""
    env = report.env
    figures: dict[str, Any] = dict.fromkeys(
        (
            "insert_call_ns",
            "insert_call_vs_deque_append",
            "insert_amortized_ns",
            "insert_amortized_vs_deque_append",
            "end_to_end_setup",
            "end_to_end_insert_items_per_second",
            "end_to_end_insert_vs_deque_append_loop",
            "end_to_end_insert_vs_simple_queue",
            "end_to_end_insert_vs_otel",
            "otel",
            "end_to_end_insert_batch_items_per_second",
            "end_to_end_insert_batch_vs_deque_extend_loop",
            "flusher_us_per_batch",
            "flusher_vs_simple_queue",
            "pure_python_insert_call_ns",
            "pure_python_insert_call_vs_compiled",
            "pure_python_insert_amortized_vs_compiled",
        )
    )
    core = "compiled" if env["using_extension"] else "pure-Python"
    gil = "GIL enabled" if env["gil_enabled"] else "GIL disabled"
    text = [
        f"databuffer {env['databuffer']} bench, in short "
        f"({env['implementation']} {env['python']}, {core} core, {gil}):"
    ]

    def say(line: str) -> None:
        text.extend(_wrap("- " + line, "", "  "))

    if report.insert is not None:
        b, d = report.insert.buffer, report.insert.deque
        figures.update(
            insert_call_ns=b.call_ns,
            insert_call_vs_deque_append=b.call_ns / d.call_ns,
            insert_amortized_ns=b.amortized_ns,
            insert_amortized_vs_deque_append=b.amortized_ns / d.amortized_ns,
        )
        say(
            f"insert costs {_times(b.call_ns / d.call_ns)} a deque.append ({_sig(b.call_ns)} ns a call), "
            f"{_times(b.amortized_ns / d.amortized_ns)} with its share of the flushing"
        )
    pipeline = report.pipeline
    if pipeline is not None:
        e2e = pipeline.end_to_end
        config = _default_config(pipeline)
        rate = e2e.items_per_second(_pipeline_key("insert", config))
        batch_rate = e2e.items_per_second(_pipeline_key("insert_batch", config))
        figures.update(
            end_to_end_setup=f"pipeline: one producer, partitions=1, max_size={MAX_SIZE:,}, {config.label}",
            end_to_end_insert_items_per_second=rate,
            end_to_end_insert_vs_deque_append_loop=rate / e2e.items_per_second("deque.append loop"),
            end_to_end_insert_vs_simple_queue=rate / e2e.items_per_second("SimpleQueue + consumer thread"),
            end_to_end_insert_batch_items_per_second=batch_rate,
            end_to_end_insert_batch_vs_deque_extend_loop=batch_rate
            / e2e.items_per_second("deque.extend loop"),
        )
        if e2e.otel:
            otel = _short_otel(e2e.otel).split(".")[0].replace("OTel ", "OpenTelemetry's ", 1)
            figures.update(otel=e2e.otel, end_to_end_insert_vs_otel=rate / e2e.items_per_second(e2e.otel))
            versus_otel = f", {_times(figures['end_to_end_insert_vs_otel'])} {otel}"
        else:
            versus_otel = " (OpenTelemetry's processor: not measured, see the pipeline's notes)"
        say(
            f"end to end by insert, one producer: {_sig(rate / 1e6)} M items/s, "
            f"{_times(figures['end_to_end_insert_vs_simple_queue'])} as fast as a SimpleQueue + "
            f"consumer thread" + versus_otel
        )
        say(
            f"end to end by insert_batch({BLOCK:,}): {_sig(batch_rate / 1e6)} M items/s, "
            f"{_times(figures['end_to_end_insert_batch_vs_deque_extend_loop'])} as fast as a bare "
            "deque.extend loop"
        )
        flusher = pipeline.flusher
        mine, theirs = flusher.get(f"Buffer, {config.label}"), flusher.get("SimpleQueue consumer thread")
        if mine is not None and theirs is not None:
            figures.update(
                flusher_us_per_batch=mine.median_us, flusher_vs_simple_queue=mine.median_us / theirs.median_us
            )
            say(
                f"the flusher's own work: {_sig(mine.median_us)} us a batch of {MAX_SIZE:,}, "
                f"{_times(mine.median_us / theirs.median_us)} a SimpleQueue consumer thread's "
                f"({_sig(theirs.median_us)} us)"
            )
    elif (e := next((e for e in report.end_to_end if e.mode == "insert"), None)) is not None:
        # No pipeline figures: the first table's (4 partitions), against a deque.append loop only.
        figures.update(
            end_to_end_setup=f"partitions={PARTITIONS}, max_size={MAX_SIZE:,}",
            end_to_end_insert_items_per_second=e.items_per_second,
            end_to_end_insert_vs_deque_append_loop=e.items_per_second / e.baseline_items_per_second,
        )
        say(
            f"end to end by insert: {_sig(e.items_per_second / 1e6)} M items/s, "
            f"{_times(e.items_per_second / e.baseline_items_per_second)} as fast as a bare deque.append loop"
        )
    if report.insert is not None and report.insert.pure is not None:
        b, p = report.insert.buffer, report.insert.pure
        figures.update(
            pure_python_insert_call_ns=p.call_ns,
            pure_python_insert_call_vs_compiled=p.call_ns / b.call_ns,
            pure_python_insert_amortized_vs_compiled=p.amortized_ns / b.amortized_ns,
        )
        say(
            f"the pure-Python core: its insert costs {_times(p.call_ns / b.call_ns)} "
            f"the compiled core's ({_sig(p.call_ns)} ns a call)"
        )
    elif not env["using_extension"]:
        say("this run used the pure-Python core (the compiled extension is not in use)")
    say("ratios compare with baselines timed in this run: above 1x costs more, or is faster in items/s")
    figures["text"] = text
    return figures


def _sig(value: float) -> str:
    """Three significant digits, or the units of a large number: for the summary."""
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _times(ratio: float) -> str:
    """A ratio in two significant digits (``1.3x``, ``0.038x``, ``20x``): for the summary."""
    if not math.isfinite(ratio):
        return "n/a"
    if ratio >= 10:
        return f"{ratio:,.0f}x"
    return f"{ratio:.2g}x"


# -- the tables -----------------------------------------------------------

#: Columns the report fits in: every line of ``format_table``'s output.
WIDTH = 100


def _wrap(text: str, first: str = "", rest: str = "  ", width: int = WIDTH) -> list[str]:
    """``text`` in lines of at most ``width`` columns (a word longer than that stands alone)."""
    return textwrap.wrap(
        text,
        width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [first.rstrip()]


class _Notes:
    """Numbered footnotes: ``[^key]`` in a table's text becomes ``[n]``, numbered in order of first use.

    ``texts`` maps each key to its note: a string, or a list of paragraphs
    (one starting with spaces is indented that much more).  :meth:`flush`
    gives the notes numbered since the last call, for under a table.
    """

    _MARK = re.compile(r"\[\^([\w-]+)\]")

    def __init__(self, texts: dict[str, str | list[str]]) -> None:
        self.texts = texts
        self.numbers: dict[str, int] = {}
        self.pending: list[str] = []

    def mark(self, text: str) -> str:
        def number(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in self.numbers:
                self.numbers[key] = len(self.numbers) + 1
                self.pending.append(key)
            return f"[{self.numbers[key]}]"

        return self._MARK.sub(number, text)

    def flush(self) -> list[str]:
        lines: list[str] = []
        for key in self.pending:
            prefix = f"[{self.numbers[key]}] "
            pad = " " * len(prefix)
            text = self.texts[key]
            for n, paragraph in enumerate([text] if isinstance(text, str) else text):
                extra = " " * (len(paragraph) - len(paragraph.lstrip()))
                first = prefix if n == 0 else pad + extra
                lines += _wrap(paragraph.strip(), first, pad + extra)
        self.pending.clear()
        return lines


def _block(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """A fixed-width table: ``header``, a rule, ``rows``; a row of one cell is a group heading, as it is.

    ``align`` has a ``<`` or ``>`` per column.
    """
    widths = [max(len(row[i]) for row in (header, *rows) if len(row) > 1) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths, strict=True)).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [row[0] if len(row) == 1 else line(row) for row in rows]
    return lines


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    raise AssertionError("unreachable")


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.1f}"
    return f"{value:.2f}"


def _value(value: float, unit: str) -> str:
    """A table cell: items/s in millions (the column header says ``M items/s``)."""
    return _number(value / 1e6 if unit == "items/s" else value)


def _short_label(config: QueueConfig) -> str:
    """The table's name of a setting: ``q=0``, ``q=4 (default)``, or ``default``."""
    if QUEUED_OPTION in config.options:
        return f"q={config.options[QUEUED_OPTION]}"
    if config.label.startswith("default ("):
        return f"q={config.depth} (default)"
    return "default"


def _short_otel(label: str) -> str:
    """``OTel BatchProcessor.emit``: the OTel subject's label without its parenthesis."""
    return label.split(" (", 1)[0]


def _table(
    rows: Sequence[Row | PipelineRow],
    sections: Sequence[tuple[str, str, tuple[str, ...]]],
    notes: _Notes,
    subject: str = "value",
) -> list[str]:
    """One block per section ``(unit, title, extra headers)``: its rows, under their group headings.

    ``subject`` heads the column of the rows' own values (the baseline's is ``baseline``).
    """
    lines: list[str] = []
    for unit, title, extra in sections:
        mine = [row for row in rows if row.unit == unit]
        if not mine:
            continue
        header = (notes.mark(title), subject, "baseline", "ratio", "baseline is", *extra)
        cells: list[tuple[str, ...]] = []
        group = ""
        for row in mine:
            if row.group != group:
                group = row.group
                if group:
                    cells.append((notes.mark(group),))
            if isinstance(row, Row):
                value, baseline = row.databuffer, row.baseline
                label, vs = row.label or row.figure, row.vs_label or row.versus
                more = row.extra
            else:
                value, baseline = row.value, row.baseline_value
                label, vs = row.label or row.subject, row.vs_label or row.baseline
                more = ()
            cells.append(
                (
                    ("  " if group else "") + notes.mark(label),
                    _value(value, unit),
                    _value(baseline, unit),
                    f"{row.ratio:.2f}x",
                    notes.mark(vs),
                    *more,
                )
            )
        lines += ["", *_block(header, cells, "<>>><" + ">" * len(extra))]
    return lines


def _main_notes(report: BenchReport) -> dict[str, str | list[str]]:
    repeat = report.settings.get("repeat", DEFAULT_REPEAT)
    ring = report.memory.untraced_ring_bytes if report.memory is not None else 0
    return {
        "call": (
            f"call: the fastest block of {BLOCK:,} calls; amortized: all the time, waiting for the "
            "buffer's flushes included, over all calls"
        ),
        "handoff": (
            "thread hand-off: one round trip between two threads through two locks, per item of a "
            f"{MAX_SIZE:,}-item batch; with the GIL, insert amortized >= insert call + this"
        ),
        "async": [
            "AsyncBuffer.insert: the same blocks, run by a coroutine on the buffer's loop, which yields "
            "to it once after each block (the flusher tasks run then: counted in amortized, not in call)",
            "Buffer.insert in a coroutine: a second Buffer timed the same way, as a control",
        ],
        "e2e": (
            f"end to end: N items until every batch was flushed, best of {plural(repeat, 'run')}; "
            f"insert_batch in lists of {BLOCK:,}; deque.append loop: the same N appended, nothing "
            "flushed; flushes: handle_flush calls in the best run, and per second"
        ),
        "async-e2e": [
            "AsyncBuffer: N items from a coroutine, into an async def handle_flush that counts, until "
            "aclose() returned;",
            "  insert: `try: buf.insert(x)` `except BufferFull: await buf.ainsert(x)`;",
            "  insert_batch: `try: buf.insert_batch(chunk)`",
            "    `except BufferFull as exc: await buf.ainsert_batch(chunk[exc.stored:])`;",
            "baseline: a Buffer of the same options, N inserted by the same call, until close() "
            "returned, runs alternating",
        ],
        "ring": (
            f"includes the compiled core's {_size(ring)} ring, allocated where tracemalloc does not see it"
        ),
    }


def _main_lines(report: BenchReport, notes: _Notes) -> list[str]:
    """The first table (insert, insert_batch, end to end, memory) and its notes."""
    rows = report.rows()
    sections = (
        ("ns/item", "cost per item, ns", ()),
        ("items/s", "end to end, M items/s [^e2e]", ("flushes", "flushes/s")),
        ("bytes/item", "memory, bytes/item", ()),
    )
    lines = _table(rows, sections, notes, "databuffer")
    lines.append("")
    if report.insert is not None and report.insert.pure is None:
        lines.append("insert vs the pure-Python core: skipped, the default core is the pure-Python one")
    lines += _wrap(
        "ratio = databuffer / baseline: above 1x costs more in ns/item and bytes/item, is faster in items/s"
    )
    return lines + notes.flush()


def _pipeline_notes(result: PipelineResult) -> dict[str, str | list[str]]:
    e2e = result.end_to_end
    runs = min(len(s) for s in e2e.seconds.values())
    if e2e.otel:
        otel = (
            f"{e2e.otel}: max_export_batch_size={MAX_SIZE:,}, a queue of N+1 (nothing dropped: the "
            "exporter counted N), an exporter that counts, until shutdown() returned"
        )
    else:
        otel = f"OTel baseline: skipped, {e2e.otel_skipped}"
    flusher = [
        "flusher per batch, handle_flush excluded: one batch's handle_flush held until all that fits is "
        "queued behind it, then the time from each call's exit to the next call's entry, median (Buffer, "
        "SimpleQueue consumer: that thread's CPU, time.thread_time; AsyncBuffer: wall time, the loop "
        f"running nothing else); stamping adds {result.stamp_overhead_us:.2f} us to each",
    ]
    if len(result.configs) == 2:
        flusher.append(
            "with max_queued_batches=0 the waiting batch is still in the ring and the flusher copies it "
            "out; a queued one was copied out (sealed) by the producer's insert"
        )
    return {
        "p-e2e": [
            "end to end: from the first insert until close() returned (Buffer: every batch flushed), "
            f"median of {plural(runs, 'run')}; deque loops store only",
            f"SimpleQueue + consumer thread: SimpleQueue.put per item, one consumer thread grouping the "
            f"items into lists of {MAX_SIZE:,} and calling a no-op that counts per list, until it handed "
            "over the last item (SimpleQueueBatcher)",
            otel,
        ],
        "ceiling": (
            "ceiling: a deque.append loop plus one thread wake-up round trip "
            f"({result.wake_round_trip_us:.0f} us, median, two threads passing two locks) per "
            "max_queued_batches+2 batches: the producer fills the partition and sleeps, the flusher drains "
            "it and sleeps; no insert or flusher cost counted; a longer queue raises it"
        ),
        "p-amortized": (
            "amortized: blocks of calls, then sync_flush(), all timed, over all items; "
            "list.extend: list.clear + list.extend"
        ),
        "flusher": flusher,
    }


def _pipeline_lines(result: PipelineResult, notes: _Notes) -> list[str]:
    """The pipeline table: one block per unit, a group per figure, each row a subject against a baseline."""
    e2e = result.end_to_end
    runs = min(len(s) for s in e2e.seconds.values())
    q = "; in the tables, q is max_queued_batches" if QUEUED_OPTION in result.configs[0].options else ""
    lines = [""]
    lines += _wrap(
        f"pipeline: one producer thread, partitions=1, max_size={MAX_SIZE:,}, a handle_flush that counts; "
        f"{result.queue_note}{q}"
    )
    lines += _wrap(
        f"end to end: N={e2e.items:,}, {plural(runs, 'run')} of each, interleaved (order rotating), "
        f"median run; amortized: {plural(result.rounds, 'interleaved round')}; "
        f"flusher: {plural(result.cycles, 'interleaved cycle')}, median gap",
        "  ",
        "  ",
    )
    sections = (
        ("items/s", "end to end, M items/s [^p-e2e]", ()),
        ("ns/item", "amortized, ns/item [^p-amortized]", ()),
        ("us/batch", "flusher per batch, us [^flusher]", ()),
    )
    lines += _table(result.rows(), sections, notes)
    lines.append("")
    lines += _wrap(
        "ratio = value / baseline: above 1x is faster in items/s, and costs more in ns/item and us/batch"
    )
    return lines + notes.flush()


def format_table(report: BenchReport) -> str:
    """The report: a summary in plain words, the tables and their numbered notes, the check."""
    env = report.env
    texts = _main_notes(report)
    if report.pipeline is not None:
        texts.update(_pipeline_notes(report.pipeline))
    notes = _Notes(texts)
    lines = list(report.summary()["text"])
    lines.append("")
    core = "compiled (Cython)" if env["using_extension"] else "pure-Python"
    lines += _wrap(
        f"run: {env['implementation']} {env['python']} on {env['platform']}; {core} core "
        f"(USING_EXTENSION={env['using_extension']}); GIL {'enabled' if env['gil_enabled'] else 'disabled'}"
    )
    s = report.settings
    lines += _wrap(
        f"settings: {plural(s['rounds'], 'round')} of {CHUNK_BLOCKS} blocks x {BLOCK:,} calls; end to end: "
        f"N={s['items']:,}, best of {s['repeat']}; memory: N={s['memory_items']:,}; "
        f"Buffer: partitions={PARTITIONS}, max_size={MAX_SIZE:,}"
    )
    for c in s.get("async_end_to_end", []):
        lines += _wrap(
            f"AsyncBuffer end to end: partitions={c['partitions']}, max_size={c['max_size']:,}, "
            f"loops: {', '.join(c['loops'])}",
            "  ",
            "    ",
        )
    if env["telemetry_handlers"]:
        lines.append(f"warning: {env['telemetry_handlers']} telemetry handler(s) attached")
    lines += _main_lines(report, notes)
    if report.pipeline is not None:
        lines += _pipeline_lines(report.pipeline, notes)
    lines.append("")
    lines.append("check: " + ("OK, every item flushed exactly once" if report.ok else "FAILED"))
    lines.append(f"time: {report.seconds:.1f} s")
    return "\n".join(lines)


def run(
    *,
    rounds: int = DEFAULT_ROUNDS,
    items: int = DEFAULT_ITEMS,
    repeat: int = DEFAULT_REPEAT,
    memory_items: int = DEFAULT_MEMORY_ITEMS,
    progress: TextIO | None = None,
) -> BenchReport:
    """Run every figure and return the report.

    Args:
        rounds: interleaved rounds of the ``insert`` (``Buffer`` and
            ``AsyncBuffer``) and ``insert_batch`` figures.
        items: N of the end-to-end figures (``Buffer`` and ``AsyncBuffer``).
        repeat: runs of each end-to-end figure; the fastest counts.
        memory_items: N of the memory figure.
        progress: where to say which phase starts and how long the previous
            one took, and at the end the total; ``None`` says nothing.
    """
    start = time.perf_counter()
    last: float | None = None  # when the phase running started

    def say(what: str) -> None:
        nonlocal last
        now = time.perf_counter()
        if progress is not None:
            took = "" if last is None else f" (previous phase: {now - last:.1f} s)"
            print(f"databuffer bench: {what}{took}", file=progress, flush=True)
        last = now

    # AsyncBuffer's defaults on every loop; the Buffer end-to-end options on asyncio's.
    async_configs = [
        (ASYNC_PARTITIONS, ASYNC_MAX_SIZE, available_loops()),
        (PARTITIONS, MAX_SIZE, ["asyncio"]),
    ]
    settings: dict[str, Any] = {
        "rounds": rounds,
        "items": items,
        "repeat": repeat,
        "memory_items": memory_items,
        "async_end_to_end": [{"partitions": p, "max_size": m, "loops": lp} for p, m, lp in async_configs],
    }
    say("insert (Buffer and AsyncBuffer)")
    insert = bench_insert(rounds)
    say("insert_batch")
    batch = bench_insert_batch(rounds)
    end_to_end = []
    for mode in ("insert_batch", "insert"):
        say(f"end to end, {mode}")
        end_to_end.append(bench_end_to_end(mode, items, repeat))
    async_end_to_end: list[AsyncEndToEndResult] = []
    for p, m, loops in async_configs:
        for mode in ("insert_batch", "insert"):
            say(f"AsyncBuffer end to end {p}x{m:,}, {mode}")  # its loops: in the settings
            async_end_to_end += bench_async_end_to_end(
                mode, items, repeat, loops=loops, partitions=p, max_size=m
            )
    pipeline = bench_pipeline(items, repeat, rounds, rounds, say=say)
    say("memory")
    memory = bench_memory(memory_items)
    seconds = time.perf_counter() - start
    say(f"done, {seconds:.1f} s in all")
    return BenchReport(
        env=environment(),
        settings=settings,
        insert=insert,
        insert_batch=batch,
        end_to_end=end_to_end,
        memory=memory,
        seconds=seconds,
        async_end_to_end=async_end_to_end,
        pipeline=pipeline,
    )


# -- the command line -----------------------------------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:,}, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``bench`` to ``parser``."""
    parser.add_argument(
        "--items",
        type=_int_at_least(1),
        default=DEFAULT_ITEMS,
        metavar="N",
        help="items pushed through the buffer in the end-to-end figures, Buffer and AsyncBuffer, "
        "and through each subject of the pipeline table's (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-items",
        type=_int_at_least(MIN_MEMORY_ITEMS),
        default=DEFAULT_MEMORY_ITEMS,
        metavar="N",
        help=f"buffered Nones weighed by the memory figure, at least {MIN_MEMORY_ITEMS:,} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=_int_at_least(1),
        default=DEFAULT_ROUNDS,
        metavar="N",
        help=f"interleaved rounds of the insert (Buffer and AsyncBuffer) and insert_batch figures, "
        f"each of {CHUNK_BLOCKS} blocks of {BLOCK} calls per subject, of the pipeline table's "
        "amortized figures, and its interleaved cycles of the flusher figure (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=_int_at_least(1),
        default=DEFAULT_REPEAT,
        metavar="N",
        help="runs of each end-to-end figure: the fastest counts in the first table, the median in "
        "the pipeline table (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as JSON instead of the summary and tables: the summary's figures "
        "under 'summary', every row under 'rows' (and 'pipeline.rows'), the raw timings under 'results'",
    )


DESCRIPTION = (
    "Time databuffer against baselines measured in the same run and print the ratios: "
    "insert vs deque.append (and vs the pure-Python core), insert_batch vs list.extend, "
    "N items end to end until flushed vs a deque.append loop, AsyncBuffer.insert on a running "
    "loop vs deque.append and Buffer.insert, N items end to end through an AsyncBuffer (asyncio, "
    "and uvloop when importable) vs a Buffer of the same options, and bytes per buffered item "
    "vs a list. Then the pipeline table: one producer, partitions=1, max_size=1000, for "
    "max_queued_batches=0 and the default (the default alone if this build has no such option): "
    "N items by insert until close() returned vs a deque.append loop, a queue.SimpleQueue with a "
    "consumer thread batching by 1000, and the OpenTelemetry SDK's BatchProcessor (when "
    "installed; nothing dropped); N items by insert_batch(1000) vs deque loops; insert and "
    "insert_batch amortized; and the flusher's own time per batch, handle_flush excluded (thread "
    "CPU for Buffer, wall time for AsyncBuffer) vs the SimpleQueue consumer's. A summary in plain "
    "words comes first, then the tables (at most 100 columns wide) and their numbered notes, on "
    "stdout, or JSON with --json; progress (each phase, and how long the previous one took) goes to "
    "stderr. The exit status is 1 if an item was not flushed exactly once, or a baseline lost one."
)


def run_command(args: argparse.Namespace) -> int:
    """Run ``bench`` with parsed options; return the exit status."""
    report = run(
        rounds=args.rounds,
        items=args.items,
        repeat=args.repeat,
        memory_items=args.memory_items,
        progress=sys.stderr,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2, allow_nan=False), flush=True)
    else:
        print(format_table(report), flush=True)
    for problem in report.problems:
        print(f"databuffer bench: check failed: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``bench`` on its own: parse ``argv`` (``sys.argv[1:]`` by default) and run."""
    parser = argparse.ArgumentParser(prog="python -m databuffer bench", description=DESCRIPTION)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
