"""Soak test: producers, manual flushes, failing, slow and stuck flushes, retries, for a while.

Not part of the default run: it carries the ``soak`` marker, which
``conftest.py`` deselects unless the ``-m`` expression names it::

    python -m pytest -m soak tests/test_soak.py                    # both cores
    python -m pytest -m "soak and c_extension" tests/test_soak.py  # compiled core only

``DATABUFFER_SOAK_SECONDS`` sets how long the producers run (default 60, per
core).  ``DATABUFFER_SOAK_SEED`` replays the random choices of a failed run
(its seed is printed and named in every assertion message); the threads still
interleave differently, so a replay makes the same choices, not the same run.

The ledger: producer ``k`` (of 4) inserts the items ``4 * i + k`` for
``i = 0, 1, 2, ...``, so an item is its own index in one ``bytearray`` that
records its outcome: 0 nothing yet, 1 delivered (``handle_flush`` returned),
2 failed (``handle_flush_error``).  At the end every item stored by an insert
must be 1 or 2, set exactly once; every item not stored (an insert that raised
``BufferFull``) and every index past what a producer inserted must be 0.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from conftest import adds_up, wait_for

from databuffer import BufferFull, FlushTimeout

SOAK_SECONDS = float(os.environ.get("DATABUFFER_SOAK_SECONDS", "60"))

pytestmark = [pytest.mark.soak, pytest.mark.timeout(SOAK_SECONDS + 300)]

PRODUCERS = 4  # item % PRODUCERS is the producer; the item's ledger index is the item itself
PARTITIONS = 4
MAX_SIZE = 200
MAX_SIZE_JITTER = 50
FLUSH_INTERVAL = 0.05
FLUSH_JITTER = 0.05
FLUSH_TIMEOUT = 0.3
MAX_RETRIES = 2
RETRY_BACKOFF = 0.005
INSERT_TIMEOUT = 30.0
LARGEST_STEP = 500  # items per producer step: one insert_batch, or that many inserts

# What handle_flush does, drawn per call.
P_STUCK = 0.01  # wait far past flush_timeout (until the end of the test), then raise
P_FAIL = 0.10  # raise one of RANDOM_ERRORS
P_SLOW = 0.05  # sleep SLOW_SECONDS (well within flush_timeout), then succeed
SLOW_SECONDS = 0.05
# Each stuck call keeps its thread until the end of the test: bound how many there are.
MAX_STUCK = 400
# A call commits its delivery only this soon after it started (see Sink.handle_flush).
COMMIT_WINDOW = FLUSH_TIMEOUT / 2
# A sync_flush waits for at most about two batches per partition, each bounded by its
# attempts (flush_timeout each, stuck ones abandoned within 2 x flush_timeout): taking
# longer than this is a hang.
SYNC_TIMEOUT = 20.0
CLOSE_TIMEOUT = 60.0
LEDGER_CHUNK = 1 << 22  # ledger bytes added at a time (1,048,576 steps of the 4 producers)

UNSET, DELIVERED, FAILED, NOT_STORED = 0, 1, 2, 3
OUTCOME = {UNSET: "nothing", DELIVERED: "delivered", FAILED: "failed"}


class SinkError(Exception):
    """One of the errors handle_flush raises on purpose."""


class Stuck(Exception):
    """Raised by a stuck handle_flush once released, long after it was abandoned."""


class TooLate(Exception):
    """Raised instead of committing a delivery after COMMIT_WINDOW (see Sink.handle_flush)."""


RANDOM_ERRORS: tuple[type[Exception], ...] = (SinkError, ValueError, OSError, KeyError, ZeroDivisionError)
# What a failed batch can be reported with; all of them are retried, so every
# failed batch has used its max_retries + 1 attempts.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (*RANDOM_ERRORS, FlushTimeout, TooLate)
# Errors the buffer does not retry (SystemExit, KeyboardInterrupt); handle_flush never raises them here.
NOT_RETRIED: tuple[type[BaseException], ...] = (SystemExit, KeyboardInterrupt)


class Sink:
    """handle_flush / handle_flush_error: the ledger of what happened to every item."""

    def __init__(self, seed: int, release: threading.Event, expected_end: float) -> None:
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.release = release
        self.expected_end = expected_end
        self.lock = threading.Lock()  # guards everything below
        self.ledger = bytearray()
        self.delivered = 0  # items
        self.failed = 0  # items
        self.delivered_batches = 0
        self.failed_batches: list[tuple[int, int, str, int]] = []  # (partition, attempt, error type, size)
        self.anomalies: list[str] = []
        self.anomaly_count = 0
        self.behaviour: Counter[str] = Counter()
        self.stuck_started = 0
        self.stuck_active = 0

    # -- the ledger -----------------------------------------------------------

    def grow(self, needed: int) -> None:
        """Make room in the ledger for indices below ``needed`` (before they are inserted)."""
        if len(self.ledger) >= needed:
            return
        with self.lock:
            while len(self.ledger) < needed:
                self.ledger.extend(bytes(LEDGER_CHUNK))

    def _count(self, *keys: str) -> None:
        with self.lock:
            self.behaviour.update(keys)

    def _anomaly(self, text: str) -> None:
        # Under self.lock.  Recorded, never raised: raising from the callbacks
        # would turn the sink's complaint into one more failed flush.
        self.anomaly_count += 1
        if len(self.anomalies) < 50:
            self.anomalies.append(text)

    def _mark(self, batch: list[Any], outcome: int, opts: Any, how: str) -> None:
        """Record ``outcome`` for every item of ``batch`` (under self.lock)."""
        ledger = self.ledger
        end = len(ledger)
        last = [-1] * PRODUCERS
        for item in batch:
            if type(item) is not int or not 0 <= item < end:
                self._anomaly(f"{how}: item {item!r} was never inserted (partition {opts.partition})")
                continue
            before = ledger[item]
            if before != UNSET:
                self._anomaly(
                    f"{how}: item {item} (producer {item % PRODUCERS}) was {OUTCOME[before]} already "
                    f"(partition {opts.partition}, attempt {opts.attempt}, trigger {opts.trigger})"
                )
            else:
                ledger[item] = outcome
            k = item % PRODUCERS
            if item <= last[k]:
                self._anomaly(
                    f"{how}: producer {k}'s items out of order in one batch: {item} after {last[k]} "
                    f"(partition {opts.partition})"
                )
            last[k] = item

    # -- the callbacks ----------------------------------------------------------

    def handle_flush(self, batch: list[Any], opts: Any) -> int:
        start = time.monotonic()
        self._count(f"trigger {opts.trigger}", f"attempt {opts.attempt}")
        if not batch:
            with self.lock:
                self._anomaly(f"handle_flush called with an empty batch ({opts!r})")
        with self.rng_lock:
            draw = self.rng.random()
            error_type = self.rng.choice(RANDOM_ERRORS)
        if draw < P_STUCK:
            with self.lock:
                stuck = self.stuck_started < MAX_STUCK
                if stuck:
                    self.stuck_started += 1
                    self.stuck_active += 1
            if stuck:
                self._count("stuck")
                try:
                    # Far past flush_timeout: the buffer abandons this call and
                    # reports the attempt as FlushTimeout (then retries the batch).
                    # The event is set only after close(); the timeout is a backstop.
                    self.release.wait(max(0.0, self.expected_end - time.monotonic()))
                finally:
                    with self.lock:
                        self.stuck_active -= 1
                # Raise, never record: an abandoned call's return is ignored by
                # the buffer (its batch has been retried or reported failed
                # already), so a sink that recorded it here would count the
                # batch twice.  A real sink must likewise not commit once
                # flush_timeout has passed.
                raise Stuck(f"released after {time.monotonic() - start:.1f}s, long after being abandoned")
        if draw < P_STUCK + P_FAIL:
            self._count("raise")
            raise error_type(f"handle_flush fails on purpose (attempt {opts.attempt})")
        if draw < P_STUCK + P_FAIL + P_SLOW:
            self._count("slow")
            time.sleep(SLOW_SECONDS)  # a slow sink, within flush_timeout
        # The buffer abandons a call once flush_timeout has passed since its
        # own clock read just before calling us; a call that commits and then
        # returns past that would be counted twice (delivered here, and
        # retried or failed by the buffer), which is the sink's mistake, not
        # the buffer's.  So commit only well within flush_timeout, and raise
        # otherwise: only a thread stalled for COMMIT_WINDOW between the
        # buffer's clock read and our start, or between this check and the
        # return, could still be abandoned after committing.
        elapsed = time.monotonic() - start
        if elapsed > COMMIT_WINDOW:
            self._count("too late")
            raise TooLate(f"{elapsed:.3f}s into the call, past the commit window of {COMMIT_WINDOW}s")
        with self.lock:
            self._mark(batch, DELIVERED, opts, "delivered")
            self.delivered += len(batch)
            self.delivered_batches += 1
            self.behaviour["ok"] += 1
        return len(batch)

    def handle_flush_error(self, batch: list[Any], opts: Any, error: BaseException) -> None:
        with self.lock:
            self._mark(batch, FAILED, opts, f"failed with {type(error).__name__}")
            self.failed += len(batch)
            self.failed_batches.append((opts.partition, opts.attempt, type(error).__name__, len(batch)))
            if not isinstance(error, EXPECTED_ERRORS):
                self._anomaly(f"a batch failed with an unexpected {type(error).__name__}: {error!r}")
            if opts.attempt != MAX_RETRIES + 1 and not isinstance(error, NOT_RETRIED):
                self._anomaly(
                    f"a batch failed with {type(error).__name__} at attempt {opts.attempt}, "
                    f"not after its {MAX_RETRIES + 1} attempts"
                )


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
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name=f"soak-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread


def join_all(threads: list[threading.Thread], deadline: float) -> list[str]:
    """Join ``threads`` by ``deadline``; the names of those still running."""
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread.name for thread in threads if thread.is_alive()]


def test_soak(make_buffer: Any, core_name: str, gates: Any) -> None:
    seed = int(os.environ.get("DATABUFFER_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    seeds = random.Random(seed)
    producer_seeds = [seeds.randrange(1 << 32) for _ in range(PRODUCERS)]
    sink_seed, manual_seed = seeds.randrange(1 << 32), seeds.randrange(1 << 32)
    ctx = (
        f"[core {core_name}, DATABUFFER_SOAK_SEED={seed} DATABUFFER_SOAK_SECONDS={SOAK_SECONDS:g}; "
        f"producers {producer_seeds}, sink {sink_seed}, manual {manual_seed}]"
    )
    print(f"soak: {ctx}", flush=True)

    release = gates()  # stuck calls wait on it; set at the end (and at teardown, whatever happens)
    started = time.monotonic()
    stop_at = started + SOAK_SECONDS
    sink = Sink(sink_seed, release, expected_end=stop_at + CLOSE_TIMEOUT + 240)
    buf = make_buffer(
        handle_flush=sink.handle_flush,
        handle_flush_error=sink.handle_flush_error,
        name="soak",
        partitions=PARTITIONS,
        max_size=MAX_SIZE,
        max_size_jitter=MAX_SIZE_JITTER,
        flush_interval=FLUSH_INTERVAL,
        flush_jitter=FLUSH_JITTER,
        flush_timeout=FLUSH_TIMEOUT,
        max_retries=MAX_RETRIES,
        retry_backoff=RETRY_BACKOFF,
        retry_backoff_max=0.05,
        insert_timeout=INSERT_TIMEOUT,
    )

    # Per producer: steps taken (its items are 4 * i + k for i < produced[k]),
    # ranges [a, b) of steps whose items were not stored (BufferFull), and calls.
    produced = [0] * PRODUCERS
    not_stored: list[list[tuple[int, int]]] = [[] for _ in range(PRODUCERS)]
    calls: list[Counter[str]] = [Counter() for _ in range(PRODUCERS)]

    def produce(k: int) -> None:
        rng = random.Random(producer_seeds[k])
        insert, insert_batch = buf.insert, buf.insert_batch
        i = 0
        while time.monotonic() < stop_at:
            n = rng.randint(1, LARGEST_STEP)
            sink.grow(PRODUCERS * (i + n))
            if rng.random() < 0.5:
                items = range(PRODUCERS * i + k, PRODUCERS * (i + n), PRODUCERS)
                shape = rng.choice(("list", "tuple", "range", "generator"))
                if shape == "list":
                    arg: Any = list(items)
                elif shape == "tuple":
                    arg = tuple(items)
                elif shape == "range":
                    arg = items
                else:
                    arg = (x for x in items)
                calls[k]["insert_batch"] += 1
                try:
                    insert_batch(arg)
                except BufferFull as exc:
                    calls[k]["BufferFull"] += 1
                    not_stored[k].append((i + exc.stored, i + n))
            else:
                calls[k]["insert"] += n
                for j in range(i, i + n):
                    try:
                        insert(PRODUCERS * j + k)
                    except BufferFull:
                        calls[k]["BufferFull"] += 1
                        not_stored[k].append((j, j + 1))
            i += n
            produced[k] = i

    manual_done = threading.Event()
    manual: Counter[str] = Counter()
    manual_problems: list[str] = []
    slowest_sync = [0.0]

    def flush_by_hand() -> None:
        rng = random.Random(manual_seed)
        # The wait paces the calls (and ends at once when told to); it synchronises nothing.
        while not manual_done.wait(rng.uniform(0.0, 0.1)):
            if rng.random() < 0.5:
                manual["flush"] += 1
                buf.flush()
                continue
            manual["sync_flush"] += 1
            t0 = time.monotonic()
            try:
                results = buf.sync_flush(timeout=SYNC_TIMEOUT)
            except ExceptionGroup as group:
                # Flushes fail on purpose: the group holds the errors of the batches it flushed.
                manual["ExceptionGroup"] += 1
                unexpected = [e for e in group.exceptions if not isinstance(e, EXPECTED_ERRORS)]
                if unexpected:
                    manual_problems.append(f"sync_flush raised unexpected errors: {unexpected!r}")
            except TimeoutError as exc:
                manual_problems.append(f"sync_flush ran past {SYNC_TIMEOUT}s: {exc!r}")
            else:
                if not all(type(r) is int and 1 <= r <= MAX_SIZE + MAX_SIZE_JITTER for r in results):
                    manual_problems.append(f"sync_flush returned {results!r}")
            slowest_sync[0] = max(slowest_sync[0], time.monotonic() - t0)

    watch_done = threading.Event()
    snapshots = [0]
    watch_problems: list[str] = []

    def watch() -> None:
        last = dict.fromkeys(("inserted", "flushed", "failed", "retried"), 0)
        # The wait paces the sampling; it synchronises nothing.
        while not watch_done.wait(0.002):
            s = buf.stats()
            snapshots[0] += 1
            if not adds_up(s):
                watch_problems.append(f"inserted != size + in_flight + flushed + failed in {s}")
            if min(s["size"], s["in_flight"], s["flushed"], s["failed"], s["retried"]) < 0:
                watch_problems.append(f"a negative counter in {s}")
            # Counters that only grow (each partition's is read after the last
            # snapshot's).  The pure-Python core takes back an append it
            # refuses, so only the compiled core's "inserted" never drops.
            for key in ("flushed", "failed", "retried") + (("inserted",) if core_name == "c" else ()):
                if s[key] < last[key]:
                    watch_problems.append(f"{key} dropped from {last[key]} to {s[key]}: {s}")
                last[key] = s[key]
            if len(watch_problems) > 20:
                return

    threads = Threads()
    try:
        watcher = threads.start("watcher", watch)
        manual_thread = threads.start("manual", flush_by_hand)
        producers = [threads.start(f"producer-{k}", lambda k=k: produce(k)) for k in range(PRODUCERS)]

        # Producers stop by themselves at stop_at; each step may still wait
        # under backpressure, at most insert_timeout per insert call.
        late = join_all(producers, stop_at + INSERT_TIMEOUT + 60)
        assert not late, f"producers did not stop: {late} {ctx}"
        produced_at = time.monotonic()
        manual_done.set()
        late = join_all([manual_thread], time.monotonic() + SYNC_TIMEOUT + 30)
        assert not late, f"the manual flush thread did not stop {ctx}"

        buf.close(timeout=CLOSE_TIMEOUT)
        closed_at = time.monotonic()
        watch_done.set()
        late = join_all([watcher], time.monotonic() + 30)
        assert not late, f"the watcher did not stop {ctx}"
        after_close = buf.stats()
        with sink.lock:
            outcome_after_close = (sink.delivered, sink.failed, hashlib.sha256(sink.ledger).hexdigest())
    finally:
        manual_done.set()
        watch_done.set()
        release.set()

    # The stuck calls now raise, long after their batches were settled: nothing may change.
    wait_for(lambda: sink.stuck_active == 0, timeout=30)
    assert buf.stats() == after_close, f"counters changed after the stuck calls ended {ctx}"
    with sink.lock:
        outcome = (sink.delivered, sink.failed, hashlib.sha256(sink.ledger).hexdigest())
        assert outcome == outcome_after_close, f"the sink's ledger changed after the stuck calls ended {ctx}"

    # -- what happened, for the log ---------------------------------------------
    stored = sum(produced[k] - sum(b - a for a, b in not_stored[k]) for k in range(PRODUCERS))
    failed_by = Counter((attempt, error) for _p, attempt, error, _n in sink.failed_batches)
    print(
        f"soak: {produced_at - started:.1f}s producing, close took {closed_at - produced_at:.2f}s; "
        f"{stored} items stored ({stored / (produced_at - started):,.0f}/s), "
        f"steps {sum(produced)}, calls {sum(calls, Counter())}; "
        f"handle_flush calls {dict(sink.behaviour)}, {sink.delivered_batches} batches delivered; "
        f"failed batches by (attempt, error) {dict(failed_by)}; stats {after_close}; "
        f"manual {dict(manual)}, slowest sync_flush {slowest_sync[0]:.2f}s; "
        f"{snapshots[0]} stats() snapshots; stuck calls {sink.stuck_started}",
        flush=True,
    )

    # -- the checks ---------------------------------------------------------------
    assert threads.errors == [], f"{threads.errors} {ctx}"
    assert watch_problems == [], f"{watch_problems[:5]} {ctx}"
    assert manual_problems == [], f"{manual_problems[:5]} {ctx}"
    assert sink.anomalies == [], f"{sink.anomaly_count} anomalies, first {sink.anomalies[:10]} {ctx}"

    # Every stored item delivered exactly once or failed exactly once (a
    # second outcome would have been an anomaly above), none missing, none
    # extra, and nothing for the items an insert did not store.
    ledger = sink.ledger
    delivered = failed = 0
    for k in range(PRODUCERS):
        mine = ledger[k : PRODUCERS * produced[k] : PRODUCERS]  # step i is item PRODUCERS * i + k
        assert len(mine) == produced[k]
        for a, b in not_stored[k]:
            seen = [PRODUCERS * (a + j) + k for j, o in enumerate(mine[a:b]) if o != UNSET]
            assert not seen, f"items not stored (BufferFull) were flushed: {seen[:10]} {ctx}"
            mine[a:b] = bytes([NOT_STORED]) * (b - a)
        missing, at = [], mine.find(UNSET)
        while at != -1 and len(missing) < 10:
            missing.append(PRODUCERS * at + k)
            at = mine.find(UNSET, at + 1)
        assert not missing, (
            f"producer {k}: {mine.count(UNSET)} items neither delivered nor failed, first {missing} {ctx}"
        )
        delivered += mine.count(DELIVERED)
        failed += mine.count(FAILED)
        beyond = ledger[PRODUCERS * produced[k] + k :: PRODUCERS]
        assert beyond.count(UNSET) == len(beyond), f"producer {k}: items it never inserted were flushed {ctx}"
    assert (delivered, failed) == (sink.delivered, sink.failed), ctx
    assert delivered + failed == stored, ctx

    s = after_close
    assert s["closed"], ctx
    assert s["inserted"] == stored, f"{s} {ctx}"
    assert (s["size"], s["in_flight"]) == (0, 0), f"{s} {ctx}"
    assert s["flushed"] == sink.delivered, f"{s} {ctx}"
    assert s["failed"] == sink.failed, f"{s} {ctx}"
    assert s["retried"] > 0, f"{s} {ctx}"
    assert adds_up(s), f"{s} {ctx}"
    # Checked as each batch was reported (anomalies), and again here.
    assert all(
        attempt == MAX_RETRIES + 1 or error in {e.__name__ for e in NOT_RETRIED}
        for _p, attempt, error, _n in sink.failed_batches
    ), f"{failed_by} {ctx}"
