"""Chaos soak of the public API: ``Buffer`` with threads, ``AsyncBuffer`` with tasks and cancellations.

Not part of the default run: the tests carry the ``chaos`` marker, which
``conftest.py`` deselects unless the ``-m`` expression names it::

    python -m pytest -m chaos tests/test_chaos.py                      # both cores
    python -m pytest -m "chaos and c_extension" tests/test_chaos.py    # compiled core only

``DATABUFFER_CHAOS_SECONDS`` (default 15) is how long the producers of each
test run, per core: the threaded test runs that long, and the asyncio test
shares it between the event loops it runs on (asyncio's own and, where it is
installed, uvloop), so a core takes about 2 x that.  ``DATABUFFER_CHAOS_SEED``
replays the random choices of a failed run (the seed is printed and named in
every assertion message); the threads and tasks still interleave differently,
so a replay makes the same choices, not the same run.

What goes on at once, at random:

- producers insert with ``insert``/``insert_batch`` (and, in the asyncio test,
  ``ainsert``/``ainsert_batch``, some of them cancelled at random moments,
  and a thread with plain inserts), with small ``timeout`` values, so that
  some raise ``BufferFull``;
- ``handle_flush`` raises, or sleeps far past ``flush_timeout`` and then
  returns (threads: the call is abandoned) or is cancelled (asyncio, where
  it sometimes swallows the cancellation and returns anyway), or is slow
  but in time, or succeeds; ``max_retries=2``;
- telemetry handlers on the insert and flush events raise now and then (the
  library detaches them; they are attached again every few milliseconds);
- a chaos thread (task) calls ``flush``, ``sync_flush``, ``info``, ``stats``,
  ``size`` and ``dump``; a watcher thread samples ``stats()``.

The ledger is that of ``test_soak.py``: producer ``k`` (of ``P``) inserts the
items ``P * i + k`` for its steps ``i = 0, 1, 2, ...``, so an item is its own
index in one ``bytearray`` of outcomes: 0 nothing yet, 1 committed by a
``handle_flush`` call, 2 reported to ``handle_flush_error``.  A second outcome
for an item is an anomaly (a duplicate).  At the end, every item an insert
accepted must have exactly one outcome, every item refused none, and the
counters must agree: ``inserted == size + in_flight + flushed + failed``
(sampled throughout, and at the end with ``size == in_flight == 0``,
``flushed`` = items committed, ``failed`` = items reported).

**When a call commits.**  The buffer times a ``handle_flush`` call from just
before it calls it, and abandons (threads) or cancels (asyncio) it once
``flush_timeout`` has passed; whatever it returns then is ignored, and its
batch is retried or reported as ``FlushTimeout`` (docs/concepts/failures.md,
"Timeouts"; docs/asyncio.md, "Timers, flush_timeout and retries").  So a call
records its batch as committed only if it ends within ``COMMIT_WINDOW``
(half of ``flush_timeout``) of its own start.  A call that ends at least
``ABANDONED_AFTER`` (3 x ``flush_timeout``) after its start, the ones that
sleep past it on purpose, was given up by the buffer long before: it returns
normally ("succeeds") without committing, and the buffer must ignore that.  A
call that ends in between (a thread stalled by the scheduler) raises
``TooLate``, so that, live or abandoned, it is a failure and not a commit.  An
asyncio call that saw its ``CancelledError`` knows it was timed out, and
never commits.

**Cancelled asyncio inserts.**  A cancelled ``ainsert``/``ainsert_batch`` may
have stored some of its items.  When the ``CancelledError`` carries a note
saying how many were stored (``__notes__``), the leading ones are accepted
(exactly one outcome each) and the rest refused (none).  Without such a note,
the call's items are "uncertain": at most one outcome each, counted apart (a
stored one that vanished still shows, as ``inserted`` would not match).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from conftest import adds_up, await_for, wait_for

from databuffer import BufferFull, FlushTimeout, telemetry
from databuffer._support import available_loops

CHAOS_SECONDS = float(os.environ.get("DATABUFFER_CHAOS_SECONDS", "15"))

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(CHAOS_SECONDS + 300)]

NAME = "chaos"
MAX_RETRIES = 2
RETRY_BACKOFF = 0.005
RETRY_BACKOFF_MAX = 0.02
INSERT_TIMEOUTS: tuple[float | None, ...] = (0, 0.001, 0.005, 0.02, 0.1, None)  # None: insert_timeout
SYNC_TIMEOUTS = (0, 0.02, 0.2, 2.0, 10.0)
# A sync_flush or close that takes longer than this is a hang: each waits for
# about two batches per partition, each bounded by its attempts.
SYNC_HANG = 20.0
CLOSE_TIMEOUT = 60.0
LEDGER_CHUNK = 1 << 20

UNSET, DELIVERED, FAILED, NOT_STORED = 0, 1, 2, 3
OUTCOME = {UNSET: "nothing", DELIVERED: "committed", FAILED: "failed"}


class SinkError(Exception):
    """One of the errors handle_flush raises on purpose."""


class TooLate(Exception):
    """Raised by a call that ends between COMMIT_WINDOW and ABANDONED_AFTER: neither a commit nor a return."""


class TelemetryError(Exception):
    """Raised by the flaky telemetry handlers on purpose."""


RANDOM_ERRORS: tuple[type[Exception], ...] = (SinkError, ValueError, OSError, KeyError)
# What a failed batch (or a sync_flush's ExceptionGroup) may hold.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (*RANDOM_ERRORS, FlushTimeout, TooLate)


def chaos_seed() -> int:
    return int(os.environ.get("DATABUFFER_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))


# -- the ledger --------------------------------------------------------------------------


class Ledger:
    """What happened to every item: the outcomes, and the sink's counts."""

    def __init__(self, producers: int) -> None:
        self.producers = producers
        self.lock = threading.Lock()  # guards everything below
        self.outcomes = bytearray()
        self.delivered = 0  # items
        self.failed = 0  # items
        self.delivered_batches = 0
        self.failed_batches: list[tuple[int, int, str, int]] = []  # (partition, attempt, error, size)
        self.anomalies: list[str] = []
        self.anomaly_count = 0
        self.behaviour: Counter[str] = Counter()
        self.slowest_commit = 0.0

    def grow(self, needed: int) -> None:
        """Make room for indices below ``needed`` (before they are inserted)."""
        with self.lock:
            while len(self.outcomes) < needed:
                self.outcomes.extend(bytes(LEDGER_CHUNK))

    def count(self, *keys: str) -> None:
        with self.lock:
            self.behaviour.update(keys)

    def _anomaly(self, text: str) -> None:
        # Under self.lock.  Recorded, never raised: raising from a callback
        # would turn the complaint into one more failed flush.
        self.anomaly_count += 1
        if len(self.anomalies) < 50:
            self.anomalies.append(text)

    def _mark(self, batch: Sequence[Any], outcome: int, opts: Any, how: str) -> None:
        """Record ``outcome`` for every item of ``batch`` (under self.lock)."""
        outcomes, end, producers = self.outcomes, len(self.outcomes), self.producers
        if not batch:
            self._anomaly(f"{how}: an empty batch ({opts!r})")
        if opts.size != len(batch):
            self._anomaly(f"{how}: opts.size={opts.size} but len(batch)={len(batch)}")
        last = [-1] * producers
        for item in batch:
            if type(item) is not int or not 0 <= item < end:
                self._anomaly(f"{how}: item {item!r} was never inserted (partition {opts.partition})")
                continue
            before = outcomes[item]
            if before != UNSET:
                self._anomaly(
                    f"{how}: item {item} (producer {item % producers}) was {OUTCOME[before]} already "
                    f"(partition {opts.partition}, attempt {opts.attempt}, trigger {opts.trigger})"
                )
            else:
                outcomes[item] = outcome
            k = item % producers
            if item <= last[k]:
                self._anomaly(f"{how}: producer {k}'s items out of order in a batch: {item} after {last[k]}")
            last[k] = item

    def commit(self, batch: Sequence[Any], opts: Any, elapsed: float) -> None:
        with self.lock:
            self._mark(batch, DELIVERED, opts, "committed")
            self.delivered += len(batch)
            self.delivered_batches += 1
            self.behaviour["committed"] += 1
            self.slowest_commit = max(self.slowest_commit, elapsed)

    def fail(self, batch: Sequence[Any], opts: Any, error: BaseException) -> None:
        with self.lock:
            self._mark(batch, FAILED, opts, f"failed with {type(error).__name__}")
            self.failed += len(batch)
            self.failed_batches.append((opts.partition, opts.attempt, type(error).__name__, len(batch)))
            if not isinstance(error, EXPECTED_ERRORS):
                self._anomaly(f"a batch failed with an unexpected {type(error).__name__}: {error!r}")
            if opts.attempt != MAX_RETRIES + 1:
                self._anomaly(
                    f"a batch failed with {type(error).__name__} at attempt {opts.attempt}, "
                    f"not after its {MAX_RETRIES + 1} attempts"
                )

    def anomaly(self, text: str) -> None:
        with self.lock:
            self._anomaly(text)

    def snapshot(self) -> tuple[int, int, str]:
        with self.lock:
            return self.delivered, self.failed, hashlib.sha256(self.outcomes).hexdigest()


class Books:
    """Per producer: steps taken, and the ranges [a, b) of steps refused or uncertain."""

    def __init__(self, producers: int) -> None:
        self.producers = producers
        self.produced = [0] * producers
        self.not_stored: list[list[tuple[int, int]]] = [[] for _ in range(producers)]
        # (a, b, the call): a cancelled call whose CancelledError said nothing of what it stored.
        self.uncertain: list[list[tuple[int, int, str]]] = [[] for _ in range(producers)]
        self.calls: list[Counter[str]] = [Counter() for _ in range(producers)]

    def refused(self, k: int, a: int, b: int) -> None:
        if a < b:
            self.not_stored[k].append((a, b))


def settle(ledger: Ledger, books: Books, ctx: str) -> dict[str, int]:
    """Check every item's outcome against what the producers were told; the totals."""
    producers, outcomes = books.producers, ledger.outcomes
    totals: Counter[str] = Counter()
    for k in range(producers):
        produced = books.produced[k]
        mine = outcomes[k : producers * produced : producers]  # step i is item producers * i + k
        assert len(mine) == produced, ctx
        for a, b in books.not_stored[k]:
            seen = [producers * (a + j) + k for j, o in enumerate(mine[a:b]) if o != UNSET]
            assert not seen, f"producer {k}: items refused by an insert were flushed: {seen[:10]} {ctx}"
            mine[a:b] = bytes([NOT_STORED]) * (b - a)
        for a, b, call in books.uncertain[k]:
            part = mine[a:b]
            totals[f"uncertain ({call})"] += b - a
            totals[f"uncertain ({call}), stored"] += part.count(DELIVERED) + part.count(FAILED)
            mine[a:b] = part.replace(bytes([UNSET]), bytes([NOT_STORED]))
        missing, at = [], mine.find(UNSET)
        while at != -1 and len(missing) < 10:
            missing.append(producers * at + k)
            at = mine.find(UNSET, at + 1)
        assert not missing, (
            f"producer {k}: {mine.count(UNSET)} accepted items neither committed nor failed, "
            f"first {missing} {ctx}"
        )
        totals["committed"] += mine.count(DELIVERED)
        totals["failed"] += mine.count(FAILED)
        totals["refused"] += mine.count(NOT_STORED)
        beyond = outcomes[producers * produced + k :: producers]
        assert beyond.count(UNSET) == len(beyond), f"producer {k}: items it never inserted were flushed {ctx}"
    totals["stored"] = totals["committed"] + totals["failed"]
    return dict(totals)


def check_end(ledger: Ledger, books: Books, stats: dict[str, Any], ctx: str) -> dict[str, int]:
    """The final checks common to both tests; the totals of ``settle``."""
    assert ledger.anomalies == [], f"{ledger.anomaly_count} anomalies, first {ledger.anomalies[:10]} {ctx}"
    totals = settle(ledger, books, ctx)
    assert (totals["committed"], totals["failed"]) == (ledger.delivered, ledger.failed), ctx
    s = stats
    assert s["closed"], f"{s} {ctx}"
    assert (s["size"], s["in_flight"]) == (0, 0), f"{s} {ctx}"
    assert adds_up(s), f"{s} {ctx}"
    assert s["flushed"] == ledger.delivered, f"flushed counts what no call committed: {s} {totals} {ctx}"
    assert s["failed"] == ledger.failed, f"{s} {totals} {ctx}"
    # Every uncertain item counted as not stored is checked here too: had it
    # been stored (and lost), "inserted" would count it.
    assert s["inserted"] == totals["stored"], f"{s} {totals} {ctx}"
    return totals


# -- what runs beside the producers --------------------------------------------------------

INSERT_EVENTS = [("data_buffer", "insert", e) for e in ("start", "stop", "exception")]
FLUSH_EVENTS = [("data_buffer", "flush", e) for e in ("start", "retry", "stop", "exception")]


class FlakyHandler:
    """A telemetry handler that raises now and then; the library then detaches it."""

    def __init__(self, handler_id: str, events: list[tuple[str, ...]], seed: int, p_raise: float) -> None:
        self.id = handler_id
        self.events = events
        self.rng = random.Random(seed)
        self.p_raise = p_raise
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.raised = 0
        self.attached = 0
        self.problems: list[str] = []

    def __call__(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        if metadata.get("buffer") != NAME:
            return
        with self.lock:
            self.seen[event[2]] += 1
            draw = self.rng.random()
            if event[1] == "flush" and event[2] in ("stop", "exception"):
                if not 1 <= metadata["attempt"] <= MAX_RETRIES + 1 or metadata["size"] < 1:
                    if len(self.problems) < 10:
                        self.problems.append(f"{event} with {metadata}")
            if draw < self.p_raise:
                self.raised += 1
                raise TelemetryError(f"{self.id} fails on purpose at {event}")

    def attach(self) -> None:
        """(Re)attach: detach first, so that the handler is attached once, whether or not it raised."""
        telemetry.detach(self.id)
        telemetry.attach_many(self.id, self.events, self)
        self.attached += 1

    def report(self) -> str:
        return f"{self.id}: events {dict(self.seen)}, raised {self.raised}, attached {self.attached}"


def watch(buf: Any, done: threading.Event, problems: list[str], core_name: str, samples: list[int]) -> None:
    """Sample ``stats()`` until ``done``: the identity, no negative counter, no counter going back."""
    last = dict.fromkeys(("inserted", "flushed", "failed", "retried"), 0)
    # The wait paces the sampling; it synchronises nothing.
    while not done.wait(0.002):
        s = buf.stats()
        samples[0] += 1
        if not adds_up(s):
            problems.append(f"inserted != size + in_flight + flushed + failed in {s}")
        if min(s["size"], s["in_flight"], s["flushed"], s["failed"], s["retried"]) < 0:
            problems.append(f"a negative counter in {s}")
        # The pure-Python core takes back an append it refuses: only the
        # compiled core's "inserted" never drops.
        for key in ("flushed", "failed", "retried") + (("inserted",) if core_name == "c" else ()):
            if s[key] < last[key]:
                problems.append(f"{key} dropped from {last[key]} to {s[key]}: {s}")
            last[key] = s[key]
        if len(problems) > 20:
            return


def check_reads(buf: Any, what: str, problems: list[str]) -> None:
    """One of the read-only calls, with what can be checked of its answer at any moment."""
    if what == "info":
        for p in buf.info():
            if not adds_up(p):
                problems.append(f"info(): inserted != size + in_flight + flushed + failed in {p}")
    elif what == "stats":
        s = buf.stats()
        if not adds_up(s):
            problems.append(f"stats(): inserted != size + in_flight + flushed + failed in {s}")
    elif what == "size":
        if buf.size() < 0:
            problems.append("size() < 0")
    elif what == "dump":
        items = buf.dump()
        if not all(type(x) is int for x in items) or len(set(items)) != len(items):
            problems.append(f"dump() holds non-items or duplicates: {items[:20]}")


def expected_group(group: BaseExceptionGroup[Any], problems: list[str]) -> None:
    unexpected = [e for e in group.exceptions if not isinstance(e, EXPECTED_ERRORS)]
    if unexpected:
        problems.append(f"sync_flush raised unexpected errors: {unexpected!r}")


class Threads:
    """The test's own threads; an exception escaping one of them fails the test."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self, name: str, fn: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                self.errors.append(f"{name}: {type(exc).__name__}: {exc!r}")

        thread = threading.Thread(target=run, name=f"chaos-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread


def join_all(threads: list[threading.Thread], deadline: float) -> list[str]:
    """Join ``threads`` by ``deadline``; the names of those still running."""
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread.name for thread in threads if thread.is_alive()]


def items_arg(rng: random.Random, items: range) -> Any:
    """``items`` as a list, a tuple, the range or a generator."""
    shape = rng.choice(("list", "tuple", "range", "generator"))
    if shape == "list":
        return list(items)
    if shape == "tuple":
        return tuple(items)
    if shape == "range":
        return items
    return (x for x in items)


# -- threads: Buffer ---------------------------------------------------------------------

T_PRODUCERS = 4
T_PARTITIONS = 4
T_MAX_SIZE = 100
T_MAX_SIZE_JITTER = 20
T_FLUSH_TIMEOUT = 0.5
T_INSERT_TIMEOUT = 0.2
T_LARGEST_STEP = 300
# What handle_flush does, drawn per call.
T_P_LATE = 0.02  # sleep far past flush_timeout, then return (abandoned: not a commit)
T_P_FAIL = 0.20  # raise one of RANDOM_ERRORS
T_P_SLOW = 0.10  # sleep T_SLOW_SECONDS, well within flush_timeout, then commit
T_SLOW_SECONDS = 0.03
# A late call keeps its thread for T_LATE_SECONDS: bound how many run at once.
T_MAX_LATE = 6


class ThreadSink:
    """handle_flush / handle_flush_error of the threaded test."""

    def __init__(self, ledger: Ledger, seed: int, release: threading.Event, flush_timeout: float) -> None:
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.release = release
        self.commit_window = flush_timeout / 2
        self.abandoned_after = 3 * flush_timeout
        self.late_seconds = self.abandoned_after + 0.1
        self.lock = threading.Lock()
        self.late_active = 0
        self.late_started = 0

    def handle_flush(self, batch: list[Any], opts: Any) -> int:
        start = time.monotonic()
        ledger = self.ledger
        ledger.count(f"attempt {opts.attempt}", f"trigger {opts.trigger}")
        with self.rng_lock:
            draw = self.rng.random()
            error_type = self.rng.choice(RANDOM_ERRORS)
        if draw < T_P_LATE:
            with self.lock:
                late = self.late_active < T_MAX_LATE
                if late:
                    self.late_active += 1
                    self.late_started += 1
            if late:
                ledger.count("late")
                try:
                    # The event is set only at the end of the test (or at
                    # teardown): this is a sleep that can be cut short.
                    self.release.wait(self.late_seconds)
                finally:
                    with self.lock:
                        self.late_active -= 1
                return self._end(batch, opts, start)
        elif draw < T_P_LATE + T_P_FAIL:
            ledger.count("raise")
            raise error_type(f"handle_flush fails on purpose (attempt {opts.attempt})")
        elif draw < T_P_LATE + T_P_FAIL + T_P_SLOW:
            ledger.count("slow")
            time.sleep(T_SLOW_SECONDS)
        return self._end(batch, opts, start)

    def _end(self, batch: list[Any], opts: Any, start: float) -> int:
        """Commit if the buffer certainly still waits for this call; see the module's docstring."""
        elapsed = time.monotonic() - start
        if elapsed < self.commit_window:
            self.ledger.commit(batch, opts, elapsed)
        elif elapsed >= self.abandoned_after:
            self.ledger.count("late return (ignored by the buffer)")
        else:
            self.ledger.count("too late")
            raise TooLate(f"{elapsed:.3f}s into the call: past the commit window of {self.commit_window}s")
        return len(batch)

    def handle_flush_error(self, batch: list[Any], opts: Any, error: BaseException) -> None:
        self.ledger.fail(batch, opts, error)


def test_threaded_chaos(make_buffer: Any, core_name: str, gates: Any) -> None:
    seed = chaos_seed()
    seeds = random.Random(seed)
    producer_seeds = [seeds.randrange(1 << 32) for _ in range(T_PRODUCERS)]
    sink_seed, chaos_seed_, insert_tel_seed, flush_tel_seed = (seeds.randrange(1 << 32) for _ in range(4))
    ctx = (
        f"[threaded, core {core_name}, DATABUFFER_CHAOS_SEED={seed} "
        f"DATABUFFER_CHAOS_SECONDS={CHAOS_SECONDS:g}]"
    )
    print(f"chaos: {ctx}", flush=True)

    release = gates()  # late calls sleep on it; set at the end (and at teardown, whatever happens)
    ledger = Ledger(T_PRODUCERS)
    books = Books(T_PRODUCERS)
    sink = ThreadSink(ledger, sink_seed, release, T_FLUSH_TIMEOUT)
    insert_handler = FlakyHandler("chaos-insert", INSERT_EVENTS, insert_tel_seed, 0.002)
    flush_handler = FlakyHandler("chaos-flush", FLUSH_EVENTS, flush_tel_seed, 0.05)
    insert_handler.attach()
    flush_handler.attach()

    started = time.monotonic()
    stop_at = started + CHAOS_SECONDS
    buf = make_buffer(
        handle_flush=sink.handle_flush,
        handle_flush_error=sink.handle_flush_error,
        name=NAME,
        partitions=T_PARTITIONS,
        max_size=T_MAX_SIZE,
        max_size_jitter=T_MAX_SIZE_JITTER,
        flush_interval=0.05,
        flush_jitter=0.05,
        flush_timeout=T_FLUSH_TIMEOUT,
        max_retries=MAX_RETRIES,
        retry_backoff=RETRY_BACKOFF,
        retry_backoff_max=RETRY_BACKOFF_MAX,
        insert_timeout=T_INSERT_TIMEOUT,
    )

    def produce(k: int) -> None:
        rng = random.Random(producer_seeds[k])
        calls = books.calls[k]
        i = 0
        while time.monotonic() < stop_at:
            n = rng.randint(1, T_LARGEST_STEP)
            ledger.grow(T_PRODUCERS * (i + n))
            timeout = rng.choice(INSERT_TIMEOUTS)
            items = range(T_PRODUCERS * i + k, T_PRODUCERS * (i + n), T_PRODUCERS)
            if rng.random() < 0.5:
                calls["insert_batch"] += 1
                try:
                    buf.insert_batch(items_arg(rng, items), timeout=timeout)
                except BufferFull as exc:
                    calls["insert_batch BufferFull"] += 1
                    books.refused(k, i + exc.stored, i + n)
            else:
                calls["insert"] += n
                for j, item in enumerate(items, i):
                    try:
                        buf.insert(item, timeout=timeout)
                    except BufferFull:
                        calls["insert BufferFull"] += 1
                        books.refused(k, j, j + 1)
            i += n
            books.produced[k] = i

    chaos_done = threading.Event()
    chaos_calls: Counter[str] = Counter()
    problems: list[str] = []
    slowest_sync = [0.0]

    def chaos() -> None:
        rng = random.Random(chaos_seed_)
        # The wait paces the calls (and ends at once when told to); it synchronises nothing.
        while not chaos_done.wait(rng.uniform(0.0, 0.02)):
            if rng.random() < 0.3:
                chaos_calls["telemetry attach"] += 1
                rng.choice((insert_handler, flush_handler)).attach()
            what = rng.choice(("flush", "sync_flush", "info", "stats", "size", "dump"))
            chaos_calls[what] += 1
            if what == "flush":
                buf.flush()
            elif what == "sync_flush":
                timeout = rng.choice(SYNC_TIMEOUTS)
                t0 = time.monotonic()
                try:
                    results = buf.sync_flush(timeout=timeout)
                except ExceptionGroup as group:
                    chaos_calls["sync_flush ExceptionGroup"] += 1
                    expected_group(group, problems)
                except TimeoutError:
                    chaos_calls["sync_flush TimeoutError"] += 1
                else:
                    if not all(type(r) is int and 1 <= r <= T_MAX_SIZE + T_MAX_SIZE_JITTER for r in results):
                        problems.append(f"sync_flush returned {results!r}")
                took = time.monotonic() - t0
                slowest_sync[0] = max(slowest_sync[0], took)
                if took > max(timeout, 0) + SYNC_HANG:
                    problems.append(f"sync_flush(timeout={timeout}) took {took:.1f}s")
            else:
                check_reads(buf, what, problems)

    watch_done = threading.Event()
    samples = [0]
    threads = Threads()
    try:
        watcher = threads.start("watcher", lambda: watch(buf, watch_done, problems, core_name, samples))
        chaos_thread = threads.start("chaos", chaos)
        producers = [threads.start(f"producer-{k}", lambda k=k: produce(k)) for k in range(T_PRODUCERS)]

        # Producers stop by themselves at stop_at; an insert call waits at
        # most its timeout (per wait for room, for insert_batch).
        late = join_all(producers, stop_at + 60)
        assert not late, f"producers did not stop: {late} {ctx}"
        produced_at = time.monotonic()
        chaos_done.set()
        late = join_all([chaos_thread], time.monotonic() + max(SYNC_TIMEOUTS) + SYNC_HANG + 30)
        assert not late, f"the chaos thread did not stop {ctx}"

        buf.close(timeout=CLOSE_TIMEOUT)
        closed_at = time.monotonic()
        watch_done.set()
        late = join_all([watcher], time.monotonic() + 30)
        assert not late, f"the watcher did not stop {ctx}"
        after_close = buf.stats()
        outcome_after_close = ledger.snapshot()
    finally:
        chaos_done.set()
        watch_done.set()
        release.set()

    # The late calls now return, long after their batches were settled: nothing may change.
    wait_for(lambda: sink.late_active == 0, timeout=30)
    assert buf.stats() == after_close, f"counters changed after the late calls returned {ctx}"
    assert ledger.snapshot() == outcome_after_close, f"the ledger changed after the late calls returned {ctx}"

    failed_by = Counter((attempt, error) for _p, attempt, error, _n in ledger.failed_batches)
    summary = (
        f"chaos: {ctx} {produced_at - started:.1f}s producing, close took {closed_at - produced_at:.2f}s; "
        f"steps {sum(books.produced)}, calls {dict(sum(books.calls, Counter()))}; "
        f"handle_flush {dict(ledger.behaviour)}, {ledger.delivered_batches} batches committed, "
        f"slowest commit {ledger.slowest_commit:.3f}s; failed batches by (attempt, error) {dict(failed_by)}; "
        f"stats {after_close}; chaos {dict(chaos_calls)}, slowest sync_flush {slowest_sync[0]:.2f}s; "
        f"{samples[0]} stats() samples; late calls {sink.late_started}; "
        f"{insert_handler.report()}; {flush_handler.report()}"
    )
    print(summary, flush=True)

    assert threads.errors == [], f"{threads.errors} {ctx}"
    assert problems == [], f"{problems[:5]} {ctx}"
    assert insert_handler.problems == flush_handler.problems == [], (
        f"{insert_handler.problems} {flush_handler.problems} {ctx}"
    )
    totals = check_end(ledger, books, after_close, ctx)
    print(f"chaos: {ctx} totals {totals}", flush=True)
    assert after_close["retried"] > 0, f"{after_close} {ctx}"


# -- asyncio: AsyncBuffer ------------------------------------------------------------------

A_TASKS = 4  # producer tasks 0..3
A_PRODUCERS = A_TASKS + 1  # and producer 4, a thread with plain inserts
A_PARTITIONS = 4
A_MAX_SIZE = 100
A_MAX_SIZE_JITTER = 20
A_FLUSH_TIMEOUT = 0.3
A_INSERT_TIMEOUT = 0.2
A_LARGEST_STEP = 150
A_P_LATE = 0.03  # sleep far past flush_timeout: cancelled by the buffer
A_P_SWALLOW = 0.5  # of those: swallow the cancellation, go on a little, return anyway
A_SWALLOW_SECONDS = 0.02
A_P_FAIL = 0.20
A_P_SLOW = 0.10
A_SLOW_SECONDS = 0.02
# Cancelling an ainsert/ainsert_batch call: before it starts, just after its
# first step, or a random short time into it.
A_P_CANCEL_NOW = 0.03
A_P_CANCEL_SOON = 0.05
A_P_CANCEL_LATER = 0.15
A_CANCEL_DELAYS = (0.0, 0.0005, 0.002, 0.01, 0.05)

# What a note on a cancelled insert's CancelledError may say: "ainsert_batch
# stored 3 leading items ...", "... before it stored anything", "... its item
# was not stored", "... stored its item".
STORED_NOTE = re.compile(r"\d+")
STORED_NOTHING = re.compile(r"\b(nothing|none|no items?|not stored|stored anything)\b")
STORED_ONE = re.compile(r"\bstored (its|the) item\b")


def stored_from_notes(exc: BaseException, books_notes: list[str]) -> int | None:
    """How many items a cancelled insert stored, from a note on its ``CancelledError``; ``None``: no note."""
    for note in getattr(exc, "__notes__", ()):
        if "stored" not in note:
            continue
        books_notes.append(note)
        number = STORED_NOTE.search(note)
        if number:
            return int(number.group())
        if STORED_NOTHING.search(note):
            return 0
        if STORED_ONE.search(note):
            return 1
        raise AssertionError(f"a note on a cancelled insert says it stored items, but not how many: {note!r}")
    return None


class AsyncSink:
    """handle_flush / handle_flush_error of the asyncio test."""

    def __init__(self, ledger: Ledger, seed: int, flush_timeout: float) -> None:
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.commit_window = flush_timeout / 2
        self.abandoned_after = 3 * flush_timeout
        self.late_seconds = self.abandoned_after + 0.1

    async def handle_flush(self, batch: list[Any], opts: Any) -> int:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ledger = self.ledger
        ledger.count(f"attempt {opts.attempt}", f"trigger {opts.trigger}")
        draw, error_type, swallow = self.rng.random(), self.rng.choice(RANDOM_ERRORS), self.rng.random()
        if draw < A_P_LATE:
            ledger.count("late")
            try:
                await asyncio.sleep(self.late_seconds)
            except asyncio.CancelledError:
                # flush_timeout: the batch is reported as FlushTimeout, whatever happens next.
                if swallow >= A_P_SWALLOW:
                    ledger.count("cancelled")
                    raise
                ledger.count("cancelled, swallowed")
                await asyncio.sleep(A_SWALLOW_SECONDS)
                return len(batch)  # ignored by the buffer; never a commit
        elif draw < A_P_LATE + A_P_FAIL:
            ledger.count("raise")
            raise error_type(f"handle_flush fails on purpose (attempt {opts.attempt})")
        elif draw < A_P_LATE + A_P_FAIL + A_P_SLOW:
            ledger.count("slow")
            await asyncio.sleep(A_SLOW_SECONDS)
        elapsed = loop.time() - start
        if elapsed < self.commit_window:
            ledger.commit(batch, opts, elapsed)
        elif elapsed >= self.abandoned_after:
            ledger.count("late return, not cancelled")  # the buffer must then ignore it
        else:
            ledger.count("too late")
            raise TooLate(f"{elapsed:.3f}s into the call: past the commit window of {self.commit_window}s")
        return len(batch)

    async def handle_flush_error(self, batch: list[Any], opts: Any, error: BaseException) -> None:
        self.ledger.fail(batch, opts, error)


def async_seconds() -> float:
    """The asyncio test's share of DATABUFFER_CHAOS_SECONDS on each event loop it runs on."""
    return CHAOS_SECONDS / len(available_loops())


def test_asyncio_chaos(AsyncBuffer: type, core_name: str, loop_factory: Any) -> None:
    loop_name = "uvloop" if loop_factory is not None else "asyncio"
    seconds = async_seconds()
    seed = chaos_seed()
    seeds = random.Random(seed)
    producer_seeds = [seeds.randrange(1 << 32) for _ in range(A_PRODUCERS)]
    sink_seed, chaos_seed_, insert_tel_seed, flush_tel_seed = (seeds.randrange(1 << 32) for _ in range(4))
    ctx = (
        f"[asyncio on {loop_name}, core {core_name}, DATABUFFER_CHAOS_SEED={seed} "
        f"DATABUFFER_CHAOS_SECONDS={CHAOS_SECONDS:g} ({seconds:g}s here)]"
    )
    print(f"chaos: {ctx}", flush=True)

    ledger = Ledger(A_PRODUCERS)
    books = Books(A_PRODUCERS)
    sink = AsyncSink(ledger, sink_seed, A_FLUSH_TIMEOUT)
    insert_handler = FlakyHandler("chaos-insert", INSERT_EVENTS, insert_tel_seed, 0.002)
    flush_handler = FlakyHandler("chaos-flush", FLUSH_EVENTS, flush_tel_seed, 0.05)
    insert_handler.attach()
    flush_handler.attach()
    cancels: Counter[str] = Counter()
    notes: list[str] = []
    problems: list[str] = []
    chaos_calls: Counter[str] = Counter()
    slowest_sync = [0.0]
    samples = [0]
    threads = Threads()
    watch_done = threading.Event()
    thread_done = threading.Event()
    times: dict[str, float] = {}
    buf = AsyncBuffer(
        handle_flush=sink.handle_flush,
        handle_flush_error=sink.handle_flush_error,
        name=NAME,
        partitions=A_PARTITIONS,
        max_size=A_MAX_SIZE,
        max_size_jitter=A_MAX_SIZE_JITTER,
        flush_interval=0.05,
        flush_jitter=0.05,
        flush_timeout=A_FLUSH_TIMEOUT,
        max_retries=MAX_RETRIES,
        retry_backoff=RETRY_BACKOFF,
        retry_backoff_max=RETRY_BACKOFF_MAX,
        insert_timeout=A_INSERT_TIMEOUT,
    )

    async def cancellable(
        rng: random.Random, k: int, a: int, b: int, call: Callable[[], Any], batch: bool
    ) -> None:
        """Run one ``ainsert``/``ainsert_batch`` (steps [a, b) of producer k) in a task, maybe cancel it."""
        loop = asyncio.get_running_loop()
        calls = books.calls[k]
        seen: dict[str, Any] = {}

        async def run() -> None:
            seen["entered"] = True
            try:
                await call()
            except asyncio.CancelledError as exc:
                seen["cancelled"] = exc
            except BufferFull as exc:
                seen["full"] = exc.stored if batch else 0
            # The task ends here, normally: it is the test's own.

        task = loop.create_task(run())
        draw = rng.random()
        if draw < A_P_CANCEL_NOW:
            task.cancel()
        elif draw < A_P_CANCEL_NOW + A_P_CANCEL_SOON:
            await asyncio.sleep(0)
            task.cancel()
        elif draw < A_P_CANCEL_NOW + A_P_CANCEL_SOON + A_P_CANCEL_LATER:
            loop.call_later(rng.choice(A_CANCEL_DELAYS), task.cancel)
        await asyncio.wait([task])
        if "entered" not in seen:
            cancels["cancelled before it started"] += 1
            books.refused(k, a, b)  # it never ran
        elif "cancelled" in seen:
            try:
                stored = stored_from_notes(seen["cancelled"], notes)
            except AssertionError as exc:
                problems.append(str(exc))
                stored = None
            kind = "ainsert_batch" if batch else "ainsert"
            if stored is None:
                cancels[f"{kind} cancelled, no note"] += 1
                books.uncertain[k].append((a, b, kind))
            else:
                cancels[f"{kind} cancelled, with a note"] += 1
                if not 0 <= stored <= b - a:
                    problems.append(f"a cancelled insert of {b - a} items says it stored {stored}")
                books.refused(k, a + stored, b)
        elif "full" in seen:
            calls["ainsert BufferFull"] += 1
            books.refused(k, a + seen["full"], b)

    async def produce(k: int) -> None:
        rng = random.Random(producer_seeds[k])
        calls = books.calls[k]
        i = 0
        while time.monotonic() < times["stop_at"]:
            n = rng.randint(1, A_LARGEST_STEP)
            ledger.grow(A_PRODUCERS * (i + n))
            timeout = rng.choice(INSERT_TIMEOUTS)
            items = range(A_PRODUCERS * i + k, A_PRODUCERS * (i + n), A_PRODUCERS)
            how = rng.random()
            if how < 0.25:
                calls["insert"] += n
                for j, item in enumerate(items, i):
                    try:
                        buf.insert(item)
                    except BufferFull:
                        calls["insert BufferFull"] += 1
                        books.refused(k, j, j + 1)
            elif how < 0.45:
                calls["insert_batch"] += 1
                try:
                    buf.insert_batch(items_arg(rng, items))
                except BufferFull as exc:
                    calls["insert_batch BufferFull"] += 1
                    books.refused(k, i + exc.stored, i + n)
            elif how < 0.7:
                calls["ainsert"] += n
                for j, item in enumerate(items, i):
                    call = functools.partial(buf.ainsert, item, timeout=timeout)
                    await cancellable(rng, k, j, j + 1, call, batch=False)
            else:
                calls["ainsert_batch"] += 1
                call = functools.partial(buf.ainsert_batch, items_arg(rng, items), timeout=timeout)
                await cancellable(rng, k, i, i + n, call, batch=True)
            i += n
            books.produced[k] = i
            # Let the flusher tasks run: plain inserts never yield.
            await asyncio.sleep(0)

    def produce_in_thread(k: int) -> None:
        rng = random.Random(producer_seeds[k])
        calls = books.calls[k]
        i = 0
        while time.monotonic() < times["stop_at"]:
            n = rng.randint(1, A_LARGEST_STEP)
            ledger.grow(A_PRODUCERS * (i + n))
            items = range(A_PRODUCERS * i + k, A_PRODUCERS * (i + n), A_PRODUCERS)
            full = False
            if rng.random() < 0.5:
                calls["insert_batch"] += 1
                try:
                    buf.insert_batch(items_arg(rng, items))
                except BufferFull as exc:
                    calls["insert_batch BufferFull"] += 1
                    books.refused(k, i + exc.stored, i + n)
                    full = True
            else:
                calls["insert"] += n
                for j, item in enumerate(items, i):
                    try:
                        buf.insert(item)
                    except BufferFull:
                        calls["insert BufferFull"] += 1
                        books.refused(k, j, j + 1)
                        full = True
            i += n
            books.produced[k] = i
            if full:
                # A plain insert from a thread never waits: pace this one
                # (it synchronises nothing).
                thread_done.wait(rng.uniform(0.0, 0.005))

    async def chaos(done: asyncio.Event) -> None:
        rng = random.Random(chaos_seed_)
        while not done.is_set():
            # Paces the calls; it synchronises nothing.
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            if rng.random() < 0.3:
                chaos_calls["telemetry attach"] += 1
                rng.choice((insert_handler, flush_handler)).attach()
            what = rng.choice(("flush", "sync_flush", "info", "stats", "size", "dump"))
            chaos_calls[what] += 1
            if what == "flush":
                await buf.flush()
            elif what == "sync_flush":
                timeout = rng.choice(SYNC_TIMEOUTS)
                t0 = time.monotonic()
                try:
                    results = await buf.sync_flush(timeout=timeout)
                except ExceptionGroup as group:
                    chaos_calls["sync_flush ExceptionGroup"] += 1
                    expected_group(group, problems)
                except TimeoutError:
                    chaos_calls["sync_flush TimeoutError"] += 1
                else:
                    if not all(type(r) is int and 1 <= r <= A_MAX_SIZE + A_MAX_SIZE_JITTER for r in results):
                        problems.append(f"sync_flush returned {results!r}")
                took = time.monotonic() - t0
                slowest_sync[0] = max(slowest_sync[0], took)
                if took > max(timeout, 0) + SYNC_HANG:
                    problems.append(f"sync_flush(timeout={timeout}) took {took:.1f}s")
            else:
                check_reads(buf, what, problems)

    async def main() -> None:
        await buf.start()
        done = asyncio.Event()
        try:
            times["started"] = time.monotonic()
            times["stop_at"] = times["started"] + seconds
            watcher = threads.start("watcher", lambda: watch(buf, watch_done, problems, core_name, samples))
            thread_producer = threads.start(f"producer-{A_TASKS}", lambda: produce_in_thread(A_TASKS))
            chaos_task = asyncio.create_task(chaos(done))
            producers = [asyncio.create_task(produce(k)) for k in range(A_TASKS)]

            _, pending = await asyncio.wait(producers, timeout=seconds + 60)
            assert not pending, f"producer tasks did not stop {ctx}"
            for task in producers:
                task.result()  # an error in a producer fails the test
            await await_for(lambda: not thread_producer.is_alive(), timeout=60)
            times["produced"] = time.monotonic()
            done.set()
            _, pending = await asyncio.wait([chaos_task], timeout=max(SYNC_TIMEOUTS) + SYNC_HANG + 30)
            assert not pending, f"the chaos task did not stop {ctx}"
            chaos_task.result()

            await buf.aclose(timeout=CLOSE_TIMEOUT)
            times["closed"] = time.monotonic()
            watch_done.set()
            await await_for(lambda: not watcher.is_alive(), timeout=30)
        finally:
            done.set()
            watch_done.set()
            thread_done.set()
            if not buf.closed:
                await buf.aclose(timeout=CLOSE_TIMEOUT)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    after_close = buf.stats()

    failed_by = Counter((attempt, error) for _p, attempt, error, _n in ledger.failed_batches)
    summary = (
        f"chaos: {ctx} {times['produced'] - times['started']:.1f}s producing, "
        f"close took {times['closed'] - times['produced']:.2f}s; "
        f"steps {sum(books.produced)}, calls {dict(sum(books.calls, Counter()))}; cancels {dict(cancels)}, "
        f"notes seen {len(notes)} (first {notes[:2]}); "
        f"handle_flush {dict(ledger.behaviour)}, {ledger.delivered_batches} batches committed, "
        f"slowest commit {ledger.slowest_commit:.3f}s; failed batches by (attempt, error) {dict(failed_by)}; "
        f"stats {after_close}; chaos {dict(chaos_calls)}, slowest sync_flush {slowest_sync[0]:.2f}s; "
        f"{samples[0]} stats() samples; {insert_handler.report()}; {flush_handler.report()}"
    )
    print(summary, flush=True)

    assert threads.errors == [], f"{threads.errors} {ctx}"
    assert problems == [], f"{problems[:5]} {ctx}"
    assert insert_handler.problems == flush_handler.problems == [], (
        f"{insert_handler.problems} {flush_handler.problems} {ctx}"
    )
    totals = check_end(ledger, books, after_close, ctx)
    print(f"chaos: {ctx} totals {totals}", flush=True)
    assert after_close["retried"] > 0, f"{after_close} {ctx}"
